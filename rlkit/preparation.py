"""Preparation plugins: a step a recipe runs before its trainer is built.

A recipe names one with `prepare: NAME` (entry-point group `rlkit.preparations`, see rlkit/plugins.py), for
example building a dataset or a model that the rest of the recipe then loads by path. The plugin owns the recipe
section named by its `section` attribute, and the engine validates that section against the plugin's `schema`
exactly as it validates its own keys: overrides (`sandbox.seed=1`), typo suggestions and ranges work the same,
and `rlkit validate` accepts only what `rlkit run` accepts. `rlkit run` and `rlkit bench` call `run` before they
build the trainer; `rlkit prepare RECIPE` calls it alone. The trainer itself never does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Protocol

from omegaconf import DictConfig

from rlkit.core.errors import UserError
from rlkit.plugins import PREPARATIONS, load_plugin


class Preparation(Protocol):
    section: str  # the recipe section it owns, e.g. "sandbox"
    schema: type  # a dataclass of rlkit.core.schema settings: that section's keys, defaults and ranges

    def problems(self, section: DictConfig) -> list[str]:
        """What the schema cannot check (keys that depend on each other), one line each, keys named in full."""

    def normalise(self, section: DictConfig) -> None:
        """Rewrite values in place after loading, before anything reads them (e.g. expand ~ in a path)."""

    def pending(self, section: DictConfig) -> str | None:
        """None when what `run` makes is in place for these settings; else one line saying what a run will
        make. Raises UserError where a run would refuse (e.g. a folder it must not replace)."""

    def outputs(self, section: DictConfig) -> list[str]:
        """Folders `run` fills: while pending, validation does not look for files under them."""

    def run(self, section: DictConfig, replace: bool = False, log=print) -> None:
        """Make its outputs; returns at once when they are in place. `replace=False` (a run) must not replace
        outputs made with other settings that took long to make; `rlkit prepare` may."""


def load_preparation(name: str) -> Preparation:
    plugin = load_plugin(PREPARATIONS, name)
    return plugin() if isinstance(plugin, type) else plugin


def with_section(schema_cls: type, prep: Preparation) -> type:
    """`schema_cls` plus the preparation's own section, as one dataclass the loader validates against."""
    return dataclasses.make_dataclass(
        schema_cls.__name__, [(prep.section, prep.schema, field(default_factory=prep.schema))], bases=(schema_cls,))


def recipe_preparation(cfg: DictConfig) -> Preparation | None:
    name = cfg.get("prepare") if isinstance(cfg, DictConfig) else None
    return load_preparation(name) if name else None


def prepare_recipe(cfg: DictConfig, replace: bool = False, log=print) -> None:
    """Run the recipe's preparation (if it names one): what `rlkit run` does before building the trainer."""
    prep = recipe_preparation(cfg)
    if prep is not None:
        prep.run(cfg[prep.section], replace=replace, log=log)


def check_prepared(cfg: DictConfig) -> None:
    """The recipe's preparation runs before a trainer is built (`rlkit run` does it; in Python,
    prepare_recipe): without it the files it makes are missing, which says why."""
    prep = recipe_preparation(cfg)
    pending = prep.pending(cfg[prep.section]) if prep else None
    if pending:
        raise UserError(f"the recipe's '{cfg.prepare}' preparation has not run ({pending}): run "
                        f"rlkit.preparation.prepare_recipe(cfg) before Trainer(cfg), or use `rlkit run`")
