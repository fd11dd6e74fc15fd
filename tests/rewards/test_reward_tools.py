"""`rlkit eval-reward` and `rlkit explain` on what users hand them: a judge that ties every pair (the report
stays strict JSON), an --output in a folder that does not exist yet or cannot exist (found before the
evaluation), and a damaged reward folder (one line naming it, from every command that loads one)."""

import json

import pytest
import torch
from helpers import tiny_config

from rlkit.cli import main
from rlkit.rewards.jrm.reward import random_jrm
from rlkit.rewards.jrm.synthetic import write_benchmark_samples


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """An untrained tiny JRM whose head outputs a constant: every pair is a tie."""
    folder = tmp_path_factory.mktemp("judge") / "final"
    model = random_jrm("tiny", 32, "cpu")
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
    model.save(folder)
    return folder


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_all_tied_pairs_write_strict_json(judge, tmp_path):
    files = write_benchmark_samples(tmp_path, n=4, seed=1)
    rows = [json.loads(x) for x in files["pairs"].read_text().splitlines()]
    files["pairs"].write_text("".join(json.dumps({**r, "tie": True}) + "\n" for r in rows))  # nothing decided
    out = tmp_path / "new" / "folder" / "report.json"  # created up front
    assert main(["eval-reward", str(judge), str(files["pairs"]), "--output", str(out)]) == 0
    report = _strict(out.read_text())
    assert report["n"] == 0 and report["accuracy"] is None


def test_an_output_that_cannot_be_written_fails_before_the_evaluation(judge, tmp_path, capsys, monkeypatch):
    files = write_benchmark_samples(tmp_path, n=4, seed=1)
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr("rlkit.rewards.jrm.model.JRMModel.load", lambda *a, **k: pytest.fail("loaded the model first"))
    code = main(["eval-reward", str(judge), str(files["pairs"]), "--output", str(tmp_path / "a_file" / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write there" in err[0]


@pytest.mark.parametrize("damage", ["head", "config", "backbone"])
def test_a_damaged_reward_folder_is_one_line_everywhere(judge, tmp_path, capsys, damage):
    import shutil

    broken = tmp_path / "final"
    shutil.copytree(judge, broken)
    if damage == "head":
        (broken / "head.safetensors").write_bytes((broken / "head.safetensors").read_bytes()[:40])
    elif damage == "config":
        (broken / "jrm.json").write_text('{"image_size": 32,')
    else:
        for f in (broken / "backbone").glob("*.safetensors"):
            f.unlink()
    files = write_benchmark_samples(tmp_path, n=2, seed=1)
    row = json.loads(files["pairs"].read_text().splitlines()[0])
    commands = [
        ["eval-reward", str(broken), str(files["pairs"])],
        ["explain", str(broken), str(tmp_path / row["path_src"]), str(tmp_path / row["path1"]), "x"],
        ["run", "tiny_edit", f"output_dir={tmp_path / 'run'}",
         f"rewards=[{{name: jrm, kwargs: {{path: '{broken}'}}}}]"],
    ]
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (argv[0], err)
        assert f"{broken}" in err[0] and ("damaged" in err[0] or "not a trained JRM" in err[0]), err[0]


def test_the_jrm_reward_scores_in_a_run_when_whole(judge, tmp_path):
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, "train.steps=1", f"rewards=[{{name: jrm, kwargs: {{path: '{judge}'}}}}]")
    assert (Trainer(cfg, progress=False).fit() / "final").is_dir()
