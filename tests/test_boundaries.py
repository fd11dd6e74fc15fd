"""The layers of rlkit, and the rules that keep imports running one way (each rule a test):

  0 core        rlkit.core: the types, errors, settings primitives, devices and tiny tokenizers every part
                shares. Imports no other part of rlkit.
  1 components  rlkit.policies, rlkit.rewards: the editors and the rewards. Import the core only, never each
                other, never the loop.
  2 engine      the rest of rlkit/ (recipes' schema, the loop, algorithms, the guard, checkpoints, serving).
                Imports policies and rewards only through their package (`rlkit.policies`, `rlkit.rewards`:
                registries and protocols), never a module inside them.
  3 front       rlkit.cli, rlkit.api, rlkit.__main__: the commands and the Python API; the only place that knows
                every command.
  4 plugins     rlkit.sandbox (and benchmarks/): they plug in through the extension points a user has; nothing
                below imports them.

Imports are read from the source (module level and inside functions alike), so a lazy import counts."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"rlkit": "rlkit", "policies": "rlkit.policies", "rewards": "rlkit.rewards", "sandbox": "rlkit.sandbox"}
FRONT = {"rlkit.cli", "rlkit.api", "rlkit.__main__", "rlkit"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for folder in FOLDERS:
        for p in sorted((ROOT / folder).rglob("*.py")):
            if "experiments" not in p.parts:  # scripts, run as files
                found[_module_name(p)] = p
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The rlkit modules `name` imports (a package's own name when a name is taken from its __init__)."""
    path, out = MODULES[name], set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot beyond the first
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:  # `from rlkit.policies import tiny` imports the module rlkit.policies.tiny
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES}


def layer(name: str) -> int:
    if name == "rlkit.core" or name.startswith("rlkit.core."):
        return 0
    if name.startswith(("rlkit.policies", "rlkit.rewards")):
        return 1
    if name.startswith("rlkit.sandbox"):
        return 4
    return 3 if name in FRONT else 2


def _component(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({layer(m)}) -> {i} ({layer(i)})" for m in MODULES for i in sorted(_imports(m))
              if layer(i) > layer(m)]
    assert not upward, upward


def test_policies_and_rewards_do_not_import_each_other():
    across = [f"{m} -> {i}" for m in MODULES if layer(m) == 1 for i in sorted(_imports(m))
              if layer(i) == 1 and _component(i) != _component(m)]
    assert not across, across


def test_the_engine_reaches_policies_and_rewards_through_their_packages():
    inside = [f"{m} -> {i}" for m in MODULES if layer(m) == 2 for i in sorted(_imports(m))
              if layer(i) == 1 and i not in ("rlkit.policies", "rlkit.rewards")]
    assert not inside, inside


def test_there_is_no_import_circle():
    graph = {m: {i for i in _imports(m) if i != m} for m in MODULES}
    # a package's __init__ gathering its own modules is not a circle with them
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_installed_names_cannot_be_shadowed_by_a_users_files(tmp_path):
    """A user's rewards.py, policies.py, recipes.py or sandbox.py in the working directory (which `python -m`
    puts first on the path) is not rlkit's."""
    for name in ("rewards", "policies", "recipes", "sandbox"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the user file was imported')\n")
    out = subprocess.run([sys.executable, "-m", "rlkit", "validate", "tiny_edit", "--offline"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok:"), out.stdout + out.stderr


def test_nothing_below_the_plugins_loads_the_sandbox():
    code = ("import sys, rlkit.trainer, rlkit.cli, rlkit.bench; from rlkit.config import load_recipe; "
            "load_recipe('tiny_edit'); print(sorted(m for m in sys.modules if m.startswith('rlkit.sandbox')))")
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
