"""Advantages, GRPO and online DPO updates on the tiny policy."""

import math

import pytest
import torch
from helpers import TINY_RECIPE, make_policy, prompt_batch

from rlkit.algorithms import GRPO, OnlineDPO, best_worst_pairs, group_advantages
from rlkit.config import load_recipe
from rlkit.core.errors import RewardError, UserError


def _optim(policy, lr):
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 5.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    adv, zero = group_advantages(r, g, "group", clip=5.0, eps=0.0)
    assert adv.tolist() == [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert zero == pytest.approx(2 / 3)
    adv_global, _ = group_advantages(r, g, "global", clip=5.0, eps=0.0)
    assert adv_global[1].item() == pytest.approx(1.0 / r.std(unbiased=False).item())
    clipped, _ = group_advantages(torch.tensor([0.0, 0.0, 0.0, 100.0]), torch.zeros(4, dtype=torch.long),
                                  "group", clip=1.5)
    assert clipped.max().item() == 1.5


def test_best_worst_pairs_skip_flat_groups():
    r = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.2, 0.2])
    w, lo = best_worst_pairs(r, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert w.tolist() == [1] and lo.tolist() == [0]


def test_grpo_first_update_has_ratio_one_and_no_clipping():
    policy, cfg = make_policy("algorithm.micro_batch=2", "algorithm.inner_epochs=2")
    rollout = policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    opt, sched = _optim(policy, lr=0.0)  # weights do not move, so every ratio must stay exactly 1
    algo = GRPO(cfg.algorithm, 1.0)
    adv, _ = algo.advantages(torch.arange(6.0), rollout.group_ids)
    m = algo.update(policy, rollout, adv, opt, sched, torch.Generator().manual_seed(0))
    assert m["ratio_max_dev"] < 1e-6 and m["clipfrac"] == 0.0 and m["approx_kl"] < 1e-12


def test_grpo_changes_every_lora_parameter():
    """LoRA B starts at zero, so A gets no gradient on the first step: B moves after one step, A after two."""
    policy, cfg = make_policy("algorithm.kl_coef=0.0")
    algo = GRPO(cfg.algorithm, 1.0)
    opt, sched = _optim(policy, lr=1e-3)
    before = {n: p.detach().clone() for n, p in policy.transformer.named_parameters() if "lora_" in n}
    for i in range(2):
        rollout = policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(i))
        adv, _ = algo.advantages(torch.randn(6, generator=torch.Generator().manual_seed(i)), rollout.group_ids)
        algo.update(policy, rollout, adv, opt, sched, torch.Generator().manual_seed(i))
        if i == 0:
            for n, p in policy.transformer.named_parameters():
                if "lora_B" in n:
                    assert not torch.equal(p, before[n]), f"{n} did not change after one step"
    unchanged = [n for n, p in policy.transformer.named_parameters() if "lora_" in n and torch.equal(p, before[n])]
    assert not unchanged, unchanged
    frozen = [n for n, p in policy.transformer.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not frozen


def test_grpo_raises_the_likelihood_of_good_samples():
    policy, cfg = make_policy("algorithm.kl_coef=0.0", "algorithm.grpo.clip_range_low=0.2",
                              "algorithm.grpo.clip_range_high=0.2", "algorithm.grpo.timestep_fraction=1.0")
    rollout = policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    algo = GRPO(cfg.algorithm, 10.0)
    adv, _ = algo.advantages(torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.0]), rollout.group_ids)
    opt, sched = _optim(policy, lr=3e-3)
    for i in range(5):
        algo.update(policy, rollout, adv, opt, sched, torch.Generator().manual_seed(i))
    with torch.no_grad():
        new = torch.stack([policy.step_logprob(rollout, torch.arange(6), t).log_prob
                           for t in range(rollout.num_steps)], dim=1)
    gain = (new - rollout.log_probs).sum(dim=1)
    assert (adv * gain).sum() > 0  # likelihood moved towards positive-advantage samples
    assert gain[adv > 0].mean() > gain[adv < 0].mean()


def test_online_dpo_lowers_its_loss_on_the_pairs():
    policy, cfg = make_policy("algorithm.name=dpo", "algorithm.dpo.beta=500.0")
    rollout = policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    algo = OnlineDPO(cfg.algorithm, 10.0)
    rewards, _ = algo.advantages(torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.0]), rollout.group_ids)
    opt, sched = _optim(policy, lr=3e-3)
    losses = [algo.update(policy, rollout, rewards, opt, sched, torch.Generator().manual_seed(0))["loss"]
              for _ in range(8)]  # same seed each time: same timesteps and noise, so losses compare
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start: -log(0.5)
    assert losses[-1] < losses[0] - 0.05


