"""Accidents to a run's files (a cut config.yaml, a run that fails while loading, tampered checkpoint state):
the run continues with what it had, or refuses in one line; nothing the run kept is lost."""

import json
from pathlib import Path

import pytest
from helpers import TINY_RECIPE, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from rlkit import checkpoint as ckpt
from rlkit.cli import main
from rlkit.config import load_saved_recipe
from rlkit.core.errors import UserError
from rlkit.trainer import Trainer

# settings that differ from the schema defaults, so a resume on defaults would show
KEPT = ["optim.lr=3e-3", "train.keep_last=0", "train.steps=2", "train.save_every=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("cut"), *KEPT)
    Trainer(cfg, progress=False).fit()
    return cfg


def _values(cfg):
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("resume"), plain.pop("output_dir")
    return plain


@pytest.mark.parametrize("stride", [pytest.param(10, marks=pytest.mark.slow), 90])
def test_config_yaml_cut_anywhere_resumes_with_the_checkpoints_recipe(finished, tmp_path, capsys, stride):
    """Cut at every tenth byte (-m slow; every 90th by default: each load takes a fifth of a second)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished.output_dir, run)
    text = (run / "config.yaml").read_bytes()
    want = _values(load_saved_recipe(run, []))
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    for cut in range(0, len(text), stride):
        (run / "config.yaml").write_bytes(text[:cut])
        try:
            got = load_saved_recipe(run, [])
        except UserError as err:  # refusing is allowed; resuming on defaults is not
            assert len(err.problems) == 1, cut
            continue
        assert _values(got) == want, f"config.yaml cut at byte {cut} resumed with another recipe"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
    assert "resuming with the recipe saved in" in capsys.readouterr().out


def test_resume_after_a_cut_keeps_every_checkpoint_and_the_recipe(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished.output_dir, run)
    text = (run / "config.yaml").read_bytes()
    (run / "config.yaml").write_bytes(text[: len(text) // 2])
    before = [c.step for c in ckpt.find_checkpoints(run)]
    assert len(before) == 2
    assert main(["resume", str(run), "train.steps=3"]) == 0
    assert "resuming with the recipe saved in" in capsys.readouterr().out
    assert [c.step for c in ckpt.find_checkpoints(run)] == [1, 2, 3]  # keep_last 0 kept, not the default 3
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.optim.lr == 3e-3 and saved.train.keep_last == 0


def test_a_cut_recipe_with_no_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("policy:\n  name: tiny_kontext\noptim:\n  lr: 0.0")
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut short" in err[0] and "no checkpoint holds the run's recipe" in err[0]
    (run / "config.yaml").write_text("a: [")
    assert main(["resume", str(run)]) == 2
    assert "not YAML" in capsys.readouterr().err


def test_a_run_that_fails_while_loading_leaves_nothing_and_the_fix_runs_in_its_place(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG cut short
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"image": "cut.png", "instruction": "make it blue"}) + "\n")
    run = tmp_path / "run"
    base = [f"output_dir={run}", "data.source=jsonl", f"data.path={manifest}", "train.steps=1",
            "sampler.num_steps=2", "algorithm.group_size=2", "algorithm.micro_batch=4", "train.prompts_per_step=1",
            "eval.every=0", "train.report=false"]
    assert main(["run", str(TINY_RECIPE), *base, "logging.report_to=[tensorboard]"]) == 2
    assert "cut.png" in capsys.readouterr().err
    assert not run.exists()  # exit 2 writes nothing
    manifest.write_text(json.dumps({"image": "ok.png", "instruction": "make it blue"}) + "\n")
    assert main(["run", str(TINY_RECIPE), *base]) == 0  # the corrected recipe differs: still not refused
    assert (run / "final").is_dir()


def test_a_run_that_fails_after_a_step_without_a_checkpoint_is_replaced_by_the_rerun(tmp_path, capsys):
    from rlkit.core.errors import RewardError

    cfg = tiny_config(tmp_path, "train.steps=3", "train.save_every=0", "eval.every=0")
    trainer = Trainer(cfg, progress=False)
    calls = {"n": 0}
    real = trainer.rewards.__call__

    def fail_second(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RewardError("flaky", "judge went away")
        return real(batch)

    trainer.rewards = fail_second
    with pytest.raises(RewardError):
        trainer.fit()
    run = tmp_path / "run"
    assert (run / "metrics.jsonl").is_file() and (run / ".rlkit-failed").is_file()  # kept to look at
    assert main(["run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=2", "train.save_every=1",
                 "sampler.num_steps=4", "algorithm.group_size=3", "algorithm.micro_batch=6", "eval.every=0",
                 "train.report=false"]) == 0
    assert "failed before its first checkpoint: starting over" in capsys.readouterr().out
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and not (run / ".rlkit-failed").exists()


def test_an_extended_run_resumed_with_its_old_length_is_refused_and_a_stale_export_is_replaced(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "train.steps=2", "train.save_every=1", "eval.every=0")
    Trainer(cfg, progress=False).fit()
    run = tmp_path / "run"
    assert main(["resume", str(run), "train.steps=3"]) == 0
    assert main(["resume", str(run), "train.steps=2"]) == 2
    assert "at step 3, beyond train.steps=2" in capsys.readouterr().err
    (run / "final" / "rlkit_final.json").write_text(json.dumps({"weights": "last", "step": 2}))  # a stale export
    assert main(["resume", str(run)]) == 0
    assert json.loads((run / "final" / "rlkit_final.json").read_text())["step"] == 3


def _tamper(checkpoint, edit_state=None, edit_adapter=None):
    """Change a checkpoint's file and recompute its manifest, as a careless edit or another tool would."""
    from safetensors.torch import load_file, save_file

    if edit_state is not None:
        path = checkpoint / "state.json"
        state = json.loads(path.read_text())
        data = edit_state(state)
        path.write_bytes(data if isinstance(data, bytes) else json.dumps(state).encode())
    if edit_adapter is not None:
        tensors = load_file(checkpoint / "adapter.safetensors")
        edit_adapter(tensors)
        save_file(tensors, checkpoint / "adapter.safetensors")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest.update({name: ckpt._sha256(checkpoint / name) for name in ckpt.FILES})
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def _drop_first(tensors):
    tensors.pop(sorted(tensors)[0])


def _reshape_first(tensors):
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].flatten()[:3].clone()


