"""Shared fixtures: tiny recipes and policies. No test reaches the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker (and its subprocesses): workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from helpers import make_policy, serve_reward


@pytest.fixture
def tiny_policy():
    policy, _ = make_policy()
    return policy


@pytest.fixture(scope="session")
def judge_server(tmp_path_factory):
    """(url, model folder) of a real OpenAI-compatible judge: `transformers serve` with a tiny VLM on 127.0.0.1,
    shared by the tests that need one (it takes a few seconds to start)."""
    from judge_server import save_tiny_vlm, start_transformers_serve, stop

    model = save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "model")
    proc, url = start_transformers_serve(model)
    yield url, model
    stop(proc)


@pytest.fixture
def served():
    """served(reward, name, **server kwargs) -> url; every server started is stopped after the test."""
    servers = []

    def start(reward, name="test", **kwargs):
        server, url = serve_reward(reward, name, **kwargs)
        servers.append(server)
        return url

    yield start
    for s in servers:
        s.stop()
