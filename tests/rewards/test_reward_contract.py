"""The reward contract, run over every reward rlkit registers (the `rlkit.rewards` entry points it ships): one
finite score per edit, uncertainty, details and rationales well formed, the same answer through the reward
server, and kwargs checked by `rlkit validate` before anything is built. A new built-in reward is covered by
giving it a case in `cases` (the first test fails until it has one)."""

import json
import random

import pytest
import torch
from helpers import TINY_RECIPE

from rlkit.cli import main
from rlkit.plugins import build_reward, list_rewards
from rlkit.rewards import RewardInput
from rlkit.rewards.remote import RemoteReward

B = 4


@pytest.fixture(scope="module")
def cases(tmp_path_factory, judge_server):
    """Kwargs that build each built-in reward here, without downloads (the served ones against a local server
    this module keeps up)."""
    from helpers import serve_reward
    from judge_server import digit_bias

    from rlkit.rewards.jrm.reward import random_jrm
    from rlkit.rewards.programmatic import SourceConsistency

    folder = tmp_path_factory.mktemp("rewards")
    random_jrm("tiny", 32, "cpu").save(folder / "jrm")
    server, url = serve_reward(SourceConsistency(), "source_consistency")
    yield {
        "source_consistency": {}, "colourfulness": {}, "target_color": {"color": [0.0, 0.0, 1.0]},
        "jrm": {"path": str(folder / "jrm")}, "sandbox_gt": {"score": "follow"},
        "remote": {"url": url, "wire_dtype": "float32"},
        "vlm_judge": {"base_url": judge_server[0], "score_mode": "parse", "max_tokens": 1,
                      "request": {"logit_bias": digit_bias(judge_server[1])}},
    }
    server.stop()


BUILTIN = sorted(n for n, info in list_rewards().items() if info.distribution == "rlkit")


def _batch() -> RewardInput:
    from rlkit.sandbox.world import random_scene

    g = torch.Generator().manual_seed(0)
    return RewardInput(torch.rand(B, 3, 32, 32, generator=g), torch.rand(B, 3, 32, 32, generator=g),
                       ["make the square red", "remove the circle", "turn it blue", "add a star"],
                       torch.arange(B) // 2, [{"target_scene": random_scene(random.Random(i)).to_json()}
                                              for i in range(B)])


@pytest.fixture(scope="module")
def answers(cases):
    """Each reward built once and its answer to one batch."""
    batch = _batch()
    built = {name: build_reward(name, kwargs) for name, kwargs in cases.items()}
    return {name: (reward, reward(batch)) for name, reward in built.items()}


def test_every_builtin_reward_has_a_case(cases):
    assert BUILTIN == sorted(cases)


@pytest.mark.parametrize("name", BUILTIN)
def test_one_finite_score_per_edit(answers, name):
    out = answers[name][1]
    assert isinstance(out.scores, torch.Tensor) and tuple(out.scores.shape) == (B,)
    assert out.scores.is_floating_point() and torch.isfinite(out.scores).all()
    low, high = getattr(answers[name][0], "score_range", None) or (-1e6, 1e6)  # the range it states holds
    assert ((out.scores >= low) & (out.scores <= high)).all(), (name, out.scores)


@pytest.mark.parametrize("name", BUILTIN)
def test_uncertainty_details_and_rationales_are_well_formed(answers, name):
    out = answers[name][1]
    if out.uncertainty is not None:
        assert tuple(out.uncertainty.shape) == (B,) and torch.isfinite(out.uncertainty).all()
        assert (out.uncertainty >= 0).all()
    for key, value in (out.details or {}).items():
        assert isinstance(value, torch.Tensor) and value.shape[0] == B and torch.isfinite(value).all(), key
    if out.rationales is not None:
        assert len(out.rationales) == B and all(isinstance(r, str) for r in out.rationales)


@pytest.mark.parametrize("name", BUILTIN)
def test_the_reward_server_gives_the_same_answer(answers, served, name):
    """Served and called through `remote`: scores, uncertainty, every detail and the rationales as in process
    (the JRM's uncertainty is also its details/sigma: one tensor under two names, which safetensors refuses
    unless the server copies them)."""
    reward, here = answers[name]
    there = RemoteReward(served(reward, name), wire_dtype="float32")(_batch())
    torch.testing.assert_close(there.scores, here.scores.float())
    assert (there.uncertainty is None) == (here.uncertainty is None)
    if here.uncertainty is not None:
        torch.testing.assert_close(there.uncertainty, here.uncertainty.float())
    assert set(there.details) == set(here.details or {})
    for key, value in (here.details or {}).items():
        torch.testing.assert_close(there.details[key], value.float(), msg=key)
    assert there.rationales == here.rationales


@pytest.mark.parametrize("name", BUILTIN)
def test_validate_refuses_a_kwarg_the_reward_does_not_take(cases, name, capsys):
    spec = json.dumps({"name": name, "kwargs": {**cases[name], "no_such_kwarg": 1}})  # JSON is YAML
    assert main(["validate", str(TINY_RECIPE), f"rewards=[{spec}]", "--offline"]) == 2
    err = capsys.readouterr().err
    assert f"reward '{name}'" in err and "no_such_kwarg" in err and "Traceback" not in err
