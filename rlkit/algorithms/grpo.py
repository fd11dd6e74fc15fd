"""GRPO for flow-matching editors (Flow-GRPO): clipped importance ratio per trained timestep, KL to the
reference on the transition mean, a random subset of SDE timesteps per sample.

`algorithm.grpo.ratio_norm: true` is GRPO-Guard's regulated clipping (arXiv 2510.22319, as Flow-Factory's grpo-guard
trainer computes it). With s the transition's std (std_t sqrt|dt|) and mu_old the mean the rollout sampled from,
    log r = s (log p - log p_old) + mean((mu - mu_old)^2) / (2 s)
which, for x drawn from the old transition, is mean(eps * (mu - mu_old)) with eps = (x - mu_old) / s: the term
-|mu - mu_old|^2 / (2 s^2) that pulls every plain ratio below 1 is gone, and so is the 1/s that makes the ratio of
low-noise steps swing widest, so one clip range acts evenly across timesteps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlkit.algorithms.advantages import decoupled_advantages, group_advantages, uncertainty_weights
from rlkit.algorithms.base import Stateless, chunks, optimizer_step
from rlkit.core.errors import UserError
from rlkit.core.schema import setting


@dataclass
class GRPOSettings:
    """algorithm.grpo: what only GRPO reads."""

    clip_range_low: float = setting(1e-4, ge=0, lt=1, help="the importance ratio is clipped below at 1 - this")
    clip_range_high: float = setting(1e-4, ge=0, help="the importance ratio is clipped above at 1 + this")
    timestep_fraction: float = setting(0.6, gt=0, le=1, help="share of a sample's SDE steps trained per update "
                                       "(a random subset, at least one)")
    ratio_norm: bool = setting(False, help="GRPO-Guard's regulated clipping: each step's log-ratio rescaled by its "
                               "std and freed of the bias that pulls flow-SDE ratios below 1")
    dt_weight: bool = setting(False, help="GRPO-Guard's authors' per-step weight: each step's policy loss divided "
                              "by its |dt| (17.9 to 5.8 on a 10-step FLUX schedule); rlkit's default and "
                              "Flow-Factory leave it out")
    reward_norm: str = setting("sum", choices=("sum", "per_reward"), help="several rewards: sum = normalise their "
                               "weighted sum per group; per_reward = each within its groups, then the sum (GDPO)")
    uncertainty_weighting: bool = setting(False, help="scale each advantage by 1 / (1 + (u / uncertainty_scale)^2), "
                                          "u = the reward's uncertainty (e.g. JRM's sigma)")
    uncertainty_scale: float = setting(0.0, ge=0, help="the u at which the weight halves; 0 = the batch median")


class GRPO(Stateless):
    settings = GRPOSettings

    def __init__(self, cfg, max_grad_norm: float):
        self.cfg, self.max_grad_norm = cfg, max_grad_norm
        self.grad_sync = None  # set by a multi-process trainer: averages gradients over ranks before each step
        self.rollout_means = bool(cfg.grpo.ratio_norm)  # GRPO-Guard's ratio reads the means the rollout sampled from
        self.per_reward = cfg.grpo.reward_norm == "per_reward"  # the loop then gathers each reward's scores

    def advantages(self, rewards, group_ids, uncertainty=None, per_reward=None):
        if self.cfg.grpo.reward_norm == "per_reward" and per_reward is not None and len(per_reward[0]) > 1:
            names, weights, scores = per_reward
            adv, zero_std_frac, parts = decoupled_advantages(scores, weights, group_ids, self.cfg.std_scope,
                                                             self.cfg.adv_clip)
            info = {"zero_std_frac": zero_std_frac,
                    **{f"adv/{name}": float(p.abs().mean()) for name, p in zip(names, parts)}}
        else:
            adv, zero_std_frac = group_advantages(rewards, group_ids, self.cfg.std_scope, self.cfg.adv_clip)
            info = {"zero_std_frac": zero_std_frac}
        if self.cfg.grpo.uncertainty_weighting:
            if uncertainty is None:
                raise UserError("algorithm.grpo.uncertainty_weighting is on but none of the rewards reports an "
                                "uncertainty (jrm does; programmatic rewards do not)")
            w = uncertainty_weights(uncertainty, self.cfg.grpo.uncertainty_scale)
            adv = adv * w
            info["adv_weight_mean"] = float(w.mean())
        return adv, info

    def timesteps_per_sample(self, sde_steps: int) -> int:
        """How many of a sample's SDE steps one update trains: algorithm.grpo.timestep_fraction of them, at least 1."""
        return max(1, math.ceil(self.cfg.grpo.timestep_fraction * sde_steps - 1e-9))

    def train_steps(self, rollout, generator: torch.Generator) -> torch.Tensor:
        """[N, k] timesteps to train per sample: a random subset of the rollout's SDE steps."""
        sde_steps = torch.nonzero(rollout.sde_mask).flatten()
        if len(sde_steps) == 0:
            raise ValueError("the rollout has no SDE steps (sampler.noise_level is 0?): nothing to train")
        k = self.timesteps_per_sample(len(sde_steps))
        picks = [sde_steps[torch.randperm(len(sde_steps), generator=generator)[:k]] for _ in range(len(rollout))]
        return torch.stack(picks)

    def update(self, policy, rollout, advantages, optimizer, lr_scheduler, generator) -> dict:
        cfg = self.cfg
        params = policy.trainable_parameters()
        old_logp = rollout.log_probs
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "ratio_mean", "clipfrac", "approx_kl", "kl_ref",
                                                          "grad_norm")}
        for _ in range(cfg.inner_epochs):
            steps = self.train_steps(rollout, generator)  # [N, k]
            order = torch.randperm(len(rollout), generator=generator)
            for idx in chunks(order, cfg.micro_batch):
                k = steps.shape[1]
                for j in range(k):
                    t = steps[idx, j]
                    out = policy.step_logprob(rollout, idx, t)
                    log_ratio = out.log_prob - old_logp[idx, t].to(out.log_prob.device)
                    if cfg.grpo.ratio_norm:
                        log_ratio = regulated_log_ratio(log_ratio, out.mean, rollout.means[idx, t], out.std)
                    ratio = torch.exp(log_ratio)
                    adv = advantages[idx].to(ratio.device)
                    clipped = torch.clamp(ratio, 1 - cfg.grpo.clip_range_low, 1 + cfg.grpo.clip_range_high)
                    per_sample = torch.maximum(-adv * ratio, -adv * clipped)
                    if cfg.grpo.dt_weight:  # the authors' policy_loss / (sqrt dt)^2
                        dt = (rollout.sigmas[t] - rollout.sigmas[t + 1]).to(per_sample.device, per_sample.dtype)
                        per_sample = per_sample / dt
                    pg_loss = per_sample.mean()
                    kl = torch.zeros((), device=ratio.device)
                    kl_coef = cfg.kl_coef * self.kl_scale
                    if kl_coef > 0:
                        with torch.no_grad(), policy.reference():
                            ref = policy.step_logprob(rollout, idx, t)
                        dims = tuple(range(1, out.mean.ndim))
                        kl = (((out.mean - ref.mean) ** 2).mean(dim=dims) / (2 * out.std**2)).mean()
                    loss = pg_loss + kl_coef * kl
                    (loss / k).backward()  # one optimizer step per micro-batch: the mean over its samples and steps
                    with torch.no_grad():
                        stats["loss"].append(loss.item())
                        stats["ratio_mean"].append(ratio.mean().item())
                        outside = (ratio < 1 - cfg.grpo.clip_range_low) | (ratio > 1 + cfg.grpo.clip_range_high)
                        stats["clipfrac"].append(outside.float().mean().item())
                        stats["approx_kl"].append(0.5 * (log_ratio**2).mean().item())
                        stats["kl_ref"].append(float(kl))
                grad_norm = optimizer_step(params, optimizer, lr_scheduler, self.max_grad_norm, self.grad_sync)
                stats["grad_norm"].append(grad_norm)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["ratio_max_dev"] = 0.0 if not stats["ratio_mean"] else max(abs(r - 1) for r in stats["ratio_mean"])
        return out


def regulated_log_ratio(log_ratio: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                        std: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's normalised log-ratio (module docstring): [B] from the plain one, the current and the rollout's
    transition means, and the [B] transition std."""
    old_mean = old_mean.to(mean.device, mean.dtype)
    dims = tuple(range(1, mean.ndim))
    return log_ratio * std + ((mean - old_mean) ** 2).mean(dim=dims) / (2 * std)
