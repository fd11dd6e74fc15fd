"""Shared fixtures: tiny recipes and policies. No test reaches the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker (and its subprocesses): workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

from rlkit.config import load_recipe
from rlkit.policies.base import PromptBatch

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "tiny_edit.yaml"


def tiny_config(tmp_path: Path, *overrides: str):
    """The tiny recipe, shortened for tests, writing into tmp_path."""
    base = [f"output_dir={tmp_path / 'run'}", "train.steps=2", "train.save_every=1", "train.grid_every=1",
            "sampler.num_steps=4", "algorithm.group_size=3", "algorithm.micro_batch=6",
            "train.report=false"]
    return load_recipe(str(TINY_RECIPE), base + list(overrides))


def make_policy(*overrides: str, tmp_path: Path | None = None):
    from rlkit.policies import build_policy

    cfg = tiny_config(tmp_path or Path("/tmp/unused"), *overrides)
    torch.manual_seed(0)
    return build_policy(cfg.policy, cfg.sampler, torch.device("cpu")), cfg


def prompt_batch(n: int = 2, seed: int = 0, keys: list[str] | None = None) -> PromptBatch:
    g = torch.Generator().manual_seed(seed)
    texts = ["make the square red", "remove the circle", "turn it blue", "add a star"][:n]
    return PromptBatch(torch.rand(n, 3, 32, 32, generator=g), texts, keys or [f"img{i}\n{t}" for i, t in
                                                                             enumerate(texts)])


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
