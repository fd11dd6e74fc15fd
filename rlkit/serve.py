"""`rlkit serve-reward NAME [key=value ...]`: any reward plugin behind HTTP, so a big judge can live on other GPUs.

    GET  /health  -> {"status": "ok", "reward": NAME, "requests": N}
    POST /score   safetensors request (rewards/wire.py) -> safetensors response; 400 + JSON error for a bad
                  request, 500 + JSON error when the reward raises
Each request is one batch (the client sends a whole rollout's images at once). Loopback (127.0.0.1) unless
`--host` says otherwise. Requests are served one at a time: a reward model on one GPU scores one batch at a
time anyway, and this keeps plugins that are not thread-safe safe.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rewards.wire import WireError, decode_input, encode_output
from rlkit.errors import UserError

MAX_BODY = 1 << 30  # 1 GiB: a batch of 64 images at 1024 px in float32 is 0.8 GiB


def make_server(name: str, reward, host: str = "127.0.0.1", port: int = 8765,
                idle_timeout: float = 60.0) -> ThreadingHTTPServer:
    lock = threading.Lock()
    stats = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout  # a connection that sends nothing (or trickles) for this long is closed

        def log_message(self, fmt, *args):  # one quiet line per request instead of the default access log
            pass

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            self._reply(code, json.dumps({"error": message}).encode())

        def do_GET(self):
            if self.path != "/health":
                return self._error(404, f"unknown path {self.path}; use GET /health or POST /score")
            self._reply(200, json.dumps({"status": "ok", "reward": name, **stats}).encode())

        def do_POST(self):
            if self.path != "/score":
                return self._error(404, f"unknown path {self.path}; use POST /score")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._error(400, f"Content-Length must be a number of bytes, got "
                                        f"{self.headers.get('Content-Length')!r}")
            if not 0 < length <= MAX_BODY:
                return self._error(400, f"body must be 1 byte to {MAX_BODY} bytes, got {length}")
            body = self.rfile.read(length)
            if len(body) < length:  # the client went away mid-body
                return self._error(400, f"body ended after {len(body)} of {length} bytes")
            try:
                batch = decode_input(body)
            except WireError as err:
                return self._error(400, str(err))
            with lock:
                stats["requests"] += 1
                try:
                    out = reward(batch)
                    body = encode_output(out)
                except Exception as err:  # the client names the reward and stops its step
                    message = f"{type(err).__name__}: {err}"
                    print(f"error: request {stats['requests']}: {message}", file=sys.stderr, flush=True)
                    return self._error(500, message)
            self._reply(200, body, "application/octet-stream")

    return ThreadingHTTPServer((host, port), Handler)


def serve(name: str, kwargs: dict, host: str, port: int) -> None:
    from rlkit.plugins import build_reward

    reward = build_reward(name, kwargs)
    try:
        server = make_server(name, reward, host, port)
    except OSError as err:  # EADDRINUSE, EACCES, an address this machine does not have
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err} (another server on that port? "
                        f"choose one with --port)") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this port can use the reward model")
    print(f"serving reward '{name}' on http://{host}:{server.server_address[1]} (GET /health, POST /score)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
