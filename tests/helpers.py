"""What many tests share: the repository's paths, the tiny recipe shortened for tests, a tiny policy, prompts.
Fixtures are in conftest.py; test modules import these by name (`from helpers import tiny_config`)."""

from pathlib import Path

import torch

from rlkit.config import load_recipe
from rlkit.core.types import PromptBatch

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


def serve_reward(reward, name="test", **kwargs):
    """`rlkit serve-reward`'s server for `reward` on 127.0.0.1 (a free port): (server, url)."""
    from rlkit.serve import RewardServer

    server = RewardServer(name, reward, "127.0.0.1", 0, **kwargs)
    return server, server.start()
