"""The sandbox as a preparation plugin (`prepare: sandbox` in a recipe; registered in pyproject.toml).

It owns the recipe's `sandbox` section (sandbox/schema.py) and builds its world into `sandbox.path` before the
trainer is built: prompts, the editor the recipe's policy loads, the judge its reward loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from rlkit.sandbox.schema import SandboxConfig


class SandboxPreparation:
    section = "sandbox"
    schema = SandboxConfig

    def problems(self, section: DictConfig) -> list[str]:
        return []  # every key is checked by its own range

    def normalise(self, section: DictConfig) -> None:
        section.path = os.path.expanduser(section.path)

    def outputs(self, section: DictConfig) -> list[str]:
        return [str(Path(section.path))]

    def pending(self, section: DictConfig) -> str | None:
        from rlkit.sandbox.cache import check_replaceable, is_prepared, reusable_editor, shipped_preparation

        cache = Path(section.path)
        if is_prepared(cache, section):
            return None
        check_replaceable(cache, section)
        how = ("copied from the shipped preparation" if shipped_preparation(section) else
               "prepared (the judge only: the editor is reused)" if reusable_editor(cache, section) else
               "prepared from nothing: a VAE, an editor and a judge, tens of minutes on a CPU")
        return f"the sandbox in {section.path} is {how} on the first run; its files are checked then"

    def run(self, section: DictConfig, replace: bool = False, log=print) -> None:
        from rlkit.sandbox.prepare import prepare

        prepare(Path(section.path), section, log=log, replace=replace)
