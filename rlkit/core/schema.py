"""How a recipe key declares what it accepts, and the checks that read those declarations.

A key is declared with `setting(default, ge=..., choices=...)` beside its type in a schema dataclass
(rlkit/config.py, rewards/jrm/config.py); `range_problems` walks a resolved recipe against the schema and lists
every value outside its Range, `shape_problems` every section or list given in the wrong shape (which
OmegaConf's merge reports only as a TypeError without the key).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlkit.core.errors import UserError


@dataclass(frozen=True)
class Range:
    """What values one recipe key accepts: declared beside the key, checked for every recipe and override.

    Bounds are inclusive (ge/le) or strict (gt/lt); every float must also be finite. ``choices`` lists the
    accepted values; ``pattern`` is a regular expression the whole string must match; ``multiple_of`` for
    ints; for lists, ``length`` (exact), ``min_len``, ``each`` (a Range for every item) and ``unique``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    multiple_of: int | None = None
    length: int | None = None
    min_len: int | None = None
    each: Range | None = None
    unique: bool = False  # a list names each value once
    optional: bool = False  # None is accepted
    hint: str | None = None  # how the accepted values read in a message (patterns)

    def problems(self, key: str, value: Any) -> list[str]:
        if value is None:
            return [] if self.optional else [f"'{key}' must be set"]
        if isinstance(value, (list, tuple)):
            out = []
            if self.length is not None and len(value) != self.length:
                out.append(f"'{key}' must list exactly {self.length} values, got {len(value)}")
            if self.min_len is not None and len(value) < self.min_len:
                out.append(f"'{key}' must list at least {self.min_len} value(s)")
            for i, item in enumerate(value if self.each else []):
                out += self.each.problems(f"{key}[{i}]", item)
            repeated = [v for i, v in enumerate(value) if v in value[:i]] if self.unique else []
            if repeated:
                out.append(f"'{key}' names '{repeated[0]}' twice")
            return out
        if self.choices is not None and value not in self.choices:
            return [f"'{key}' is '{value}', expected one of: {', '.join(str(c) for c in self.choices)}"]
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return [f"'{key}' is '{value}', expected {self.describe()}"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return []
        if isinstance(value, float) and not math.isfinite(value):
            return [f"'{key}' is {value}, must be a finite number {self.describe()}".rstrip()]
        bad = ((self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
               or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt)
               or (self.multiple_of is not None and value % self.multiple_of))
        return [f"'{key}' is {value}, must be {self.describe()}"] if bad else []

    def describe(self) -> str:
        if self.hint or self.pattern is not None:
            return self.hint or self.pattern
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        parts = [f"{op} {v if isinstance(v, int) else f'{v:g}'}" for op, v in bounds if v is not None]
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        return " and ".join(parts)


def setting(default: Any = MISSING, *, factory=None, help: str = "", **limits) -> Any:
    """A recipe key with its default, its Range (see Range for the limits) and one line of help (what
    `rlkit validate --print` and the recipe-key reference say of it)."""
    if default is None:  # a key whose default is None may stay None
        limits.setdefault("optional", True)
    meta = {"range": Range(**limits), "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# sizes that allocate memory in proportion (a rank, a batch, a group): beyond this a value is a typo
MAX_SIZE = 4096
SEED = dict(ge=0, lt=2**32)  # numpy's seed range; the loop derives generator seeds from it
UNIT = dict(ge=0, le=1)


def range_problems(values: Any, schema_cls: type, prefix: str = "") -> list[str]:
    """Every value that breaks the Range declared beside its key, walking nested sections and list items."""
    if not isinstance(values, dict):
        return []
    out = []
    hints = typing.get_type_hints(schema_cls)
    for f in dataclasses.fields(schema_cls):
        if f.name not in values:
            continue
        value, path = values[f.name], prefix + f.name
        if "range" in f.metadata:
            out += f.metadata["range"].problems(path, value)
        for t in [a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)] or [hints[f.name]]:
            if dataclasses.is_dataclass(t) and isinstance(value, dict):
                out += range_problems(value, t, path + ".")
            elif dataclasses.is_dataclass(t) and isinstance(value, list):
                for i, item in enumerate(value):
                    out += range_problems(item, t, f"{path}[{i}].")
    return out


def resolved(cfg: DictConfig, where: str) -> dict:
    """The recipe as plain containers with every ${...} resolved; a broken interpolation is a UserError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise UserError(f"{where}: '{key}': {str(err).splitlines()[0]}") from None


def shape_problems(raw: Any, schema_cls: type, prefix: str = "") -> list[str]:
    """Sections given as lists or lists given as mappings (`rewards: {name: ...}`), which OmegaConf's merge
    reports only as a TypeError without the key."""
    out = []
    hints = typing.get_type_hints(schema_cls)
    for f in dataclasses.fields(schema_cls):
        if not isinstance(raw, (dict, DictConfig)) or f.name not in raw:
            continue
        node = raw._get_node(f.name) if isinstance(raw, DictConfig) else raw[f.name]
        value = node._value() if hasattr(node, "_value") and not isinstance(node, (DictConfig, ListConfig)) else node
        if value is None or (isinstance(value, str) and value.startswith("${")):
            continue
        hint = hints[f.name]
        is_list = typing.get_origin(hint) is list
        sections = [a for a in (typing.get_args(hint) or [hint]) if dataclasses.is_dataclass(a)]
        if is_list and not isinstance(value, (list, ListConfig)):
            item = "items" if not sections else "{" + ", ".join(x.name for x in dataclasses.fields(sections[0])) + "}"
            out.append(f"'{prefix}{f.name}' must be a list of {item}, got a {_kind(value)}")
        elif sections and not is_list:
            if not isinstance(value, (dict, DictConfig)):
                out.append(f"'{prefix}{f.name}' must be a section of keys, got a {_kind(value)}")
            else:
                out += shape_problems(value, sections[0], f"{prefix}{f.name}.")
        elif sections and is_list:
            for i, item in enumerate(value):
                if not isinstance(item, (dict, DictConfig)):
                    out.append(f"'{prefix}{f.name}[{i}]' must be a mapping of keys, got a {_kind(item)}")
    return out


def _kind(value: Any) -> str:
    return ("mapping" if isinstance(value, (dict, DictConfig)) else "list" if isinstance(value, (list, ListConfig))
            else f"single value ({value!r})")


# a section of both the RL recipe and the JRM training recipe
@dataclass
class LoggingConfig:
    """Experiment trackers (rlkit/trackers.py): scalars every step, evaluation grids, the recipe, alarms."""

    # wandb needs `pip install wandb` (WANDB_MODE=offline: no login); trackio needs `pip install trackio` and logs
    # locally (TRACKIO_DIR; `trackio show` opens its dashboard)
    report_to: list[str] = setting(factory=lambda: ["tensorboard"],
                                   each=Range(choices=("tensorboard", "wandb", "trackio")), unique=True,
                                   help="experiment trackers: tensorboard (RUN_DIR/tensorboard), wandb, trackio")
    project: str = setting("rlkit", pattern=r".*\S.*", hint="a project name", help="the W&B / trackio project")
    run_name: str | None = setting(None, help="the tracker's run name (None: the output_dir's folder name)")


def _section_type(hint) -> type | None:
    """The dataclass a field's type holds (a section, an optional section, or a list of them), else None."""
    return next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)


