"""Rewards without packaging: a recipe names `file.py:Class` or `module:Class` from the working directory, the
Python API takes reward objects and plain functions; each gets the same checks as an installed plugin and
resumes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY_RECIPE

import rlkit
from rlkit.core.errors import RewardError, UserError
from rlkit.rewards.base import RewardInput, as_reward

FAST = ["sampler.num_steps=3", "algorithm.group_size=3", "algorithm.micro_batch=6", "train.report=false",
        "train.save_every=1", "train.log_every=0"]
REWARD_FILE = '''
from rlkit.rewards.base import RewardOutput

class MyReward:
    def __init__(self, channel: int = 0):
        self.channel = channel

    def __call__(self, batch):
        return RewardOutput(scores=batch.edited[:, self.channel].mean(dim=(1, 2)))
'''


def _steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _rlkit(args, cwd):
    done = subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "tests")}, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["my_reward.py:MyReward",
                                  pytest.param("my_reward:MyReward", marks=pytest.mark.slow)])
def test_a_reward_from_the_working_directory_runs_and_resumes_from_anywhere(name, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_reward.py").write_text(REWARD_FILE)
    run = tmp_path / "run"
    reward = f"rewards=[{{name: '{name}', kwargs: {{channel: 1}}}}]"
    code, out = _rlkit(["run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=2", *FAST, reward], work)
    assert code == 0, out[-2000:]
    assert _steps(run) == [1, 2]
    if name.endswith(".py:MyReward"):  # the file is recorded by its absolute path: the resume runs from elsewhere
        code, out = _rlkit(["resume", str(run), "train.steps=3"], tmp_path)
    else:  # a module is found on the working directory's path, as `python -m` finds it
        code, out = _rlkit(["resume", str(run), "train.steps=3"], work)
    assert code == 0 and "resumed from" in out, out[-2000:]
    assert _steps(run) == [1, 2, 3]


def test_a_missing_file_or_class_is_one_line_from_validate(tmp_path, capsys, monkeypatch):
    from rlkit.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_reward.py").write_text(REWARD_FILE)
    for name, said in (("nothere.py:MyReward", "no file"), ("my_reward.py:Missing", "has no attribute 'Missing'"),
                       ("my_reward.py:MyReward", "takes: channel")):
        kwargs = "{colour: 1}" if said.startswith("takes") else "{}"
        assert main(["validate", str(TINY_RECIPE), f"rewards=[{{name: '{name}', kwargs: {kwargs}}}]"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err


def _redness(batch: RewardInput):
    return batch.edited[:, 0].mean(dim=(1, 2)) - batch.edited[:, 1:].mean(dim=(1, 2, 3))


def test_the_python_api_trains_on_a_plain_function_and_resumes_with_it(tmp_path):
    run = tmp_path / "run"
    assert rlkit.train(TINY_RECIPE, [f"output_dir={run}", "train.steps=2", *FAST], rewards=[_redness],
                       progress=False) == run
    assert "python:_redness" in (run / "config.yaml").read_text()
    with pytest.raises(UserError, match="pass the same names"):
        rlkit.resume(run, ["train.steps=3"], progress=False)
    rlkit.resume(run, ["train.steps=3"], rewards={"_redness": _redness}, progress=False)
    assert _steps(run) == [1, 2, 3]
    from rlkit.cli import main

    assert main(["resume", str(run), "train.steps=4"]) == 2  # the CLI cannot have the function: it says so


def test_a_function_gets_the_plugins_checks(tmp_path):
    """Scores of the wrong shape or non-finite stop the step naming the reward, as for a plugin."""
    with pytest.raises(RewardError, match="non-finite"):
        rlkit.train(TINY_RECIPE, [f"output_dir={tmp_path / 'a'}", "train.steps=1", *FAST],
                    rewards={"nan": lambda b: torch.full((len(b),), float("nan"))}, progress=False)
    with pytest.raises(RewardError, match="shape"):
        rlkit.train(TINY_RECIPE, [f"output_dir={tmp_path / 'b'}", "train.steps=1", *FAST],
                    rewards={"short": lambda b: [0.5]}, progress=False)
    with pytest.raises(UserError, match="not callable"):
        rlkit.train(TINY_RECIPE, [f"output_dir={tmp_path / 'c'}"], rewards=[42])


def test_lists_arrays_and_reward_outputs_all_become_scores():
    batch = RewardInput(torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8), ["a"] * 3, torch.zeros(3, dtype=torch.long))
    import numpy as np

    for fn in (lambda b: [0.1, 0.2, 0.3], lambda b: np.array([0.1, 0.2, 0.3]), lambda b: torch.tensor([0.1, 0.2, 0.3])):
        torch.testing.assert_close(as_reward(fn)(batch).scores, torch.tensor([0.1, 0.2, 0.3]))
