"""Secrets in a recipe (a judge's API key, a reward server's token): used in memory, never written or printed.

A reward declares its secret kwargs with a `secret_kwargs` class attribute (vlm_judge: `api_key`; remote:
`token`); kwargs named like a credential (api_key, token, password, secret, authorization, at any depth of a
reward's kwargs) are treated as secrets too, whatever the plugin says. Every copy of the recipe that rlkit
writes or shows (config.yaml, final/config.yaml, checkpoints' state.json, trackers' configuration, the report,
`validate --print`) goes through `redacted`:

- a secret given as an environment interpolation (`api_key: ${oc.env:JUDGE_API_KEY}`) is written as that
  interpolation, so `rlkit resume` reads the variable again and the value never touches the disk;
- a secret written into the recipe is replaced by `NOT_SAVED`; resuming such a run asks for it again.

The values themselves are also `remember`ed: `scrub` masks them in any console or run.log line (an error
message that quotes a URL with its key, a server's reply).
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

NOT_SAVED = "<secret: not saved>"
MASK = "***"
# credential-like key names, matched whole (max_tokens or token_budget are not secrets)
NAMES = r"api[_-]?key|token|password|passwd|secret|authorization|access[_-]?key"
CREDENTIAL = re.compile(rf"(?i)^(.*[_-])?({NAMES})$")
REWARD_LISTS = ("rewards", "eval.rewards")
_values: set[str] = set()


def secret_kwargs(reward_name: str) -> set[str]:
    """The kwargs the named reward declares secret (empty when it cannot be loaded: the name pattern still
    applies)."""
    from rlkit.plugins import load_reward_class

    try:
        cls = load_reward_class(str(reward_name))
    except Exception:  # an unknown or broken reward is reported by the recipe checks
        return set()
    return set(getattr(cls, "secret_kwargs", ()) or ())


def is_secret(key: str, declared: set[str]) -> bool:
    return key in declared or bool(CREDENTIAL.match(str(key)))


def _secret_paths(kwargs: Any, declared: set[str], prefix: tuple = ()) -> list[tuple]:
    """Paths (tuples of keys) to the secret values inside one reward's kwargs."""
    out = []
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if is_secret(key, declared) and value is not None and not isinstance(value, (dict, list)):
                out.append(prefix + (key,))
            else:
                out += _secret_paths(value, declared, prefix + (key,))
    elif isinstance(kwargs, list):
        for i, value in enumerate(kwargs):
            out += _secret_paths(value, declared, prefix + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _set(node: Any, path: tuple, value: Any) -> None:
    _get(node, path[:-1])[path[-1]] = value


def _reward_specs(container: dict):
    """(list key, index, spec dict) of every reward spec in a recipe container."""
    for dotted in REWARD_LISTS:
        node = container
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        for i, spec in enumerate(node or []):
            if isinstance(spec, dict) and isinstance(spec.get("kwargs"), dict):
                yield dotted, i, spec


def is_env_reference(value: Any) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"\s*\$\{oc\.env:[^}]+\}\s*", value))


def redacted(cfg: DictConfig | dict) -> dict:
    """The recipe as plain containers, every ${...} resolved except secrets: an environment reference stays a
    reference, a literal secret becomes NOT_SAVED. This is the only form in which a recipe leaves memory."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    raw = OmegaConf.to_container(cfg, resolve=False)
    out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for (_, _, spec), (_, _, raw_spec) in zip(_reward_specs(out), _reward_specs(raw)):
        declared = secret_kwargs(spec.get("name"))
        for path in _secret_paths(raw_spec["kwargs"], declared):
            given = _get(raw_spec["kwargs"], path)
            if given == NOT_SAVED:
                continue
            _set(spec["kwargs"], path, given if is_env_reference(given) else NOT_SAVED)
    return out


def literal_secrets(cfg: DictConfig) -> list[str]:
    """Dotted keys of secrets written into the recipe itself (not read from the environment)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    found = []
    for dotted, i, spec in _reward_specs(raw):
        for path in _secret_paths(spec["kwargs"], secret_kwargs(spec.get("name"))):
            value = _get(spec["kwargs"], path)
            if not is_env_reference(value) and value != NOT_SAVED:
                found.append(f"{dotted}.{i}.kwargs." + ".".join(map(str, path)))
    return found


def unsaved_secrets(cfg: DictConfig) -> list[str]:
    """Dotted keys of secrets that a saved recipe could not keep (NOT_SAVED): a resume must give them again."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    return [f"{dotted}.{i}.kwargs." + ".".join(map(str, path))
            for dotted, i, spec in _reward_specs(raw)
            for path in _secret_paths(spec["kwargs"], secret_kwargs(spec.get("name")))
            if _get(spec["kwargs"], path) == NOT_SAVED]


def remember(cfg: DictConfig) -> None:
    """Keep this recipe's secret values (resolved) so that `scrub` masks them wherever text is shown."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an unresolvable interpolation is reported by the recipe checks
        return
    for _, _, spec in _reward_specs(plain):
        for path in _secret_paths(spec["kwargs"], secret_kwargs(spec.get("name"))):
            remember_value(_get(spec["kwargs"], path))


def remember_value(value: Any) -> None:
    text = str(value) if value is not None else ""
    if len(text) >= 4 and text not in (NOT_SAVED, "EMPTY"):  # shorter strings would mask ordinary text
        _values.add(text)


# `api_key: value` or `token=value` as typed in an override that failed before its recipe was read
_TYPED = re.compile(rf"(?i)((?<![<\w])(?:\w+[_-])?(?:{NAMES})"
                    r"\s*[:=]\s*(?:Bearer\s+)?)(['\"]?)(?!\$\{)([^'\"\s,}\]]+)\2")


def scrub(text: str) -> str:
    """The text with every remembered secret value masked, and any credential-named value typed in it."""
    for value in sorted(_values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return _TYPED.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
