"""Step kernels: noise 0 is the ODE, log-probs are Gaussian densities, SDEs keep the flow's marginals."""

import math

import pytest
import torch

from rlkit.policies.sde import (
    KERNELS,
    cps_step,
    dance_sde_step,
    flow_sde_step,
    gaussian_logprob,
    ode_step,
    sde_window,
)

SDE_KERNELS = [flow_sde_step, dance_sde_step, cps_step]


@pytest.mark.parametrize("kernel", SDE_KERNELS)
def test_noise_zero_is_the_euler_ode(kernel):
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 16, 8, generator=g), torch.randn(4, 16, 8, generator=g)
    sde = kernel(x, v, 0.7, 0.55, 0.0, sigma_max=0.9, noise=torch.randn(4, 16, 8, generator=g))
    ode = ode_step(x, v, 0.7, 0.55)
    torch.testing.assert_close(sde.prev_sample, ode.prev_sample, rtol=0, atol=1e-6)
    assert torch.all(sde.log_prob == 0) and torch.all(sde.std == 0)


@pytest.mark.parametrize("kernel", SDE_KERNELS)
def test_recorded_sample_logprob_is_recomputed_exactly(kernel):
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 10, 4, generator=g), torch.randn(3, 10, 4, generator=g)
    rollout = kernel(x, v, 0.8, 0.6, 0.7, sigma_max=0.9, noise=torch.randn(3, 10, 4, generator=g))
    again = kernel(x, v, 0.8, 0.6, 0.7, sigma_max=0.9, prev_sample=rollout.prev_sample)
    assert torch.equal(again.log_prob, rollout.log_prob)
    # and it is the Gaussian density of the sample, averaged over dims
    ref = torch.distributions.Normal(rollout.mean, rollout.std.view(-1, 1, 1)).log_prob(rollout.prev_sample)
    torch.testing.assert_close(rollout.log_prob, ref.mean(dim=(1, 2)))


def test_flow_sde_std_matches_the_formula_and_uses_sigma_max_at_one():
    x = v = torch.zeros(2, 4)
    out = flow_sde_step(x, v, 0.5, 0.4, 0.7, sigma_max=0.9)
    assert out.std[0].item() == pytest.approx(0.7 * math.sqrt(0.5 / 0.5) * math.sqrt(0.1), rel=1e-6)
    at_one = flow_sde_step(x, v, 1.0, 0.9, 0.7, sigma_max=0.9)
    assert torch.isfinite(at_one.std).all()
    assert at_one.std[0].item() == pytest.approx(0.7 * math.sqrt(1.0 / 0.1) * math.sqrt(0.1), rel=1e-6)


@pytest.mark.parametrize("kernel,level", [(flow_sde_step, 0.7), (dance_sde_step, 0.3), (cps_step, 0.7)])
def test_sde_keeps_the_marginals_of_the_flow(kernel, level):
    """Point-mass data at 0.5: the exact velocity is (x - x0)/s and x_s ~ N((1 - s) x0, s^2)."""
    torch.manual_seed(0)
    n, x0, s = 200_000, 0.5, 0.5
    x = (1 - s) * x0 + s * torch.randn(n, 1)
    for _ in range(20):  # fine steps: Euler-Maruyama error is O(dt)
        out = kernel(x, (x - x0) / s, s, s - 0.005, level, sigma_max=0.9, noise=torch.randn(n, 1))
        x, s = out.prev_sample, s - 0.005
    assert x.mean().item() == pytest.approx((1 - s) * x0, abs=0.01)
    assert x.std().item() == pytest.approx(s, abs=0.01)


def test_gaussian_logprob_zero_std_is_zero():
    lp = gaussian_logprob(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.0, 1.0]).view(2, 1))
    assert lp[0] == 0 and lp[1] == pytest.approx(-0.5 - 0.5 * math.log(2 * math.pi))


def test_sde_window_slides_and_covers():
    assert sde_window(6, None, 3) == [True] * 6
    assert sde_window(6, 2, 0) == [True, True, False, False, False, False]
    assert sde_window(6, 2, 4) == [False, False, False, False, True, True]
    assert sde_window(6, 2, 5) == [True, True, False, False, False, False]  # wraps around
    assert set(KERNELS) >= {"flow_sde", "dance_sde", "cps", "ode"}


def test_a_random_sde_window_moves_between_rollouts_and_trains_only_its_steps(tmp_path):
    """Flow-GRPO-Fast: SDE noise on 2 steps of 8 at a position drawn for each rollout, the ODE elsewhere."""
    from helpers import make_policy, prompt_batch

    policy, _ = make_policy("sampler.num_steps=8", "sampler.sde_window=2", "sampler.sde_window_placement=random")
    g = torch.Generator().manual_seed(0)
    masks = [policy.sample(prompt_batch(1), 2, g).sde_mask for _ in range(12)]
    starts = {int(torch.nonzero(m)[0]) for m in masks}
    assert all(int(m.sum()) == 2 and bool(m[int(torch.nonzero(m)[0]) + 1]) for m in masks)  # 2 adjacent steps
    assert len(starts) >= 4 and starts <= set(range(7))  # drawn, not fixed, within the schedule
    rollout = policy.sample(prompt_batch(1), 2, torch.Generator().manual_seed(5))
    assert torch.all(rollout.log_probs[:, ~rollout.sde_mask] == 0)  # ODE steps: no log-prob, never trained


def test_an_evaluation_may_sample_with_its_own_noise_level():
    """eval.noise_level: a GRPO policy (SDE at 0.7) evaluated with the ODE samples exactly what the same weights
    give with sampler.noise_level 0, and its training rollouts are unchanged."""
    from helpers import make_policy, prompt_batch

    sde, _ = make_policy("sampler.noise_level=0.7")
    ode, _ = make_policy("sampler.noise_level=0", "algorithm.name=dpo")
    as_ode = sde.sample(prompt_batch(1), 2, torch.Generator().manual_seed(3), noise_level=0.0)
    reference = ode.sample(prompt_batch(1), 2, torch.Generator().manual_seed(3))
    assert not as_ode.sde_mask.any() and torch.equal(as_ode.latents, reference.latents)
    trained = sde.sample(prompt_batch(1), 2, torch.Generator().manual_seed(3))
    assert trained.sde_mask.all() and not torch.equal(trained.latents, reference.latents)
