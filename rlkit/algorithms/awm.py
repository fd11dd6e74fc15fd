"""AWM, Advantage Weighted Matching: the flow-matching loss itself as the log-likelihood surrogate, weighted by
the advantage through a clipped ratio, as the authors' code does (scxue/advantage_weighted_matching).

Each sample's final latents ``x0`` are noised again at a few of the rollout's own timesteps (stratified over
its first ``timestep_fraction``, the very first excluded: their `discrete_wo_init`), with fresh noise each:
``x_t = (1 - t) x0 + t eps``, and

    lp = -mean((v(x_t, t) - (eps - x0))^2)   (optionally weighted by t, or their generalised Huber),
    A = clip(adv, +-adv_clip) / adv_clip,   ratio = exp(lp - lp_old),
    L = mean(max(-A ratio, -A clip(ratio, 1 - c, 1 + c))) + kl_coef ||v - v_ref||^2 + ema_kl ||v - v_ema||^2.

``lp_old`` is computed before the update under the weights that sampled the rollout (the authors' on-policy
mode), so the first update's ratio is exactly 1. The EMA anchor is a second copy of the weights stepped once per
update, ``ema <- d ema + (1 - d) theta`` with ``d = min(ema_decay, 0.001 x optimizer steps)`` (their `linear`
schedule); it is part of the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlkit.algorithms.advantages import group_advantages
from rlkit.algorithms.base import Stateless, chunks, optimizer_step
from rlkit.algorithms.ema import WeightEMA
from rlkit.core.schema import setting


def awm_log_prob(v: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weighting: str = "uniform",
                 power: float = 0.25) -> torch.Tensor:
    """[B] AWM log-likelihood surrogates in float64: minus the flow-matching error, weighted."""
    dims = tuple(range(1, v.ndim))
    lp = -((v.double() - target.double()) ** 2).mean(dim=dims)
    t = t.double().to(lp.device)
    if weighting == "t":
        return lp * t
    if weighting == "ghuber":  # their generalised Huber: -((-lp + e)^p - e^p) t / p
        eps = 1e-10
        return -((-lp + eps) ** power - eps**power) * t / power
    return lp


def awm_policy_loss(lp: torch.Tensor, lp_old: torch.Tensor, adv: torch.Tensor, clip_range: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ratio, clipped mask): PPO's pessimistic clip on exp(lp - lp_old), per sample."""
    ratio = torch.exp(lp - lp_old)
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(-adv * ratio, -adv * clipped).mean()
    return loss, ratio.detach(), (ratio.detach() - clipped.detach()).abs() > 0


