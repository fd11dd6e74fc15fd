"""A run directory is never lost to an accident: it has one owner at a time, a folder of someone else's files
is refused, another run's results are not written over, pruning keeps checkpoints that load, a damaged
checkpoint falls back to the one before, and a stop signal at any point leaves a resumable directory."""

import json
import os
import signal

import pytest
import torch
from helpers import TINY_RECIPE, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from rlkit import checkpoint as ckpt
from rlkit.cli import main
from rlkit.core.errors import UserError
from rlkit.run_dir import lock_run_dir
from rlkit.trainer import Trainer


def _run(cfg, **kw):
    return Trainer(cfg, progress=False).fit(**kw)


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "thesis.tex").write_text("years of work")
    assert main(["run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=1"]) == 2
    assert "holds files that are not an rlkit run (e.g. thesis.tex)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["thesis.tex"]


def test_one_run_directory_has_one_owner(tmp_path):
    cfg = tiny_config(tmp_path)
    first = Trainer(cfg, progress=False)  # holds the lock from construction until fit returns
    with pytest.raises(UserError, match=f"is in use by rlkit pid {os.getpid()}"):
        Trainer(cfg, progress=False)
    first.fit()
    Trainer(tiny_config(tmp_path), progress=False).fit()  # released: the same recipe may resume it now
    holder = lock_run_dir(tmp_path / "run")  # another process's lock, as the OS sees it
    try:
        with pytest.raises(UserError, match="is in use"):
            Trainer(tiny_config(tmp_path), progress=False)
    finally:
        holder.close()


def test_another_run_is_not_written_over(tmp_path, capsys):
    run = _run(tiny_config(tmp_path))
    for c in ckpt.find_checkpoints(run):  # e.g. every checkpoint damaged: nothing to resume
        (c.path / "manifest.json").unlink()
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="holds another run \\('optim.lr' 0.003 -> 0.001\\) with no valid checkpoint"):
        Trainer(tiny_config(tmp_path, "optim.lr=1e-3"), progress=False)
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "final").is_dir()
    _run(tiny_config(tmp_path))  # the same recipe restarts it from step 0
    assert "no valid checkpoint" in capsys.readouterr().out


def test_changed_settings_apply_on_resume_and_fixed_ones_are_refused(tmp_path, capsys):
    _run(tiny_config(tmp_path))  # lr 3e-3, 2 steps
    trainer = Trainer(tiny_config(tmp_path, "train.steps=3", "optim.lr=1e-3", "optim.betas=[0.8,0.99]",
                                  "optim.weight_decay=0.1"), progress=False)
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.8, 0.99), 0.1)
    run = trainer.fit()
    assert "applied from the next step: optim.betas" in capsys.readouterr().out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([3e-3, 3e-3, 1e-3])
    for fixed in ("seed=7", "policy.lora.rank=4", "data.shuffle=false"):
        with pytest.raises(UserError, match=f"cannot resume with changed '{fixed.split('=')[0]}'"):
            Trainer(tiny_config(tmp_path, "train.steps=4", fixed), progress=False)


def test_resume_from_a_path_checks_that_checkpoint(tmp_path):
    source = _run(tiny_config(tmp_path / "a"))
    step2 = source / "checkpoints" / "step_000002"
    with pytest.raises(UserError, match="cannot resume with changed 'policy.lora.rank'"):
        Trainer(tiny_config(tmp_path / "b", f"resume={step2}", "policy.lora.rank=4"), progress=False)
    (step2 / "adapter.safetensors").write_bytes(b"truncated")
    with pytest.raises(UserError, match="adapter.safetensors does not match its checksum"):
        Trainer(tiny_config(tmp_path / "c", f"resume={step2}"), progress=False)


@pytest.mark.parametrize("damage", [b"\x89PNG\r\n\x1a\n\x00\xff", b"[1, 2]", b'{"adapter.safetensors": "ab',
                                    b"", None])
def test_a_damaged_manifest_falls_back_to_the_checkpoint_before(tmp_path, damage, capsys):
    run = _run(tiny_config(tmp_path, "train.steps=3", "train.save_every=1", "train.keep_last=3"))
    manifest = run / "checkpoints" / "step_000003" / "manifest.json"
    manifest.unlink() if damage is None else manifest.write_bytes(damage)
    trainer = Trainer(tiny_config(tmp_path, "train.steps=3", "train.save_every=1", "train.keep_last=3"),
                      progress=False)
    assert trainer.step == 2 and "skipping checkpoint" in capsys.readouterr().out


def _fake_checkpoint(root, step):
    return ckpt.save_checkpoint(root, step, {"w": torch.full((2,), float(step))}, {"step": step}, {}, {}, 0)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 6), damaged=st.sets(st.integers(1, 6)), keep_last=st.integers(1, 4))
def test_pruning_keeps_the_newest_checkpoints_that_load(tmp_path_factory, n, damaged, keep_last):
    root = tmp_path_factory.mktemp("prune")
    for step in range(1, n + 1):
        _fake_checkpoint(root, step)
    damaged = {s for s in damaged if s <= n}
    for s in damaged:
        (root / "checkpoints" / f"step_{s:06d}" / "optimizer.pt").write_bytes(b"bit rot")
    ckpt.prune(root / "checkpoints", keep_last)
    good = [s for s in range(1, n + 1) if s not in damaged]
    left = [c.step for c in ckpt.find_checkpoints(root)]
    kept_good = [s for s in left if s not in damaged]
    assert kept_good == good[-keep_last:]  # the newest good ones, as many as asked for (never fewer)
    if good:  # damaged ones survive only when newer than every good checkpoint (for inspection)
        assert all(s > good[-1] for s in left if s in damaged)


def test_a_signal_during_the_report_keeps_the_runs_end(tmp_path, monkeypatch):
    """The last checkpoint and final/ are written before the report; a stop signal while it is drawn is
    only noted, and a second one ends the report, not the run's results."""
    signals = []

    def report_interrupted(run_dir, times):
        for _ in range(times):
            signals.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_config(tmp_path, "train.report=true", "train.save_every=0")
    monkeypatch.setattr("rlkit.trainer.write_report", lambda d: report_interrupted(d, 1))
    run = _run(cfg)
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert [c.step for c in ckpt.find_checkpoints(run)] == [2]

    cfg = tiny_config(tmp_path / "b", "train.report=true", "train.save_every=0")
    monkeypatch.setattr("rlkit.trainer.write_report", lambda d: report_interrupted(d, 2))
    with pytest.raises(KeyboardInterrupt):
        _run(cfg)
    run = tmp_path / "b" / "run"
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert ckpt.newest_valid(run).step == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_second_signal_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("rlkit.trainer.write_report", lambda d: [os.kill(os.getpid(), signal.SIGINT)
                                                                 for _ in range(2)])
    code = main(["run", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", "train.steps=1", "train.report=true"])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines() == [  # the run's own folder, not a placeholder
        f"error: interrupted; every checkpoint already written is complete (resume with: rlkit resume "
        f"{tmp_path / 'run'})"]
    assert load_file(tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors")