def test_uncertainty_weights_down_weight_unsure_samples():
    from rlkit.algorithms.advantages import uncertainty_weights

    w = uncertainty_weights(torch.tensor([0.1, 1.0, 1.0, 3.0]), scale=1.0)
    assert w.tolist() == pytest.approx([1 / 1.01, 0.5, 0.5, 0.1])
    w = uncertainty_weights(torch.tensor([0.5, 2.0, 2.0, 8.0]))  # scale = median = 2
    assert w[1] == pytest.approx(0.5) and w[0] > w[1] > w[3]
    assert uncertainty_weights(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    w = uncertainty_weights(torch.tensor([0.0, 0.0, 0.0, 2.0]))  # median 0: the mean (0.5) is the scale
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0, 1 / 17])


def test_grpo_advantages_with_uncertainty_weighting():
    cfg = load_recipe(str(TINY_RECIPE), ["algorithm.grpo.uncertainty_weighting=true",
                                         "algorithm.grpo.uncertainty_scale=1.0"])
    grpo = GRPO(cfg.algorithm, 1.0)
    rewards, ids = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1])
    plain, _ = group_advantages(rewards, ids)
    adv, info = grpo.advantages(rewards, ids, torch.tensor([0.0, 0.0, 3.0, 3.0]))
    assert adv[:2].tolist() == pytest.approx(plain[:2].tolist())  # certain group unchanged
    assert adv[2:].tolist() == pytest.approx((plain[2:] * 0.1).tolist())  # unsure group: weight 1 / (1 + 9)
    assert info["adv_weight_mean"] == pytest.approx(0.55)
    with pytest.raises(UserError, match="uncertainty"):
        grpo.advantages(rewards, ids, None)


def test_reward_set_combines_uncertainties():
    from rlkit.rewards import RewardInput, RewardOutput
    from rlkit.rewards.combine import RewardSet

    def unsure(u):
        return lambda b: RewardOutput(scores=torch.zeros(len(b)), uncertainty=torch.full((len(b),), u))

    batch = RewardInput(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), ["a", "b"], torch.tensor([0, 0]))
    out = RewardSet([("a", 2.0, unsure(0.3)), ("b", 1.0, unsure(0.4)),
                     ("c", 1.0, lambda b: RewardOutput(scores=torch.ones(len(b))))])(batch)
    assert out.uncertainty.tolist() == pytest.approx([(0.6**2 + 0.4**2) ** 0.5] * 2)
    with pytest.raises(RewardError, match="'bad'.*uncertainty"):
        RewardSet([("bad", 1.0, unsure(float("nan")))])(batch)


