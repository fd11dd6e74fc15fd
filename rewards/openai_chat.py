"""Requests to an OpenAI-compatible chat endpoint (vLLM, SGLang, `transformers serve`), as judges are served.

Images travel as PNG data URLs. Many requests run at once, at most `concurrency` in flight, through the async
openai client, which bounds each try by `timeout` and retries connection errors, 408, 429 and 5xx answers with
exponential backoff (`retries`). What fails is reported with the server and the request it was for.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


def png_data_url(image: torch.Tensor) -> str:
    """A [3, H, W] float image in [0, 1] as a data URL, the form every OpenAI-compatible server accepts."""
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_url(path) -> str:
    """An image file as a data URL, its bytes as they are (no decoding and re-encoding)."""
    import mimetypes
    from pathlib import Path

    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_message(images: list[tuple[str, str]], text: str, system: str | None = None) -> list[dict]:
    """Chat messages: each (caption, data URL) as a caption then its image, then the text."""
    content: list[dict] = []
    for caption, url in images:
        content += [{"type": "text", "text": caption}, {"type": "image_url", "image_url": {"url": url}}]
    content.append({"type": "text", "text": text})
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]


class ChatEndpoint:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, concurrency: int = 8):
        self.check(base_url, timeout, retries, concurrency)
        # a local server ignores the key; a hosted one reads it from the recipe (${oc.env:...}) or OPENAI_API_KEY
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.base_url, self.model = base_url.rstrip("/"), model
        self.timeout, self.retries, self.concurrency = float(timeout), int(retries), int(concurrency)

    @staticmethod
    def check(base_url: str, timeout: float = 60.0, retries: int = 3, concurrency: int = 8) -> None:
        from urllib.parse import urlparse

        if not isinstance(base_url, str) or urlparse(base_url).scheme not in ("http", "https") \
                or not urlparse(base_url).netloc:
            raise ValueError(f"base_url must be http://HOST:PORT/v1, got {base_url!r}")
        if not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")

    def connect(self) -> str:
        """Asks the server for its models (fails at start-up, not at the first step, when it is not there); the
        model is the one named, or the server's first."""
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=min(self.timeout, 30),
                               max_retries=1)
        try:
            served = [m.id for m in client.models.list()]
        except openai.APIError as err:
            raise ValueError(f"no OpenAI-compatible server at {self.base_url} ({describe(err)}); start one, e.g. "
                             f"`vllm serve MODEL` or `transformers serve MODEL`, and give its /v1 address") from None
        finally:
            client.close()
        if self.model is None:
            if not served:
                raise ValueError(f"the server at {self.base_url} lists no model; name one with `model`")
            self.model = served[0]
        return self.model

    def complete(self, bodies: list[dict], on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Every request body (the chat.completions arguments but the model), answered: a ChatCompletion, or
        the exception that ended its tries. ``on_result(i, outcome)`` is called as each one arrives."""
        return run_coroutine(self._complete(bodies, on_result))

    async def _complete(self, bodies, on_result):
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                                    max_retries=self.retries)
        known = set(inspect.signature(client.chat.completions.create).parameters)
        bound = asyncio.Semaphore(self.concurrency)
        out: list[Any] = [None] * len(bodies)

        async def one(i: int, body: dict):
            async with bound:
                try:
                    out[i] = await client.chat.completions.create(model=self.model, **split_extras(body, known))
                except openai.APIError as err:
                    out[i] = err
            if on_result is not None:
                on_result(i, out[i])

        try:
            await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        finally:
            await client.close()
        return out


def split_extras(body: dict, known: set[str]) -> dict:
    """The OpenAI arguments as they are, and the fields the client does not know (a server's own extensions:
    vLLM's sampling settings, transformers serve's generation_config) sent in `extra_body`."""
    args = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        args["extra_body"] = {**extra, **(args.get("extra_body") or {})}
    return args


def describe(err: Exception) -> str:
    """One line for an openai error: the status and the server's message, or what happened to the connection."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timed out"
    if isinstance(err, openai.APIStatusError):
        return f"answered {err.status_code}: {err.message}"
    cause = err.__cause__ or err
    reason = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return f"could not connect ({reason})" if isinstance(err, openai.APIConnectionError) else reason


def run_coroutine(coroutine):
    """asyncio.run, also from inside a running event loop (a notebook), where it runs in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
