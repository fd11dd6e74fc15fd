"""Per-step stability signals: the figures that show reward hacking or a collapsing policy early.

Every step: the reward's slow average and drift from it, per-reward means, the reward's own uncertainty, and
how different the samples of a group are from each other. Every evaluation: the proxy reward on the fixed
probe prompts (same sources, instructions and noise each time) and its drift from the step-0 value.
"""

from __future__ import annotations

import torch

from rlkit.core.types import Rollout
from rlkit.rewards import CombinedReward


class StabilityTracker:
    STATE = {"reward_ema": "number?", "best_reward": "number?", "probe_start": "number?"}  # (rlkit/state_check.py)
    STATE_OPTIONAL = ("probe_start",)  # (not kept by the oldest checkpoints)

    def __init__(self, ema_decay: float = 0.9):
        self.ema_decay = ema_decay
        self.reward_ema: float | None = None
        self.best_reward: float | None = None
        self.probe_start: float | None = None  # proxy reward on the probe set before training

    def observe(self, step: int, reward: CombinedReward, rollout: Rollout) -> dict:
        mean = float(reward.total.mean())
        self.reward_ema = mean if self.reward_ema is None else (
            self.ema_decay * self.reward_ema + (1 - self.ema_decay) * mean)
        self.best_reward = mean if self.best_reward is None else max(self.best_reward, mean)
        out = {
            "reward_ema": self.reward_ema,
            "reward_drift": mean - self.reward_ema,
            "group_diversity": group_diversity(rollout.images, rollout.group_ids),
        }
        if reward.uncertainty is not None:
            out["reward_uncertainty"] = float(reward.uncertainty.mean())
        for name, scores in reward.per_reward.items():
            out[f"reward/{name}"] = float(scores.mean())
        return out

    def observe_probe(self, probe_reward: float) -> dict:
        """Proxy score on the fixed probe set; drift = change since the first (step-0) evaluation."""
        if self.probe_start is None:
            self.probe_start = probe_reward
        return {"probe/drift": probe_reward - self.probe_start}

    def state_dict(self) -> dict:
        return {"reward_ema": self.reward_ema, "best_reward": self.best_reward, "probe_start": self.probe_start}

    def load_state_dict(self, state: dict) -> None:
        self.reward_ema, self.best_reward = state["reward_ema"], state["best_reward"]
        self.probe_start = state.get("probe_start")


def group_diversity(images: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Mean per-pixel std across the samples of each group (0 = every sample identical: collapse)."""
    stds = [images[group_ids == g].std(dim=0, unbiased=False).mean() for g in torch.unique(group_ids)]
    return float(torch.stack(stds).mean())
