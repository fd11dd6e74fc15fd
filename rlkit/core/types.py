"""What flows between the roles of the loop: prompts in, a rollout out of the policy, its edits into the rewards,
scores back. Policies, rewards, the loop and user plugins all speak these types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RewardInput:
    edited: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    source: torch.Tensor  # [B, 3, H, W] float in [0, 1]: the first reference image, at the edit's size
    instructions: list[str]
    group_ids: torch.Tensor  # [B] long; samples of one (source, instruction) share an id
    metadata: list[dict] = field(default_factory=list)
    # every reference image of each sample's prompt, in order, each [3, h, w] at its own aspect ratio; None: one
    # reference per prompt, the source (a reward written for one source never needs to look here)
    references: list[list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return self.edited.shape[0]

    @property
    def all_references(self) -> list[list[torch.Tensor]]:
        return self.references if self.references is not None else [[s] for s in self.source]


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [B] float, higher is better
    uncertainty: torch.Tensor | None = None  # [B], optional
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    rationales: list[str] | None = None


@dataclass
class PromptBatch:
    """P editing prompts of one edit size: reference images and an instruction each."""

    sources: torch.Tensor  # [P, 3, H, W] in [0, 1]: the first reference at the edit's size (H, W)
    instructions: list[str]
    keys: list[str]  # identity of (images, instruction): samples of one key form one group
    metadata: list[dict] = field(default_factory=list)
    # each prompt's reference images in order, [3, h, w] each at its own aspect ratio; None: the source alone
    references: list[list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def all_references(self) -> list[list[torch.Tensor]]:
        return self.references if self.references is not None else [[s] for s in self.sources]

    @property
    def edit_hw(self) -> tuple[int, int]:
        return int(self.sources.shape[-2]), int(self.sources.shape[-1])

    def select(self, rows: slice) -> PromptBatch:
        return PromptBatch(self.sources[rows], self.instructions[rows], self.keys[rows],
                           self.metadata[rows] if self.metadata else [],
                           None if self.references is None else self.references[rows])


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
    references: list[list[torch.Tensor]] | None = None  # [N] each sample's prompt's references (None: the source)

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    def as_reward_input(self) -> RewardInput:
        return RewardInput(self.images, self.sources, self.instructions, self.group_ids, self.metadata,
                           self.references)
