"""Reward server throughput with several trainer processes: the FastAPI server (dynamic batching) against the
earlier one-request-at-a-time `http.server` one, same reward, same machine.

C clients (threads, each with its own `remote` reward) send R requests of B images at once; the figure is
images scored per second over the whole exchange, and reward calls per request. Two rewards:
- `jrm`: a JRM at toy size (`random_size: tiny`) at 32 px, the CPU cost of a real judge's forward;
- `latency`: a judge whose every call takes a fixed 0.2 s plus 5 ms an image (what a GPU judge's call
  overhead looks like from the outside), where batching pays most.
The earlier server is read from git history (`--old-commit`), so the comparison needs a checkout of the repo.

    python benchmarks/reward_server_bench.py                      # 4 clients x 6 requests x 8 images
    python benchmarks/reward_server_bench.py --clients 8 --requests 4
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlkit.rewards.base import RewardInput  # noqa: E402
from rlkit.rewards.remote import RemoteReward  # noqa: E402
from rlkit.serve import RewardServer  # noqa: E402


class FixedLatencyJudge:
    def __init__(self, per_call: float = 0.2, per_image: float = 0.005):
        self.per_call, self.per_image = per_call, per_image

    def __call__(self, batch):
        from rlkit.rewards.base import RewardOutput

        time.sleep(self.per_call + self.per_image * len(batch))
        return RewardOutput(scores=batch.edited.mean(dim=(1, 2, 3)))


def old_server_module(commit: str):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:rlkit/serve.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_serve.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exchange(url: str, clients: int, requests: int, images: int, size: int) -> float:
    """Seconds for every client to get its requests scored, all clients at once."""
    g = torch.Generator().manual_seed(0)
    batch = RewardInput(torch.rand(images, 3, size, size, generator=g), torch.rand(images, 3, size, size, generator=g),
                        ["make the square red"] * images, torch.arange(images) // 4)
    remotes = [RemoteReward(url, timeout=600) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(remote):
        barrier.wait()
        for _ in range(requests):
            remote(batch)

    threads = [threading.Thread(target=client, args=(r,)) for r in remotes]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--old-commit", default="1951733", help="a commit with the http.server reward server")
    args = ap.parse_args()
    from rlkit.rewards.jrm.reward import JRMReward

    torch.set_num_threads(torch.get_num_threads())
    old = old_server_module(args.old_commit)
    total = args.clients * args.requests * args.images
    print(f"{args.clients} clients x {args.requests} requests x {args.images} images ({args.size} px), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'reward':<8} {'server':<22} {'seconds':>8} {'images/s':>9} {'reward calls':>12}")
    for name, reward in (("jrm", JRMReward(random_size="tiny", image_size=args.size, device="cpu")),
                         ("latency", FixedLatencyJudge())):
        reward(RewardInput(torch.rand(2, 3, args.size, args.size), torch.rand(2, 3, args.size, args.size),
                           ["warm up", "warm up"], torch.zeros(2, dtype=torch.long)))
        calls = {"n": 0}

        def counted(batch, reward=reward):
            calls["n"] += 1
            return reward(batch)

        figures = {}
        server = old.make_server(name, counted, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        seconds = exchange(f"http://127.0.0.1:{server.server_address[1]}", args.clients, args.requests, args.images,
                           args.size)
        server.shutdown()
        server.server_close()
        figures["http.server, one lock"] = (seconds, calls["n"])
        calls["n"] = 0
        server = RewardServer(name, counted, "127.0.0.1", 0)
        seconds = exchange(server.start(), args.clients, args.requests, args.images, args.size)
        server.stop()
        figures["FastAPI, batching"] = (seconds, calls["n"])
        for label, (seconds, n) in figures.items():
            print(f"{name:<8} {label:<22} {seconds:>8.2f} {total / seconds:>9.1f} {n:>12}")
        (s_old, _), (s_new, _) = figures.values()
        print(f"{name:<8} {'ratio new / old':<22} {'':>8} {s_old / s_new:>9.2f}x")


if __name__ == "__main__":
    main()
