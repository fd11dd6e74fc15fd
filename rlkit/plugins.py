"""Plugins, discovered through entry-point groups and imported only when a recipe names them.

- `rlkit.rewards`: a reward (rewards/base.py's protocol), named in a recipe's `rewards` list;
- `rlkit.preparations`: a step run before the trainer is built (rlkit/preparation.py's protocol), named by a
  recipe's `prepare` key; it owns the recipe section of its `section` name.
Built-ins register through the same groups as third-party packages (pyproject.toml).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from rlkit.errors import UserError

GROUP = "rlkit.rewards"
PREPARATIONS = "rlkit.preparations"
KIND = {GROUP: "reward", PREPARATIONS: "preparation"}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    target: str  # "module:attr"
    distribution: str
    version: str


def _entry_points(group: str = GROUP) -> list[tuple[metadata.EntryPoint, str, str]]:
    found = []
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group == group:
                found.append((ep, dist_name, dist.version))
    return found


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


def load_reward_class(name: str) -> Any:
    return load_plugin(GROUP, name)


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

    from rewards.combine import RewardSet

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