@pytest.mark.parametrize("kernel", ["flow_sde", "dance_sde", "cps"])
def test_every_kernel_trains_a_step_with_the_kl_on(kernel, tmp_path):
    """CPS's last step (to sigma 0) has no noise: it is sampled as the ODE and never trained, so the KL, which
    divides by the transition's variance, stays finite."""
    from helpers import tiny_config

    from rlkit.logs import read_rows
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, f"sampler.kernel={kernel}", "sampler.noise_level=0.7", "algorithm.kl_coef=0.1",
                      "train.steps=2", "algorithm.grpo.timestep_fraction=1.0", "optim.lr=0.01")
    run = Trainer(cfg, progress=False).fit()
    rows = read_rows(run / "metrics.jsonl")
    assert len(rows) == 2 and all(math.isfinite(r["kl_ref"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert rows[1]["kl_ref"] > 0  # the reference and the trained policy differ after the first update


def test_per_reward_normalisation_gives_a_small_spread_reward_its_say():
    """Two rewards that disagree: A spreads 10x wider than B. The plain weighted sum ranks by A alone; GDPO's
    per-reward normalisation weighs both equally, so with B's weight the larger their ranking follows B."""
    from rlkit.algorithms.advantages import decoupled_advantages

    group_ids = torch.tensor([0, 0, 0, 0])
    a = torch.tensor([0.0, 10.0, 20.0, 30.0])  # prefers the last sample
    b = torch.tensor([3.0, 2.0, 1.0, 0.0])  # prefers the first, with a tenth of the spread
    plain, _ = group_advantages(a + 2 * b, group_ids)
    adv, flat, parts = decoupled_advantages(torch.stack([a, b], dim=1), [1.0, 2.0], group_ids)
    assert plain.argmax() == 3 and adv.argmax() == 0  # the sum follows A; per-reward follows the heavier B
    z = lambda r: (r - r.mean()) / (r.std(unbiased=False) + 1e-4)  # noqa: E731
    combined = z(a) + 2 * z(b)
    torch.testing.assert_close(adv, (combined - combined.mean()) / (combined.std(unbiased=False) + 1e-4))
    torch.testing.assert_close(parts[1], z(b))
    assert flat == 0.0


def test_per_reward_normalisation_counts_groups_where_every_reward_is_flat():
    from rlkit.algorithms.advantages import decoupled_advantages

    group_ids = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([[1.0, 5.0], [1.0, 5.0], [1.0, 2.0], [1.0, 3.0]])  # group 0 flat in both
    adv, flat, parts = decoupled_advantages(scores, [1.0, 1.0], group_ids)
    assert flat == 0.5 and torch.all(adv[:2] == adv[0]) and adv[3] > adv[2]
    assert torch.all(parts[0] == 0)  # the first reward is flat everywhere: no say at all


def test_a_run_with_per_reward_normalisation_logs_each_rewards_advantage(tmp_path):
    from helpers import tiny_config

    from rlkit.logs import read_rows
    from rlkit.trainer import Trainer

    rewards = "rewards=[{name: target_color, kwargs: {color: [1.0, 0.0, 0.0]}}, {name: colourfulness, weight: 0.1}]"
    run = Trainer(tiny_config(tmp_path, rewards, "algorithm.grpo.reward_norm=per_reward"), progress=False).fit()
    rows = read_rows(run / "metrics.jsonl")
    assert all(r["adv/target_color"] > 0 and r["adv/colourfulness"] > 0 for r in rows)


def test_grpo_guard_ratio_on_constructed_transitions():
    """For x drawn from the old transition N(mu_old, s^2), the regulated log-ratio is mean(eps (mu - mu_old)):
    zero when nothing moved, unbiased over the noise, and the same at every noise scale s, where the plain
    log-ratio is biased below 0 by |mu - mu_old|^2 / (2 s^2)."""
    from rlkit.algorithms.grpo import regulated_log_ratio

    g = torch.Generator().manual_seed(0)
    mu_old = torch.randn(4096, 16, generator=g)
    delta = 0.01 * torch.randn(4096, 16, generator=g)
    eps = torch.randn(4096, 16, generator=g)

    def logp(x, mean, s):
        return torch.distributions.Normal(mean, s[:, None]).log_prob(x).mean(dim=1)

    for scale in (1.0, 0.1, 0.01):
        s = torch.full((4096,), scale)
        x = mu_old + s[:, None] * eps
        plain = logp(x, mu_old + delta, s) - logp(x, mu_old, s)
        regulated = regulated_log_ratio(plain, mu_old + delta, mu_old, s)
        torch.testing.assert_close(regulated, (eps * delta).mean(dim=1), rtol=1e-3, atol=1e-5)
        assert plain.mean() < -0.4 * (delta**2).mean() / scale**2  # the bias the guard removes
        assert abs(regulated.mean()) < 3 * regulated.std() / 4096**0.5  # unbiased
        unmoved = regulated_log_ratio(logp(x, mu_old, s) - logp(x, mu_old, s), mu_old, mu_old, s)
        assert torch.equal(unmoved, torch.zeros(4096))


def test_grpo_guard_trains_with_ratio_exactly_one_before_the_first_step(tmp_path):
    from helpers import tiny_config

    from rlkit.algorithms.grpo import regulated_log_ratio
    from rlkit.logs import read_rows
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, "algorithm.grpo.ratio_norm=true", "algorithm.grpo.timestep_fraction=1.0")
    trainer = Trainer(cfg, progress=False)
    batch = trainer.prompts.next_batch(2)
    rollout = trainer.policy.sample(batch, 3, torch.Generator().manual_seed(0), keep_means=True)
    assert rollout.means.shape == rollout.latents[:, 1:].shape
    idx, step = torch.arange(len(rollout)), int(torch.nonzero(rollout.sde_mask)[0])
    out = trainer.policy.step_logprob(rollout, idx, step)
    log_ratio = regulated_log_ratio(out.log_prob - rollout.log_probs[idx, step], out.mean, rollout.means[idx, step],
                                    out.std)
    assert torch.equal(torch.exp(log_ratio), torch.ones(len(rollout)))  # the same weights: exactly 1
    run = trainer.fit()
    rows = read_rows(run / "metrics.jsonl")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["ratio_mean"]) for r in rows)
