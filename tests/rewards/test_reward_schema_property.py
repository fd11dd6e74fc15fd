"""The reward-model recipe's schema as a property over its numeric keys: whatever it accepts trains a step of a
tiny JRM (`rlkit train-reward`), whatever it refuses exits 2 with one `error:` line per problem and no traceback."""

import contextlib
import io
import tempfile

from helpers import numeric_keys, value_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlkit.cli import main
from rlkit.config import load_recipe
from rlkit.core.errors import UserError
from rlkit.rewards.jrm import train as jrm_train
from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe

KEYS = numeric_keys(RewardRecipe)
# small enough that an accepted value trains in a second or two: a few synthetic pairs, one step
BASE = ["data.train=synthetic", "data.eval=null", "data.synthetic_pairs=4", "train.batch_size=2",
        "backbone.image_size=32", "train.epochs=1"]
overrides = st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda keys: st.tuples(*[value_for(KEYS[k]).map(lambda v, k=k: f"{k}={v}") for k in keys]))


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(overrides)
def test_accepted_values_train_a_step_and_refused_ones_exit_2(monkeypatch, drawn):
    one_step = jrm_train.training_arguments

    def capped(cfg, out):  # one optimizer step, whatever epochs and data size were drawn
        args = one_step(cfg, out)
        args.max_steps = 1
        return args

    monkeypatch.setattr(jrm_train, "training_arguments", capped)
    with tempfile.TemporaryDirectory() as tmp:
        args = [*BASE, f"output_dir={tmp}/jrm", *drawn]
        try:
            load_recipe("jrm_tiny", args, schema_cls=RewardRecipe, check=check_reward_recipe)
            accepted = True
        except UserError:
            accepted = False
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["train-reward", "jrm_tiny", *args])
        lines = err.getvalue().strip().splitlines()
        if accepted:
            assert code == 0, err.getvalue()[-2000:]
        else:
            errors = [line for line in lines if line.startswith("error: ")]
            assert code == 2 and errors and "Traceback" not in err.getvalue(), err.getvalue()[-2000:]
