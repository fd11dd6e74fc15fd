"""The `remote` reward plugin: scores through `rlkit serve-reward` running elsewhere (another GPU or node).

    rewards: [{name: remote, kwargs: {url: "http://127.0.0.1:8765", timeout: 120, retries: 3}}]

Connection errors, timeouts and server errors (5xx) are retried with exponential backoff; a request the
server rejects (4xx) is not. When the tries run out the plugin raises, and the run stops the step naming the
reward (nothing is applied to the policy). Images travel as uint8 by default, which is what a PNG would
carry; `wire_dtype: float32` sends them exactly.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from rewards.base import RewardInput, RewardOutput
from rewards.wire import decode_output, encode_input


class RemoteReward:
    def __init__(self, url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                 wire_dtype: str = "uint8", check_health: bool = True):
        self.check(url, timeout, retries, backoff, wire_dtype)
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff, self.wire_dtype = timeout, retries, backoff, wire_dtype
        if check_health:  # fail at start-up, not at the first step, when the server is not there
            self.health()

    @staticmethod
    def check(url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0, wire_dtype: str = "uint8",
              check_health: bool = True) -> None:
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
            request = urllib.request.Request(f"{self.url}/score", data=body, method="POST",
                                             headers={"Content-Type": "application/octet-stream"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return decode_output(resp.read())
            except urllib.error.HTTPError as err:
                message = _server_message(err)
                if err.code < 500:  # our request is wrong: retrying cannot help
                    raise RuntimeError(f"server {self.url} rejected the request ({err.code}): {message}") from None
                last = f"server error {err.code}: {message}"
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                last = _reason(err)
        raise RuntimeError(f"{self.url} failed {self.retries + 1} time(s); last: {last}")


def _server_message(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", "")
    except Exception:
        return err.reason or ""


def _reason(err: Exception) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return str(reason)
