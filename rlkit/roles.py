"""The roles of the loop, built from a recipe: the policy, the algorithm, the rewards, the optimizer and its
learning-rate schedule. The trainer and `rlkit bench` both build them here, so a benchmark times the objects a
run trains with."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from rlkit.algorithms import build_algorithm
from rlkit.plugins import build_rewards
from rlkit.policies import build_policy


class LearningRateSchedule:
    """The factor on `optim.lr`: warm-up over optimizer steps (several per RL step, one per micro-batch), then
    constant or cosine over RL steps, so the decay does not depend on the micro-batch or the number of
    processes. The loop sets `rl_step` as it goes (LambdaLR gives only the optimizer step)."""

    def __init__(self, optim: DictConfig, total_steps: int):
        self.optim, self.total_steps, self.rl_step = optim, total_steps, 0

    def __call__(self, optimizer_steps: int) -> float:
        o = self.optim
        warm = min(1.0, (optimizer_steps + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
        if o.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, self.rl_step / self.total_steps)))
        return warm


def scale_learning_rate(optimizer, scheduler, factor: float) -> None:
    """Multiply the learning rate by `factor` from now on: the schedule's base rates and the rates in use now
    (the schedule's own position and warm-up go on unchanged). The loop logs the optimizer's rate, so the
    scheduler's cached last rate is not needed."""
    scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:  # what a scheduler built on this optimizer again would start from
            group["initial_lr"] *= factor


@dataclass
class Roles:
    policy: object  # rlkit.policies.EditPolicy
    algorithm: object  # rlkit.algorithms.base.Algorithm
    rewards: object  # rlkit.rewards.RewardSet
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: LearningRateSchedule


def build_roles(cfg: DictConfig, device: torch.device, reward_models: dict | None = None, shard=None) -> Roles:
    """Each role from its recipe section, in the order that fixes what the seeded generators draw. ``shard``:
    called on the policy before its optimizer is built (multi-process full fine-tuning shards it);
    ``reward_models``: loaded reward models, shared with the evaluator's gold rewards."""
    rewards = build_rewards(cfg.rewards, reward_models)
    policy = build_policy(cfg.policy, cfg.sampler, device, cfg.algorithm.micro_batch)
    if shard is not None:
        shard(policy)
    algorithm = build_algorithm(cfg.algorithm, cfg.optim.max_grad_norm)
    o = cfg.optim
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    schedule = LearningRateSchedule(o, cfg.train.steps)
    # a plain function: LambdaLR would save a callable object's attributes (the recipe) into its state
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda optimizer_steps: schedule(optimizer_steps))
    return Roles(policy, algorithm, rewards, optimizer, lr_scheduler, schedule)
