"""What the trainer needs from an editing policy. What a rollout carries (PromptBatch, Rollout) is shared by
every part of rlkit and lives in rlkit.core.types."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from rlkit.core.types import PromptBatch, Rollout
from rlkit.policies.sde import StepOutput


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
