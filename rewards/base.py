"""The reward protocol every plugin speaks.

A reward is any class constructed with keyword arguments and called with a `RewardInput`; it returns a
`RewardOutput` with one score per edited image, higher is better. Subclassing `Reward` is optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RewardInput:
    edited: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    source: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    instructions: list[str]
    group_ids: torch.Tensor  # [B] long; samples of one (source, instruction) share an id
    metadata: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return self.edited.shape[0]


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [B] float, higher is better
    uncertainty: torch.Tensor | None = None  # [B], optional
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    rationales: list[str] | None = None


class Reward:
    """Optional base class: stores kwargs-free construction and documents the call."""

    def __call__(self, batch: RewardInput) -> RewardOutput:  # pragma: no cover - interface
        raise NotImplementedError
