"""The algorithm role in the loop: turn rewards into advantages, then update the policy from a rollout."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Protocol

import torch

from rlkit.policies import EditPolicy, Rollout


class Algorithm(Protocol):
    """What the trainer calls: advantages from rewards, then one update from a rollout."""

    kl_scale: float  # multiplies the KL coefficient (the stability guard raises it after a rollback)
    rollout_means: bool  # the update reads Rollout.means (the rollout records them only then)
    per_reward: bool  # advantages read each reward's scores (`per_reward`), not only their weighted sum
    export_weights: str  # what evaluations and final/ use: "trained", or "ema" (NFT's old policy)
    grad_sync: Callable[[list[torch.nn.Parameter]], None] | None  # averages gradients over processes, or None

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor, uncertainty: torch.Tensor | None = None,
                   per_reward: tuple[list[str], list[float], torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, dict]:
        """One advantage per sample (group-normalised), and figures to log. ``uncertainty``: the reward's own
        per-sample uncertainty (e.g. JRM's sigma), for uncertainty weighting. ``per_reward``: (names, weights,
        [B, R] scores) of the rewards the total sums, for per-reward normalisation."""

    def rollout_context(self, policy: EditPolicy) -> AbstractContextManager:
        """The weights the rollout samples with (NFT: its old policy); GRPO and DPO: the trained ones."""

    def export_context(self, policy: EditPolicy, state: dict | None = None) -> AbstractContextManager:
        """The policy holding the weights a user gets (`export_weights`), now or, given a checkpoint's
        algorithm ``state``, at that checkpoint; the trained weights are back on exit."""

    def state_dict(self) -> dict:
        """What a checkpoint must hold for an exact resume beyond the policy and optimizer: `kl_scale`, and
        the algorithm's own state (NFT: its EMA)."""

    def load_state_dict(self, state: dict) -> None: ...

    def update(self, policy: EditPolicy, rollout: Rollout, advantages: torch.Tensor,
               optimizer: torch.optim.Optimizer, lr_scheduler, generator: torch.Generator) -> dict:
        """Gradient steps on the rollout (one per micro-batch); returns figures to log (loss, ratio, kl, ...)."""


class Stateless:
    """The defaults of an algorithm with no state of its own beyond `kl_scale`, and rollouts from the trained
    weights."""

    rollout_means = False
    per_reward = False
    export_weights = "trained"
    kl_scale = 1.0

    def rollout_context(self, policy) -> AbstractContextManager:
        return nullcontext()

    def export_context(self, policy, state: dict | None = None) -> AbstractContextManager:
        return nullcontext(policy)

    def state_dict(self) -> dict:
        return {"kl_scale": self.kl_scale}

    def load_state_dict(self, state: dict) -> None:
        self.kl_scale = float(state.get("kl_scale", 1.0))


def optimizer_step(params: list[torch.nn.Parameter], optimizer, lr_scheduler, max_grad_norm: float,
                   grad_sync=None) -> float:
    """(Average gradients over processes,) clip, step, zero. Returns the pre-clip gradient norm. Refuses to apply
    non-finite gradients."""
    if grad_sync is not None:
        grad_sync(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient norm ({grad_norm.item()}); the update was not applied")
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def chunks(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [index[i : i + size] for i in range(0, len(index), size)]
