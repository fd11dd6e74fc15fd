"""The vlm_judge reward: its arithmetic on constructed answers, and the whole path against a real
OpenAI-compatible server (`transformers serve` on 127.0.0.1 with a tiny VLM made here)."""

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from judge_server import digit_bias, free_port, save_tiny_vlm, start_transformers_serve, stop

from rlkit.rewards.base import RewardInput
from rlkit.rewards.vlm_judge import VLMJudge, expected_score, load_template, parse_score


def test_expected_score_on_constructed_logprobs():
    # chosen "4" with p=.6, "3" p=.3, "x" p=.1 (not a score: renormalised away)
    pos = [[("4", math.log(0.6)), ("3", math.log(0.3)), ("x", math.log(0.1))]]
    mean, std = expected_score(pos, 0, 5)
    assert mean == pytest.approx((4 * 0.6 + 3 * 0.3) / 0.9)
    assert std == pytest.approx(math.sqrt((0.6 * (4 - mean) ** 2 + 0.3 * (3 - mean) ** 2) / 0.9))
    # the score is read where the answer gives one: a leading space token is skipped; " 2" counts as 2
    pos = [[(" ", 0.0), ("5", -3.0)], [(" 2", math.log(0.5)), ("5", math.log(0.5))]]
    assert expected_score(pos, 0, 5) == (pytest.approx(3.5), pytest.approx(1.5))
    # digits outside the scale are not scores; no score chosen anywhere -> None
    assert expected_score([[("7", 0.0)], [("a", 0.0)]], 0, 5) is None
    assert expected_score([], 0, 5) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.floats(-30, 0)), min_size=1, max_size=10),
       st.integers(0, 4))
def test_expected_score_is_a_mean_over_the_scale(candidates, lo):
    hi = lo + 5
    pos = [[(str(s), lp) for s, lp in candidates]]
    got = expected_score(pos, lo, hi)
    if not lo <= candidates[0][0] <= hi:
        assert got is None
        return
    mean, std = got
    in_scale = [s for s, _ in candidates if lo <= s <= hi]
    assert min(in_scale) - 1e-9 <= mean <= max(in_scale) + 1e-9
    assert 0 <= std <= (hi - lo) / 2 + 1e-9


def test_parse_score():
    assert parse_score("Score: 4", None) == 4.0
    assert parse_score("3.5 out of 5", None) == 3.5
    assert parse_score("no idea", None) is None
    keys = ["semantic_consistency", "perceptual_quality"]
    assert parse_score('{"semantic_consistency": 4, "perceptual_quality": 9}', keys) == pytest.approx(6.0)
    # broken JSON (no closing brace, trailing comma) is repaired; a list counts as its lowest; strings parse
    assert parse_score('```json\n{"semantic_consistency": [8, 2], "perceptual_quality": "8",', keys) == \
        pytest.approx(4.0)
    assert parse_score('{"semantic_consistency": 4}', keys) is None  # a key missing
    assert parse_score("4", keys) is None


def test_templates_and_kwargs_are_checked(tmp_path):
    assert load_template("overall_0_5")["scale"] == (0.0, 5.0)
    assert load_template("editscore")["json_keys"] == ["semantic_consistency", "perceptual_quality"]
    own = tmp_path / "mine.yaml"
    own.write_text("scale: [1, 4]\nprompt: 'Rate {instruction} from 1 to 4.'\n")
    assert load_template(str(own))["scale"] == (1.0, 4.0)
    bad = [({"template": "nope"}, "neither a shipped template"),
           ({"template": {"prompt": "no placeholder", "scale": [0, 5]}}, "{instruction}"),
           ({"template": {"prompt": "{instruction}", "scale": [5, 0]}}, "lowest < highest"),
           ({"template": "editscore"}, "score_mode logprobs reads single score digits"),
           ({"score_mode": "vibes"}, "score_mode must be"),
           ({"on_unparseable": "fallback"}, "fallback_score within"),
           ({"on_unparseable": "fallback", "fallback_score": 9}, "fallback_score within"),
           ({"concurrency": 0}, "concurrency"), ({"timeout": 0}, "timeout"), ({"top_logprobs": 50}, "top_logprobs"),
           ({"base_url": "localhost:8000"}, "base_url")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match="^.*" + message.replace("(", r"\(")):
            VLMJudge.check(**{"base_url": "http://127.0.0.1:1/v1", **kwargs})


def edits(n: int = 6, seed: int = 0) -> RewardInput:
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(1, 3, 32, 32, generator=g).expand(n, -1, -1, -1)
    colours = torch.rand(n, 3, 1, 1, generator=g)
    edited = (0.5 * source + 0.5 * colours).clamp(0, 1)  # each edit tinted a different colour
    return RewardInput(edited=edited, source=source, instructions=["make it warmer"] * n,
                       group_ids=torch.zeros(n, dtype=torch.long))


