"""From human preference pairs to a trained JRM: EditReward-Data read as pairs, teacher rationales written by a
real OpenAI-compatible server (`transformers serve` on 127.0.0.1), filtered against the human label, and
`rlkit train-reward` trained on the result."""

import json
import shutil
from pathlib import Path

import pytest
from judge_server import forced_answer, free_port

from rlkit.core.errors import UserError
from rlkit.rewards.jrm.annotate import rationale_text, read_answer
from rlkit.rewards.jrm.pairs import read_pairs, resolve_pairs_file

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "recipes" / "data" / "editreward_tiny" / "train.json"
# what the forced teacher answers for every pair: A is better
TEACHER = json.dumps({"A": {"regions": [{"box": [250, 250, 750, 750], "reasoning": "recoloured"}], "global": "kept",
                            "tiers": {"instruction": 4, "consistency": 4}},
                      "B": {"regions": [], "global": "kept", "tiers": {"instruction": 1, "consistency": 4}},
                      "preferred": "A"}, separators=(",", ":"))


def side(instruction=4, consistency=4, box=(250, 250, 750, 750)):
    return {"regions": [{"box": list(box), "reasoning": "the square is red"}], "global": "background kept",
            "tiers": {"instruction": instruction, "consistency": consistency}}


def test_rationales_are_the_jrm_format_and_contradictions_are_caught():
    assert rationale_text(side()) == ("[250,250,750,750]: the square is red Global: background kept Tiers: "
                                      "instruction 4/4, consistency 4/4.")
    good = json.dumps({"A": side(2, 4), "B": side(4, 4), "preferred": "B"})
    chosen, rejected = read_answer(good, "B", tie=False)  # humans preferred the edit shown as B
    assert "instruction 4/4" in chosen and "instruction 2/4" in rejected
    with pytest.raises(ValueError, match="^contradicts the label: humans preferred A, the teacher B"):
        read_answer(good, "A", tie=False)
    lying = json.dumps({"A": side(1, 1), "B": side(4, 4), "preferred": "A"})  # verdict A, tiers say B
    with pytest.raises(ValueError, match=r"^contradicts.*tiers 2 vs 8"):
        read_answer(lying, "A", tie=False)
    with pytest.raises(ValueError, match="^contradicts the label: humans judged a tie"):
        read_answer(good, "A", tie=True)
    assert read_answer(json.dumps({"A": side(), "B": side(), "preferred": "tie"}), "A", tie=True)
    for bad, message in [("no json at all", "not a JSON object"),
                         (json.dumps({"A": side(box=(0, 0, 2000, 5)), "B": side(), "preferred": "A"}), "0-1000"),
                         (json.dumps({"A": side(instruction=7), "B": side(), "preferred": "A"}), "tiers"),
                         ('{"A": {"regions": [], "tiers": {"instruction": 4, "consistency": 4}}, "B": ', "A and B")]:
        with pytest.raises(ValueError, match=message) as info:
            read_answer(bad, "A", tie=False)
        assert not str(info.value).startswith("contradicts")