def _flow(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=2**16, allow_unicode=True).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def commented_yaml(values: dict, schema_cls: type | None, indent: int = 0) -> str:
    """A recipe's values as YAML with each key's help as its comment (what `rlkit validate --print` shows):
    sections as blocks, values in flow style, so the text loads back as the same recipe."""
    fields = {f.name: f for f in dataclasses.fields(schema_cls)} if schema_cls else {}
    hints = typing.get_type_hints(schema_cls) if schema_cls else {}
    pad, out = " " * indent, []
    for key, value in values.items():
        help_text = fields[key].metadata.get("help", "") if key in fields else ""
        comment = f"  # {help_text}" if help_text else ""
        section = _section_type(hints.get(key))
        if isinstance(value, dict) and value and section is not None:
            out += [f"{pad}{key}:{comment}", commented_yaml(value, section, indent + 2)]
        elif isinstance(value, list) and value and section is not None and all(isinstance(v, dict) for v in value):
            out.append(f"{pad}{key}:{comment}")
            for item in value:
                lines = commented_yaml(item, section, indent + 4).split("\n")
                out += [f"{pad}  - {lines[0].lstrip()}", *lines[1:]]
        else:
            out.append(f"{pad}{key}: {_flow(value)}{comment}")
    return "\n".join(out)


def _accepts(limits: Range | None) -> str:
    if limits is None:
        return ""
    if limits.choices is not None:
        return " | ".join(str(c) for c in limits.choices)
    if limits.each is not None:
        return f"each {_accepts(limits.each)}" + (", each once" if limits.unique else "")
    return limits.describe()


def key_rows(schema_cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, what it accepts, help) for every key of a schema, through its sections and list items."""
    rows = []
    hints = typing.get_type_hints(schema_cls)
    for f in dataclasses.fields(schema_cls):
        section, key = _section_type(hints[f.name]), prefix + f.name
        if section is not None:
            is_list = typing.get_origin(hints[f.name]) is list
            if "help" in f.metadata:  # a list of sections (rewards) or an optional one (eval.data)
                rows.append((key, "[]" if is_list else _flow(f.default), "", f.metadata["help"]))
            rows += key_rows(section, key + ("[]." if is_list else "."))
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        rows.append((key, _flow(default), _accepts(f.metadata.get("range")), f.metadata.get("help", "")))
    return rows
