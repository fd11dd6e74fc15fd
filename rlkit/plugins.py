"""Plugins, discovered through entry-point groups and imported only when a recipe names them.

- `rlkit.rewards`: a reward (rewards/base.py's protocol), named in a recipe's `rewards` list. A reward needs no
  packaging: a name may also be `module:Class` (importable from the working directory) or `path/file.py:Class`,
  and the Python API (rlkit/api.py) takes reward objects and plain functions, named `python:NAME`;
- `rlkit.preparations`: a step run before the trainer is built (rlkit/preparation.py's protocol), named by a
  recipe's `prepare` key; it owns the recipe section of its `section` name.
Built-ins register through the same groups as third-party packages (pyproject.toml).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rlkit.core.errors import UserError

GROUP = "rlkit.rewards"
PREPARATIONS = "rlkit.preparations"
KIND = {GROUP: "reward", PREPARATIONS: "preparation"}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    target: str  # "module:attr"
    distribution: str
    version: str


@functools.lru_cache(maxsize=None)  # reading every installed distribution's metadata takes ~0.1 s; once a process
def _entry_points(group: str = GROUP) -> tuple[tuple[metadata.EntryPoint, str, str], ...]:
    found = []
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group == group:
                found.append((ep, dist_name, dist.version))
    return tuple(found)


def list_plugins(group: str) -> dict[str, PluginInfo]:
    """Every installed plugin of `group` by name. Two distributions claiming one name is an error naming both."""
    plugins: dict[str, PluginInfo] = {}
    for ep, dist, version in _entry_points(group):
        info = PluginInfo(ep.name, ep.value, dist, version)
        seen = plugins.get(ep.name)
        if seen is not None and seen.distribution != dist:
            raise UserError(
                f"{KIND[group]} '{ep.name}' is registered twice: by '{seen.distribution}' ({seen.target}) and by "
                f"'{dist}' ({ep.value}); uninstall one of them"
            )
        plugins[ep.name] = info
    return plugins


def load_plugin(group: str, name: str) -> Any:
    plugins = list_plugins(group)
    if name not in plugins:
        close = difflib.get_close_matches(name, list(plugins), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; installed: {', '.join(sorted(plugins))}"
        raise UserError(f"unknown {KIND[group]} '{name}'{hint}")
    info = plugins[name]
    module, _, attr = info.target.partition(":")
    try:
        obj = __import__(module, fromlist=["_"])
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as err:
        raise UserError(f"{KIND[group]} '{name}' ({info.target}, from {info.distribution}) failed to import: "
                        f"{err}") from None
    return obj


def list_rewards() -> dict[str, PluginInfo]:
    return list_plugins(GROUP)


PYTHON = "python:"  # rewards handed over in Python (rlkit.train(..., rewards=...)), by name
_given: dict[str, Any] = {}
_file_modules: dict[Path, Any] = {}


@contextlib.contextmanager
def given_rewards(rewards: dict[str, Any]):
    """While this is active, `python:NAME` in a recipe is the object given here under NAME."""
    previous = dict(_given)
    _given.clear()
    _given.update(rewards)
    try:
        yield
    finally:
        _given.clear()
        _given.update(previous)


def load_reward_class(name: str) -> Any:
    """What builds the named reward when called with its kwargs: an entry point's class, a `module:Class` or
    `file.py:Class` target, or a factory of a reward given in Python."""
    if name.startswith(PYTHON):
        key = name[len(PYTHON):]
        if key not in _given:
            raise UserError(f"reward '{name}' is a Python object handed to rlkit.train(); this process was not given "
                            f"it: resume from Python with rlkit.resume(RUN_DIR, rewards={{'{key}': ...}})")
        from rlkit.rewards import as_reward

        reward = as_reward(_given[key])
        return lambda: reward
    if ":" in name:
        return import_target(name)
    return load_plugin(GROUP, name)


def import_target(target: str) -> Any:
    """`package.module:Attr` (importable from the working directory) or `path/to/file.py:Attr`."""
    import importlib
    import importlib.util
    import sys

    module_name, _, attr = target.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"reward '{target}': no file {path}")
            if path not in _file_modules:
                spec = importlib.util.spec_from_file_location(f"rlkit_reward_{path.stem}_{len(_file_modules)}", path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module  # dataclasses and pickling look their module up
                spec.loader.exec_module(module)
                _file_modules[path] = module
            obj = _file_modules[path]
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:  # as `python -m` would find it
                sys.path.insert(0, str(Path.cwd()))
            obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"reward '{target}' failed to import: {type(err).__name__}: {err}") from None
    return obj


def build_reward(name: str, kwargs: dict[str, Any]) -> Any:
    cls = load_reward_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"reward '{name}': bad kwargs {sorted(kwargs)}: {err}") from None
    except ValueError as err:
        raise UserError(f"reward '{name}': {err}") from None


def build_rewards(specs, built: dict | None = None):
    """The weighted RewardSet for a recipe's `rewards` list (each plugin imported only here, when named).

    ``built`` caches instances by (name, kwargs): the held-out evaluation reuses the training rewards' models
    instead of loading a second copy of the same judge."""
    import json

    from rlkit.rewards import RewardSet

    built = {} if built is None else built
    entries = []
    from omegaconf import OmegaConf

    for s in specs:
        kwargs = OmegaConf.to_container(s.kwargs, resolve=True)  # plain lists and dicts for the plugin
        key = (s.name, json.dumps(kwargs, sort_keys=True, default=str))
        if key not in built:
            built[key] = build_reward(s.name, kwargs)
        entries.append((s.name, float(s.weight), built[key]))
    return RewardSet(entries)
