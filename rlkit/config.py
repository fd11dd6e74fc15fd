"""Recipe loading: YAML + `key=value` overrides, validated against the typed schema (rlkit/recipe.py for
`rlkit run`, each command's own otherwise). OmegaConf enforces the schema; this module turns its exceptions
into one-line `UserError`s that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from rlkit.core.errors import UserError
from rlkit.core.schema import range_problems, resolved, shape_problems
from rlkit.logs import LOOP_METRICS
from rlkit.policies import POLICIES
from rlkit.preparation import load_preparation, with_section
from rlkit.recipe import MOVED, Recipe
from rlkit.secrets import remember


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _all_keys(node._get_node(k), full + ".")
    return keys


def _suggest(bad_key: str, schema_cls: type) -> str:
    valid = _all_keys(OmegaConf.structured(schema_cls)) + list(_list_item_keys(schema_cls))
    close = difflib.get_close_matches(bad_key, valid, n=1, cutoff=0.6)
    if not close:  # a typo in the last part only: compare leaf names under the same parent
        parent, _, leaf = bad_key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == parent]
        leaf_close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.5)
        close = [f"{parent}.{leaf_close[0]}" if parent else leaf_close[0]] if leaf_close else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _list_item_keys(schema_cls: type) -> list[str]:
    """Keys inside list-of-dataclass fields (e.g. rewards.name), which the structured schema does not list."""
    import dataclasses

    return [f"{path}.{f.name}" for t, paths in _schema_paths(schema_cls).items() for path in paths
            for f in dataclasses.fields(t)]


def _schema_paths(cls: type, prefix: str = "") -> dict[type, list[str]]:
    """Dataclass type -> its dotted paths in the recipe (list items such as RewardSpec map to the list key;
    RewardSpec sits under both `rewards` and `eval.rewards`)."""
    import dataclasses
    import typing

    paths: dict[type, list[str]] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)] or [hint]
        for t in inner:
            if dataclasses.is_dataclass(t):
                paths.setdefault(t, []).append(prefix + f.name)
                for sub_t, sub_paths in _schema_paths(t, prefix + f.name + ".").items():
                    paths.setdefault(sub_t, []).extend(sub_paths)
    return paths


def _key_of(err: OmegaConfBaseException, schema_cls: type, hint: str = "") -> str:
    """The dotted key an OmegaConf error is about. Errors inside list items lose their parent path; ``hint``
    (the override's key) picks the right parent when a type sits under several."""
    key = str(getattr(err, "full_key", None) or getattr(err, "key", None) or "")
    owners = _schema_paths(schema_cls).get(getattr(err, "object_type", None), [])
    if owners and not any(key.startswith(o.split(".")[0]) for o in owners):
        owner = next((o for o in owners if hint.startswith(o)), min(owners, key=len))
        key = f"{owner}.{key}"
    return key


def _user_error(err: OmegaConfBaseException, where: str, schema_cls: type, hint: str = "") -> UserError:
    key = _key_of(err, schema_cls, hint)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        # strip list indices for the suggestion: rewards[0].wieght -> rewards.wieght
        plain = key.replace("[", ".").replace("]", "").replace("..", ".")
        plain = ".".join(p for p in plain.split(".") if not p.isdigit())
        return UserError(f"{where}: unknown key '{key}'{_suggest(plain, schema_cls) or _owner_hint(plain)}")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return UserError(f"{where}: wrong type for '{key}': {msg}")
    return UserError(f"{where}: {str(err).splitlines()[0]}")


def _owner_hint(key: str) -> str:
    """' (...add prepare: NAME)' when the unknown key is the section of an installed preparation."""
    from rlkit.plugins import PREPARATIONS, list_plugins

    top = key.split(".")[0]
    for name in list_plugins(PREPARATIONS):
        try:
            section = load_preparation(name).section
        except UserError:
            continue
        if section == top:
            return f" ('{top}' is the section of the '{name}' preparation: add prepare: {name})"
    return ""


def packaged_recipes() -> dict[str, Path]:
    """Recipes shipped in the `recipes` package, by name (file stem)."""
    root = resources.files("rlkit.recipes")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def recipe_summary(path: Path) -> str:
    """A recipe's first comment line: what it is."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy_recipe(name: str, dest: Path) -> Path:
    """A packaged recipe copied to edit (`rlkit recipes cp`). Data paths the recipe gives relative to itself
    become absolute, so the copy runs from wherever it is put. Never overwrites a file."""
    import re

    named = packaged_recipes()
    if name not in named:
        close = difflib.get_close_matches(name, list(named), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; packaged recipes: {', '.join(sorted(named))}"
        raise UserError(f"no packaged recipe '{name}'{hint}")
    src = named[name]
    target = dest / src.name if dest.is_dir() else dest
    if target.exists():
        raise UserError(f"{target} exists; choose a new file name")
    text = src.read_text()

    def absolute(match: re.Match) -> str:
        value = match.group(2)
        beside = src.parent / value
        return f"{match.group(1)}{beside.resolve()}" if not Path(value).is_absolute() and beside.exists() else \
            match.group(0)

    text = re.sub(r"^(\s*path:\s*)([^\s#$'\"{}]+)", absolute, text, flags=re.M)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    return target


def resolve_recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    named = packaged_recipes()
    stem = Path(recipe).stem if recipe.endswith(".yaml") else recipe
    if stem in named and (not path.parent.parts or path.parent.name == "recipes"):
        return named[stem]
    close = difflib.get_close_matches(stem, list(named), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; packaged recipes: {', '.join(sorted(named))}"
    raise UserError(f"recipe not found: '{recipe}'{hint}")


def load_recipe(recipe: str | Path, overrides: list[str] | None = None, schema_cls: type = None,
                check=None) -> DictConfig:
    """Load a recipe file (or packaged recipe name), apply dotlist overrides, validate. Raises UserError.

    ``schema_cls``/``check`` default to the RL recipe; other commands (train-reward) pass their own."""
    path = resolve_recipe_path(str(recipe))
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors
        raise UserError(f"{path}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    cfg = build_config(raw, overrides or [], where=str(path), schema_cls=schema_cls, check=check)
    if "data" not in cfg or "source" not in cfg.data:
        return cfg
    for spec in [*cfg.rewards, *cfg.eval.rewards]:  # file.py:Class from the working directory or the recipe's
        file, colon, attr = str(spec.name).rpartition(":")
        if colon and file.endswith(".py") and not Path(file).expanduser().is_absolute():
            found = next((p for p in (Path(file), path.parent / file) if p.is_file()), None)
            if found is not None:
                spec.name = f"{found.resolve()}:{attr}"
    # data paths in a recipe are relative to the recipe file (unless they exist from the working dir); store
    # them absolute so config.yaml in the run directory resumes from anywhere
    data_path = Path(cfg.data.path)
    if cfg.data.source in ("jsonl", "folder") and not data_path.is_absolute() and not data_path.exists():
        beside = path.parent / data_path
        if beside.exists():
            cfg.data.path = str(beside.resolve())
    return cfg


def build_config(raw: DictConfig | dict, overrides: list[str], where: str, schema_cls: type = None,
                 check=None) -> DictConfig:
    schema_cls = schema_cls or Recipe
    check = check or check_values
    if not isinstance(raw, (DictConfig, dict)):
        raise UserError(f"{where}: a recipe is a mapping of keys (policy:, rewards:, ...), this file holds a "
                        f"{'list' if isinstance(raw, ListConfig) else type(raw).__name__}")
    if schema_cls is Recipe:
        _refuse_moved_keys(raw, overrides, where)
    prep = _named_preparation(raw, overrides, where) if schema_cls is Recipe else None
    if prep is not None:
        schema_cls = with_section(schema_cls, prep)
    shape = shape_problems(raw, schema_cls)
    if shape:
        raise UserError(*(f"{where}: {p}" for p in shape))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema_cls), raw)
    except OmegaConfBaseException as err:
        raise _user_error(err, where, schema_cls) from None
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        parts = key.split(".")
        at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]  # unresolved
        except Exception as err:  # YAML syntax inside the value (an unclosed bracket, a quote)
            raise UserError(f"override '{item}': cannot parse the value: {str(err).splitlines()[0]}") from None
        try:
            if at is None:
                shape = shape_problems(OmegaConf.create(_nest(parts, parsed)), schema_cls)
                if shape:
                    raise UserError(*(f"override '{item}': {p}" for p in shape))
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
            else:  # inside a list (rewards.0.kwargs.path=...): a merge would replace the list with a dict
                items = OmegaConf.select(cfg, ".".join(parts[:at]))
                if not isinstance(items, ListConfig) or int(parts[at]) >= len(items):
                    raise UserError(f"override '{item}': '{'.'.join(parts[:at])}' has no item {parts[at]}")
                OmegaConf.update(cfg, key, parsed, merge=True)
        except OmegaConfBaseException as err:
            raise _user_error(err, f"override '{item}'", schema_cls, key) from None
    if prep is not None:
        prep.normalise(cfg[prep.section])
    remember(cfg)  # its secrets are masked in whatever is printed from now on, this recipe's problems included
    try:
        check(cfg, where, schema_cls)
    except UserError as err:
        raise UserError(*(_blame_override(p, where, overrides) for p in err.problems)) from None
    return cfg


def moved_to_their_place(raw):
    """A recipe rlkit saved before keys moved (config.yaml, a checkpoint's), with each moved key at its new
    place: rlkit's own files resume as they are."""
    if not isinstance(raw, (dict, DictConfig)):
        return raw
    raw = OmegaConf.create(raw)
    for old, new in MOVED.items():
        if OmegaConf.select(raw, old, default=None) is not None:
            OmegaConf.update(raw, new, OmegaConf.select(raw, old), force_add=True)
            parent, _, leaf = old.rpartition(".")
            OmegaConf.select(raw, parent).pop(leaf)
    return raw


def _refuse_moved_keys(raw, overrides: list[str], where: str) -> None:
    """A key that moved (e.g. into its algorithm's section) gets one line naming its new place."""
    given = [(where, k) for k in _all_keys(OmegaConf.create(raw))]
    given += [(f"override '{o}'", o.split("=", 1)[0]) for o in overrides]
    moved = [f"{at}: '{key}' is now '{MOVED[key]}'" for at, key in given if key in MOVED]
    if moved:
        raise UserError(*moved)


# the last line of every config.yaml a run writes: a file without it was cut short (a full disk, a crash)
RECIPE_END = "# end of recipe (rlkit)\n"


def load_saved_recipe(run_dir: Path, overrides: list[str]) -> DictConfig:
    """A run directory's recipe for `resume`, with overrides; output_dir is that folder. Its config.yaml when
    complete, else the recipe its newest valid checkpoint saved (said in one line): never schema defaults."""
    saved = Path(run_dir) / "config.yaml"
    raw, problem = _saved_recipe_file(saved)
    # (a file with every key but no end line may still be cut inside its last value: a checkpoint's recipe wins)
    if problem is not None:
        from rlkit import checkpoint as ckpt

        found = ckpt.newest_valid(Path(run_dir), warn=lambda m: None)
        config = ckpt.saved_config(found.path) if found else None
        if config is None and not saved.exists() and not found:
            raise UserError(f"{run_dir} is not an rlkit run directory (no config.yaml)")
        if config is None and raw is not None:  # an older rlkit's file with every key, no checkpoint yet
            problem = None
        elif config is None:
            raise UserError(f"{saved}: {problem}, and no checkpoint holds the run's recipe; start it again with "
                            f"rlkit run RECIPE output_dir={run_dir} resume=never after moving its files away")
        else:
            print(f"{saved}: {problem}; resuming with the recipe saved in {found.path}")
            raw = OmegaConf.create(config)
    cfg = build_config(moved_to_their_place(raw), ["resume=auto", *overrides], where=str(saved))
    from rlkit.secrets import unsaved_secrets

    unsaved = unsaved_secrets(cfg)
    if unsaved:  # before anything is touched
        raise UserError(*(f"'{key}' is a secret the recipe gave as a literal, which rlkit never saves: give it "
                          f"again, e.g. rlkit resume {run_dir} '{key}=${{oc.env:NAME}}' with NAME set in the "
                          f"environment" for key in unsaved))
    if Path(cfg.output_dir).resolve() != Path(run_dir).resolve():
        cfg.output_dir = str(run_dir)
    return cfg


def _saved_recipe_file(saved: Path) -> tuple[DictConfig | None, str | None]:
    """(the recipe, None) when config.yaml is whole, else (None, what is wrong with it)."""
    try:
        text = saved.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError) as err:
        return None, f"unreadable ({getattr(err, 'strerror', None) or err})"
    try:
        raw = OmegaConf.create(text) if text.strip() else None
    except Exception as err:
        return None, f"not YAML ({str(err).splitlines()[0]})"
    if not isinstance(raw, DictConfig):
        return None, "not a recipe (empty or not a mapping)"
    if not text.endswith(RECIPE_END):
        # cut short, or written by an older rlkit (no end line, and perhaps without keys added since): a cut
        # removes the end, so an older file is whole when it holds the key every rlkit writes last
        last = _all_keys(OmegaConf.structured(Recipe))[-1]
        if OmegaConf.select(moved_to_their_place(raw), last, default="<absent>") == "<absent>":
            return None, f"cut short (no '{last}')"
        return raw, "not ended as rlkit ends it"
    return raw, None


def _blame_override(problem: str, where: str, overrides: list[str]) -> str:
    """A problem with a value that came from the command line names that override, not the recipe file."""
    import re

    found = re.match(re.escape(where) + r": '([^']+)'", problem)
    if not found:
        return problem
    key = re.sub(r"\[(\d+)\]", r".\1", found.group(1))
    for item in reversed(overrides):  # the last override of a key is the one that counts
        set_key = item.split("=", 1)[0]
        if key == set_key or key.startswith(set_key + "."):
            return f"override '{item}'" + problem[len(where):]
    return problem


def _named_preparation(raw, overrides: list[str], where: str):
    """The preparation a recipe names (`prepare:`, or a `prepare=` override), loaded: its section's schema
    joins the recipe's before anything is merged."""
    name = raw.get("prepare") if isinstance(raw, (dict, DictConfig)) else None
    for item in overrides:
        if item.startswith("prepare="):
            name = item.split("=", 1)[1] or None
    if name in (None, "null", "None"):
        return None
    if not isinstance(name, str):
        raise UserError(f"{where}: 'prepare' is {name!r}, expected a preparation name")
    return load_preparation(name)


def _nest(parts: list[str], value: Any) -> dict:
    for p in reversed(parts):
        value = {p: value}
    return value


def check_values(cfg: DictConfig, where: str, schema_cls: type = None) -> None:
    """Every recipe problem at once: each key's declared Range, then what ranges cannot say (keys that
    depend on each other, here and in a preparation's section). Raises one UserError with a line per problem."""
    values = resolved(cfg, where)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise UserError(*(f"{where}: required key '{k}' is not set" for k in sorted(missing)))
    problems = range_problems(values, schema_cls or Recipe) + _cross_key_problems(values)
    if values.get("prepare"):
        prep = load_preparation(values["prepare"])
        problems += prep.problems(cfg[prep.section])
    if problems:
        raise UserError(*(f"{where}: {p}" for p in problems))


def _cross_key_problems(c: dict) -> list[str]:
    out = []
    policy, sampler, algo = c["policy"], c["sampler"], c["algorithm"]
    if not c["rewards"]:
        out.append("'rewards' must list at least one reward, e.g. rewards=[{name: target_color}]")
    elif all(r["weight"] == 0 for r in c["rewards"]):
        out.append("every reward in 'rewards' has weight 0: nothing to learn from")
    if algo["name"] == "grpo" and sampler["noise_level"] == 0:
        out.append("'sampler.noise_level' is 0 (the deterministic ODE): GRPO trains on the log-probs of SDE "
                   "steps; use a noise level > 0, or algorithm.name=dpo")
    if sampler["kernel"] == "cps" and (c["eval"]["noise_level"] or 0) > 1:
        out.append(f"'eval.noise_level' is {c['eval']['noise_level']}: cps reads it as an angle, must be <= 1")
    if sampler["kernel"] == "cps" and sampler["noise_level"] > 1:
        out.append(f"'sampler.noise_level' is {sampler['noise_level']}: cps reads it as an angle, must be <= 1")
    if sampler["sde_window_placement"] == "random" and sampler["sde_window"] is None:
        out.append("'sampler.sde_window_placement' is random but 'sampler.sde_window' is not set: every step is "
                   "already an SDE step (Flow-GRPO-Fast: sampler.sde_window=2)")
    if sampler["sde_window"] is not None and sampler["sde_window"] > sampler["num_steps"]:
        out.append(f"'sampler.sde_window' ({sampler['sde_window']}) is more than 'sampler.num_steps' "
                   f"({sampler['num_steps']})")
    entry = POLICIES[policy["name"]]
    if entry.weights == "pretrained" and not policy["pretrained"]:
        out.append(f"'policy.pretrained' must name a local folder or hub id for {policy['name']}")
    if policy["max_sequence_length"] > entry.editor.max_sequence_length:
        out.append(f"'policy.max_sequence_length' is {policy['max_sequence_length']}: {policy['name']}'s text "
                   f"encoder takes at most {entry.editor.max_sequence_length}")
    bench = c["eval"]["benchmark"]
    if bench["name"]:
        out += [f"'eval.benchmark.{k}' must be set for eval.benchmark.name={bench['name']}"
                for k in ("data", "judge_url") if not bench[k]]
        if c["eval"]["every"] == 0:
            out.append("'eval.benchmark.name' is set but 'eval.every' is 0: the benchmark runs at evaluations")
        if bench["gold"] and c["eval"]["rewards"]:
            out.append("'eval.benchmark.gold' and 'eval.rewards' both give a gold: choose one")
    names = [r.get("log_as") for r in c["eval"]["rewards"] if r.get("log_as")]
    for name in sorted(set(names)):
        if name in LOOP_METRICS:
            out.append(f"'eval.rewards.log_as' is '{name}', which the run logs itself; choose another name")
        elif names.count(name) > 1:
            out.append(f"'eval.rewards.log_as' names '{name}' twice")
    return out


def to_yaml(cfg: DictConfig, schema_cls: type | None = None) -> str:
    """The recipe as YAML, resolved, with its secrets redacted (rlkit/secrets.py): every copy rlkit writes or
    prints goes through here. With the recipe's schema, each key carries its help as a comment."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper  # OmegaConf.to_yaml's own dumper, on plain containers

    from rlkit.core.schema import commented_yaml
    from rlkit.secrets import redacted

    if schema_cls is not None:
        return commented_yaml(redacted(cfg), schema_cls) + "\n"
    # dumped from the containers: building a config again from them failed once in OmegaConf 2.4 when a signal
    # handler ran inside the build ('NoneType' object has no attribute '_invalidate_flags_cache')
    return yaml.dump(redacted(cfg), Dumper=get_omega_conf_dumper(), default_flow_style=False, allow_unicode=True,
                     sort_keys=False)


def recipe_schema(cfg: DictConfig) -> type:
    """The schema an `rlkit run` recipe was checked against: the Recipe, with its preparation's section."""
    prep = load_preparation(cfg.prepare) if cfg.get("prepare") else None
    return with_section(Recipe, prep) if prep is not None else Recipe
