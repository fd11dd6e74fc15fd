"""What a user sees and takes away: the console and run.log, the end-of-run summary, final/'s model card and
adapter config, `rlkit push`, `rlkit recipes`, `validate --print`, and every command's help."""

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY_RECIPE

from rlkit.cli import main, make_parser

RUN = ["train.steps=3", "sampler.num_steps=3", "algorithm.group_size=3", "algorithm.micro_batch=6",
       "train.report=false", "train.log_every=2", "eval.every=3", "eval.max_prompts=2",
       "eval.rewards=[{name: target_color, kwargs: {color: [1.0, 0.0, 0.0]}, log_as: redness}]"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run through the CLI, as a user starts it, with what it printed."""
    run = tmp_path_factory.mktemp("out") / "run"
    done = subprocess.run([sys.executable, "-m", "rlkit", "run", str(TINY_RECIPE), f"output_dir={run}", *RUN],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return run, done.stdout


def test_a_run_ends_with_a_summary_and_keeps_its_console_in_run_log(finished_run):
    run, out = finished_run
    assert f"done: {run} (3 steps" in out
    assert "reward (training batches" in out and "redness (held-out gold)" in out and "alarms: none" in out
    assert f"weights: {run / 'final'} (the best gold evaluation's weights, step" in out
    assert "pipe.load_lora_weights(" in out and "Loading pipeline components" not in out
    log = (run / "run.log").read_text()
    assert "step 2/3" in log and "step 3/3" in log and f"done: {run}" in log  # periodic lines, evaluation, end


def test_final_holds_a_model_card_an_adapter_config_and_the_recipe(finished_run):
    from huggingface_hub import ModelCard
    from peft import LoraConfig

    from rlkit.config import load_recipe

    run, _ = finished_run
    final = run / "final"
    card = ModelCard.load(final / "README.md")
    assert "rlkit" in card.data.tags and card.data.library_name == "diffusers"
    assert "| redness, held-out" in card.text and "pipe.load_lora_weights" in card.text
    config = LoraConfig.from_pretrained(str(final))
    assert config.r == load_recipe(str(TINY_RECIPE)).policy.lora.rank
    assert load_recipe(str(final / "config.yaml")).output_dir == str(run)  # the resolved recipe loads again


def test_model_card_names_a_hub_base_model_in_its_metadata():
    from rlkit.config import load_recipe
    from rlkit.export import model_card
    from rlkit.summary import RunSummary

    cfg = load_recipe("flux_edit")
    card = model_card(cfg, {"weights": "last", "step": 500}, RunSummary(Path("runs/x"), steps=500))
    assert "base_model: black-forest-labs/FLUX.1-Kontext-dev" in card
    assert "pipeline_tag: image-to-image" in card and "library_name: diffusers" in card and "license:" in card
    assert 'pipe.load_lora_weights("me/lora")' in model_card(cfg, {"weights": "last", "step": 1},
                                                             RunSummary(Path("r")), repo_id="me/lora")
    cfg.policy.pretrained = "/models/kontext"  # a local folder is not Hub metadata, and the card says so
    card = model_card(cfg, {"weights": "last", "step": 1}, RunSummary(Path("r")))
    assert "base_model:" not in card and "Base model: a local folder (`kontext`)" in card
    assert "# LoRA for kontext, trained" in card  # the title is not a path
    cfg.policy.pretrained = "/cache/models--black-forest-labs--FLUX.1-Kontext-dev/snapshots/0a1b/"
    assert "base_model: black-forest-labs/FLUX.1-Kontext-dev" in model_card(cfg, {"step": 1}, RunSummary(Path("r")))
    cfg.policy.pretrained, cfg.export.base_model, cfg.export.license = "/models/kontext", "me/kontext", "mit"
    card = model_card(cfg, {"step": 1}, RunSummary(Path("r")))
    assert "base_model: me/kontext" in card and "license: mit" in card


def test_push_uploads_the_final_folder(finished_run, monkeypatch):
    """What rlkit hands to huggingface_hub (the upload itself needs the network): final/ as written, with the
    model card's snippet loading from the repository."""
    from huggingface_hub import HfApi

    run, _ = finished_run
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(
        ("upload", kw, {p.name: p.read_bytes() for p in Path(kw["folder_path"]).iterdir()})))
    assert main(["push", str(run), "me/tiny-lora", "--private"]) == 0
    (_, repo, create), (_, upload, files) = calls
    assert repo == "me/tiny-lora" and create["private"] is True and upload["repo_id"] == "me/tiny-lora"
    assert {"README.md", "adapter_config.json", "pytorch_lora_weights.safetensors", "adapter_model.safetensors",
            "config.yaml", "rlkit_final.json"} <= set(files)
    lora = "pytorch_lora_weights.safetensors"
    assert files[lora] == (run / "final" / lora).read_bytes()
    card = files["README.md"].decode()
    assert 'pipe.load_lora_weights("me/tiny-lora")' in card and str(run) not in card and str(REPO) not in card
    assert b"me/tiny-lora" not in (run / "final" / "README.md").read_bytes()  # the run's own card is untouched