def test_parse_mode_scores_what_a_real_server_answers(judge_server):
    url, model = judge_server
    judge = VLMJudge(url, template="overall_0_5", score_mode="parse", max_tokens=1, concurrency=3,
                     request={"logit_bias": digit_bias(model)})
    out = judge(edits())
    assert out.scores.shape == (6,) and ((out.scores >= 0) & (out.scores <= 1)).all()
    assert all(r.strip().isdigit() for r in out.rationales)  # the answer is kept as the rationale
    assert torch.allclose(out.scores, out.details["judge_raw"] / 5)
    # the same instruction and source, only the edited image differs: the answers differ, so the images reached
    # the model and were read
    assert len(set(out.details["judge_raw"].tolist())) > 1
    # deterministic (temperature 0): the same batch scores the same
    assert torch.equal(judge(edits()).scores, out.scores)


def test_answers_without_a_score_are_an_error_or_the_fallback(judge_server):
    url, model = judge_server
    kwargs = dict(template="editscore", score_mode="parse", max_tokens=2, request={"logit_bias": digit_bias(model)})
    with pytest.raises(ValueError, match=r"vlm_judge: sample 0 \('make it warmer'\): no score in the judge's answer"):
        VLMJudge(url, **kwargs)(edits(2))  # two digits, no JSON: garbage to this template
    out = VLMJudge(url, on_unparseable="fallback", fallback_score=2, **kwargs)(edits(2))
    assert out.details["judge_unparsed"].tolist() == [1.0, 1.0]
    assert torch.allclose(out.scores, torch.full((2,), 0.2))


def test_logprobs_mode_says_when_the_server_sends_none(judge_server):
    url, _ = judge_server  # transformers serve ignores `logprobs`
    with pytest.raises(ValueError, match="returned no logprobs for sample 0.*vLLM or SGLang"):
        VLMJudge(url, score_mode="logprobs")(edits(1))


def test_no_server_and_a_server_that_dies(tmp_path):
    with pytest.raises(ValueError, match="no OpenAI-compatible server at http://127.0.0.1:"):
        VLMJudge(f"http://127.0.0.1:{free_port()}/v1", score_mode="parse")
    model = save_tiny_vlm(tmp_path / "model")
    proc, url = start_transformers_serve(model)
    try:
        judge = VLMJudge(url, score_mode="parse", max_tokens=1, retries=1, timeout=10,
                         request={"logit_bias": digit_bias(model)})
        assert judge(edits(1)).scores.shape == (1,)
    finally:
        stop(proc)
    with pytest.raises(RuntimeError, match=r"failed on sample 0 \('make it warmer'\) after 2 tries: could not connect"):
        judge(edits(1))


def test_logprob_mode_reads_a_vllm_shaped_answer():
    """The logprob path on the client's own objects, shaped as vLLM answers (`transformers serve` sends no
    logprobs, so no server here can): the expected score over the digits and its spread as the uncertainty."""
    from openai.types.chat import ChatCompletion

    def answer(top):  # one generated token, "4", with its top candidates
        return ChatCompletion.model_validate({
            "id": "x", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "4"},
                         "logprobs": {"content": [{"token": "4", "logprob": top[0][1], "bytes": None,
                                                   "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                                                    for t, lp in top]}]}}]})

    judge = VLMJudge("http://127.0.0.1:1/v1", score_mode="logprobs", check_server=False)
    score, std, text = judge._read(answer([("4", math.log(0.5)), ("5", math.log(0.25)), ("3", math.log(0.25))]),
                                   "sample 0")
    assert text == "4" and score == pytest.approx(4.0) and std == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="returned no logprobs"):
        judge._read(ChatCompletion.model_validate({
            "id": "x", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4"}}]}),
            "sample 0")


def test_the_documented_judge_lines_train_and_keep_the_judges_answers(judge_server, tmp_path):
    """docs/rewards.md's local-judge kwargs (parse mode, max_tokens 2, the fallback) as written, the model swapped for
    the tiny one: a run completes, and what the judge answered is kept beside the samples and in the report."""
    import json
    import re

    from helpers import TINY_RECIPE

    import rlkit

    url, model = judge_server
    readme = (Path(__file__).resolve().parents[2] / "docs" / "rewards.md").read_text()
    documented = re.search(r"rewards=\[\{name: vlm_judge, kwargs: \{base_url: \"http://127.0.0.1:8000/v1\",\s*"
                           r"model: Qwen/Qwen2.5-VL-3B-Instruct, (.*?)\}\}\]'", readme, flags=re.S).group(1)
    kwargs = f"{{base_url: '{url}', model: '{model}', {' '.join(documented.split())}}}"
    run = rlkit.train(TINY_RECIPE, [f"output_dir={tmp_path / 'run'}", "train.steps=1", "sampler.num_steps=2",
                                    "algorithm.group_size=2", "algorithm.micro_batch=4", "eval.every=1",
                                    "eval.max_prompts=1", "eval.samples_per_prompt=1", "train.log_every=0",
                                    f"rewards=[{{name: vlm_judge, kwargs: {kwargs}}}]"], progress=False)
    said = [json.loads(line) for line in (run / "samples" / "rationales.jsonl").read_text().splitlines()]
    assert said and all(r["reward"] == "vlm_judge" and isinstance(r["rationale"], str) for r in said)
    evaluation = json.loads((run / "samples" / "eval_step_000001.json").read_text())
    assert len(evaluation["rationales"]["vlm_judge"]) == 1
    assert "vlm_judge says" in (run / "report.html").read_text()
