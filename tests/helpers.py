"""What many tests share: the repository's paths, the tiny recipe shortened for tests, a tiny policy, prompts.
Fixtures are in conftest.py; test modules import these by name (`from helpers import tiny_config`)."""

import dataclasses
import math
import typing
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


# ---------------------------------------------------------------- property tests over a schema's numeric keys
def numeric_keys(cls, prefix="") -> dict[str, type]:
    """Every int or float key of a schema dataclass, through its sections: dotted key -> type."""
    keys = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if dataclasses.is_dataclass(inner[0]):
            keys.update(numeric_keys(inner[0], f"{prefix}{f.name}."))
        elif inner[0] in (int, float):
            keys[prefix + f.name] = inner[0]
    return keys


FLOATS = [math.nan, math.inf, -math.inf, -1.0, -1e-9, 0.0, 1e-9, 1e-3, 0.3, 0.999, 1.0, 1.5, 2.5, 1e6]
INTS = [-(2**31), -1, 0, 1, 2, 3, 5, 16, 2**32]
# about half the draws come from values that are often in range, so both sides of the property are exercised
PLAUSIBLE_FLOATS, PLAUSIBLE_INTS = [1e-3, 0.05, 0.3, 0.9, 1.0], [1, 2, 3, 4]


def value_for(kind: type):
    """Values for a key of this type, from the classes that broke runs before ranges existed."""
    from hypothesis import strategies as st

    if kind is int:
        return st.one_of(st.sampled_from(PLAUSIBLE_INTS), st.sampled_from(INTS), st.integers(-3, 6),
                         st.sampled_from([0.5, 2.5]))
    return st.one_of(st.sampled_from(PLAUSIBLE_FLOATS), st.sampled_from(FLOATS))


