"""Asking an OpenAI-compatible judge (vLLM, SGLang, `transformers serve`, a hosted API) a rubric's questions,
many at once. Temperature 0 by default. An answer that does not give the scores asked for is asked again
(`parse_retries`), then recorded as missing with the answer it gave; a request that fails at the transport
(after the client's own retries) is recorded the same way, with its error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from rlkit.benchmarks.rubrics import Question, expected_scores, read_scores
from rlkit.core.errors import UserError
from rlkit.rewards import ChatEndpoint, describe, image_message, png_data_url


@dataclass
class JudgeSettings:
    url: str
    model: str | None = None  # default: the server's first
    api_key: str | None = None  # default: $OPENAI_API_KEY; never recorded
    temperature: float = 0.0
    max_tokens: int = 512
    concurrency: int = 8
    retries: int = 3  # transport retries (the openai client's)
    parse_retries: int = 2  # asking again when an answer gives no usable scores
    timeout: float = 120.0
    score_mode: str = "parse"  # or logprobs: expected scores from the digits' logprobs (single-digit scales)
    top_logprobs: int = 20

    def record(self) -> dict:
        """What a figure must say about its judge (the key is left out)."""
        return {k: v for k, v in asdict(self).items() if k not in ("api_key", "url")}


@dataclass
class Request:
    id: tuple  # (target, key, question): what the answer belongs to
    question: Question
    images: dict[str, torch.Tensor]  # "source", "edited": [3, H, W] in [0, 1]


class BenchJudge:
    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        try:
            self.endpoint = ChatEndpoint(settings.url, settings.model, settings.api_key, settings.timeout,
                                         settings.retries, settings.concurrency)
        except ValueError as err:
            raise UserError(f"judge: {err}") from None

    def connect(self) -> str:
        try:
            self.settings.model = self.endpoint.connect()
        except ValueError as err:
            raise UserError(f"judge: {err}") from None
        return self.settings.model

    def body(self, request: Request) -> dict:
        captions = ("First image:", "Second image:") if len(request.question.images) > 1 else ("Image:",)
        pictures = [(c, png_data_url(request.images[name])) for c, name in zip(captions, request.question.images)]
        body = {"messages": image_message(pictures, request.question.text), "max_tokens": self.settings.max_tokens,
                "temperature": self.settings.temperature}
        if self.settings.score_mode == "logprobs":
            body.update(logprobs=True, top_logprobs=self.settings.top_logprobs)
        return body

    def check(self, questions: list[Question]) -> None:
        """logprobs read one token per score: a scale beyond one digit (GEdit's 0-10) cannot be read so."""
        if self.settings.score_mode == "logprobs" and any(q.scale[1] > 9 or q.scale[0] < 0 for q in questions):
            raise UserError("judge: score_mode logprobs reads single score digits; this rubric's scale goes beyond "
                            "them (GEdit's 0-10): use score_mode parse")

    def _scores(self, result, question: Question) -> list[float] | None:
        choice = result.choices[0] if result.choices else None
        if self.settings.score_mode == "parse" or choice is None:
            return read_scores((choice.message.content or "") if choice else "", question)
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        if not content:
            self.no_logprobs = True
            return None
        return expected_scores([(t.token, [(t.token, t.logprob)] + [(c.token, c.logprob) for c in
                                                                     (t.top_logprobs or []) if c.token != t.token])
                                for t in content], question)

    def ask(self, requests: list[Request], settle: Callable[[Request, str | None, list[float] | None, int], None],
            progress: bool = True) -> None:
        """Every request answered once through ``settle(request, answer, scores, tries)``; scores None: missing."""
        from rich.progress import Progress

        pending, tries = list(requests), 0
        with Progress(disable=not progress) as bar:
            task = bar.add_task("judging", total=len(requests))
            while pending:
                tries += 1
                again = []

                def arrived(i: int, result, batch=pending) -> None:
                    request = batch[i]
                    answer = None if isinstance(result, Exception) else (
                        (result.choices[0].message.content or "") if result.choices else "")
                    scores = self._scores(result, request.question) if answer is not None else None
                    if scores is None and tries <= self.settings.parse_retries:
                        again.append(request)
                        return
                    settle(request, answer if answer is not None else f"(no answer: {describe(result)})", scores,
                           tries)
                    bar.advance(task)

                self.no_logprobs = False
                self.endpoint.complete([self.body(r) for r in pending], arrived)
                if self.no_logprobs:
                    raise UserError(f"judge: the server at {self.settings.url} returned no logprobs (it ignores the "
                                    f"request for them, as `transformers serve` does): serve the judge with vLLM or "
                                    f"SGLang, or use score_mode parse")
                pending = again