def stratified_steps(low: int, high: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """k step indices in [low, high], one drawn in each of k equal strata (fewer when the range is shorter)."""
    n = max(1, high - low + 1)
    k = max(1, min(k, n))
    bounds = [low + i * n // k for i in range(k + 1)]  # k contiguous blocks of whole indices
    draws = torch.rand(k, generator=generator)
    return torch.tensor([a + int(u * (b - a)) for a, b, u in zip(bounds, bounds[1:], draws.tolist())])


@dataclass
class AWMSettings:
    """algorithm.awm: what only AWM reads (defaults: the authors' GenEval configuration)."""

    timesteps: int = setting(4, ge=1, le=64, help="re-noising timesteps per sample and update, stratified over "
                             "the rollout's schedule (authors: 6 of 14)")
    timestep_fraction: float = setting(0.9, gt=0, le=1, help="the share of the schedule they are drawn from, its "
                                       "first step excluded (their discrete_wo_init)")
    weighting: str = setting("ghuber", choices=("uniform", "t", "ghuber"), help="the log-likelihood surrogate's "
                             "weighting: none, by t, or their generalised Huber by t")
    ghuber_power: float = setting(0.25, gt=0, le=1, help="ghuber: the power p")
    clip_range: float = setting(1.0, gt=0, le=10, help="the ratio is clipped to [1 - this, 1 + this]")
    ema_kl: float = setting(1.0, ge=0, help="weight of ||v - v_ema||^2 (their ema_beta; 0: no EMA anchor)")
    ema_decay: float = setting(0.3, ge=0, lt=1, help="the EMA anchor's decay, reached linearly at 0.001 per "
                               "optimizer step (their kl_ema_decay)")


class AWM(Stateless):
    settings = AWMSettings

    def __init__(self, cfg, max_grad_norm: float):
        self.cfg, self.max_grad_norm = cfg, max_grad_norm
        self.grad_sync = None  # set by a multi-process trainer
        self.ema = WeightEMA()
        self.optimizer_steps = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.ema.state_dict(), "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ema.load_state_dict(state)
        self.optimizer_steps = int(state.get("optimizer_steps", 0))

    def ema_decay(self) -> float:
        return min(self.cfg.awm.ema_decay, 0.001 * self.optimizer_steps)

    def advantages(self, rewards, group_ids, uncertainty=None, per_reward=None):
        adv, zero_std_frac = group_advantages(rewards, group_ids, self.cfg.std_scope, self.cfg.adv_clip)
        return adv, {"zero_std_frac": zero_std_frac}

    def _plan(self, rollout, generator):
        """Each micro-batch's samples, timestep indices and noises, drawn once: lp_old and the update use them."""
        awm = self.cfg.awm
        x0 = rollout.latents[:, -1]
        high = max(1, int(rollout.num_steps * awm.timestep_fraction))
        plan = []
        for _ in range(self.cfg.inner_epochs):
            order = torch.randperm(len(rollout), generator=generator)
            for idx in chunks(order, self.cfg.micro_batch):
                steps = stratified_steps(1, min(high, rollout.num_steps - 1), awm.timesteps, generator)
                noise = [torch.randn((len(idx), *x0.shape[1:]), generator=generator) for _ in steps]
                plan.append((idx, steps, noise))
        return plan

    def _velocity(self, policy, rollout, idx, step, noise):
        x0 = rollout.latents[idx, -1]
        t = (rollout.timesteps[step] / 1000).float()
        x_t = ((1 - t) * x0 + t * noise).to(policy.device)
        tt = t.repeat(len(idx))
        v = policy.predict_velocity(x_t, tt, rollout.cond, rollout.prompt_index[idx]).float()
        return v, (noise - x0).to(v.device), tt, x_t

    def update(self, policy, rollout, advantages, optimizer, lr_scheduler, generator) -> dict:
        cfg, awm = self.cfg, self.cfg.awm
        params = policy.trainable_parameters()
        if awm.ema_kl > 0:
            self.ema.ensure(policy)
        plan = self._plan(rollout, generator)
        with torch.no_grad():  # lp_old: the weights that sampled the rollout, before any step of this update
            old = [[awm_log_prob(*self._velocity(policy, rollout, idx, s, n)[:3], awm.weighting, awm.ghuber_power)
                    for s, n in zip(steps, noise)] for idx, steps, noise in plan]
        adv = (advantages.float().clamp(-cfg.adv_clip, cfg.adv_clip) / cfg.adv_clip).double()
        stats: dict[str, list[float]] = {"loss": [], "ratio_mean": [], "clipfrac": [], "kl_ref": [], "grad_norm": []}
        for (idx, steps, noise), lp_olds in zip(plan, old):
            total = torch.zeros((), dtype=torch.float64)
            for s, n, lp_old in zip(steps, noise, lp_olds):
                if awm.ema_kl > 0:  # the anchor first: its weights are swapped in place, outside any graph
                    with torch.no_grad(), self.ema.swapped_in(policy):
                        v_ema = self._velocity(policy, rollout, idx, s, n)[0]
                v, target, t, x_t = self._velocity(policy, rollout, idx, s, n)
                lp = awm_log_prob(v, target, t, awm.weighting, awm.ghuber_power)
                loss, ratio, clipped = awm_policy_loss(lp, lp_old, adv[idx].to(lp.device), awm.clip_range)
                kl = torch.zeros((), device=v.device)
                kl_coef = cfg.kl_coef * self.kl_scale
                if kl_coef > 0:
                    with torch.no_grad(), policy.reference():
                        v_ref = policy.predict_velocity(x_t, t, rollout.cond, rollout.prompt_index[idx]).float()
                    kl = ((v - v_ref) ** 2).mean()
                    loss = loss + kl_coef * kl
                if awm.ema_kl > 0:
                    loss = loss + awm.ema_kl * ((v - v_ema) ** 2).mean()
                (loss / len(steps)).backward()
                total += loss.detach().double().cpu() / len(steps)
                stats["ratio_mean"].append(float(ratio.mean()))
                stats["clipfrac"].append(float(clipped.float().mean()))
                stats["kl_ref"].append(kl.item())
            stats["grad_norm"].append(optimizer_step(params, optimizer, lr_scheduler, self.max_grad_norm,
                                                     self.grad_sync))
            self.optimizer_steps += 1
            stats["loss"].append(float(total))
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        if awm.ema_kl > 0:  # once per update (their per-epoch step)
            self.ema.step(policy, self.ema_decay())
            out["ema_decay"] = self.ema_decay()
        return out
