"""Every command's error path: a careless input or a damaged file gives one `error:` line (or a warning and the
work done), never a traceback; an environment failure (a full disk, a closed pipe) is one line too."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY_RECIPE, tiny_config

from rlkit.cli import main
from rlkit.trainer import Trainer


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("done"), "train.steps=2", "eval.every=1", "eval.max_prompts=1",
                      "eval.samples_per_prompt=2")
    Trainer(cfg, progress=False).fit()
    return cfg.output_dir


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


@pytest.mark.parametrize("damage", [
    ("metrics.jsonl", b'{"step": 3, "rew'),  # half-written by a crash
    ("metrics.jsonl", b'{"reward_mean": 1}\n'),  # a row without a step
    ("metrics.jsonl", b'\xff\xfe{"step": 1e400}\n'),
    ("metrics.jsonl", b'{"step": 4, "reward_mean": "high"}\n'),
    ("alarms.jsonl", b'{"step": 1, "kind": "x"}\n'),  # an alarm without an action
    ("alarms.jsonl", b'{"step": 1, "figures": [1, 2]}\n'),
    ("config.yaml", b"a: ["),
    ("final/rlkit_final.json", b"[1, 2"),
    ("samples/eval_step_000001.json", b'{"samples_per_prompt": "two"}'),
])
def test_report_draws_what_it_can_from_damaged_files(finished, tmp_path, capsys, damage):
    run = _copy(finished, tmp_path)
    name, data = damage
    with open(run / name, "ab" if name.endswith("jsonl") else "wb") as f:
        f.write(data)
    assert main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and (run / "report.html").is_file()
    if name.endswith("jsonl") and b"kind" not in data and b"figures" not in data:
        assert "line(s) that are not rows" in captured.out or "reward_mean" in data.decode(errors="replace")


@pytest.mark.parametrize("argv,needle", [
    (["eval-reward", "R", "D", "--batch-size", "0"], "--batch-size: must be a whole number >= 1"),
    (["explain", "R", "a.png", "b.png", "x", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["serve-reward", "target_color", "--port", "99999"], "--port: must be a port number 0-65535"),
    (["serve-reward", "target_color", "--max-wait", "nan"], "--max-wait: must be seconds from 0 to 10"),
    (["serve-reward", "target_color", "--max-wait", "inf"], "--max-wait: must be seconds from 0 to 10"),
    (["bench", "tiny_edit", "--iterations", "0"], "--iterations: must be a whole number >= 1"),
    (["annotate-pairs", "p", "o", "--base-url", "u", "--retries", "-1"], "--retries"),
])
def test_command_line_values_out_of_range_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly():
    """`rlkit validate R --print | head -c 0`: the reader is gone before the first write; no traceback."""
    done = subprocess.run(f"{sys.executable} -m rlkit validate {TINY_RECIPE} --print | head -c 0", shell=True,
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          executable="/bin/bash")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_full_disk_in_any_output_is_one_line(tmp_path, monkeypatch, capsys):
    """torch.save says a full disk with a RuntimeError, not an OSError: still the checkpoint's one line."""
    from rlkit import checkpoint as ckpt

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(ckpt.torch, "save", full)
    run = tmp_path / "run"
    assert main(["run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=1", "sampler.num_steps=2",
                 "algorithm.group_size=2", "algorithm.micro_batch=4", "eval.every=0", "train.report=false"]) == 1
    err = capsys.readouterr().err
    assert "could not write the checkpoint for step 1" in err and "file write failed" in err
    assert "Traceback" not in err and (run / ".rlkit-failed").exists()  # the rerun takes the folder over


def test_a_grid_on_a_full_disk_is_skipped_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    from rlkit import trainer as trainer_module

    def full(path, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_grid", full)
    cfg = tiny_config(tmp_path, "train.steps=1", "eval.every=0")
    Trainer(cfg, progress=False).fit()
    assert "could not write" in capsys.readouterr().out and (tmp_path / "run" / "final").is_dir()


def test_an_interrupt_says_what_it_left_for_each_command(capsys, monkeypatch, tmp_path):
    from rlkit import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_annotate_pairs", interrupted)
    assert main(["annotate-pairs", "p.jsonl", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9"]) == 130
    assert f"the pairs annotated so far are in {tmp_path / 'o.jsonl'}" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_report", interrupted)
    assert main(["report", "runs/x"]) == 130
    assert "`rlkit report` did not finish; run it again" in capsys.readouterr().err


def test_data_paths_that_cannot_be_files_are_named(tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for row in ({"image": "loop", "instruction": "x"}, {"image": "a\u0000.png", "instruction": "x"}):
        (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
        assert main(["validate", str(TINY_RECIPE), "data.source=jsonl", f"data.path={tmp_path / 'm.jsonl'}",
                     "--offline"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "m.jsonl:1:" in err, err


def test_validate_decodes_the_images_and_checks_what_run_would_fail_on(tmp_path, capsys):
    import importlib.util

    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])  # a PNG cut short
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": n, "instruction": "x"}) + "\n" for n in ("ok.png", "cut.png")))
    data = ["data.source=jsonl", f"data.path={manifest}"]
    assert main(["validate", str(TINY_RECIPE), *data]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "cut.png" in err
    manifest.write_text(json.dumps({"image": "ok.png", "instruction": "x"}) + "\n")
    assert main(["validate", str(TINY_RECIPE), *data]) == 0
    assert "all 1 images decode" in capsys.readouterr().out
    assert main(["validate", str(TINY_RECIPE), "logging.report_to=[tensorboard, tensorboard]"]) == 2
    assert "'logging.report_to' names 'tensorboard' twice" in capsys.readouterr().err
    if importlib.util.find_spec("wandb") is None:  # not in the test environment: validate says so, not step 1
        assert main(["validate", str(TINY_RECIPE), "logging.report_to=[wandb]"]) == 2
        assert "names wandb, which is not installed (pip install wandb)" in capsys.readouterr().err


def test_validate_samples_a_huge_dataset_evenly_and_says_so(monkeypatch):
    from rlkit import data

    monkeypatch.setattr(data, "DECODE_LIMIT", 3)
    items = [data.EditItem([Path(f"/x/{i}.png")], "x", str(i)) for i in range(10)]
    assert data.decoded_share(items) == "an even sample of 3 of 10 images decodes"


@pytest.mark.parametrize("row", ["5", "[1, 2]", '{"source": 5, "edited": "a.png", "instruction": "x"}'])
def test_eval_reward_rows_that_are_not_rows_are_named(tmp_path, capsys, row):
    from rlkit.rewards.jrm.evaluate import evaluate

    (tmp_path / "d.jsonl").write_text(row + "\n")
    with pytest.raises(Exception) as err:
        evaluate(lambda s, e, t: None, tmp_path / "d.jsonl", "pairs")
    from rlkit.core.errors import UserError

    assert isinstance(err.value, UserError) and ("d.jsonl" in str(err.value) or "not a file path" in str(err.value))
