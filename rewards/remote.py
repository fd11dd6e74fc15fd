"""The `remote` reward plugin: scores through `rlkit serve-reward` running elsewhere (another GPU or node).

    rewards: [{name: remote, kwargs: {url: "http://127.0.0.1:8765", timeout: 120, retries: 3}}]

A server started with a token (`rlkit serve-reward ... --token T`, required beyond loopback) wants it back:
`token: T`, or the RLKIT_REWARD_TOKEN environment variable (which keeps it out of the recipe and its copies).

Connection errors, timeouts, truncated or unreadable replies and server errors (5xx) are retried with
exponential backoff; a request the server rejects (4xx) is not. `timeout` bounds each try as a whole. When
the tries run out the plugin raises, and the run stops the step naming the reward (nothing is applied to the
policy). Images travel as uint8 by default, which is what a PNG would
carry; `wire_dtype: float32` sends them exactly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from rlkit.rewards.base import RewardInput, RewardOutput
from rlkit.rewards.wire import WireError, decode_output, encode_input


class RemoteReward:
    secret_kwargs = ("token",)  # never written to any file or shown (rlkit/secrets.py)

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                 wire_dtype: str = "uint8", check_health: bool = True, token: str | None = None):
        self.check(url, timeout, retries, backoff, wire_dtype)
        self.url = url.rstrip("/")
        token = token or os.environ.get("RLKIT_REWARD_TOKEN")
        self.headers = {"Content-Type": "application/octet-stream",
                        **({"Authorization": f"Bearer {token}"} if token else {})}
        self.timeout, self.retries, self.backoff, self.wire_dtype = timeout, retries, backoff, wire_dtype
        if check_health:  # fail at start-up, not at the first step, when the server is not there
            self.health()

    @staticmethod
    def check(url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0, wire_dtype: str = "uint8",
              check_health: bool = True, token: str | None = None) -> None:
        """The kwargs, without contacting the server (a run checks that it answers when it starts)."""
        from urllib.parse import urlparse

        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise ValueError(f"url must be http://HOST:PORT, got {url!r}")
        if wire_dtype not in ("uint8", "float32"):
            raise ValueError(f"wire_dtype must be uint8 or float32, got {wire_dtype!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff)):
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf") or (name == "timeout" and
                                                                                        value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'timeout' else '>= 0'}, "
                                 f"got {value!r}")

    @classmethod
    def live_check(cls, **kwargs) -> None:
        """What `rlkit validate` asks beyond the kwargs: the server answers (as a run checks when it starts)."""
        cls(**{**kwargs, "check_health": True})

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=min(self.timeout, 10)) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
            raise ValueError(f"no reward server at {self.url} ({_reason(err)}); start one with "
                             f"`rlkit serve-reward NAME ...`") from None

    def __call__(self, batch: RewardInput) -> RewardOutput:
        body = encode_input(batch, self.wire_dtype)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, data = self._post("/score", body)
            except (TimeoutError, OSError, http.client.HTTPException) as err:  # incl. a truncated body
                last = _reason(err)
                continue
            if status >= 500:
                last = f"server error {status}: {_json_error(data)}"
                continue
            if status != 200:  # our request is wrong: retrying cannot help
                raise RuntimeError(f"server {self.url} rejected the request ({status}): {_json_error(data)}")
            try:
                return decode_output(data)
            except WireError as err:  # a body damaged on the way: ask again
                last = f"unreadable response ({err})"
        raise RuntimeError(f"{self.url} failed {self.retries + 1} time(s); last: {last}")

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """One request, bounded by `timeout` as a whole: a server that trickles bytes cannot hold the call
        longer (a socket timeout alone bounds only each read). The request runs in a helper thread; at the
        deadline its connection is shut down, which ends any read it is blocked in."""
        parts = urlsplit(self.url)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = connection_class(parts.hostname, parts.port, timeout=self.timeout)
        outcome: dict = {}

        def request() -> None:
            try:
                conn.request("POST", f"{parts.path.rstrip('/')}{path}", body, self.headers)
                response = conn.getresponse()
                outcome["reply"] = (response.status, response.read())
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        worker = threading.Thread(target=request, daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            raise TimeoutError("timed out")
        conn.close()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["reply"]


def _json_error(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", ""))
    except Exception:
        return data[:200].decode("utf-8", "replace")


def _reason(err: Exception) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return str(reason)
