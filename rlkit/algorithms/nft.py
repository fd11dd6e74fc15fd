"""DiffusionNFT: likelihood-free policy optimisation on the forward (noising) process.

Each sample's final clean latents ``x0`` are noised again at a random ``t`` (``x_t = (1 - t) x0 + t eps``); the
current velocity ``v`` and the old policy's ``v_old`` (an EMA of the trained weights) define an implicit positive
and negative policy, ``v+ = b v + (1 - b) v_old`` and ``v- = (1 + b) v_old - b v``. The loss pulls the positive
policy's x0-prediction towards ``x0`` in proportion to the sample's normalised reward ``r`` and the negative
policy's in proportion to ``1 - r``:

    r = clip(A / (2 A_max) + 0.5, 0, 1),   L = [r L(v+) + (1 - r) L(v-)] / b,
    L(u) = ||(x_t - t u) - x0||^2 / w   (w: the error's mean absolute value, detached: adaptive weighting)

No log-probabilities: any sampler works, the plain ODE included (``sampler.noise_level: 0``). The old policy's
weights are part of the checkpoint, so a resumed run continues exactly. ``nft.export: ema`` hands the old policy
(the EMA) to the user instead of the trained weights: evaluations, the best-gold choice and final/ use it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from rlkit.algorithms.advantages import group_advantages
from rlkit.algorithms.base import chunks, optimizer_step
from rlkit.algorithms.ema import WeightEMA
from rlkit.core.schema import setting


def blend_decay(step: int, kind: str) -> float:
    """The authors' old-policy decay (their return_decay) at ``step`` optimizer steps."""
    if kind == "linear":
        return min(0.001 * step, 0.5)
    if kind == "delayed":
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    return 0.0


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor,
             r: torch.Tensor, beta: float, adaptive: bool = True) -> torch.Tensor:
    """[B] NFT losses of one batch; ``t`` is [B] in (0, 1), ``r`` [B] in [0, 1]."""
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    dims = tuple(range(1, x0.ndim))

    def x0_error(u: torch.Tensor) -> torch.Tensor:
        err = (x_t - t * u) - x0
        weight = err.detach().abs().mean(dim=dims).clamp(min=1e-5) if adaptive else torch.ones(len(x0))
        return (err**2).mean(dim=dims) / weight.to(err.device)

    positive = beta * v + (1 - beta) * v_old
    negative = (1 + beta) * v_old - beta * v
    return (r * x0_error(positive) + (1 - r) * x0_error(negative)) / beta


@dataclass
class NFTSettings:
    """algorithm.nft: what only DiffusionNFT reads. Its old policy is an EMA of the trained weights."""

    beta: float = setting(1.0, gt=0, le=10, help="how far the implicit positive and negative policies sit from the "
                          "old one")
    ema_decay: float = setting(0.9, ge=0, lt=1, help="the old policy's EMA decay after its warm-up, (1 + n) / (10 + n)")
    t_min: float = setting(0.02, ge=0, lt=0.5, help="re-noising times are drawn uniformly from [t_min, 1 - t_min]")
    adaptive_weighting: bool = setting(True, help="each sample's x0 error divided by its mean absolute value "
                                       "(detached)")
    sample_with: str = setting("ema", choices=("ema", "current"), help="the weights the rollouts sample with")
    old_update: str = setting("ema_step", choices=("ema_step", "epoch_blend"),
                              help="ema_step: the old policy is an EMA stepped every optimizer step (lags ~9 "
                                   "steps); epoch_blend: the authors' blend once per update at blend_decay")
    blend_decay: str = setting("linear", choices=("none", "linear", "delayed"),
                               help="epoch_blend's decay by optimizer step: none 0 (their type 0); linear "
                                    "min(0.001 s, 0.5) (type 1, their default); delayed 0 before 75, then "
                                    "min(0.0075 (s - 75), 0.999) (type 2, OCR)")
    timesteps: str = setting("one", choices=("one", "schedule"),
                             help="one: a uniform t per sample and update; schedule: the authors' choice, "
                                  "timestep_fraction of the rollout's own timesteps per sample, fresh noise each")
    timestep_fraction: float = setting(0.99, gt=0, le=1, help="schedule: the share of the rollout's timesteps "
                                       "trained per sample (authors: int(10 x 0.99) = 9 of 10)")
    export: str = setting("trained", choices=("trained", "ema"), help="the weights a user gets: evaluations, the "
                          "best-gold choice and final/ use them (the model card says which)")


