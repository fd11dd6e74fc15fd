"""The reward server and the `remote` plugin over loopback: same scores as in-process, bad requests, slow
and failing servers, and a whole run scored remotely."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from helpers import TINY_RECIPE, serve_reward, tiny_config

from rlkit.core.errors import RewardError
from rlkit.rewards import RewardInput, RewardOutput
from rlkit.rewards.programmatic import SourceConsistency
from rlkit.rewards.remote import RemoteReward
from rlkit.rewards.wire import WireError, decode_input, encode_input
from rlkit.serve import RewardServer


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return RewardInput(torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g),
                       [f"edit {i}" for i in range(n)], torch.arange(n) // 2, [{"k": i} for i in range(n)])


def test_wire_round_trip_and_refusals():
    batch = _batch()
    back = decode_input(encode_input(batch, "float32"))
    assert torch.equal(back.edited, batch.edited) and back.instructions == batch.instructions
    assert back.metadata == batch.metadata and torch.equal(back.group_ids, batch.group_ids)
    q = decode_input(encode_input(batch))  # uint8: what a PNG carries
    assert (q.edited - batch.edited).abs().max() <= 0.5 / 255 + 1e-7
    with pytest.raises(WireError, match="not a safetensors"):
        decode_input(b"\x80\x04pickle-bytes")  # a pickle (or anything else) is refused, never loaded
    with pytest.raises(WireError, match="instructions"):
        bad = _batch()
        bad.instructions = bad.instructions[:2]
        decode_input(encode_input(bad))


def test_remote_scores_match_in_process(served):
    url = served(SourceConsistency(), "source_consistency")
    remote = RemoteReward(url, wire_dtype="float32")
    assert remote.health()["reward"] == "source_consistency"
    batch = _batch()
    assert torch.equal(remote(batch).scores, SourceConsistency()(batch).scores)
    assert torch.allclose(RemoteReward(url)(batch).scores, SourceConsistency()(batch).scores, atol=1 / 255)


def test_uncertainty_details_and_rationales_travel(served):
    def judge(b):
        n = len(b)
        return RewardOutput(scores=torch.arange(n).float(), uncertainty=torch.full((n,), 0.5),
                            details={"sigma": torch.ones(n)}, rationales=[f"why {i}" for i in range(n)])

    out = RemoteReward(served(judge))(_batch())
    assert out.scores.tolist() == [0, 1, 2, 3] and out.uncertainty.tolist() == [0.5] * 4
    assert out.details["sigma"].tolist() == [1] * 4 and out.rationales == ["why 0", "why 1", "why 2", "why 3"]


def test_bad_request_gets_400_with_a_message(served):
    url = served(SourceConsistency())
    req = urllib.request.Request(f"{url}/score", data=b"garbage", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400 and "safetensors" in json.loads(info.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{url}/nothing", timeout=5)
    assert info.value.code == 404


def test_reward_error_on_the_server_is_not_retried_forever_and_names_it(served):
    calls = []

    def broken(b):
        calls.append(1)
        raise ValueError("judge crashed")

    remote = RemoteReward(served(broken), retries=2, backoff=0.01)
    with pytest.raises(RuntimeError, match="judge crashed"):
        remote(_batch())
    assert len(calls) == 3  # 500s are retried (a transient GPU error), then it gives up


def test_slow_server_times_out_and_retries(served):
    calls = []

    def slow(b):
        calls.append(time.perf_counter())
        time.sleep(1.0)
        return SourceConsistency()(b)

    remote = RemoteReward(served(slow), timeout=0.3, retries=1, backoff=0.01)
    with pytest.raises(RuntimeError, match="failed 2 time.*timed out"):
        remote(_batch())
    time.sleep(1.2)  # let the server finish the abandoned requests before shutdown
    assert len(calls) == 2


def test_no_server_fails_at_start_up():
    with pytest.raises(ValueError, match="no reward server.*serve-reward"):
        RemoteReward("http://127.0.0.1:9", timeout=1)


def test_validate_asks_the_server_and_offline_does_not(capsys):
    from rlkit.cli import main

    absent = "rewards=[{name: remote, kwargs: {url: 'http://127.0.0.1:9', timeout: 1}}]"
    assert main(["validate", str(TINY_RECIPE), absent]) == 2  # as the run would be refused at start-up
    assert "no reward server at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["validate", str(TINY_RECIPE), "--offline", absent]) == 0


def test_a_run_scored_by_a_remote_reward(served, tmp_path):
    from rlkit.trainer import Trainer

    url = served(SourceConsistency(), "source_consistency")
    cfg = tiny_config(tmp_path, f"rewards=[{{name: remote, kwargs: {{url: '{url}', wire_dtype: float32}}}}]")
    run = Trainer(cfg, progress=False).fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and 0 < rows[-1]["reward/remote"] <= 1


def test_a_run_stops_cleanly_when_the_server_fails(served, tmp_path):
    from rlkit.trainer import Trainer

    url = served(lambda b: RewardOutput(scores=torch.full((len(b),), float("nan"))))
    cfg = tiny_config(tmp_path, f"rewards=[{{name: remote, kwargs: {{url: '{url}'}}}}]")
    with pytest.raises(RewardError, match="'remote'.*non-finite"):
        Trainer(cfg, progress=False).fit()


def test_serve_reward_command(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "serve-reward", "target_color", "color=[0,0,1]",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        remote = None
        for _ in range(100):
            try:
                remote = RemoteReward(f"http://127.0.0.1:{port}", timeout=5)
                break
            except ValueError:
                time.sleep(0.1)
        assert remote is not None, proc.stdout.read() if proc.poll() is not None else "server did not start"
        blue = torch.zeros(2, 3, 8, 8)
        blue[:, 2] = 1
        out = remote(RewardInput(blue, blue, ["a", "b"], torch.zeros(2, dtype=torch.long)))
        assert out.scores.tolist() == [1.0, 1.0]  # the kwargs reached the plugin: blue is the target colour
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ servers and clients that misbehave
def _raw_server(handle):
    """A TCP server on loopback whose every connection is handed to ``handle(conn, n)`` (n = 0, 1, ...)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    count = [0]

    def loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            n, count[0] = count[0], count[0] + 1
            threading.Thread(target=_serve_one, args=(handle, conn, n), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}", count


