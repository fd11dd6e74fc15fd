"""What the trainer needs from an editing policy, and what a rollout carries."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from policies.sde import StepOutput
from rewards.base import RewardInput


@dataclass
class PromptBatch:
    """P editing prompts: a source image and an instruction each."""

    sources: torch.Tensor  # [P, 3, H, W] in [0, 1]
    instructions: list[str]
    keys: list[str]  # identity of (image, instruction): samples of one key form one group
    metadata: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.instructions)


@dataclass
class Rollout:
    """N = P x G edited samples with their whole denoising trajectory.

    Index convention: step ``j`` goes from ``latents[:, j]`` at ``sigmas[j]`` to ``latents[:, j + 1]``.
    """

    latents: torch.Tensor  # [N, T + 1, ...] fp32 trajectory
    log_probs: torch.Tensor  # [N, T] fp32 log-prob of each recorded transition (0 on ODE steps)
    sigmas: torch.Tensor  # [T + 1]
    timesteps: torch.Tensor  # [T] what the transformer was given at each step
    sde_mask: torch.Tensor  # [T] bool: steps sampled with noise (the only ones that can be trained)
    images: torch.Tensor  # [N, 3, H, W] decoded edits in [0, 1]
    sources: torch.Tensor  # [N, 3, H, W]
    instructions: list[str]
    group_ids: torch.Tensor  # [N] long
    prompt_index: torch.Tensor  # [N] long: row of `cond` for each sample
    cond: Any  # policy-specific conditioning, one row per prompt (computed once per group)
    metadata: list[dict] = field(default_factory=list)
    means: torch.Tensor | None = None  # [N, T, ...] transition means at sampling, kept when asked (GRPO-Guard)

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    def as_reward_input(self) -> RewardInput:
        return RewardInput(self.images, self.sources, self.instructions, self.group_ids, self.metadata)


class EditPolicy(Protocol):
    """The policy role in the loop: sample with log-probs, recompute them, give a reference, save what trains.
    Everything the trainer, the evaluator and the algorithms call is declared here."""

    full: bool  # every transformer weight trains (reference: a frozen copy); False: a LoRA adapter trains
    transformer: torch.nn.Module  # the trained network (sharded with FSDP2 in multi-process full fine-tuning)

    def sample(self, batch: PromptBatch, group_size: int, generator: torch.Generator, sde_window_start: int = 0,
               shard: tuple[int, int] = (0, 1), noise_level: float | None = None,
               keep_means: bool = False) -> Rollout:
        """group_size samples of every prompt. ``shard`` = (rank, world): every rank draws the whole batch's
        noise (generators stay in lockstep) and keeps its own share of the samples. ``noise_level``: the
        sampler noise of this rollout instead of the recipe's (evaluations). ``keep_means``: also record the
        transition means (`Rollout.means`), which GRPO-Guard's ratio needs."""

    def step_logprob(self, rollout: Rollout, sample_idx: torch.Tensor, steps: torch.Tensor | int) -> StepOutput: ...

    def predict_velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any,
                         prompt_index: torch.Tensor) -> torch.Tensor: ...

    def reference(self) -> AbstractContextManager: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What trains (the LoRA, or every transformer weight), gathered whole: what a checkpoint holds."""

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def save_lora(self, directory: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """The export a diffusers pipeline loads (LoRA file, or the full transformer folder); ``state``: these
        weights instead of the current ones (e.g. the best checkpoint's)."""
