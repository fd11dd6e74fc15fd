"""Accidents to a run's files (a cut config.yaml, a run that fails while loading, tampered checkpoint state):
the run continues with what it had, or refuses in one line; nothing the run kept is lost."""

import json

import pytest
from helpers import TINY_RECIPE, tiny_config
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
    assert "cut short" in capsys.readouterr().out
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
