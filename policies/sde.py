"""Step kernels for flow-matching policies, each with the log-probability of its own transition.

Convention (rectified flow): ``x_s = (1 - s) x0 + s eps``, sigma ``s`` goes from 1 (noise) to 0 (data), the
model predicts the velocity ``v ~ eps - x0``, and one step goes from ``s`` to ``s_next < s`` with
``dt = s_next - s < 0``.

Every kernel is one function used twice: during the rollout it draws ``prev_sample`` from ``noise``; in the
training pass it is handed the recorded ``prev_sample`` and returns that sample's log-probability under the
current velocity. Sharing one code path is what makes the importance ratio exactly 1 on the first update.
All math runs in fp32 whatever the model's dtype: practitioners report that bf16 step math biases the ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["KERNELS", "StepOutput", "cps_step", "dance_sde_step", "flow_sde_step", "gaussian_logprob", "ode_step"]


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x at s_next, fp32
    log_prob: torch.Tensor  # [B], mean over latent dims; 0 where the step is deterministic
    mean: torch.Tensor  # mean of the transition (the KL to the reference is taken on it)
    std: torch.Tensor  # [B] std of the transition noise (std_t * sqrt(-dt)); 0 means deterministic


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or [B] sigma to [B, 1, ..., 1] in fp32."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_logprob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(sample; mean, std^2), averaged over every dim but the batch. ``std`` is [B, 1, ...]."""
    safe = torch.where(std > 0, std, torch.ones_like(std))
    lp = -((sample - mean) ** 2) / (2 * safe**2) - torch.log(safe) - 0.5 * math.log(2 * math.pi)
    lp = lp.mean(dim=tuple(range(1, sample.ndim)))
    return torch.where(std.flatten() > 0, lp, torch.zeros_like(lp))


def _finish(mean, std, noise, prev_sample) -> StepOutput:
    if prev_sample is None:
        if noise is None:
            noise = torch.zeros_like(mean)
        prev_sample = mean + std * noise.to(mean.device, torch.float32)
    else:
        prev_sample = prev_sample.float()
    return StepOutput(prev_sample, gaussian_logprob(prev_sample, mean, std), mean, std.flatten())


def flow_sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    noise_level: float,
    *,
    sigma_max: float,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> StepOutput:
    """Flow-GRPO's SDE: same marginals as the ODE, ``std_t = a sqrt(s / (1 - s))``.

    ``sigma_max`` replaces ``s`` in the denominator where ``s == 1`` (the schedule's second sigma, as in
    Flow-GRPO), since ``1 - s`` is 0 there.
    """
    x, v = x.float(), v.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = s_next - s
    denom = 1 - torch.where(s >= 1, torch.full_like(s, sigma_max), s)
    std_t = noise_level * torch.sqrt(s / denom)
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    return _finish(mean, std_t * torch.sqrt(-dt), noise, prev_sample)


def dance_sde_step(
    x, v, sigma, sigma_next, noise_level: float, *, sigma_max: float = 1.0, noise=None, prev_sample=None
) -> StepOutput:
    """DanceGRPO's SDE: ``std = eta sqrt(|dt|)``, drift corrected with the score of ``x0_hat``."""
    x, v = x.float(), v.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = s_next - s
    x0_hat = x - s * v
    score = -(x - x0_hat * (1 - s)) / s**2
    mean = x + v * dt - 0.5 * noise_level**2 * score * dt
    std = noise_level * torch.sqrt(-dt)
    return _finish(mean, std, noise, prev_sample)


def cps_step(
    x, v, sigma, sigma_next, noise_level: float, *, sigma_max: float = 1.0, noise=None, prev_sample=None
) -> StepOutput:
    """Coefficient-preserving sampling: re-mix predicted data and noise so the noise scale stays exact."""
    x, v = x.float(), v.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    std = s_next * math.sin(noise_level * math.pi / 2)
    x0_hat = x - s * v
    x1_hat = x + (1 - s) * v
    mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt(torch.clamp(s_next**2 - std**2, min=0))
    return _finish(mean, std, noise, prev_sample)


def ode_step(x, v, sigma, sigma_next, noise_level: float = 0.0, *, sigma_max: float = 1.0, noise=None,
             prev_sample=None) -> StepOutput:
    """Deterministic Euler step (the sampler of the base pipeline); its log-prob is 0 and it is never trained."""
    x, v = x.float(), v.float()
    dt = _per_sample(sigma_next, x) - _per_sample(sigma, x)
    mean = x + v * dt
    return StepOutput(mean, torch.zeros(x.shape[0], device=x.device), mean, torch.zeros(x.shape[0], device=x.device))


Kernel = Callable[..., StepOutput]
KERNELS: dict[str, Kernel] = {
    "flow_sde": flow_sde_step,
    "dance_sde": dance_sde_step,
    "cps": cps_step,
    "ode": ode_step,
}


def window_starts(num_steps: int, window: int, where: str = "all") -> int:
    """How many positions the window may start at: anywhere (``all``), within the schedule's first half
    (``first_half``), or never covering the last two steps (``not_last_two``); at least one."""
    last = {"all": num_steps - window, "first_half": num_steps // 2 - window,
            "not_last_two": num_steps - 2 - window}[where]
    return max(0, last) + 1


def sde_window(num_steps: int, window: int | None, start: int, where: str = "all") -> list[bool]:
    """Which steps use the SDE (MixGRPO's ODE window): all when ``window`` is None, else ``window`` steps
    from ``start`` (taken modulo the allowed starts); the others run the deterministic ODE and are not trained."""
    if window is None or window >= num_steps:
        return [True] * num_steps
    start = start % window_starts(num_steps, window, where)
    return [start <= i < start + window for i in range(num_steps)]
