"""AWM's and DGPO's losses against hand computations on constructed inputs (the contract suite covers their runs,
their exact resume, their state in the checkpoint and the first update's ratio of exactly 1)."""

import math

import pytest
import torch

from rlkit.algorithms.awm import awm_log_prob, awm_policy_loss, stratified_steps
from rlkit.algorithms.dgpo import dsm_clip_mask, dsm_error, group_weights


def test_awm_log_prob_is_minus_the_flow_matching_error_weighted():
    v = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    t = torch.tensor([0.5, 0.25])
    mse = [(1 + 4) / 2, (1 + 9) / 2]
    assert awm_log_prob(v, target, t).tolist() == [-mse[0], -mse[1]]
    assert awm_log_prob(v, target, t, "t").tolist() == [-mse[0] * 0.5, -mse[1] * 0.25]
    p, e = 0.25, 1e-10
    want = [-((m + e) ** p - e**p) * tt / p for m, tt in zip(mse, (0.5, 0.25))]
    assert awm_log_prob(v, target, t, "ghuber", p).tolist() == pytest.approx(want, rel=1e-12)


def test_awm_policy_loss_is_the_pessimistic_clip():
    lp_old = torch.zeros(3, dtype=torch.float64)
    lp = torch.tensor([math.log(2.0), math.log(0.5), math.log(1.1)], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    loss, ratio, clipped = awm_policy_loss(lp, lp_old, adv, clip_range=0.2)
    r = [2.0, 0.5, 1.1]
    clip = [1.2, 0.8, 1.1]
    want = sum(max(-a * x, -a * c) for a, x, c in zip(adv.tolist(), r, clip)) / 3
    assert float(loss) == pytest.approx(want) and ratio.tolist() == pytest.approx(r)
    assert clipped.tolist() == [True, True, False]


def test_awm_timesteps_are_stratified_and_distinct():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        steps = stratified_steps(1, 9, 4, g).tolist()  # blocks [1, 2], [3, 4], [5, 6], [7, 9]
        assert [lo <= s <= hi for s, (lo, hi) in zip(steps, ((1, 2), (3, 4), (5, 6), (7, 9)))] == [True] * 4
    assert stratified_steps(1, 2, 4, g).tolist() in ([1, 2],)  # never more steps than the range holds


def test_dgpo_group_weight_is_the_sigmoid_of_the_groups_advantage_weighted_dsm_gap():
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0])
    dsm = torch.tensor([0.2, 0.4, 0.3, 0.1, 0.9])
    ref = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.3])
    groups = torch.tensor([0, 0, 1, 1, 1])
    w = group_weights(adv, dsm, ref, groups, beta_dpo=10.0)
    s0 = (1.0 * 10 * (0.2 - 0.3) + -1.0 * 10 * (0.4 - 0.3)) / 2
    s1 = (0.5 * 10 * (0.3 - 0.3) + -0.5 * 10 * (0.1 - 0.3) + 0.0) / 3
    sig = [1 / (1 + math.exp(-s)) for s in (s0, s1)]
    assert w.tolist() == pytest.approx([sig[0], sig[0], sig[1], sig[1], sig[1]], rel=1e-6)


def test_dgpo_dsm_and_its_clip():
    v, target = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]])
    assert dsm_error(v, target).tolist() == [1.0]
    dsm = torch.tensor([0.9, 1.1, 0.9, 1.1])
    old = torch.ones(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    ratio, clipped = dsm_clip_mask(dsm, old, adv, clip_range=0.05)
    assert ratio.tolist() == pytest.approx([math.exp(0.1), math.exp(-0.1), math.exp(0.1), math.exp(-0.1)])
    # A > 0 and the DSM already fell (ratio above 1 + c): no more pull; A < 0 and it already rose: no more push
    assert clipped.tolist() == [True, False, False, True]