class NFT:
    settings = NFTSettings

    def __init__(self, cfg, max_grad_norm: float):
        self.cfg, self.max_grad_norm = cfg, max_grad_norm
        self.grad_sync = None  # set by a multi-process trainer: averages gradients over ranks before each step
        self.kl_scale = 1.0  # the guard tightens the KL anchor (algorithm.kl_coef, velocity space) after a rollback
        self.old = WeightEMA()  # the old policy: an EMA of the trained weights
        self.optimizer_steps = 0
        self.rollout_means = False
        self.per_reward = False
        self.export_weights = cfg.nft.export

    # ------------------------------------------------------------------ the old policy (EMA)
    def ema_decay(self) -> float:
        """ema_step: warm-up as diffusers' EMAModel, (1 + n) / (10 + n), at most nft.ema_decay; epoch_blend:
        the authors' decay at this many optimizer steps."""
        if self.cfg.nft.old_update == "epoch_blend":
            return blend_decay(self.optimizer_steps, self.cfg.nft.blend_decay)
        n = self.old.updates
        return min(self.cfg.nft.ema_decay, (1 + n) / (10 + n))

    def old_policy(self, policy):
        """The policy with the EMA weights in place of the trained ones (restored on exit)."""
        return self.old.swapped_in(policy)

    def rollout_context(self, policy):
        """Rollouts come from the old policy (DiffusionNFT samples with it), unless nft.sample_with is current."""
        return self.old_policy(policy) if self.cfg.nft.sample_with == "ema" else nullcontext()

    @contextmanager
    def export_context(self, policy, state: dict | None = None):
        if self.export_weights != "ema":
            yield policy
            return
        current = self.old.weights
        if state:  # a checkpoint's EMA, swapped in for the moment
            self.old.weights = [t.float() for t in state["ema"]]
        try:
            with self.old_policy(policy):
                yield policy
        finally:
            self.old.weights = current

    def state_dict(self) -> dict:
        return {**self.old.state_dict(), "kl_scale": self.kl_scale, "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        self.kl_scale = float(state.get("kl_scale", 1.0))
        self.old.load_state_dict(state)
        self.optimizer_steps = int(state.get("optimizer_steps", 0))

    # ------------------------------------------------------------------ the loop's calls
    def advantages(self, rewards, group_ids, uncertainty=None, per_reward=None):
        adv, zero_std_frac = group_advantages(rewards, group_ids, self.cfg.std_scope, self.cfg.adv_clip)
        return adv, {"zero_std_frac": zero_std_frac}

    def update(self, policy, rollout, advantages, optimizer, lr_scheduler, generator) -> dict:
        cfg, nft = self.cfg, self.cfg.nft
        self.old.ensure(policy)
        params = policy.trainable_parameters()
        x0 = rollout.latents[:, -1]
        r = (advantages.float().cpu() / (2 * cfg.adv_clip) + 0.5).clamp(0, 1)
        stats: dict[str, list[float]] = {"loss": [], "kl_ref": [], "grad_norm": [], "nft_r_mean": []}
        T = rollout.num_steps
        per_sample = max(1, int(T * nft.timestep_fraction)) if nft.timesteps == "schedule" else 1
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(len(rollout), generator=generator)
            for idx in chunks(order, cfg.micro_batch):
                n = len(idx)
                if nft.timesteps == "schedule":  # each sample's own random order of the rollout's timesteps
                    picks = torch.stack([torch.randperm(T, generator=generator)[:per_sample] for _ in range(n)])
                    times = (rollout.timesteps[picks] / 1000).float()  # [n, k]
                else:
                    times = (nft.t_min + (1 - 2 * nft.t_min) * torch.rand(n, generator=generator))[:, None]
                total, kl_total = 0.0, 0.0
                for j in range(times.shape[1]):
                    t = times[:, j]
                    eps = torch.randn((n, *x0.shape[1:]), generator=generator)
                    s = t.view(-1, *([1] * (x0.ndim - 1)))
                    x_t = ((1 - s) * x0[idx] + s * eps).to(policy.device)
                    cond_idx = rollout.prompt_index[idx]
                    # the old policy first: its weights are swapped in place, which must not touch a graph in flight
                    with torch.no_grad(), self.old_policy(policy):
                        v_old = policy.predict_velocity(x_t, t, rollout.cond, cond_idx).float()
                    v = policy.predict_velocity(x_t, t, rollout.cond, cond_idx).float()
                    losses = nft_loss(v, v_old, x_t.float(), t.to(v.device), x0[idx].to(v.device).float(),
                                      r[idx].to(v.device), nft.beta, nft.adaptive_weighting)
                    loss = losses.mean()
                    kl = torch.zeros((), device=v.device)
                    kl_coef = cfg.kl_coef * self.kl_scale
                    if kl_coef > 0:  # in velocity space: there is no transition variance to divide by
                        with torch.no_grad(), policy.reference():
                            v_ref = policy.predict_velocity(x_t, t, rollout.cond, cond_idx).float()
                        kl = ((v - v_ref) ** 2).mean()
                        loss = loss + kl_coef * kl
                    (loss / times.shape[1]).backward()  # the authors' loss / num_train_timesteps
                    total += loss.item() / times.shape[1]
                    kl_total += kl.item() / times.shape[1]
                grad_norm = optimizer_step(params, optimizer, lr_scheduler, self.max_grad_norm, self.grad_sync)
                self.optimizer_steps += 1
                if nft.old_update == "ema_step":
                    self.old.step(policy, self.ema_decay())
                stats["loss"].append(total)
                stats["kl_ref"].append(kl_total)
                stats["grad_norm"].append(grad_norm)
                stats["nft_r_mean"].append(float(r[idx].mean()))
        if nft.old_update == "epoch_blend":  # once per update, after it (the authors' per-epoch blend)
            self.old.step(policy, self.ema_decay())
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["ema_decay"] = self.ema_decay()
        return out

