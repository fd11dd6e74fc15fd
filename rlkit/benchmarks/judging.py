"""Asking an OpenAI-compatible judge (vLLM, SGLang, `transformers serve`, a hosted API) a rubric's questions,
many at once. Temperature 0 by default. An answer that does not give the scores asked for is asked again
(`parse_retries`), then recorded as missing with the answer it gave; a request that fails at the transport
(after the client's own retries) is recorded the same way, with its error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from rlkit.benchmarks.rubrics import Question, read_scores
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

    def record(self) -> dict:
        """What a figure must say about its judge (the key is left out)."""
        return {k: v for k, v in asdict(self).items() if k not in ("api_key", "url")} | {"score_mode": "parse"}


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
        return {"messages": image_message(pictures, request.question.text), "max_tokens": self.settings.max_tokens,
                "temperature": self.settings.temperature}

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
                    scores = read_scores(answer, request.question) if answer is not None else None
                    if scores is None and tries <= self.settings.parse_retries:
                        again.append(request)
                        return
                    settle(request, answer if answer is not None else f"(no answer: {describe(result)})", scores,
                           tries)
                    bar.advance(task)

                self.endpoint.complete([self.body(r) for r in pending], arrived)
                pending = again
