"""DGPO, Direct Group Preference Optimization: a group-level DPO on the denoising score-matching error, as the
authors' code computes it (Luo-Yihong/DGPO).

At a few timesteps from the high-noise end of the rollout's schedule, each sample's final latents are noised
again (the noise shared by a group, drawn anew per timestep: their `use_shared_noise`), and

    dsm_i = mean((eps - x0_i) - v(x_t,i))^2,   ref_dsm_i: the same with the reference (LoRA off),
    s_g = sum_{i in g} A_i beta_dpo (dsm_i - ref_dsm_i) / |g|   (detached),   w_g = sigmoid(s_g),
    L = mean(w_{g(i)} A_i dsm_i) + kl_coef ||v - v_ref||^2.

A sample whose DSM ratio to the old weights, exp(old_dsm - dsm), has already moved past 1 + c (A > 0) or below
1 - c (A < 0) contributes no gradient (their clip_dsm). The old weights are an EMA stepped every optimizer step,
``d = min(ema_decay, 0.001 x steps)``, and after `switch_ema_ref` steps the rollouts sample with them; it is part
of the checkpoint. The group weights are computed once per update, from the DSM at its start: with micro-batches
smaller than a group the authors' all-reduce over ranks has the same role.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rlkit.algorithms.advantages import group_advantages
from rlkit.algorithms.base import Stateless, chunks, optimizer_step
from rlkit.algorithms.ema import WeightEMA
from rlkit.core.schema import setting


def dsm_error(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] the denoising score-matching error of velocity predictions against eps - x0."""
    return ((target - v) ** 2).mean(dim=tuple(range(1, v.ndim)))


def group_weights(adv: torch.Tensor, dsm: torch.Tensor, ref_dsm: torch.Tensor, group_ids: torch.Tensor,
                  beta_dpo: float) -> torch.Tensor:
    """[B] sigmoid(s_g) of each sample's group: s_g = sum_{i in g} A_i beta (dsm_i - ref_dsm_i) / |g|."""
    groups, inverse, sizes = torch.unique(group_ids, return_inverse=True, return_counts=True)
    per_sample = adv * beta_dpo * (dsm - ref_dsm)
    s = torch.zeros(len(groups), dtype=per_sample.dtype).index_add_(0, inverse, per_sample) / sizes
    return torch.sigmoid(s)[inverse]


