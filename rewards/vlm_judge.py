"""The `vlm_judge` reward: a vision-language judge behind an OpenAI-compatible chat API (vLLM, SGLang,
`transformers serve`) rates each edit against its instruction.

    rewards:
      - name: vlm_judge
        kwargs: {base_url: "http://127.0.0.1:8000/v1", model: Qwen/Qwen2.5-VL-7B-Instruct,
                 template: overall_0_5, score_mode: logprobs}

Each edit is one chat request: the source and the edited image as PNG data URLs, then the template's rubric with
the instruction in it. A prompt with several reference images sends each of them in order ("Reference image 1:",
"Reference image 2:", ...) before the edit. `template` is a shipped name (rewards/judge_templates: `overall_0_5`,
`editscore`) or a YAML file of your own with the same keys (`prompt` with `{instruction}`, `scale: [lo, hi]`,
optional `json_keys`, optional `system`).

score_mode:
- `logprobs`: the expected score under the judge's distribution over the score digits at the position where it
  answers one (Edit-R1's reading): sum_s p(s) s over the top logprobs that are scores, renormalised. Its spread
  (standard deviation) is the reward's `uncertainty`. Needs a server that returns logprobs (vLLM, SGLang;
  `transformers serve` ignores the request for them).
- `parse`: the number in the answer, or with `json_keys` those keys of a JSON answer (repaired with json_repair
  first), combined by their geometric mean (VIEScore, EditScore). The answer is kept as the sample's rationale.

Scores are mapped to [0, 1] by the template's scale. An answer with no score in it, or one outside the scale,
is an error naming the sample, unless `on_unparseable: fallback` gives `fallback_score` (on the template's scale)
to use instead; `details["judge_unparsed"]` marks those samples. `max_tokens` bounds each answer (default 8 tokens
with logprobs, 512 with parse): a judge that reasons before its score needs room, a small model that rambles
digits needs little (a few tokens for `overall_0_5`).

`api_key` is a secret: give it as `${oc.env:JUDGE_API_KEY}` (or set OPENAI_API_KEY) and it never reaches a file;
written into the recipe it is kept out of every file rlkit writes, and a resume asks for it again. `request` adds
fields to every request body (e.g. `{logit_bias: {...}}`, or vLLM's extra sampling settings).
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import torch

from rlkit.rewards.base import RewardInput, RewardOutput
from rlkit.rewards.openai_chat import ChatEndpoint, describe, image_message, png_data_url

SCORE_MODES = ("logprobs", "parse")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def shipped_templates() -> list[str]:
    shipped = resources.files("rlkit.rewards.judge_templates").iterdir()
    return sorted(p.name[:-5] for p in shipped if p.name.endswith(".yaml"))


def load_template(template: str | dict) -> dict:
    """A template by shipped name or path, checked: prompt with {instruction}, scale lo < hi, json_keys a list."""
    import yaml

    if isinstance(template, dict):
        spec = template
    else:
        shipped = resources.files("rlkit.rewards.judge_templates") / f"{template}.yaml"
        path = Path(template).expanduser()
        if shipped.is_file():
            spec = yaml.safe_load(shipped.read_text())
        elif path.is_file():
            spec = yaml.safe_load(path.read_text())
        else:
            raise ValueError(f"template {template!r} is neither a shipped template ({', '.join(shipped_templates())}) "
                             f"nor a YAML file")
    if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str) or "{instruction}" not in spec["prompt"]:
        raise ValueError(f"template {template!r}: needs a `prompt` string containing {{instruction}}")
    scale = spec.get("scale")
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale)
            and scale[0] < scale[1]):
        raise ValueError(f"template {template!r}: `scale` must be [lowest, highest] with lowest < highest, "
                         f"got {scale!r}")
    keys = spec.get("json_keys")
    if keys is not None and not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
        raise ValueError(f"template {template!r}: `json_keys` must be a list of key names, got {keys!r}")
    unknown = set(spec) - {"prompt", "scale", "json_keys", "system"}
    if unknown:
        raise ValueError(f"template {template!r}: unknown keys {sorted(unknown)} (prompt, scale, json_keys, system)")
    return {"prompt": spec["prompt"], "scale": (float(scale[0]), float(scale[1])), "json_keys": keys,
            "system": spec.get("system")}


def expected_score(positions: list[list[tuple[str, float]]], lo: float, hi: float) -> tuple[float, float] | None:
    """(mean, standard deviation) of the score at the first answer position whose chosen token is a score digit.

    ``positions``: per generated token, its (token, logprob) candidates, the chosen token first. The candidates
    that are whole numbers within [lo, hi] are renormalised into a distribution over scores; None when no
    position chose a score."""
    for candidates in positions:
        if not candidates or _score_token(candidates[0][0], lo, hi) is None:
            continue
        probs: dict[int, float] = {}
        for token, logprob in candidates:
            score = _score_token(token, lo, hi)
            if score is not None and math.isfinite(logprob):
                probs[score] = probs.get(score, 0.0) + math.exp(logprob)
        total = sum(probs.values())
        if total <= 0:
            return None
        mean = sum(s * p for s, p in probs.items()) / total
        var = sum(p * (s - mean) ** 2 for s, p in probs.items()) / total
        return mean, math.sqrt(var)
    return None


def _score_token(token: str, lo: float, hi: float) -> int | None:
    text = token.strip()
    return int(text) if text.isdigit() and lo <= int(text) <= hi else None


def parse_score(text: str, json_keys: list[str] | None) -> float | None:
    """The score in a judge's answer: the first number, or the geometric mean of `json_keys` in its JSON (a list
    of numbers under a key counts as its lowest, as VIEScore does); None when there is none."""
    if not json_keys:
        found = NUMBER.search(text)
        return float(found.group()) if found else None
    import json_repair

    answer = json_repair.loads(text)
    if isinstance(answer, list):  # several JSON objects: the first that has the keys
        answer = next((a for a in answer if isinstance(a, dict) and all(k in a for k in json_keys)), None)
    if not isinstance(answer, dict):
        return None
    values = []
    for key in json_keys:
        value = answer.get(key)
        if isinstance(value, list):
            value = min((v for v in value if isinstance(v, (int, float))), default=None)
        if isinstance(value, str):
            value = parse_score(value, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            return None
        values.append(float(value))
    return math.prod(values) ** (1 / len(values))


class VLMJudge:
    secret_kwargs = ("api_key",)  # never written to any file or shown (rlkit/secrets.py)
    score_range = (0.0, 1.0)  # the template's scale, mapped

    def __init__(self, base_url: str, model: str | None = None, template: str = "overall_0_5",
                 score_mode: str = "logprobs", api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 60.0, retries: int = 3, max_tokens: int | None = None, top_logprobs: int = 20,
                 on_unparseable: str = "error", fallback_score: float | None = None, request: dict | None = None,
                 check_server: bool = True):
        self.check(base_url, model, template, score_mode, api_key, concurrency, timeout, retries, max_tokens,
                   top_logprobs, on_unparseable, fallback_score, request)
        self.template = load_template(template)
        self.score_mode, self.on_unparseable, self.fallback_score = score_mode, on_unparseable, fallback_score
        self.endpoint = ChatEndpoint(base_url, model, api_key, timeout, retries, concurrency)
        self.max_tokens = max_tokens or (8 if score_mode == "logprobs" else 512)
        self.top_logprobs, self.request = top_logprobs, dict(request or {})
        if check_server:
            self.endpoint.connect()

    @staticmethod
    def check(base_url: str, model: str | None = None, template: str = "overall_0_5", score_mode: str = "logprobs",
              api_key: str | None = None, concurrency: int = 8, timeout: float = 60.0, retries: int = 3,
              max_tokens: int | None = None, top_logprobs: int = 20, on_unparseable: str = "error",
              fallback_score: float | None = None, request: dict | None = None, check_server: bool = True) -> None:
        """The kwargs, without contacting the server (a run connects when it starts)."""
        ChatEndpoint.check(base_url, timeout, retries, concurrency)
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
        spec = load_template(template)
        lo, hi = spec["scale"]
        if score_mode == "logprobs" and (spec["json_keys"] or not (0 <= lo and hi <= 9 and lo == int(lo)
                                                                    and hi == int(hi))):
            raise ValueError(f"score_mode logprobs reads single score digits: template {template!r} needs a scale "
                             f"of whole numbers within 0-9 and no json_keys (use score_mode: parse)")
        if on_unparseable not in ("error", "fallback"):
            raise ValueError(f"on_unparseable must be error or fallback, got {on_unparseable!r}")
        if on_unparseable == "fallback" and not (isinstance(fallback_score, (int, float))
                                                 and lo <= fallback_score <= hi):
            raise ValueError(f"on_unparseable: fallback needs fallback_score within the template's scale "
                             f"{lo:g}-{hi:g}, got {fallback_score!r}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be an integer 1-20 (the OpenAI API's range), got {top_logprobs!r}")
        if request is not None and not isinstance(request, dict):
            raise ValueError(f"request must be a mapping of extra request fields, got {request!r}")

    @classmethod
    def live_check(cls, **kwargs) -> None:
        """What `rlkit validate` asks beyond the kwargs: the server answers and serves the model."""
        cls(**{**kwargs, "check_server": True})

    def body(self, references: str | list[str], edited: torch.Tensor, instruction: str) -> dict:
        """One chat request: the reference image(s) as data URLs in order (one: "Source image"), the edit, the
        rubric."""
        references = [references] if isinstance(references, str) else references
        shown = [("Source image:", references[0])] if len(references) == 1 else \
            [(f"Reference image {k + 1}:", url) for k, url in enumerate(references)]
        prompt = self.template["prompt"].replace("{instruction}", instruction)
        messages = image_message([*shown, ("Edited image:", png_data_url(edited))], prompt, self.template["system"])
        body = {"messages": messages, "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.score_mode == "logprobs":
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return {**body, **self.request}

    def __call__(self, batch: RewardInput) -> RewardOutput:
        sources: dict[int, list[str]] = {}  # a group shares its references: encoded once
        references = batch.all_references
        for i, g in enumerate(batch.group_ids.tolist()):
            if g not in sources:
                sources[g] = [png_data_url(r) for r in references[i]]
        bodies = [self.body(sources[g], batch.edited[i], batch.instructions[i])
                  for i, g in enumerate(batch.group_ids.tolist())]
        answers = self.endpoint.complete(bodies)
        lo, hi = self.template["scale"]
        raw, spread, unparsed, texts = [], [], [], []
        for i, answer in enumerate(answers):
            what = f"sample {i} ({batch.instructions[i][:60]!r})"
            if isinstance(answer, Exception):
                raise RuntimeError(f"vlm_judge: {self.endpoint.base_url} failed on {what} after "
                                   f"{self.endpoint.retries + 1} tries: {describe(answer)}")
            score, std, text = self._read(answer, what)
            texts.append(text)
            if score is None or not lo <= score <= hi:
                if self.on_unparseable == "error":
                    found = "no score" if score is None else f"{score:g}, outside {lo:g}-{hi:g},"
                    raise ValueError(f"vlm_judge: {what}: {found} in the judge's answer {text[:200]!r} (set "
                                     f"on_unparseable: fallback with a fallback_score to score such answers)")
                score, std = float(self.fallback_score), 0.0
                unparsed.append(1.0)
            else:
                unparsed.append(0.0)
            raw.append(score)
            spread.append(std)
        span = hi - lo
        scores = (torch.tensor(raw, dtype=torch.float32) - lo) / span
        uncertainty = torch.tensor(spread, dtype=torch.float32) / span if self.score_mode == "logprobs" else None
        return RewardOutput(scores=scores, uncertainty=uncertainty,
                            details={"judge_raw": torch.tensor(raw), "judge_unparsed": torch.tensor(unparsed)},
                            rationales=texts if self.score_mode == "parse" else None)

    def _read(self, answer, what: str) -> tuple[float | None, float, str]:
        """(score on the template's scale or None, its spread, the answer's text)."""
        choice = answer.choices[0] if answer.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        if self.score_mode == "parse":
            return parse_score(text, self.template["json_keys"]), 0.0, text
        content = getattr(choice.logprobs, "content", None) if choice is not None and choice.logprobs else None
        if not content:
            raise ValueError(f"vlm_judge: the server at {self.endpoint.base_url} returned no logprobs for {what} "
                             f"(it ignores the request for them, as `transformers serve` does): serve the judge "
                             f"with vLLM or SGLang, or use score_mode: parse")
        positions = [[(t.token, t.logprob)] + [(c.token, c.logprob) for c in (t.top_logprobs or [])
                                                if c.token != t.token] for t in content]
        lo, hi = self.template["scale"]
        found = expected_score(positions, lo, hi)
        return (None, 0.0, text) if found is None else (found[0], found[1], text)
