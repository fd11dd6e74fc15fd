"""The engine does not depend on its sandbox: the sandbox plugs in through the extension points a user has
(a reward plugin, a preparation plugin, recipes), so the engine must load and run without importing it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ("rlkit", "policies", "rewards")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_engine_module_imports_the_sandbox():
    offenders = [f"{p.relative_to(ROOT)}: {m}" for pkg in ENGINE for p in sorted((ROOT / pkg).rglob("*.py"))
                 for m in sorted(_imports(p)) if m == "sandbox" or m.startswith("sandbox.")]
    assert not offenders, offenders


def test_importing_the_trainer_loads_no_sandbox_module():
    code = ("import sys, rlkit.trainer, rlkit.cli, rlkit.bench; "
            "print(sorted(m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_recipe_without_a_preparation_loads_no_sandbox_module():
    code = ("import sys; from rlkit.config import load_recipe; load_recipe('tiny_edit'); "
            "print(sorted(m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_preparation_section_is_validated_by_its_plugins_schema():
    from rlkit.config import load_recipe

    cfg = load_recipe("sandbox_edit", ["sandbox.seed=3"])
    assert cfg.prepare == "sandbox" and cfg.sandbox.seed == 3 and not cfg.sandbox.path.startswith("~")
    with pytest.raises(UserError, match=r"unknown key 'sandbox.sed' \(did you mean 'sandbox.seed'\?\)"):
        load_recipe("sandbox_edit", ["sandbox.sed=3"])
    with pytest.raises(UserError, match="'sandbox.washout' is 1.5, must be >= 0 and < 1"):
        load_recipe("sandbox_edit", ["sandbox.washout=1.5"])
    with pytest.raises(UserError, match="unknown key 'sandbox.*add prepare: sandbox"):  # none named
        load_recipe("tiny_edit", ["sandbox.seed=3"])
    with pytest.raises(UserError, match="unknown preparation 'sandbx' \\(did you mean 'sandbox'\\?\\)"):
        load_recipe("sandbox_edit", ["prepare=sandbx"])


def test_a_trainer_built_before_its_preparation_says_what_to_run(tmp_path):
    from rlkit.config import load_recipe
    from rlkit.trainer import Trainer

    cfg = load_recipe("sandbox_edit", [f"sandbox.path={tmp_path / 'world'}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match=r"'sandbox' preparation has not run .*prepare_recipe\(cfg\)"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "world").exists()  # the trainer never prepares