def dsm_clip_mask(dsm: torch.Tensor, old_dsm: torch.Tensor, adv: torch.Tensor, clip_range: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio exp(old_dsm - dsm), the samples past the clip: ratio > 1 + c where A > 0, < 1 - c where A <= 0)."""
    ratio = torch.exp(old_dsm - dsm)
    return ratio, torch.where(adv > 0, ratio > 1 + clip_range, ratio < 1 - clip_range)


@dataclass
class DGPOSettings:
    """algorithm.dgpo: what only DGPO reads (defaults: the authors' base configuration)."""

    timesteps: int = setting(4, ge=1, le=64, help="timesteps trained per update (their num_train_timesteps)")
    timestep_fraction: float = setting(0.6, gt=0, le=1, help="drawn from this high-noise share of the rollout's "
                                       "schedule (their trunc_steps 6 of 10)")
    beta_dpo: float = setting(100.0, gt=0, help="the group DPO temperature")
    clip_range: float = setting(0.05, gt=0, le=10, help="the DSM ratio clip (their clip_dsm)")
    shared_noise: bool = setting(True, help="one noise per group and timestep (their use_shared_noise)")
    ema_decay: float = setting(0.3, ge=0, lt=1, help="the old weights' EMA decay, reached at 0.001 per step")
    switch_ema_ref: int = setting(200, ge=0, help="optimizer steps after which rollouts sample with the old "
                                  "weights (0: never)")


class DGPO(Stateless):
    settings = DGPOSettings

    def __init__(self, cfg, max_grad_norm: float):
        self.cfg, self.max_grad_norm = cfg, max_grad_norm
        self.grad_sync = None  # set by a multi-process trainer
        self.old = WeightEMA()
        self.optimizer_steps = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.old.state_dict(), "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.old.load_state_dict(state)
        self.optimizer_steps = int(state.get("optimizer_steps", 0))

    def rollout_context(self, policy):
        switch = self.cfg.dgpo.switch_ema_ref
        return self.old.swapped_in(policy) if switch and self.optimizer_steps >= switch else nullcontext()

    def advantages(self, rewards, group_ids, uncertainty=None, per_reward=None):
        adv, zero_std_frac = group_advantages(rewards, group_ids, self.cfg.std_scope, self.cfg.adv_clip)
        return adv, {"zero_std_frac": zero_std_frac}

    def _noised(self, rollout, step, noise, idx):
        x0 = rollout.latents[idx, -1]
        t = (rollout.timesteps[step] / 1000).float()
        return ((1 - t) * x0 + t * noise[idx]), t.repeat(len(idx)), noise[idx] - x0

    def _dsm(self, policy, rollout, step, noise, idx):
        x_t, t, target = self._noised(rollout, step, noise, idx)
        v = policy.predict_velocity(x_t.to(policy.device), t, rollout.cond, rollout.prompt_index[idx]).float()
        return dsm_error(v, target.to(v.device)), v, x_t, t

    def update(self, policy, rollout, advantages, optimizer, lr_scheduler, generator) -> dict:
        cfg, d = self.cfg, self.cfg.dgpo
        params = policy.trainable_parameters()
        self.old.ensure(policy)
        n, x0 = len(rollout), rollout.latents[:, -1]
        high = max(0, min(rollout.num_steps - 1, int(rollout.num_steps * d.timestep_fraction)))
        steps = torch.randperm(high + 1, generator=generator)[: d.timesteps].sort().values
        noises = []
        for _ in steps:  # one noise per group (shared) or per sample
            if d.shared_noise:
                _, inverse = torch.unique(rollout.group_ids, return_inverse=True)
                per_group = torch.randn((int(inverse.max()) + 1, *x0.shape[1:]), generator=generator)
                noises.append(per_group[inverse])
            else:
                noises.append(torch.randn((n, *x0.shape[1:]), generator=generator))
        adv = advantages.float()
        everyone = torch.arange(n)
        weights, old_dsm = [], []
        with torch.no_grad():  # the group weights and the clip's old DSM, from the start of the update
            for step, noise in zip(steps, noises):
                dsm, ref, old = [], [], []
                for idx in chunks(everyone, cfg.micro_batch):
                    dsm.append(self._dsm(policy, rollout, step, noise, idx)[0].cpu())
                    with policy.reference():
                        ref.append(self._dsm(policy, rollout, step, noise, idx)[0].cpu())
                    with self.old.swapped_in(policy):
                        old.append(self._dsm(policy, rollout, step, noise, idx)[0].cpu())
                weights.append(group_weights(adv, torch.cat(dsm), torch.cat(ref), rollout.group_ids, d.beta_dpo))
                old_dsm.append(torch.cat(old))
        stats: dict[str, list[float]] = {"loss": [], "ratio_mean": [], "clipfrac": [], "kl_ref": [], "grad_norm": [],
                                         "dgpo_weight_mean": []}
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(n, generator=generator)
            for idx in chunks(order, cfg.micro_batch):
                total = 0.0
                for step, noise, w, old in zip(steps, noises, weights, old_dsm):
                    dsm, v, x_t, t = self._dsm(policy, rollout, step, noise, idx)
                    a = adv[idx].to(dsm.device)
                    ratio, clipped = dsm_clip_mask(dsm.detach(), old[idx].to(dsm.device), a, d.clip_range)
                    dsm_used = torch.where(clipped, dsm.detach(), dsm)
                    loss = (w[idx].to(dsm.device) * a * dsm_used).mean()
                    kl = torch.zeros((), device=v.device)
                    kl_coef = cfg.kl_coef * self.kl_scale
                    if kl_coef > 0:
                        with torch.no_grad(), policy.reference():
                            v_ref = policy.predict_velocity(x_t.to(policy.device), t, rollout.cond,
                                                            rollout.prompt_index[idx]).float()
                        kl = ((v - v_ref) ** 2).mean()
                        loss = loss + kl_coef * kl
                    (loss / len(steps)).backward()
                    total += loss.item() / len(steps)
                    stats["ratio_mean"].append(float(ratio.mean()))
                    stats["clipfrac"].append(float(clipped.float().mean()))
                    stats["kl_ref"].append(kl.item())
                    stats["dgpo_weight_mean"].append(float(w[idx].mean()))
                stats["grad_norm"].append(optimizer_step(params, optimizer, lr_scheduler, self.max_grad_norm,
                                                         self.grad_sync))
                self.optimizer_steps += 1
                self.old.step(policy, min(d.ema_decay, 0.001 * self.optimizer_steps))
                stats["loss"].append(total)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["ema_decay"] = min(d.ema_decay, 0.001 * self.optimizer_steps)
        return out
