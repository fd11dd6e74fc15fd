"""The schema, as a property over every numeric recipe key: whatever it accepts runs a training step (with a
held-out evaluation), whatever it refuses exits 2 with one `error:` line per problem and no traceback.

Values are drawn from the classes that broke runs before ranges existed: negatives, zero, NaN and the
infinities, tiny and huge values, floats for integer keys. The sandbox section's keys shape a preparation that
takes minutes, so their property stops where `rlkit run` would start preparing: whatever its schema accepts,
`rlkit validate` accepts (saying what the first run will prepare), whatever it refuses exits 2 the same way."""

import contextlib
import io
import tempfile

import pytest
from helpers import TINY_RECIPE, numeric_keys, value_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlkit.cli import main
from rlkit.config import load_recipe
from rlkit.core.errors import UserError
from rlkit.recipe import Recipe
from rlkit.trainer import Trainer

KEYS = {**numeric_keys(Recipe), "optim.betas.0": float, "optim.betas.1": float, "rewards.0.weight": float}
# small enough that an accepted value still runs in a second or two (the tiny editor, 3 steps, 2 prompts)
BASE = ["train.steps=2", "sampler.num_steps=3", "algorithm.group_size=3", "algorithm.micro_batch=6",
        "eval.every=1", "eval.max_prompts=1", "eval.samples_per_prompt=2", "train.report=false",
        "train.grid_every=1", "train.save_every=1"]


overrides = st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda keys: st.tuples(*[value_for(KEYS[k]).map(lambda v, k=k: f"{k}={v}") for k in keys]))


QUICK = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
# -m slow: ten times the draws, from a random seed each time (derandomize off), to find what 40 fixed ones miss
THOROUGH = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(overrides)
def test_accepted_values_run_a_step_and_refused_ones_exit_2(drawn):
    check_a_recipe_override(drawn)


@pytest.mark.slow
@THOROUGH
@given(overrides)
def test_accepted_values_run_a_step_and_refused_ones_exit_2_thoroughly(drawn):
    check_a_recipe_override(drawn)


def check_a_recipe_override(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        args = [*BASE, f"output_dir={tmp}/run", *drawn]
        try:
            cfg = load_recipe(str(TINY_RECIPE), args)
        except UserError:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["run", str(TINY_RECIPE), *args])
            lines = err.getvalue().strip().splitlines()
            assert code == 2 and lines and all(line.startswith("error: ") for line in lines), err.getvalue()
            return
        with contextlib.redirect_stdout(io.StringIO()):
            Trainer(cfg, progress=False).fit(max_steps=1)  # raises on any failure


def _sandbox_keys() -> dict[str, type]:
    from rlkit.sandbox.schema import SandboxConfig

    return numeric_keys(SandboxConfig, "sandbox.")


SANDBOX_KEYS = _sandbox_keys()
sandbox_overrides = st.lists(st.sampled_from(sorted(SANDBOX_KEYS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda keys: st.tuples(*[value_for(SANDBOX_KEYS[k]).map(lambda v, k=k: f"{k}={v}") for k in keys]))


@QUICK
@given(sandbox_overrides)
def test_accepted_sandbox_values_validate_and_refused_ones_exit_2(drawn):
    check_a_sandbox_override(drawn)


@pytest.mark.slow
@THOROUGH
@given(sandbox_overrides)
def test_accepted_sandbox_values_validate_and_refused_ones_exit_2_thoroughly(drawn):
    check_a_sandbox_override(drawn)


def check_a_sandbox_override(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        args = [f"sandbox.path={tmp}/world", *drawn]
        try:
            load_recipe("sandbox_edit", args)
            accepted = True
        except UserError:
            accepted = False
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["validate", "sandbox_edit", *args])
        if accepted:
            assert code == 0 and "on the first run" in out.getvalue(), err.getvalue()
        else:
            lines = err.getvalue().strip().splitlines()
            assert code == 2 and lines and all(line.startswith("error: ") for line in lines), err.getvalue()
