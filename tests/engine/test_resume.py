"""Crash safety: kills at any moment, partial saves, signals, tampered checkpoints, bad environments."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, TINY_RECIPE, tiny_config
from safetensors.torch import load_file

from rlkit import checkpoint as ckpt
from rlkit.cli import main
from rlkit.core.errors import CheckpointError
from rlkit.trainer import Trainer

STEPS = ["train.steps=6", "train.save_every=2", "train.keep_last=0"]


def _adapter(run, step):
    return load_file(run / "checkpoints" / f"step_{step:06d}" / "adapter.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted reference run (in-process)."""
    cfg = tiny_config(tmp_path_factory.mktemp("straight"), *STEPS)
    return Trainer(cfg, progress=False).fit()


def _start(run_dir, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "rlkit", "run", str(TINY_RECIPE), f"output_dir={run_dir}", "train.steps=2",
            "train.save_every=1", "train.grid_every=1", "sampler.num_steps=4", "algorithm.group_size=3",
            "algorithm.micro_batch=6", *STEPS, *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _wait_for_lines(run_dir, n, proc, timeout=120):
    metrics = run_dir / "metrics.jsonl"
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("kill_after_lines", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_sigkill_at_any_moment_then_resume_is_bit_identical(straight_run, tmp_path, kill_after_lines):
    run = tmp_path / "run"
    proc = _start(run)
    _wait_for_lines(run, kill_after_lines, proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # it was killed, not finished
    assert main(["resume", str(run)]) == 0
    assert _same(_adapter(run, 6), _adapter(straight_run, 6))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_sigterm_finishes_the_step_saves_and_exits(straight_run, tmp_path):
    run = tmp_path / "run"
    proc = _start(run)
    _wait_for_lines(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # stopped, not finished: the shell convention
    saved = ckpt.find_checkpoints(run)
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert done < 6 and "stopped by signal" in out and saved[-1].step == done  # saved the step it finished
    assert not (run / "final").exists()
    assert main(["resume", str(run)]) == 0
    assert _same(_adapter(run, 6), _adapter(straight_run, 6))


def test_what_a_crash_during_a_save_leaves_is_ignored(straight_run, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(tmp_path, "train.steps=4", "train.save_every=2", "train.keep_last=0"), progress=False).fit()
    root = run / "checkpoints"
    # 1. killed while writing step 6: a temporary folder with part of the files
    partial = root / ".tmp-step_000006.999"
    partial.mkdir()
    shutil.copy(root / "step_000004" / "adapter.safetensors", partial / "adapter.safetensors")
    # 2. killed after the files but before the manifest: a step folder that cannot verify
    (root / "step_000005").mkdir()
    shutil.copy(root / "step_000004" / "adapter.safetensors", root / "step_000005" / "adapter.safetensors")
    # 3. the `latest` pointer behind (killed between rename and pointer update)
    (root / "latest").write_text("step_000002\n")
    found = ckpt.newest_valid(run, warn=lambda m: None)
    assert found.step == 4
    msgs = []
    ckpt.newest_valid(run, warn=msgs.append)
    assert "step_000005" in msgs[0] and "incomplete" in msgs[0]
    assert main(["resume", str(run), "train.steps=6"]) == 0
    assert _same(_adapter(run, 6), _adapter(straight_run, 6))


def test_resume_twice_matches_the_straight_run(straight_run, tmp_path):
    cfg = tiny_config(tmp_path, "train.steps=2", "train.save_every=2", "train.keep_last=0")
    Trainer(cfg, progress=False).fit()
    assert main(["resume", cfg.output_dir, "train.steps=4"]) == 0
    assert main(["resume", cfg.output_dir, "train.steps=6"]) == 0
    assert _same(_adapter(tmp_path / "run", 6), _adapter(straight_run, 6))


def test_truncated_checkpoint_is_skipped_with_its_name(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "train.steps=4", "train.save_every=2", "train.keep_last=0")
    Trainer(cfg, progress=False).fit()
    bad = tmp_path / "run" / "checkpoints" / "step_000004" / "adapter.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    assert main(["resume", cfg.output_dir, "train.steps=5"]) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step_000004" in out and "adapter.safetensors" in out
    assert "resumed from" in out and "step_000002" in out


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['RLKIT_PWNED']}",))


def test_planted_pickle_payload_is_refused_and_not_executed(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, "train.steps=2", "train.save_every=2")
    Trainer(cfg, progress=False).fit()
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RLKIT_PWNED", str(marker))
    target = tmp_path / "run" / "checkpoints" / "step_000002"
    torch.save({"optimizer": _Payload()}, target / "optimizer.pt")
    # the attacker also fixes the manifest, so only safe loading stands in the way
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["optimizer.pt"] = ckpt._sha256(target / "optimizer.pt")
    (target / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", str(TINY_RECIPE), f"output_dir={cfg.output_dir}", f"resume={target}",
                 "train.steps=3", "sampler.num_steps=4", "algorithm.group_size=3", "algorithm.micro_batch=6",
                 "train.save_every=1", "train.grid_every=1"]) == 2
    assert "optimizer.pt: refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_incompatible_change_is_an_error_and_other_changes_apply(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "train.steps=2", "train.save_every=2")
    Trainer(cfg, progress=False).fit()
    assert main(["resume", cfg.output_dir, "policy.lora.rank=4"]) == 2
    assert "cannot resume with changed 'policy.lora.rank' 8 -> 4" in capsys.readouterr().err
    assert main(["resume", cfg.output_dir, "train.steps=3", "seed=5"]) == 2  # the random streams are the old seed's
    assert "cannot resume with changed 'seed' 0 -> 5" in capsys.readouterr().err
    assert main(["resume", cfg.output_dir, "train.steps=3", "algorithm.kl_coef=0.02"]) == 0
    out = capsys.readouterr().out
    assert "resuming with changed settings, applied from the next step" in out and "train.steps: 2 -> 3" in out


def test_output_dir_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", str(TINY_RECIPE), f"output_dir={blocker / 'run'}"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_disk_full_during_a_save_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, "train.steps=4", "train.save_every=2", "train.keep_last=1")
    trainer = Trainer(cfg, progress=False)
    real_save = ckpt.save_file
    calls = {"n": 0}

    def flaky_save(tensors, path):
        calls["n"] += 1
        if calls["n"] > 2:  # step 2's two safetensors files succeed, step 4's first one hits a full disk
            raise OSError(28, "No space left on device")
        return real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", flaky_save)
    with pytest.raises(CheckpointError) as err:
        trainer.fit()
    assert "No space left on device" in str(err.value) and "step_000002 is intact" in str(err.value)
    root = tmp_path / "run" / "checkpoints"
    assert [c.step for c in ckpt.find_checkpoints(tmp_path / "run")] == [2]
    assert ckpt.verify(root / "step_000002") is None
    assert not list(root.glob(".tmp-*"))


def test_huge_images_are_refused_by_name(tmp_path, monkeypatch):
    from PIL import Image

    from rlkit import data
    from rlkit.core import images
    from rlkit.core.errors import UserError

    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    with pytest.raises(UserError, match="image too large .*big.png"):
        data.load_image(tmp_path / "big.png", 16)


@pytest.mark.slow
def test_a_second_process_cannot_write_a_running_runs_directory(straight_run, tmp_path, capsys):
    """Two runs on one output_dir used to interleave their metrics. The first owns it; the second exits 2 naming
    the owner; a killed owner leaves no stale lock (the OS releases it), so resume works at once."""
    run = tmp_path / "run"
    proc = _start(run)
    _wait_for_lines(run, 1, proc)
    assert main(["run", str(TINY_RECIPE), f"output_dir={run}", *STEPS]) == 2
    assert f"is in use by rlkit pid {proc.pid}" in capsys.readouterr().err
    proc.kill()
    proc.wait()
    assert main(["resume", str(run)]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] and _same(_adapter(run, 6), _adapter(straight_run, 6))