def test_editreward_data_reads_as_pairs(tmp_path, monkeypatch):
    pairs = read_pairs(SAMPLE, head_range=(1.0, 5.0))
    rows = json.loads(SAMPLE.read_text())
    assert len(pairs) == len(rows) == 24 and sum(p.tie for p in pairs) == sum(r["tie_case"] for r in rows) == 4
    for pair, row in zip(pairs, rows):  # overall 2-8 mapped linearly onto the head's bins
        assert pair.score_chosen == pytest.approx(1 + (row["model1_overall_score"] - 2) / 6 * 4)
        assert pair.score_rejected == pytest.approx(1 + (row["model2_overall_score"] - 2) / 6 * 4)
        assert pair.chosen == SAMPLE.parent / row["path1"] and pair.instruction == row["prompt"]
    # the same rows as JSONL in another folder, images found through image_root
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.chosen for p in read_pairs(jsonl, image_root=SAMPLE.parent)] == [p.chosen for p in pairs]
    with pytest.raises(UserError, match=r"pairs.jsonl:1: image not found"):
        read_pairs(jsonl)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{**rows[0], "model2_overall_score": 0.4}]))
    with pytest.raises(UserError, match=r"broken.json\[0\].*outside EditReward-Data's 2-8"):
        read_pairs(broken, image_root=SAMPLE.parent)
    # hf:OWNER/NAME/PATH reads the local hub cache, never the network
    cache = tmp_path / "hub"
    snapshot = cache / "datasets--TIGER-Lab--EditReward-Data" / "snapshots" / "abc123"
    shutil.copytree(SAMPLE.parent, snapshot)
    (cache / "datasets--TIGER-Lab--EditReward-Data" / "refs").mkdir()
    (cache / "datasets--TIGER-Lab--EditReward-Data" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert len(read_pairs("hf:TIGER-Lab/EditReward-Data/train.json")) == 24
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*hf download --repo-type dataset"):
        resolve_pairs_file("hf:Someone/Absent/train.json")


def test_annotate_then_train_a_jrm(judge_server, tmp_path, capsys):
    """Six pairs of the tiny EditReward sample through a real teacher server (forced to answer "A is better"
    whatever it is shown), then `rlkit train-reward` on what it kept."""
    from rlkit.cli import main

    url, model = judge_server
    rows = json.loads(SAMPLE.read_text())[:6]  # pair 5 is a tie
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(rows))
    out = tmp_path / "annotated" / "pairs.jsonl"
    args = ["annotate-pairs", str(pairs), str(out), "--base-url", url, "--image-root", str(SAMPLE.parent),
            "--max-tokens", "300", "--request", json.dumps(forced_answer(model, TEACHER))]
    assert main(args) == 0
    report = capsys.readouterr().out
    import random

    rng = random.Random(0)  # the annotator's draw of which edit is shown first (seed 0)
    shown_second = [rng.random() < 0.5 for _ in rows]
    expect = [i for i, r in enumerate(rows) if not r["tie_case"] and not shown_second[i]]
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert [k["pair_index"] for k in sorted(kept, key=lambda k: k["pair_index"])] == expect and expect
    dropped = [json.loads(x) for x in out.with_suffix(".dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == 6 and all(d["reason"].startswith("contradicts") for d in dropped)
    assert f"kept {len(kept)}, dropped {len(dropped)} contradicting" in report
    first = kept[0]
    assert first["rationale1"].startswith("[250,250,750,750]: recoloured Global: kept Tiers: instruction 4/4")
    assert "instruction 1/4" in first["rationale2"] and first["model1_overall_score"] == 8
    # run again: nothing is asked twice
    assert main(args) == 0
    assert "annotated 0 pairs" in capsys.readouterr().out and len(out.read_text().splitlines()) == len(kept)
    # the output feeds train-reward as it is (image paths relative to it)
    run = tmp_path / "jrm"
    assert main(["train-reward", "jrm_tiny", f"data.train={out}", "data.eval=null", f"output_dir={run}",
                 "train.epochs=2", "train.batch_size=2", "train.logging_steps=1"]) == 0
    from rlkit.rewards.jrm.model import JRMModel

    jrm = JRMModel.load(str(run / "final"), device="cpu")
    assert jrm is not None and (run / "final").is_dir()


def test_annotate_a_server_that_is_not_there_or_answers_garbage(judge_server, tmp_path, capsys):
    from rlkit.cli import main

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(json.loads(SAMPLE.read_text())[:2]))
    out = tmp_path / "out.jsonl"
    common = ["--image-root", str(SAMPLE.parent), "--max-tokens", "8"]
    assert main(["annotate-pairs", str(pairs), str(out), "--base-url", f"http://127.0.0.1:{free_port()}/v1",
                 *common]) == 2
    assert "no OpenAI-compatible server at" in capsys.readouterr().err
    assert main(["annotate-pairs", str(pairs), str(out), "--base-url", judge_server[0], *common]) == 0
    assert "kept 0, dropped 0 contradicting the human label and 2 unreadable" in capsys.readouterr().out
    assert all(json.loads(x)["reason"] for x in out.with_suffix(".dropped.jsonl").read_text().splitlines())


def test_annotate_goes_on_by_pair_not_by_row_and_keeps_to_its_own_output(judge_server, tmp_path, capsys):
    """Pairs inserted at the top are annotated and the others not again; a last line cut by an interrupted run
    is repaired (named); a file that is not annotate-pairs' own is refused; a missing image is named before
    any request."""
    from rlkit.cli import main

    url, model = judge_server
    rows = [r for r in json.loads(SAMPLE.read_text()) if not r["tie_case"]][:3]
    pairs, out = tmp_path / "pairs.json", tmp_path / "out.jsonl"
    common = ["--image-root", str(SAMPLE.parent), "--max-tokens", "300", "--request",
              json.dumps(forced_answer(model, TEACHER))]
    pairs.write_text(json.dumps(rows[1:]))
    assert main(["annotate-pairs", str(pairs), str(out), "--base-url", url, *common]) == 0
    pairs.write_text(json.dumps(rows))  # a new pair at the top: the others keep their identity, not their row
    assert main(["annotate-pairs", str(pairs), str(out), "--base-url", url, *common]) == 0
    assert "annotated 1 pairs" in capsys.readouterr().out

    def keys():
        return [json.loads(x)["pair_key"] for f in (out, out.with_suffix(".dropped.jsonl")) if f.is_file()
                for x in f.read_text().splitlines()]

    assert sorted(keys()) == sorted(set(keys())) and len(keys()) == 3
    written = out if out.is_file() and out.read_text() else out.with_suffix(".dropped.jsonl")
    written.write_bytes(written.read_bytes()[:-25])  # the last row cut short
    assert main(["annotate-pairs", str(pairs), str(out), "--base-url", url, *common]) == 0
    said = capsys.readouterr().out
    assert "was cut short by an interrupted run: removed" in said and "annotated 1 pairs" in said
    assert len(keys()) == 3 and len(set(keys())) == 3

    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    assert main(["annotate-pairs", str(pairs), str(mine), "--base-url", url, *common]) == 2
    assert "notes.txt line 1 is not a row annotate-pairs wrote" in capsys.readouterr().err
    assert mine.read_text() == "my notes\n"
    pairs.write_text(json.dumps([{**rows[0], "path1": "gone.png"}]))
    assert main(["annotate-pairs", str(pairs), str(tmp_path / "o2.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                 *common]) == 2
    assert "pairs.json[0]: image not found" in capsys.readouterr().err


@pytest.mark.parametrize("value,tie", [(True, True), ("false", False), ("True", True), (0, False), (None, False)])
def test_a_tie_given_as_a_word_is_read_as_that_word(tmp_path, value, tie):
    row = {**json.loads(SAMPLE.read_text())[0], "tie_case": value}
    (tmp_path / "p.json").write_text(json.dumps([row]))
    assert read_pairs(tmp_path / "p.json", SAMPLE.parent)[0].tie is tie


def test_a_tie_that_is_not_a_yes_or_no_and_scores_off_the_scale_are_refused(tmp_path):
    row = json.loads(SAMPLE.read_text())[0]
    for bad, needle in (({"tie_case": "maybe"}, "tie is 'maybe'"), ({"model1_overall_score": 1e9}, "outside"),
                        ({"score1": 1e9}, "outside the distribution head's")):
        (tmp_path / "p.json").write_text(json.dumps([{**row, **bad}]))
        with pytest.raises(UserError, match=needle):
            read_pairs(tmp_path / "p.json", SAMPLE.parent)