def _serve_one(handle, conn, n):
    with conn:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(body) < length:
            body += conn.recv(65536)
        try:
            handle(conn, n, body)
        except OSError:
            pass  # the client hung up: what the tests provoke


def _good_reply(body: bytes) -> bytes:
    from rlkit.rewards.wire import encode_output

    batch = decode_input(body)
    out = encode_output(SourceConsistency()(batch))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out


def test_timeout_bounds_a_whole_call_to_a_trickling_server():
    def trickle(conn, n, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(60):  # one byte every 0.25 s: each read is quick, the whole would take 15 s
            conn.sendall(b"x")
            time.sleep(0.25)

    listener, url, _ = _raw_server(trickle)
    remote = RemoteReward(url, timeout=1.0, retries=0, check_health=False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="failed 1 time.*timed out"):
        remote(_batch())
    assert time.perf_counter() - start < 2.5
    listener.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "reset"])
def test_a_damaged_reply_is_retried(damage):
    def flaky(conn, n, body):
        if n == 0:
            reply = _good_reply(body)
            if damage == "truncated":  # promises the whole body, sends a tenth, hangs up
                conn.sendall(reply[: len(reply) // 10])
            elif damage == "garbage":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngarbage")
            return  # "reset": closes without a word
        conn.sendall(_good_reply(body))

    listener, url, count = _raw_server(flaky)
    out = RemoteReward(url, timeout=5, retries=2, backoff=0.01, check_health=False)(_batch())
    assert torch.allclose(out.scores, SourceConsistency()(_batch()).scores, atol=1 / 255)
    assert count[0] == 2
    listener.close()


def _raw_request(url: str, data: bytes, read_timeout: float = 5) -> bytes:
    import socket

    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize("length", [b"abc", b"-5", b"99999999999999999999"])
def test_a_malformed_content_length_gets_a_400(served, length):
    url = served(SourceConsistency())
    reply = _raw_request(url, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n")
    assert reply.split(b"\r\n")[0].split(b" ")[1] in (b"400", b"413")  # refused by the HTTP layer or by ours


def test_idle_and_half_sent_connections_are_closed(served):
    server, url = serve_reward(SourceConsistency(), idle_timeout=0.5)
    try:
        start = time.perf_counter()
        assert _raw_request(url, b"") == b""  # says nothing: closed by the server, not held forever
        half = _raw_request(url, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this")
        assert time.perf_counter() - start < 4 and (half == b"" or b" 408" in half.split(b"\r\n")[0])
    finally:
        server.stop()


def test_a_busy_port_is_one_line(capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main_cli(["serve-reward", "source_consistency", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0] and "--port" in err[0]


def main_cli(argv):
    from rlkit.cli import main

    return main(argv)


# ------------------------------------------------------------------ batching and the token
def test_merge_keeps_each_requests_groups_apart():
    from rlkit.serve import merge, split

    a, b = _batch(4, seed=0), _batch(2, seed=1)  # both number their groups from 0
    merged = merge([a, b])
    assert merged.group_ids.tolist() == [0, 0, 1, 1, 2, 2]  # b's group 0 is not a's group 0
    assert merged.instructions == a.instructions + b.instructions and len(merged.metadata) == 6
    out = RewardOutput(scores=torch.arange(6.0), uncertainty=torch.ones(6), details={"d": torch.arange(6.0)},
                       rationales=[str(i) for i in range(6)])
    first, second = split(out, [4, 2])
    assert second.scores.tolist() == [4, 5] and second.details["d"].tolist() == [4, 5]
    assert first.rationales == ["0", "1", "2", "3"] and second.uncertainty.tolist() == [1, 1]


def _concurrently(calls):
    """Runs each zero-argument call in its own thread, all released at once; returns results or exceptions."""
    barrier, out = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i):
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as err:
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_four_clients_are_batched_into_fewer_reward_calls(served):
    sizes = []

    def judge(b):  # a judge that takes a while per call, as a GPU model does
        sizes.append(len(b))
        time.sleep(0.3)
        return SourceConsistency()(b)

    url = served(judge, max_wait=0.05)
    batches = [_batch(4, seed=i) for i in range(4)]
    clients = [RemoteReward(url, wire_dtype="float32") for _ in batches]
    outs = _concurrently([lambda c=c, b=b: c(b) for c, b in zip(clients, batches)])
    for out, batch in zip(outs, batches):  # each client gets its own images' scores back
        assert torch.equal(out.scores, SourceConsistency()(batch).scores)
    health = clients[0].health()
    assert health["requests"] == 4 and health["reward_calls"] == len(sizes) < 4
    assert sum(sizes) == 16 and max(sizes) > 4


def test_a_bad_request_in_a_batch_fails_alone(served):
    def judge(b):
        if "bad" in b.instructions:
            raise ValueError("cannot judge 'bad'")
        time.sleep(0.2)
        return SourceConsistency()(b)

    url = served(judge, max_wait=0.05)
    good, bad = _batch(2), _batch(2, seed=1)
    bad.instructions = ["bad", "bad"]
    outs = _concurrently([lambda: RemoteReward(url, retries=0)(good), lambda: RemoteReward(url, retries=0)(bad)])
    assert isinstance(outs[1], RuntimeError) and "cannot judge 'bad'" in str(outs[1])
    assert torch.allclose(outs[0].scores, SourceConsistency()(good).scores, atol=1 / 255)


def test_images_of_another_size_wait_for_their_own_call(served):
    calls = []  # (images, px) of each reward call

    def judge(b):
        calls.append((len(b), b.edited.shape[-1]))
        time.sleep(0.2)
        return SourceConsistency()(b)

    url = served(judge, max_wait=0.05)
    small, large = _batch(2), _batch(2)  # 16 px and 24 px
    large.edited, large.source = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    batches = [small, large, small]
    outs = _concurrently([lambda b=b: RemoteReward(url, wire_dtype="float32")(b) for b in batches])
    for out, batch in zip(outs, batches):
        assert torch.equal(out.scores, SourceConsistency()(batch).scores)
    assert {px for _, px in calls} == {16, 24} and len(calls) >= 2
    assert sum(n for n, px in calls if px == 24) == 2 and sum(n for n, px in calls if px == 16) == 4


def test_the_token(served, monkeypatch):
    from rlkit.core.errors import UserError

    with pytest.raises(UserError, match="serving on 0.0.0.0 lets anyone.*token"):
        RewardServer("test", SourceConsistency(), "0.0.0.0", 0)  # refused before anything binds
    url = served(SourceConsistency(), token="s3cret")
    with pytest.raises(RuntimeError, match=r"rejected the request \(401\).*bearer token"):
        RemoteReward(url, retries=0)(_batch())
    with pytest.raises(RuntimeError, match=r"\(401\)"):
        RemoteReward(url, retries=0, token="wrong")(_batch())
    assert RemoteReward(url, token="s3cret")(_batch()).scores.shape == (4,)
    monkeypatch.setenv("RLKIT_REWARD_TOKEN", "s3cret")  # kept out of the recipe
    assert RemoteReward(url)(_batch()).scores.shape == (4,)


def test_a_body_over_the_limit_is_refused(served):
    url = served(SourceConsistency(), max_body=1000)
    with pytest.raises(RuntimeError, match=r"\(413\).*1000 bytes"):
        RemoteReward(url, retries=0)(_batch())


def test_a_client_that_hangs_up_mid_request_is_one_line_on_the_server(capfd):
    import socket

    server, url = serve_reward(SourceConsistency())
    try:
        host, port = url.rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
        time.sleep(0.5)
        assert RemoteReward(url)(_batch()).scores.shape == (4,)  # still serving
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "hung up" in err
