"""Training from Python: `rlkit.train` and `rlkit.resume`, with reward objects or plain functions.

    import rlkit

    def redness(batch):  # RewardInput -> one score per edited image
        return batch.edited[:, 0].mean(dim=(1, 2)) - batch.edited[:, 1:].mean(dim=(1, 2, 3))

    run_dir = rlkit.train("tiny_edit", ["output_dir=runs/red"], rewards=[redness])
    rlkit.resume(run_dir, rewards=[redness])  # the same rewards again, under the same names

`rewards` replaces the recipe's `rewards` list: a list of callables (named after their `__name__` or class),
`(callable, weight)` pairs, or a mapping NAME -> callable or (callable, weight). The recipe records each as
`python:NAME`; its output goes through the same checks as a plugin's (shape, finite scores). A run trained on
rewards given in Python resumes only through `rlkit.resume` with rewards under the same names: rlkit cannot
check that a function is the one it trained with, so which function a name means is the caller's promise.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rlkit.core.errors import UserError


def _named(rewards) -> dict[str, tuple[Any, float]]:
    items = rewards.items() if isinstance(rewards, dict) else [(None, r) for r in rewards]
    named: dict[str, tuple[Any, float]] = {}
    for name, item in items:
        fn, weight = item if isinstance(item, tuple) else (item, 1.0)
        if not callable(fn):
            raise UserError(f"rewards: {fn!r} is not callable (a reward takes a RewardInput)")
        name = name or getattr(fn, "__name__", None) or type(fn).__name__
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"rewards: the name {name!r} must be a plain identifier; give rewards as a mapping")
        if name in named:
            raise UserError(f"rewards: two rewards are named '{name}'; give them as a mapping of distinct names")
        named[name] = (fn, float(weight))
    if not named:
        raise UserError("rewards: give at least one reward")
    return named


def _reward_override(named: dict[str, tuple[Any, float]]) -> str:
    import json

    return "rewards=" + json.dumps([{"name": f"python:{n}", "weight": w} for n, (_, w) in named.items()])


def train(recipe: str | Path, overrides: list[str] | tuple = (), rewards=None, progress: bool = True) -> Path:
    """Run a recipe (a file or packaged name) with `key=value` overrides; returns the run directory. Raises
    UserError (and the run's other errors) instead of exiting."""
    from rlkit.config import load_recipe
    from rlkit.plugins import given_rewards

    named = _named(rewards) if rewards is not None else {}
    overrides = [*overrides, _reward_override(named)] if named else list(overrides)
    with given_rewards({n: fn for n, (fn, _) in named.items()}):
        return _fit(load_recipe(recipe, overrides), progress)


def resume(run_dir: str | Path, overrides: list[str] | tuple = (), rewards=None, progress: bool = True) -> Path:
    """Continue a run from its newest valid checkpoint; rewards given in Python must be given again."""
    from rlkit.config import load_saved_recipe
    from rlkit.plugins import PYTHON, given_rewards

    cfg = load_saved_recipe(Path(run_dir), list(overrides))
    named = _named(rewards) if rewards is not None else {}
    wanted = {str(s.name)[len(PYTHON):] for s in [*cfg.rewards, *cfg.eval.rewards] if str(s.name).startswith(PYTHON)}
    if set(named) != wanted:
        raise UserError(f"{run_dir} was trained with rewards given in Python named {sorted(wanted) or 'none'}; "
                        f"resume got {sorted(named) or 'none'}: pass the same names")
    with given_rewards({n: fn for n, (fn, _) in named.items()}):
        return _fit(cfg, progress)


def _fit(cfg, progress: bool) -> Path:
    from rlkit.console import ConsoleLog, current, quiet_libraries
    from rlkit.preparation import prepare_recipe
    from rlkit.trainer import Trainer

    quiet_libraries()
    with ConsoleLog() if current() is None else contextlib.nullcontext():
        prepare_recipe(cfg)
        return Trainer(cfg, progress=progress).fit()
