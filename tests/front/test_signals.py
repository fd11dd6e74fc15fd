"""Two stop signals at any moment of a run (loading, the loop, a checkpoint, the trackers closing) end it with
exit 130 and one line naming the run directory: no traceback, no hang, no interpreter crash."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY_RECIPE


def _double_signal(run, first_after: float, second_after: float, wait_for: str | None = None) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "run", str(TINY_RECIPE), f"output_dir={run}",
                             "train.steps=40", "train.save_every=2", "train.log_every=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    start = time.time()
    while wait_for and time.time() - start < 120 and wait_for not in (
            (run / "run.log").read_text() if (run / "run.log").exists() else ""):
        time.sleep(0.05)
    time.sleep(first_after)
    proc.send_signal(signal.SIGINT)
    time.sleep(second_after)
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60), proc.stdout.read()
    except subprocess.TimeoutExpired:  # a hang: where it is stuck, from faulthandler
        proc.send_signal(signal.SIGABRT)
        return -1, proc.communicate(timeout=30)[0]


def _clean(code: int, said: str) -> bool:
    return code == 130 and "Traceback" not in said and "Fatal Python error" not in said and \
        "Exception ignored" not in said


@pytest.mark.parametrize("moment", [pytest.param("loading", marks=pytest.mark.slow), "loop"])
def test_two_signals_end_a_run_with_130_and_one_line(moment, tmp_path):
    run = tmp_path / "run"
    code, said = _double_signal(run, 1.5, 0.2) if moment == "loading" else \
        _double_signal(run, 0.0, 0.3, wait_for="step 3/")  # after the checkpoint of step 2
    assert _clean(code, said), said[-3000:]
    last = said.strip().splitlines()[-1]
    assert last.startswith("error: interrupted")
    if moment == "loop":
        assert f"rlkit resume {run}" in last


@pytest.mark.slow
def test_a_hundred_double_signals_at_random_moments(tmp_path):
    """The trial behind the claim: 100 runs, two SIGINTs at random moments (2-16 s in, 0-1.5 s apart)."""
    rng = random.Random(0)
    failed = []
    for i in range(100):
        code, said = _double_signal(tmp_path / f"run{i}", rng.uniform(2.0, 16.0), rng.uniform(0.0, 1.5))
        if not _clean(code, said):
            failed.append((i, code, said[-2000:]))
    assert not failed, failed[:3]
