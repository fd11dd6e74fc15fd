"""Reward protocol, the weighted sum and its checks, entry-point discovery."""

import pytest
import torch

from rlkit import plugins
from rlkit.core.errors import RewardError, UserError
from rlkit.rewards import RewardInput, RewardOutput
from rlkit.rewards.combine import RewardSet
from rlkit.rewards.programmatic import SourceConsistency, TargetColor


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(n, 3, 8, 8, generator=g)
    return RewardInput(edited=src.clone(), source=src, instructions=["x"] * n, group_ids=torch.zeros(n).long())


def test_programmatic_rewards_score_what_they_say():
    b = _batch()
    assert torch.allclose(SourceConsistency()(b).scores, torch.ones(4))
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    blue = torch.zeros(1, 3, 8, 8)
    blue[:, 2] = 1
    tc = TargetColor(color=[1, 0, 0])
    hit = tc(RewardInput(red, red, ["x"], torch.zeros(1).long())).scores
    miss = tc(RewardInput(blue, red, ["x"], torch.zeros(1).long())).scores
    assert hit.item() == 1.0 and miss.item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        TargetColor(color=[2, 0, 0])


def test_weighted_sum_keeps_each_rewards_scores():
    rs = RewardSet([("a", 1.0, SourceConsistency()), ("b", 0.5, TargetColor(color=[0, 0, 0]))])
    out = rs(_batch())
    assert set(out.per_reward) == {"a", "b"}
    assert torch.allclose(out.total, out.per_reward["a"] + 0.5 * out.per_reward["b"])


class _Bad:
    def __init__(self, kind):
        self.kind = kind

    def __call__(self, batch):
        n = len(batch)
        if self.kind == "raise":
            raise RuntimeError("judge crashed")
        if self.kind == "nan":
            return RewardOutput(scores=torch.tensor([0.1] * (n - 1) + [float("nan")]))
        if self.kind == "shape":
            return RewardOutput(scores=torch.zeros(n, 1))
        if self.kind == "integer":
            return RewardOutput(scores=torch.ones(n, dtype=torch.int64))
        if self.kind == "huge":  # finite in float32, and no reward's scale
            return RewardOutput(scores=torch.full((n,), 3e38))
        return [0.0] * n


class _Stated(_Bad):
    score_range = (0.0, 1.0)

    def __call__(self, batch):
        return RewardOutput(scores=torch.full((len(batch),), 25.0))


@pytest.mark.parametrize("kind,needle", [("raise", "judge crashed"), ("nan", "non-finite"), ("shape", "shape"),
                                         ("type", "expected rlkit.rewards.RewardOutput"),
                                         ("integer", "torch.int64, expected floating-point"),
                                         ("huge", "far outside its range [-1e+06, 1e+06] (e.g. 3e+38)")])
def test_bad_reward_output_names_the_reward(kind, needle):
    rs = RewardSet([("good", 1.0, SourceConsistency()), ("flaky_judge", 1.0, _Bad(kind))])
    with pytest.raises(RewardError) as err:
        rs(_batch())
    assert "flaky_judge" in str(err.value) and needle in str(err.value)


def test_scores_far_outside_a_stated_range_are_refused_and_close_ones_pass():
    with pytest.raises(RewardError, match=r"far outside its range \[0, 1\] \(e.g. 25\)"):
        RewardSet([("judge", 1.0, _Stated("x"))])(_batch())
    near = _Stated("x")
    near.score_range = (0.0, 0.1)  # 25 is more than ten widths beyond: refused; with a range of 0-5 it passes
    with pytest.raises(RewardError):
        RewardSet([("judge", 1.0, near)])(_batch())
    near.score_range = (0.0, 5.0)
    assert RewardSet([("judge", 1.0, near)])(_batch()).total[0] == 25.0


def test_builtin_rewards_register_through_the_entry_point_group():
    found = plugins.list_rewards()
    assert found["target_color"].target == "rlkit.rewards.programmatic:TargetColor"
    assert found["source_consistency"].distribution == "rlkit"
    assert isinstance(plugins.build_reward("target_color", {"color": [0, 1, 0]}), TargetColor)


def test_unknown_reward_suggests_the_closest(monkeypatch):
    with pytest.raises(UserError, match="did you mean 'target_color'"):
        plugins.load_reward_class("target_colour")


def test_two_plugins_with_one_name_is_an_error_naming_both(monkeypatch):
    from importlib.metadata import EntryPoint

    eps = [(EntryPoint("judge", "pkg_a:J", plugins.GROUP), "pkg-a", "1.0"),
           (EntryPoint("judge", "pkg_b:J", plugins.GROUP), "pkg-b", "2.0")]
    monkeypatch.setattr(plugins, "_entry_points", lambda group=plugins.GROUP: eps)
    with pytest.raises(UserError) as err:
        plugins.list_rewards()
    assert "pkg-a" in str(err.value) and "pkg-b" in str(err.value)


def test_bad_kwargs_are_a_user_error():
    with pytest.raises(UserError, match="target_color"):
        plugins.build_reward("target_color", {"colour": [1, 0, 0]})
