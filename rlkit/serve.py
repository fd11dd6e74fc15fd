"""`rlkit serve-reward NAME [key=value ...]`: any reward plugin behind HTTP (FastAPI on uvicorn), so a big judge
can live on other GPUs and the trainer processes of one or several runs share it.

    GET  /health  -> {"status": "ok", "reward": NAME, "requests": N, "reward_calls": M}
    POST /score   safetensors request (rewards/wire.py) -> safetensors response. Errors are JSON {"error": ...}:
                  400 a bad request, 401 no or a wrong bearer token, 408 a body that stops arriving, 413 a body
                  over the limit, 500 the reward raised.

Dynamic batching: requests waiting while the reward is busy, or arriving within `max_wait` seconds of each other,
whose images have the same size, are scored by one reward call of at most `max_batch` images and split back, so
a judge on one GPU scores four trainers' rollouts in one forward instead of four in a queue. The reward runs on
one worker thread, one call at a time (plugins need not be thread-safe). When a merged call raises, each of its
requests is scored again alone, so a bad request fails only itself.

A bearer token (`--token`, or the RLKIT_REWARD_TOKEN environment variable) is checked on /score when given, and
required whenever the server binds beyond loopback.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from rlkit.core.errors import UserError
from rlkit.rewards import RewardInput, RewardOutput, WireError, decode_input, encode_output
from rlkit.secrets import scrub

MAX_BODY = 1 << 30  # 1 GiB: a batch of 64 images at 1024 px in float32 is 0.8 GiB
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "RLKIT_REWARD_TOKEN"


def merge(batches: list[RewardInput]) -> RewardInput:
    """One batch of several requests' images; each request's groups stay its own (group ids renumbered)."""
    group_ids, offset = [], 0
    for b in batches:
        _, local = torch.unique(b.group_ids, return_inverse=True)
        group_ids.append(local + offset)
        offset += int(local.max()) + 1 if len(local) else 0
    several = any(b.references is not None for b in batches)
    return RewardInput(torch.cat([b.edited for b in batches]), torch.cat([b.source for b in batches]),
                       [t for b in batches for t in b.instructions], torch.cat(group_ids),
                       [m for b in batches for m in (b.metadata or [{} for _ in range(len(b))])],
                       [r for b in batches for r in b.all_references] if several else None)


def split(out: RewardOutput, sizes: list[int]) -> list[RewardOutput]:
    total = sum(sizes)
    if out.scores.shape != (total,):
        raise ValueError(f"the reward returned scores of shape {tuple(out.scores.shape)} for {total} images")
    parts, start = [], 0
    for n in sizes:
        cut = slice(start, start + n)
        parts.append(RewardOutput(
            scores=out.scores[cut], uncertainty=None if out.uncertainty is None else out.uncertainty[cut],
            details={k: v[cut] for k, v in (out.details or {}).items() if isinstance(v, torch.Tensor)},
            rationales=None if out.rationales is None else out.rationales[cut]))
        start += n
    return parts


class Batcher:
    """Collects requests into reward calls on one worker thread (see the module docstring)."""

    def __init__(self, reward, max_batch: int = 64, max_wait: float = 0.01):
        self.reward, self.max_batch, self.max_wait = reward, max_batch, max_wait
        self.stats = {"requests": 0, "reward_calls": 0}
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="reward")
        self.queue: asyncio.Queue | None = None

    async def score(self, batch: RewardInput) -> RewardOutput:
        done = asyncio.get_running_loop().create_future()
        self.stats["requests"] += 1
        await self.queue.put((batch, done))
        return await done

    async def run(self) -> None:
        self.queue, deferred = asyncio.Queue(), []
        loop = asyncio.get_running_loop()
        while True:
            first = deferred.pop(0) if deferred else await self.queue.get()
            group, n, shape = [first], len(first[0]), first[0].edited.shape[1:]
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    item = self.queue.get_nowait()  # what queued while the reward was busy
                except asyncio.QueueEmpty:
                    if loop.time() >= deadline:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    except asyncio.TimeoutError:  # TimeoutError from 3.11 on
                        break
                if item[0].edited.shape[1:] == shape and n + len(item[0]) <= self.max_batch:
                    group.append(item)
                    n += len(item[0])
                else:  # another image size, or too many images: the next call's
                    deferred.append(item)
            await self._score(group)

    async def _score(self, group) -> None:
        loop = asyncio.get_running_loop()

        async def call(batches):
            self.stats["reward_calls"] += 1
            out = await loop.run_in_executor(self.worker, self.reward, merge(batches) if len(batches) > 1
                                             else batches[0])
            return split(out, [len(b) for b in batches])

        try:
            outs = await call([b for b, _ in group])
        except Exception as err:
            if len(group) == 1:
                return _settle(group[0][1], error=err)
            for batch, done in group:  # find the request that failed; the others still get their scores
                try:
                    _settle(done, (await call([batch]))[0])
                except Exception as alone:
                    _settle(done, error=alone)
            return
        for (_, done), out in zip(group, outs):
            _settle(done, out)


def _settle(done: asyncio.Future, out: RewardOutput | None = None, error: Exception | None = None) -> None:
    if done.cancelled():  # the client went away
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(out)


def make_app(name: str, reward, token: str | None = None, max_batch: int = 64, max_wait: float = 0.01,
             max_body: int = MAX_BODY, body_timeout: float = 60.0):
    batcher = Batcher(reward, max_batch, max_wait)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"rlkit reward: {name}", lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(code: int, message: str) -> JSONResponse:
        # close the connection: a refused request's body may still be on its way, unread
        return JSONResponse({"error": message}, status_code=code, headers={"Connection": "close"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "reward": name, **batcher.stats}

    @app.post("/score")
    async def score(request: Request):
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, f"this server needs its bearer token: give the remote reward token=... (or set "
                                  f"{TOKEN_ENV})")
        declared = request.headers.get("content-length")
        if declared is not None and not (declared.isdigit() and 0 < int(declared) <= max_body):
            return error(413 if declared.isdigit() and int(declared) > max_body else 400,
                         f"body must be 1 byte to {max_body} bytes, got Content-Length {declared!r}")
        try:
            body = await asyncio.wait_for(_read(request, max_body), body_timeout)
        except ClientDisconnect:  # the client hung up while sending: nobody to answer
            print(f"note: a client hung up before its request arrived whole ({request.client})", file=sys.stderr,
                  flush=True)
            return Response(status_code=400)
        except asyncio.TimeoutError:
            return error(408, f"the body did not arrive within {body_timeout:g} s")
        except ValueError as err:
            return error(413, str(err))
        try:
            batch = decode_input(body)
        except WireError as err:
            return error(400, str(err))
        try:
            out = await batcher.score(batch)
            data = encode_output(out)
        except Exception as err:  # the client names the reward and stops its step
            message = f"{type(err).__name__}: {err}"
            print(scrub(f"error: request {batcher.stats['requests']}: {message}"), file=sys.stderr, flush=True)
            return error(500, message)
        return Response(data, media_type="application/octet-stream")

    app.state.batcher = batcher
    return app


async def _read(request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _idle_closing_protocol():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleClosing(H11Protocol):
        """uvicorn starts its keep-alive timer after a response; a connection that never sends a request would
        stay open. Started on connect too, it closes silent connections after the same idle time."""

        def connection_made(self, transport):
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    return IdleClosing


class RewardServer:
    """The app on uvicorn, on a socket bound here (a busy port is one clear line; port 0 picks a free one):
    `run()` in the foreground, or `start()` / `stop()` in a background thread (tests, benchmarks)."""

    def __init__(self, name: str, reward, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 max_batch: int = 64, max_wait: float = 0.01, max_body: int = MAX_BODY, idle_timeout: float = 60.0):
        import uvicorn

        token = token or os.environ.get(TOKEN_ENV) or None
        if not (isinstance(max_wait, (int, float)) and 0 <= max_wait <= 10):  # nan and inf: requests would wait forever
            raise UserError(f"max_wait must be seconds from 0 to 10, got {max_wait!r}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise UserError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
        if host not in LOOPBACK and not token:
            raise UserError(f"serving on {host} lets anyone who reaches the port use the reward model: give a "
                            f"token (--token, or {TOKEN_ENV}), which the remote reward then sends")
        try:
            self.socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                               else socket.AF_INET)
        except OSError as err:  # EADDRINUSE, EACCES, an address this machine does not have
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err} (another server on that port? "
                            f"choose one with --port)") from None
        self.app = make_app(name, reward, token, max_batch, max_wait, max_body, idle_timeout)
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", timeout_keep_alive=idle_timeout, access_log=False,
                                lifespan="on", http=_idle_closing_protocol())
        self.server, self.thread = uvicorn.Server(config), None

    @property
    def url(self) -> str:
        return f"http://{self.host if ':' not in self.host else f'[{self.host}]'}:{self.port}"

    def run(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self) -> str:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the reward server stopped while starting")
            threading.Event().wait(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.socket.close()


def serve(name: str, kwargs: dict, host: str, port: int, token: str | None = None, max_batch: int = 64,
          max_wait: float = 0.01) -> None:
    from rlkit.plugins import build_reward

    reward = build_reward(name, kwargs)
    server = RewardServer(name, reward, host, port, token, max_batch, max_wait)
    print(f"serving reward '{name}' on {server.url} (GET /health, POST /score; batches of up to {max_batch} "
          f"images{', bearer token required' if (token or os.environ.get(TOKEN_ENV)) else ''})", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.socket.close()

