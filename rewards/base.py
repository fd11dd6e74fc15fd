"""The reward protocol every plugin speaks.

A reward is any class constructed with keyword arguments and called with a `RewardInput`; it returns a
`RewardOutput` with one score per edited image, higher is better. Subclassing `Reward` is optional.
"""

from __future__ import annotations

import torch

from rlkit.core.types import RewardInput, RewardOutput


class Reward:
    """Optional base class: stores kwargs-free construction and documents the call."""

    def __call__(self, batch: RewardInput) -> RewardOutput:  # pragma: no cover - interface
        raise NotImplementedError


class FunctionReward:
    """A plain callable as a reward: `fn(batch)` returns a RewardOutput, or the scores alone (a tensor, an array
    or a list of numbers, one per edited image)."""

    def __init__(self, fn):
        self.fn = fn
        self.secret_kwargs = getattr(fn, "secret_kwargs", ())

    def __call__(self, batch: RewardInput) -> RewardOutput:
        out = self.fn(batch)
        if isinstance(out, RewardOutput):
            return out
        if not torch.is_tensor(out):
            import numpy as np

            out = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return RewardOutput(scores=out.float())


def as_reward(obj):
    """Any callable as a reward (FunctionReward; a RewardOutput it returns passes through unchanged)."""
    if not callable(obj):
        raise TypeError(f"a reward must be callable with a RewardInput, got {type(obj).__name__}")
    return FunctionReward(obj)