@pytest.mark.parametrize("edit_state,edit_adapter,needle", [
    (lambda s: s.update(step="x"), None, 'state.json.step is "x"'),
    (lambda s: s.update(step=-4), None, "state.json.step is -4"),
    (lambda s: b'{"step": 1e400}', None, "state.json.step is Infinity"),
    (lambda s: b"\xff\xfe" + json.dumps(s).encode(), None, "state.json: unreadable"),
    (lambda s: s["data"].update(position=None), None, "'data'.position is null"),
    (lambda s: s["guard"].update(proxy="nan"), None, "'guard'.proxy"),
    (lambda s: s["rng"].update(python=[3, [1, 2], None]), None, "'rng' is not the python and numpy"),
    (None, _drop_first, "lacks 1 tensor(s) the policy trains"),
    (None, _reshape_first, "has shape (3,)"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_applied(tmp_path, capsys, edit_state,
                                                                            edit_adapter, needle):
    cfg = tiny_config(tmp_path, "train.steps=1", "eval.every=0")
    Trainer(cfg, progress=False).fit()
    run = tmp_path / "run"
    _tamper(run / "checkpoints" / "step_000001", edit_state, edit_adapter)
    before = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert main(["resume", str(run), "train.steps=2"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def restorable(tmp_path_factory):
    """A finished one-step run and a trainer built on it: its checkpointer loads checkpoints on demand."""
    cfg = tiny_config(tmp_path_factory.mktemp("fuzz"), "train.steps=1", "eval.every=0")
    Trainer(cfg, progress=False).fit()
    trainer = Trainer(cfg, progress=False)
    trainer.directory.release()
    path = Path(cfg.output_dir) / "checkpoints" / "step_000001"
    return trainer, path, json.loads((path / "state.json").read_text())


def _load_or_one_line(trainer, path, data: bytes) -> None:
    (path / "state.json").write_bytes(data)
    _tamper(path)  # the manifest agrees: only the structure check stands between these bytes and the run
    try:
        trainer.checkpointer._load(path)
    except UserError as err:
        assert err.problems and all("\n" not in p for p in err.problems)
    assert ckpt.step_of(path) is None or isinstance(ckpt.step_of(path), int)
    assert ckpt.saved_config(path) is None or isinstance(ckpt.saved_config(path), dict)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_as_state_json_are_one_line(restorable, data):
    trainer, path, _ = restorable
    _load_or_one_line(trainer, path, data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_field_of_state_json_changed_to_anything_is_one_line(restorable, data):
    trainer, path, state = restorable
    state = json.loads(json.dumps(state))
    node = state
    while True:  # walk down to a random field (a dict key or a list item) and replace it
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], (dict, list)) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(JSON_VALUES)
        break
    _load_or_one_line(trainer, path, json.dumps(state).encode())


def test_resume_over_damaged_metrics_lines_says_so_and_goes_on(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "train.steps=1", "eval.every=0")
    Trainer(cfg, progress=False).fit()
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xff{"step": 1e400}\n{"step": 2, "rew')
    assert main(["resume", str(run), "train.steps=2"]) == 0
    assert "dropped 2 line(s) that are not rows" in capsys.readouterr().out
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
