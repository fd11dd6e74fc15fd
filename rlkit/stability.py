"""Reward-stability tracking: per-step signals that show reward hacking or a collapsing policy early.

This first version computes and checkpoints the signals (reward drift against a slow average, per-reward
means, fraction of groups without signal, sample diversity inside groups). Alarms and actions build on it.
"""

from __future__ import annotations

import torch

from policies.base import Rollout
from rewards.combine import CombinedReward


class StabilityTracker:
    def __init__(self, ema_decay: float = 0.9):
        self.ema_decay = ema_decay
        self.reward_ema: float | None = None
        self.best_reward: float | None = None

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
        for name, scores in reward.per_reward.items():
            out[f"reward/{name}"] = float(scores.mean())
        return out

    def state_dict(self) -> dict:
        return {"reward_ema": self.reward_ema, "best_reward": self.best_reward}

    def load_state_dict(self, state: dict) -> None:
        self.reward_ema, self.best_reward = state["reward_ema"], state["best_reward"]


def group_diversity(images: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Mean per-pixel std across the samples of each group (0 = every sample identical: collapse)."""
    stds = [images[group_ids == g].std(dim=0, unbiased=False).mean() for g in torch.unique(group_ids)]
    return float(torch.stack(stds).mean())
