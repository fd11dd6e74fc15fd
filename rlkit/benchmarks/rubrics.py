"""What the judge is asked about each item, and how its answer is read. rlkit's own wording ships versioned
(prompts/gedit_v1.yaml, prompts/imgedit_v1.yaml); `--prompts FILE` replaces it with a YAML file of the same form.
Every figure records which wording produced it (its version, or the file and its sha256).

An answer is read strictly: the scores it was asked for, each a number on the scale, or nothing. A missing
answer is never replaced by a made-up score."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from rlkit.core.errors import UserError

DEFAULTS = {"gedit": "gedit_v1.yaml", "imgedit": "imgedit_v1.yaml"}


@dataclass
class Question:
    name: str  # SC / PQ (GEdit), the category (ImgEdit)
    text: str
    images: list[str]  # which of "source", "edited", in order
    labels: list[str]  # the scores asked for, in order
    scale: tuple[float, float]


class Rubric:
    def __init__(self, benchmark: str, path: str | None = None):
        self.benchmark = benchmark
        if path is None:
            text = (resources.files("rlkit.benchmarks") / "prompts" / DEFAULTS[benchmark]).read_text()
            where = DEFAULTS[benchmark]
        else:
            try:
                text = Path(path).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"--prompts '{path}': cannot read it ({err})") from None
            where = path
        try:
            self.spec = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--prompts '{where}': not YAML ({str(err).splitlines()[0]})") from None
        self._check(where)
        self.version = str(self.spec["version"])
        # a figure says which wording made it: the packaged version, or the file's own bytes
        self.source = {"version": self.version, **({} if path is None else
                                                    {"file": str(path), "sha256": hashlib.sha256(text.encode())
                                                     .hexdigest()})}

    def _check(self, where: str) -> None:
        s = self.spec
        needs = ["version", "scale"] + (["questions"] if self.benchmark == "gedit" else ["prompt", "categories"])
        if not isinstance(s, dict) or any(k not in s for k in needs):
            raise UserError(f"--prompts '{where}': a {self.benchmark} rubric needs {', '.join(needs)}")
        scale = s["scale"]
        if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale)
                and scale[0] < scale[1]):
            raise UserError(f"--prompts '{where}': scale must be [low, high]")
        if self.benchmark == "gedit":
            questions = s["questions"]
            if not isinstance(questions, dict) or set(questions) != {"SC", "PQ"} or not all(
                    isinstance(q, dict) and isinstance(q.get("prompt"), str) and isinstance(q.get("images"), list)
                    and set(q["images"]) <= {"source", "edited"} for q in questions.values()):
                raise UserError(f"--prompts '{where}': questions must be SC and PQ, each with prompt and images "
                                f"(source, edited)")
        elif not isinstance(s["categories"], dict) or not all(
                isinstance(v, list) and len(v) == 3 for v in s["categories"].values()):
            raise UserError(f"--prompts '{where}': categories must give three aspect names each")

    def questions(self, task: str, instruction: str) -> list[Question]:
        scale = tuple(self.spec["scale"])
        if self.benchmark == "gedit":
            return [Question(name, q["prompt"].replace("{instruction}", instruction), list(q["images"]),
                             ["first", "second"], scale) for name, q in self.spec["questions"].items()]
        aspects = self.spec["categories"].get(task)
        if aspects is None:
            raise UserError(f"ImgEdit category '{task}' has no aspects in the rubric ({self.version}); known: "
                            f"{', '.join(self.spec['categories'])}")
        text = self.spec["prompt"].replace("{instruction}", instruction).replace(
            "{aspects}", "\n".join(f"- {a}" for a in aspects))
        return [Question(task, text, ["source", "edited"], list(aspects), scale)]


def read_scores(answer: str, question: Question) -> list[float] | None:
    """The scores an answer gives, in the order asked; None when it does not give all of them on the scale."""
    found = _named(answer, question.labels) if question.labels != ["first", "second"] else _listed(answer)
    low, high = question.scale
    if found is None or len(found) != len(question.labels) or not all(low <= v <= high for v in found):
        return None
    return found


def _listed(answer: str) -> list[float] | None:
    """{"score": [a, b], ...} anywhere in the answer (a code fence, text around it), else a bare [a, b]."""
    start, end = answer.find("{"), answer.rfind("}")
    if 0 <= start < end:
        try:
            value = json.loads(answer[start:end + 1]).get("score")
            if isinstance(value, list) and all(type(v) in (int, float) for v in value):
                return [float(v) for v in value]
        except (ValueError, AttributeError):
            pass
    bare = re.search(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]", answer)
    return [float(bare.group(1)), float(bare.group(2))] if bare else None


def _named(answer: str, labels: list[str]) -> list[float] | None:
    """'NAME: SCORE' for each label (case and spacing aside)."""
    out = []
    for label in labels:
        found = re.search(re.escape(label).replace(r"\ ", r"\s*") + r"\s*:\s*\**\s*(-?\d+(?:\.\d+)?)", answer,
                          flags=re.IGNORECASE)
        if not found:
            return None
        out.append(float(found.group(1)))
    return out


def expected_scores(positions: list[tuple[str, list[tuple[str, float]]]], question: Question) -> list[float] | None:
    """`score_mode: logprobs`: each score asked for as its expected value under the judge's distribution over the
    score digits where it wrote that score (sum_s p(s) s over the top logprobs that are scores, renormalised).
    ``positions``: per generated token, (its text, its (token, logprob) candidates). None when a score is not
    found. Only single-digit scales (ImgEdit's 1-5): a score of 10 is two tokens."""
    import math

    text, starts = "", []
    for token, _ in positions:
        starts.append(len(text))
        text += token
    chosen = _named_spans(text, question.labels) if question.labels != ["first", "second"] else None
    if chosen is None:
        return None
    low, high = question.scale
    out = []
    for offset in chosen:
        index = max(i for i, s in enumerate(starts) if s <= offset)
        probs: dict[int, float] = {}
        for token, logprob in positions[index][1]:
            t = token.strip()
            if t.isdigit() and low <= int(t) <= high and math.isfinite(logprob):
                probs[int(t)] = probs.get(int(t), 0.0) + math.exp(logprob)
        total = sum(probs.values())
        if total <= 0:
            return None
        out.append(sum(s * p for s, p in probs.items()) / total)
    return out


def _named_spans(answer: str, labels: list[str]) -> list[int] | None:
    """Where each 'NAME: SCORE' puts its score digit (character offsets)."""
    out = []
    for label in labels:
        found = re.search(re.escape(label).replace(r"\ ", r"\s*") + r"\s*:\s*\**\s*(\d)", answer, flags=re.IGNORECASE)
        if not found:
            return None
        out.append(found.start(1))
    return out
