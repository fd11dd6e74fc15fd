"""`rlkit eval` on the GEdit-Bench and ImgEdit-Bench fixtures (stored as the benchmarks publish them): the
figures against a hand computation from a scripted judge, resumption, missing answers, targets side by side."""

import json
import math
from statistics import fmean

import pytest
from helpers import REPO, TINY_RECIPE, tiny_config
from scripted_judge import ScriptedJudge

from rlkit.cli import main
from rlkit.trainer import Trainer

GEDIT = REPO / "recipes" / "data" / "gedit_tiny"
IMGEDIT = REPO / "recipes" / "data" / "imgedit_tiny"
# the scripted judge's semantic scores by instruction; every quality answer is [7, 9] (PQ 7)
SC = {"make the square red": [8, 6], "把圆变成红色": [9, 9], "remove the bar": [4, 7],
      "make it look like a pencil sketch": [10, 3], "把它变成水彩画": [5, 5]}  # "remove the triangle": never
TINY = [f"{TINY_RECIPE}"]


def gedit_answer(text, images, times):
    if images == 1:
        return '{"score": [7, 9], "reasoning": "clean"}'
    instruction = next((i for i in SC if f'"{i}"' in text), None)
    if instruction is None:
        return "I cannot rate this."  # no scores, every time: missing
    if instruction == "remove the bar" and times == 1:
        return "Let me think about it."  # no scores the first time: asked again
    if instruction == "make it look like a pencil sketch":
        return 'Here: ```json\n{"score": [10, 3], "reasoning": "over-edited"}\n```'
    return json.dumps({"score": SC[instruction], "reasoning": "ok"})


@pytest.fixture
def judge():
    server = ScriptedJudge(gedit_answer)
    yield server
    server.stop()


def _eval(judge, out, *targets, benchmark="gedit", data=GEDIT, extra=()):
    return main(["eval", *map(str, targets), "--benchmark", benchmark, "--data", str(data), "--judge-url",
                 judge.url, "--output", str(out), "--concurrency", "3", *extra])