def test_push_offline_or_unfinished_is_one_line(finished_run, tmp_path, capsys):
    """Tests run with HF_HUB_OFFLINE=1 (conftest): the hub client refuses before any request leaves."""
    run, _ = finished_run
    assert main(["push", str(tmp_path), "me/x"]) == 2
    assert "has no finished export" in capsys.readouterr().err
    only_final = tmp_path / "only_final"
    (only_final / "final").mkdir(parents=True)
    (only_final / "final" / "rlkit_final.json").write_text("{}")
    assert main(["push", str(only_final), "me/x", "--weights", "final_last"]) == 2
    assert "it exported final/" in capsys.readouterr().err  # what exists, not "not a finished run"
    assert main(["push", str(run), "not a repo id"]) == 2
    assert "is not a Hub repository id" in capsys.readouterr().err
    assert main(["push", str(run), "me/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0]


def test_recipes_are_listed_and_a_copy_runs_from_anywhere(tmp_path, capsys, monkeypatch):
    from rlkit.config import load_recipe, packaged_recipes

    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in listed} == set(packaged_recipes())
    assert all(len(line.split()) > 2 for line in listed)  # each with its one-line summary
    assert main(["recipes", "cp", "tiny_edit", str(tmp_path)]) == 0
    copy = tmp_path / "tiny_edit.yaml"
    monkeypatch.chdir(tmp_path)  # far from the packaged data
    assert main(["validate", str(copy)]) == 0
    assert Path(load_recipe(str(copy)).data.path).is_absolute()
    assert main(["recipes", "cp", "tiny_edit", str(copy)]) == 2  # never overwrites
    assert main(["recipes", "cp", "tiny_edt", str(tmp_path / "x.yaml")]) == 2
    assert "did you mean 'tiny_edit'" in capsys.readouterr().err


def test_every_command_has_a_description_and_an_example():
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert "example:\n  rlkit " + name in parser.description, name
        assert sub._choices_actions and any(c.dest == name and c.help for c in sub._choices_actions), name


def test_a_missing_recipe_names_only_the_recipe(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: the following arguments are required: recipe\n" in err



def test_trackers_get_scalars_images_the_recipe_and_alarms(tmp_path, monkeypatch):
    """TensorBoard read back with its own reader; W&B in offline mode (no login, nothing leaves the machine)."""
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlkit.config import load_recipe
    from rlkit.trainer import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_recipe(str(TINY_RECIPE), [*RUN, f"output_dir={tmp_path / 'run'}",
                                         "logging.report_to=[tensorboard,wandb]",
                                         "stability.kl_blowup.max_kl_ref=1e-12"])  # an alarm every step
    run = Trainer(cfg, progress=False).fit()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert {"reward_mean", "loss", "eval/reward", "redness"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2, 3]
    assert "eval/grid" in tags["images"] and [e.step for e in events.Images("eval/grid")] == [0, 3]
    assert any("alarms" in t for t in tags["tensors"])  # text summaries are stored as tensors
    hparams = list((run / "tensorboard").rglob("hparams.yml"))
    assert hparams and "algorithm.group_size: 3" in hparams[0].read_text()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    grids = sorted(p.name.split("_")[1] for p in (offline[0] / "files" / "media" / "images" / "eval").glob("*.png"))
    assert grids == ["0", "3"]  # the evaluation grids, at their steps
    records = next(offline[0].glob("*.wandb")).read_bytes()  # the run's record log, as `wandb sync` uploads it
    assert all(key in records for key in (b"reward_mean", b"redness", b"kl_blowup", b"algorithm.group_size"))


def test_trackio_gets_scalars_images_the_recipe_and_alarms(tmp_path):
    """trackio logs locally (its SQLite store under TRACKIO_DIR, read back here); in a fresh process, since trackio
    fixes its folder when first imported."""
    import sqlite3

    overrides = [*RUN, f"output_dir={tmp_path / 'run'}", "logging.report_to=[trackio]", "logging.project=rlkit-test",
                 "stability.kl_blowup.max_kl_ref=1e-12"]  # an alarm every step
    script = ("from rlkit.config import load_recipe\nfrom rlkit.trainer import Trainer\n"
              f"Trainer(load_recipe({str(TINY_RECIPE)!r}, {overrides!r}), progress=False).fit()\n")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    db = sqlite3.connect(tmp_path / "trackio" / "rlkit-test.db")
    rows = [(step, json.loads(values)) for step, values in
            db.execute("select step, metrics from metrics where run_name = 'run' order by id")]
    assert [s for s, m in rows if "reward_mean" in m] == [1, 2, 3]
    grids = [s for s, m in rows if m.get("eval/grid", {}).get("_type") == "trackio.image"]
    assert grids == [0, 3] and list((tmp_path / "trackio" / "media").rglob("*.png"))
    config = json.loads(db.execute("select config from configs where run_name = 'run'").fetchone()[0])
    assert config["algorithm.group_size"] == 3
    alerts = db.execute("select title, step from alerts where run_name = 'run'").fetchall()
    assert alerts and all(t.startswith("kl_blowup") for t, _ in alerts)


def test_train_reward_logs_tensorboard_beside_the_rl_runs(tmp_path):
    from rlkit.config import load_recipe
    from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe
    from rlkit.rewards.jrm.train import train_reward

    cfg = load_recipe("jrm_tiny", [f"output_dir={tmp_path / 'jrm'}", "train.epochs=1", "data.synthetic_pairs=8",
                                   "train.logging_steps=1"], schema_cls=RewardRecipe, check=check_reward_recipe)
    out = train_reward(cfg)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((out / "trainer").glob("runs"))  # not transformers' dated folder


def test_the_report_shows_each_probe_prompt_side_by_side_with_scores_thresholds_and_recipe(tmp_path, monkeypatch):
    import re

    from matplotlib.axes import Axes

    from rlkit.config import load_recipe
    from rlkit.logs import read_rows
    from rlkit.report import write_report
    from rlkit.trainer import Trainer

    cfg = load_recipe(str(TINY_RECIPE), [*RUN, f"output_dir={tmp_path / 'run'}", "eval.samples_per_prompt=2",
                                         "stability.kl_blowup.max_kl_ref=0.125"])
    run = Trainer(cfg, progress=False).fit()
    drawn = []
    real = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **kw: drawn.append((y, kw.get("label"))) or
                        real(self, y, *a, **kw))
    page = write_report(run).read_text()
    assert (run / "plots" / "gold.png").is_file()  # the gold in a panel of its own
    # the recipe's threshold, drawn where it fires, on a plot scaled to the data (it says when that is off it)
    assert any(y == 0.125 and label.startswith("kl_blowup: max_kl_ref = 0.125") for y, label in drawn)
    kl = [max(r["kl_ref"] for r in read_rows(run / "metrics.jsonl") if r.get("kl_ref") is not None)]
    assert kl[0] < 0.125 and ("kl_blowup: max_kl_ref = 0.125 (above the plot)", ) in [(lb,) for _, lb in drawn]
    table = page[page.index("<h2>Samples side by side"):page.index("<h2>Plots")]
    rows = re.findall(r"<tr><td>.*?</tr>", table, flags=re.S)
    columns = table.count("<th>step ")
    assert len(rows) == 2 and "step 0 (first" in table and "latest)</th>" in table and columns in (2, 3)
    exported = json.loads((run / "final" / "rlkit_final.json").read_text())["step"]
    assert f"<th>step {exported} (" in table and "exported in final/" in table
    from rlkit.data import read_items

    probe = [item.instruction for item in read_items(cfg.data)][:2]  # the evaluation's prompts, in order
    assert [r.split("<td>")[2].split("</td>")[0] for r in rows] == probe
    for row in rows:  # the source, then 2 samples at step 0 and 2 at the latest step, each with its scores
        assert row.count("<img") == 1 + 2 * columns and row.count("proxy ") == row.count("gold ") == 2 * columns
    assert "<h2>Resolved recipe</h2>" in page and "max_kl_ref: 0.125" in page
    assert "pipe.load_lora_weights(" in page and 'src="http' not in page


def test_a_guard_stop_prints_the_summary_then_its_line_and_exits_3(tmp_path, capsys):
    args = [*RUN, f"output_dir={tmp_path / 'run'}", "stability.kl_blowup.max_kl_ref=1e-12",
            "stability.kl_blowup.action=stop"]
    assert main(["run", str(TINY_RECIPE), *args]) == 3
    captured = capsys.readouterr()
    assert f"stopped by the stability guard: {tmp_path / 'run'}" in captured.out and "kl_blowup x1" in captured.out
    assert "error: stability guard stopped the run" in captured.err


@pytest.mark.slow  # two runs in subprocesses: CI time (run.log itself is checked by the finished run above)
def test_run_log_is_the_console_line_for_line_through_a_stop_signal_and_a_resume(tmp_path):
    """Everything a run prints (its lines, warnings, the signal's, the resume's, the summary, error lines) is in
    run.log in the same order; only the progress bar stays on the terminal."""
    import signal
    import time

    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "rlkit"]
    first = subprocess.Popen([*cmd, "run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=200",
                              "train.log_every=1", "train.report=false", "sampler.num_steps=3"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and "step 2/" not in ((run / "run.log").read_text() if (run / "run.log").exists()
                                                         else ""):
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    said_first = first.communicate(timeout=120)[0]
    assert first.returncode == 130 and "stopped by signal after step" in said_first, said_first[-2000:]
    resumed = subprocess.run([*cmd, "resume", str(run), "train.steps=4", "train.log_every=2"], capture_output=True,
                             text=True, cwd=REPO, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def lines(text: str) -> list[str]:  # without the bar's renders (they end with the time left)
        return [ln for ln in text.splitlines() if ln.strip() and not re.search(r"(\d+:\d\d:\d\d|-:--:--)$", ln)]

    console = lines(said_first) + lines(resumed.stdout) + lines(resumed.stderr)
    log = lines((run / "run.log").read_text())
    assert sorted(log) == sorted(console), (set(log) ^ set(console))
    assert lines(said_first) == log[:len(lines(said_first))]  # in order
    for needed in ("signal 2: finishing step", "resume with: rlkit resume", "resuming with changed settings",
                   "resumed from", f"done: {run}"):
        assert any(needed in ln for ln in log), needed


def test_push_without_a_network_is_one_line(finished_run, monkeypatch, capsys):
    """What huggingface_hub raises when the Hub cannot be reached (its HTTP client's connection error)."""
    from huggingface_hub import HfApi

    run, _ = finished_run

    class ConnectError(Exception):  # stands for httpx's, raised from inside the client
        pass

    def unreachable(self, repo_id, **kw):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    assert main(["push", str(run), "me/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Hub" in err[0] and "Name or service not known" in err[0]


def test_weights_are_as_readable_as_the_rest(finished_run):
    run, _ = finished_run
    modes = {p.relative_to(run): p.stat().st_mode & 0o777 for p in run.rglob("*")
             if p.is_file() and p.suffix in (".safetensors", ".json", ".yaml", ".pt")}
    assert len(set(modes.values())) == 1, modes  # one mode for every file (the umask's), weights included


def test_the_summary_puts_the_held_out_figures_first_and_never_an_arrow_on_batch_means(finished_run):
    _, out = finished_run
    lines = out[out.index("done: "):].splitlines()
    gold = next(i for i, ln in enumerate(lines) if "redness (held-out gold)" in ln)
    batches = next(i for i, ln in enumerate(lines) if "reward (training batches" in ln)
    assert gold < batches and "->" not in lines[batches] and "the held-out lines compare" in lines[batches]


def test_a_report_without_evaluations_shows_the_training_samples_and_what_the_rewards_said(tmp_path):
    from rlkit.config import load_recipe
    from rlkit.logs import read_rows
    from rlkit.report import write_report
    from rlkit.trainer import Trainer

    cfg = load_recipe(str(TINY_RECIPE), ["train.steps=3", "sampler.num_steps=3", "algorithm.group_size=3",
                                         "algorithm.micro_batch=6", "train.report=false", "train.grid_every=1",
                                         f"output_dir={tmp_path / 'run'}", "rewards=[{name: 'tests_said:Said'}]"])
    run = Trainer(cfg, progress=False).fit()
    said = read_rows(run / "samples" / "rationales.jsonl")
    assert [r["step"] for r in said] == [1] * 4 + [2] * 4 + [3] * 4  # the first 4 of each step's 6 samples
    page = write_report(run).read_text()
    section = page[page.index("<h2>Training samples"):page.index("<h2>Plots")]
    assert section.count("<img") == 2 and "step 1" in section and "step 3" in section
    assert "Said, sample 0" in section and html.escape(said[-1]["rationale"]) in section
