"""A judge whose answers are known in advance: an OpenAI-compatible server on 127.0.0.1 (GET /v1/models, POST
/v1/chat/completions) that answers each question from a script keyed by the instruction in its prompt, so tests
can check the benchmarks' arithmetic by hand. It counts the requests it gets."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedJudge:
    def __init__(self, answer):
        """``answer(prompt_text, n_images, times_asked) -> str``: the judge's reply."""
        self.answer, self.requests, self.asked = answer, 0, {}
        lock = threading.Lock()  # the server answers on several threads
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "scripted-judge", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                text = "".join(c["text"] for c in content if c["type"] == "text")
                images = sum(c["type"] == "image_url" for c in content)
                with lock:
                    judge.requests += 1
                    judge.asked[text] = judge.asked.get(text, 0) + 1
                    times = judge.asked[text]
                reply = judge.answer(text, images, times)
                # a reply may come with its tokens' logprobs: (text, [(token, [(candidate, logprob), ...]), ...])
                reply, tokens = reply if isinstance(reply, tuple) else (reply, None)
                logprobs = None if tokens is None or not body.get("logprobs") else {"content": [
                    {"token": t, "logprob": cands[0][1], "bytes": None,
                     "top_logprobs": [{"token": c, "logprob": lp, "bytes": None} for c, lp in cands]}
                    for t, cands in tokens]}
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "scripted-judge",
                            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                         "message": {"role": "assistant", "content": reply}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