def test_gedit_figures_equal_the_hand_computation_and_a_second_run_redoes_nothing(judge, tmp_path, capsys):
    assert _eval(judge, tmp_path / "ev", TINY_RECIPE) == 0
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    figures = next(iter(scores["targets"].values()))
    item = {  # key: (task, language, intersection, SC); PQ = 7 for all; b1 has no semantic answer
        "a1": ("color_alter", "en", True, 6), "a2": ("color_alter", "cn", True, 9),
        "b2": ("subject-remove", "en", True, 4), "c1": ("style_change", "en", False, 3),
        "c2": ("style_change", "cn", True, 5)}

    def macro(keys):
        tasks = sorted({item[k][0] for k in keys})
        per = {t: [k for k in keys if item[k][0] == t] for t in tasks}
        return {"SC": fmean(fmean(item[k][3] for k in ks) for ks in per.values()), "PQ": 7.0,
                "O": fmean(fmean(math.sqrt(item[k][3] * 7) for k in ks) for ks in per.values()), "n": len(keys)}

    for got, want in ((figures["overall"], macro(list(item))),
                      (figures["intersection"], macro([k for k in item if item[k][2]])),
                      (figures["languages"]["en"], macro([k for k in item if item[k][1] == "en"])),
                      (figures["languages"]["cn"], macro([k for k in item if item[k][1] == "cn"]))):
        assert got == pytest.approx(want)
    assert figures["tasks"]["subject-remove"] == pytest.approx({"SC": 4, "PQ": 7, "O": math.sqrt(28), "n": 1})
    assert figures["missing"] == 1 and scores["judge"]["temperature"] == 0.0
    assert scores["judge"]["model"] == "scripted-judge" and scores["prompts"] == {"version": "rlkit-gedit-v1"}
    rows = [json.loads(x) for x in (tmp_path / "ev" / "judgements.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and sum(r["scores"] is None for r in rows) == 1  # 6 items x 2 questions, one missing
    missing = next(r for r in rows if r["scores"] is None)
    assert missing["answer"] == "I cannot rate this." and missing["tries"] == 3  # asked, then asked twice more
    asked = judge.requests
    images = sorted(p.name for p in (tmp_path / "ev" / "images").rglob("*.png"))
    assert _eval(judge, tmp_path / "ev", TINY_RECIPE) == 0
    assert judge.requests == asked  # nothing asked again
    assert sorted(p.name for p in (tmp_path / "ev" / "images").rglob("*.png")) == images
    assert json.loads((tmp_path / "ev" / "scores.json").read_text())["targets"] == scores["targets"]
    assert "(5 items, 1 missing)" in capsys.readouterr().out
    assert _eval(judge, tmp_path / "ev", TINY_RECIPE, extra=["--retry-missing"]) == 0
    assert judge.requests == asked + 3  # only the missing question, three tries


def test_a_run_and_its_base_side_by_side_on_imgedit(tmp_path):
    cfg = tiny_config(tmp_path, "train.steps=1", "eval.every=0")
    Trainer(cfg, progress=False).fit()

    def imgedit_answer(text, images, times):
        return "Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Coherence: 3\nReasoning: fine" \
            if "add a red hat" in text else "Style Fidelity: 5\nContent Preservation: 4\nRendering Quality: 2" \
            if "oil painting" in text else "\n".join(f"{a}: 3" for a in ("Prompt Compliance", "Visual Naturalness",
                                                                          "Physical & Detail Integrity"))

    judge = ScriptedJudge(imgedit_answer)
    try:
        assert _eval(judge, tmp_path / "ev", tmp_path / "run", TINY_RECIPE, benchmark="imgedit", data=IMGEDIT) == 0
    finally:
        judge.stop()
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert list(scores["targets"]) == ["run/final", "tiny_edit (base)"]
    for figures in scores["targets"].values():
        cats = figures["categories"]
        assert cats["add"] == pytest.approx({"Prompt Compliance": 4, "Visual Naturalness": 3,
                                             "Physical & Detail Coherence": 3, "average": 10 / 3, "n": 1})
        assert cats["style"]["average"] == pytest.approx(11 / 3) and cats["remove"]["average"] == 3
        assert figures["overall"]["average"] == pytest.approx(fmean([10 / 3, 3, 11 / 3, 3]))
    page = (tmp_path / "ev" / "page.html").read_text()
    assert page.count("<tr>") == 1 + 2 + 4 + 1 and "run/final" in page and "tiny_edit (base)" in page
    assert page.count("data:image/png") == 4 * 3  # each row: the source and the two targets' edits


@pytest.mark.parametrize("data,needle", [
    ("nowhere", "not found"), (IMGEDIT, "no parquet files"),
    (IMGEDIT / "basic_edit.json", "not a readable parquet file"),
])
def test_data_that_is_not_the_benchmark_is_one_line(judge, tmp_path, capsys, data, needle):
    assert _eval(judge, tmp_path / "ev", TINY_RECIPE, data=data) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_run_whose_guard_gold_is_the_benchmark(judge, tmp_path, capsys):
    from rlkit.report import write_report

    bench = ["eval.every=1", "eval.max_prompts=1", "eval.samples_per_prompt=1", "eval.benchmark.name=gedit",
             f"eval.benchmark.data={GEDIT}", f"eval.benchmark.judge_url={judge.url}", "eval.benchmark.max_items=3",
             "eval.benchmark.gold=true", "stability.gold_divergence.action=warn"]
    cfg = tiny_config(tmp_path, "train.steps=2", *bench)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if r.get("bench/gedit_O") is not None]
    assert [r["step"] for r in evaluated] == [0, 1, 2]
    # the first three items: a1 (SC 6), a2 (SC 9), b1 (missing): two tasks, PQ 7
    want = fmean([fmean([math.sqrt(6 * 7), math.sqrt(9 * 7)])])
    assert evaluated[0]["bench/gedit_O"] == pytest.approx(want) and evaluated[0]["bench/gedit_missing"] == 1
    assert all(r["gold/reward"] == r["bench/gedit_O"] for r in evaluated)
    assert trainer.guard.gold == [r["bench/gedit_O"] for r in evaluated]  # what the guard watched
    report = write_report(tmp_path / "run").read_text()
    assert "bench/gedit_O" in report  # the evaluations table's column
    assert (tmp_path / "run" / "plots" / "benchmark.png").is_file()


def test_validate_asks_the_benchmarks_judge(tmp_path, capsys):
    bench = ["eval.every=1", "eval.benchmark.name=gedit", f"eval.benchmark.data={GEDIT}",
             "eval.benchmark.judge_url=http://127.0.0.1:9/v1"]
    assert main(["validate", str(TINY_RECIPE), *bench]) == 2
    assert "eval.benchmark: judge: no OpenAI-compatible server at http://127.0.0.1:9/v1" in capsys.readouterr().err
    assert main(["validate", str(TINY_RECIPE), *bench, "--offline"]) == 0
    assert main(["validate", str(TINY_RECIPE), "eval.benchmark.name=gedit"]) == 2
    err = capsys.readouterr().err
    assert "'eval.benchmark.data' must be set" in err and "'eval.every' is 0" in err


def test_eval_against_a_real_server(judge_server, tmp_path):
    """A real `transformers serve` (tiny random VLM on 127.0.0.1): the requests go through and every raw answer
    is recorded; a random model's answers give no scores, so the item is missing, never scored."""
    url, model = judge_server
    out = tmp_path / "ev"
    assert main(["eval", str(TINY_RECIPE), "--benchmark", "imgedit", "--data", str(IMGEDIT), "--judge-url", url,
                 "--output", str(out), "--max-items", "1", "--max-tokens", "4"]) == 0
    rows = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["judge"]["model"] == str(model) and isinstance(rows[0]["answer"], str)
    figures = json.loads((out / "scores.json").read_text())["targets"]["tiny_edit (base)"]
    assert figures["missing"] + figures["overall"]["n"] == 1


def test_imgedit_scores_from_logprobs_are_expected_values(tmp_path):
    """score_mode logprobs: each score is sum_s p(s) s over the score digits the judge weighed where it wrote it."""
    labels = ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Coherence")
    digits = {0: [("4", math.log(0.5)), ("5", math.log(0.3)), ("x", math.log(0.2))],  # -> (4*.5+5*.3)/.8
              1: [("3", 0.0)], 2: [("2", math.log(0.25)), ("3", math.log(0.75))]}

    def answer(text, images, times):
        if "add a red hat" not in text:
            return "no"
        tokens = []
        for i, label in enumerate(labels):
            tokens += [(f"{label}:", [(f"{label}:", 0.0)]), (" ", [(" ", 0.0)]), (digits[i][0][0], digits[i]),
                       ("\n", [("\n", 0.0)])]
        return "".join(t for t, _ in tokens), tokens

    judge = ScriptedJudge(answer)
    try:
        assert main(["eval", str(TINY_RECIPE), "--benchmark", "imgedit", "--data", str(IMGEDIT), "--judge-url",
                     judge.url, "--output", str(tmp_path / "ev"), "--max-items", "1", "--score-mode",
                     "logprobs"]) == 0
    finally:
        judge.stop()
    add = json.loads((tmp_path / "ev" / "scores.json").read_text())["targets"]["tiny_edit (base)"]["categories"]
    assert add["add"]["Prompt Compliance"] == pytest.approx((4 * 0.5 + 5 * 0.3) / 0.8)
    assert add["add"]["Visual Naturalness"] == 3 and add["add"]["Physical & Detail Coherence"] == pytest.approx(2.75)


def test_logprobs_on_gedits_two_digit_scale_and_from_a_server_without_them_are_one_line(judge, tmp_path, capsys):
    assert _eval(judge, tmp_path / "a", TINY_RECIPE, extra=["--score-mode", "logprobs"]) == 2
    assert "reads single score digits" in capsys.readouterr().err
    assert _eval(judge, tmp_path / "b", TINY_RECIPE, benchmark="imgedit", data=IMGEDIT,
                 extra=["--score-mode", "logprobs"]) == 2
    assert "returned no logprobs" in capsys.readouterr().err
