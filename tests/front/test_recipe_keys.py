"""Every recipe key says what it is for, once, beside its declaration: the reference page and `rlkit validate
--print` are generated from it, and a key that moved says where to."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlkit.cli import key_reference, main
from rlkit.config import load_recipe, to_yaml
from rlkit.core.errors import UserError
from rlkit.core.schema import key_rows
from rlkit.preparation import load_preparation
from rlkit.recipe import MOVED, Recipe
from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe

REPO = Path(__file__).resolve().parents[2]


def test_the_recipe_key_page_is_current():
    page = (REPO / "docs" / "recipe-keys.md").read_text()
    assert page == key_reference(), "docs/recipe-keys.md is stale: rlkit recipes keys > docs/recipe-keys.md"


@pytest.mark.parametrize("schema", [Recipe, RewardRecipe, load_preparation("sandbox").schema],
                         ids=["run", "train-reward", "sandbox"])
def test_every_recipe_key_has_one_line_of_help(schema):
    rows = key_rows(schema)
    assert len(rows) > 20
    assert [key for key, _, _, text in rows if not text.strip() or "\n" in text] == []


@pytest.mark.parametrize("recipe", ["tiny_edit", "sandbox_edit", "jrm_tiny"])
def test_validate_print_is_a_recipe_that_loads_back_as_the_same_one(recipe, tmp_path, capsys):
    assert main(["validate", recipe, "--print", "--offline", "seed=7"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("ok: ") and not out.startswith("ok")  # the verdict apart from the recipe
    assert "  # " in out  # each key's help as its comment
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    kwargs = {"schema_cls": RewardRecipe, "check": check_reward_recipe} if recipe == "jrm_tiny" else {}
    again, first = load_recipe(str(printed), **kwargs), load_recipe(recipe, ["seed=7"], **kwargs)
    assert OmegaConf.to_container(again, resolve=True) == OmegaConf.to_container(first, resolve=True)
    assert to_yaml(again) == to_yaml(first)


def test_a_moved_key_names_its_new_place_in_a_file_and_in_an_override(tmp_path):
    old = tmp_path / "old.yaml"
    text = (REPO / "recipes" / "tiny_edit.yaml").read_text()
    old.write_text(text.replace("  grpo:\n    timestep_fraction", "  timestep_fraction").replace(
        "    clip_range_low", "  clip_range_low").replace("    clip_range_high", "  clip_range_high"))
    with pytest.raises(UserError) as err:
        load_recipe(str(old), ["algorithm.beta=10"])
    assert err.value.problems == [
        f"{old}: 'algorithm.timestep_fraction' is now 'algorithm.grpo.timestep_fraction'",
        f"{old}: 'algorithm.clip_range_low' is now 'algorithm.grpo.clip_range_low'",
        f"{old}: 'algorithm.clip_range_high' is now 'algorithm.grpo.clip_range_high'",
        "override 'algorithm.beta=10': 'algorithm.beta' is now 'algorithm.dpo.beta'"]
    assert set(MOVED.values()) <= {k for k, *_ in key_rows(Recipe)}  # every new place exists


def test_a_run_saved_before_the_keys_moved_resumes(tmp_path):
    """rlkit's own config.yaml from before the move is read with each key at its new place."""
    from rlkit.config import load_saved_recipe

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_recipe("tiny_edit", [f"output_dir={run}", "algorithm.grpo.clip_range_low=0.02"])
    saved = OmegaConf.to_container(cfg)
    for name, value in saved["algorithm"].pop("grpo").items():  # each key where the older rlkit wrote it,
        if f"algorithm.{name}" in MOVED:  # and none it did not have yet (they load with their defaults)
            saved["algorithm"][name] = value
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    assert load_saved_recipe(run, []).algorithm.grpo.clip_range_low == 0.02
