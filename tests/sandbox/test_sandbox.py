"""The sandbox world: exact targets, ground-truth scores, the sandbox_gt reward, in-world datasets."""

import json
import random
import re
from dataclasses import replace

import pytest
import torch

from rlkit.data import PromptStream, read_items
from rlkit.plugins import build_reward
from rlkit.recipe import DataConfig
from rlkit.rewards import RewardInput
from rlkit.sandbox.data import write_preference_pairs, write_prompts
from rlkit.sandbox.world import (
    COLOURS,
    OPERATIONS,
    SHAPES,
    Obj,
    Scene,
    gt_scores,
    random_edit,
    random_scene,
    render,
    to_tensor,
)


@pytest.mark.parametrize("op", OPERATIONS)
def test_every_operation_has_an_exact_target_that_scores_one(op):
    rng = random.Random(op)
    for _ in range(20):
        scene = random_scene(rng)
        edit = random_edit(scene, rng, [op])
        if edit is None:
            continue
        instruction, target = edit
        assert (" and " in instruction) == (op == "compose"), instruction
        named = re.findall(rf"the ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})", instruction)
        assert {f"{c} {s}" for c, s in named} <= {o.name for o in scene.objects}, instruction  # one meaning each
        S, T = to_tensor(render(scene)), to_tensor(render(target))
        assert not torch.equal(S, T), instruction  # the instruction changes something
        assert gt_scores(T, S, T) == {"follow": 1.0, "preserve": 1.0, "overall": 1.0}
        unchanged = gt_scores(S, S, T)
        assert unchanged["follow"] == 0.0 and unchanged["overall"] == 0.0
        half = gt_scores((S + T) / 2, S, T)  # every changed pixel half-way: a wrong colour, not half an edit
        assert half["follow"] < 0.5 and half["preserve"] == 1.0
        emptied = gt_scores(to_tensor(render(Scene(scene.background, []))), S, T)
        assert emptied["overall"] == (1.0 if not target.objects else 0.0), instruction  # wiping is no edit
        assert Scene.from_json(target.to_json()) == target


def test_half_the_pixels_of_an_edit_follow_half_of_it():
    scene = Scene("grey", [Obj("square", "red", 1, 1, "large")])
    S, T = to_tensor(render(scene)), to_tensor(render(Scene("grey", [Obj("square", "blue", 1, 1, "large")])))
    half = S.clone()
    half[:, :16] = T[:, :16]  # the top half of the square recoloured
    scores = gt_scores(half, S, T)
    assert scores["follow"] == pytest.approx(0.5, abs=0.03) and scores["preserve"] == 1.0


def test_a_move_needs_both_halves_and_wiping_a_kept_object_costs_all_of_preserve():
    red, blue = Obj("circle", "red", 0, 0), Obj("square", "blue", 2, 2)
    scene = Scene("teal", [red, blue])
    S = to_tensor(render(scene))
    T = to_tensor(render(Scene("teal", [replace(red, x=1), blue])))  # "move the red circle right"
    only_vacated = to_tensor(render(Scene("teal", [blue])))  # the circle cleared, never painted at its new place
    half_move = gt_scores(only_vacated, S, T)
    assert half_move["follow"] == 0.0 and half_move["preserve"] > 0.95  # (a few pixels where the two overlap)
    T = to_tensor(render(Scene("teal", [replace(red, colour="green"), blue])))  # "make the red circle green"
    recoloured_but_wiped = to_tensor(render(Scene("teal", [replace(red, colour="green")])))  # the square gone
    scores = gt_scores(recoloured_but_wiped, S, T)
    assert scores["follow"] == 1.0 and scores["preserve"] == 0.0 and scores["overall"] == 0.0


def test_damage_outside_the_edit_region_lowers_preserve_only():
    rng = random.Random(1)
    scene = random_scene(rng)
    instruction, target = random_edit(scene, rng, ["recolour"])
    S, T = to_tensor(render(scene)), to_tensor(render(target))
    damaged = T.clone()
    damaged[:, :4, :] = 1 - damaged[:, :4, :]  # wreck the top rows (background there)
    scores = gt_scores(damaged, S, T)
    assert scores["preserve"] < 0.9 and scores["overall"] < 1.0


def test_prompts_manifest_feeds_the_trainer_and_the_gt_reward(tmp_path):
    manifest = write_prompts(tmp_path, 6, seed=0)
    items = read_items(DataConfig(source="jsonl", path=str(manifest)))
    batch = PromptStream(items, 32, seed=0, shuffle=False).next_batch(6)
    targets = torch.stack([to_tensor(render(Scene.from_json(m["target_scene"]))) for m in batch.metadata])
    reward = build_reward("sandbox_gt", {})
    out = reward(RewardInput(torch.cat([targets[:3], batch.sources[3:]]), batch.sources, batch.instructions,
                             torch.arange(6), batch.metadata))
    assert out.scores[:3].tolist() == [1.0, 1.0, 1.0] and out.scores[3:].tolist() == [0.0, 0.0, 0.0]
    assert set(out.details) == {"follow", "preserve", "overall"}


def test_preference_pairs_are_ordered_by_ground_truth_with_rationales(tmp_path):
    rows = [json.loads(x) for x in write_preference_pairs(tmp_path, 24, seed=0).read_text().splitlines()]
    assert len(rows) == 24
    for r in rows:
        assert r["gt1"] >= r["gt2"] + 0.1
        assert r["rationale1"].startswith("[") and "Tiers: instruction" in r["rationale1"]
        assert (tmp_path / r["path1"]).is_file() and (tmp_path / r["path_src"]).is_file()


def test_prepare_and_run_the_sandbox_end_to_end(tmp_path):
    """`rlkit prepare` at toy budgets, then a sandbox run that logs gt_heldout before and after."""
    from rlkit.cli import main

    small = [f"sandbox.path={tmp_path / 'cache'}", "sandbox.vae_steps=2", "sandbox.editor_steps=2",
             "sandbox.editor_batch=4", "sandbox.jrm_pairs=8", "sandbox.jrm_editor_prompts=8", "sandbox.jrm_epochs=1",
             "sandbox.train_prompts=16", "sandbox.heldout_prompts=4", "sandbox.editor_heads=2",
             "sandbox.editor_prompts=8", "sandbox.judge_check_prompts=8",
             "sandbox.judge_refresh_steps=0"]  # the recipe's refresh is 100 GRPO steps; its own test is below
    assert main(["prepare", "sandbox_edit", *small]) == 0
    cache = tmp_path / "cache"
    assert (cache / "editor" / "model_index.json").is_file() and (cache / "jrm" / "final" / "jrm.json").is_file()
    transformer_config = json.loads((cache / "editor" / "transformer" / "config.json").read_text())
    assert transformer_config["num_attention_heads"] == 2  # sandbox.editor_heads: 2 x 32 wide
    report = json.loads((cache / "prepared.json").read_text())
    assert 0 <= report["judge_agreement"]["gap>=0.1"]["pairs"] <= report["judge_agreement"]["pairs"]
    assert 0 <= report["editor_mean_truth"] <= 1
    from safetensors.torch import load_file

    weights = load_file(next((cache / "editor" / "transformer").glob("*.safetensors")))
    assert not any("lora_" in k or "base_layer" in k for k in weights)  # a plain diffusers transformer
    run = tmp_path / "run"
    assert main(["run", "sandbox_edit", *small, f"output_dir={run}", "train.steps=2", "eval.every=2",
                 "algorithm.group_size=2", "train.prompts_per_step=2", "sampler.num_steps=3"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert 0 <= rows[0]["gt_heldout"] <= 1 and 0 <= rows[2]["gt_heldout"] <= 1 and "reward/jrm" in rows[1]
    # the truth's parts are logged beside it, so a run shows which of them moved
    assert rows[0]["gold/sandbox_gt/overall"] == pytest.approx(rows[0]["gt_heldout"])
    assert all(0 <= rows[k][f"gold/sandbox_gt/{part}"] <= 1 for k in (0, 2) for part in ("follow", "preserve"))
    assert (run / "samples" / "eval_step_000000.png").is_file()


def test_evaluation_reuses_the_training_reward_models():
    from rlkit.config import load_recipe
    from rlkit.plugins import build_rewards

    red, blue = "{color: [1.0, 0.0, 0.0]}", "{color: [0.0, 0.0, 1.0]}"
    cfg = load_recipe("tiny_edit", ["eval.every=1", f"eval.rewards=[{{name: target_color, kwargs: {red}}},"
                                    f" {{name: target_color, kwargs: {blue}}}]"])
    built: dict = {}
    train = build_rewards(cfg.rewards, built)
    heldout = build_rewards(cfg.eval.rewards, built)
    assert heldout.rewards[0][2] is train.rewards[0][2]  # same name and kwargs: one model, loaded once
    assert heldout.rewards[1][2] is not train.rewards[0][2]  # other kwargs: its own instance


def test_the_judges_synthetic_outcomes_include_the_exploits_rl_found():
    """RL against a judge that never saw an emptied or a splattered canvas learnt to make them (docs/experiments.md,
    2026-12-01): both are among the outcomes the judge's pairs are made of, and the truth puts them near 0."""
    from rlkit.sandbox.data import candidates, sample_prompts

    rng, splattered = random.Random(0), []
    for scene, instruction, target in sample_prompts(20, seed=4):
        outcomes = dict(candidates(scene, target, instruction, rng, 32))
        S, T = to_tensor(render(scene)), to_tensor(render(target))
        emptied = gt_scores(to_tensor(outcomes["emptied"]), S, T)["overall"]
        assert emptied == (1.0 if not target.objects else 0.0)
        assert not torch.equal(to_tensor(outcomes["splattered"]), S)
        splattered.append(gt_scores(to_tensor(outcomes["splattered"]), S, T)["overall"])
    assert sum(splattered) / len(splattered) < 0.1


def test_washout_is_a_global_flaw_the_truth_penalises():
    from rlkit.sandbox.world import gt_scores, random_edit, random_scene, render, to_tensor, washout

    rng = random.Random(3)
    scene = random_scene(rng)
    _, target = random_edit(scene, rng)
    src, tgt = to_tensor(render(scene, 32)), to_tensor(render(target, 32))
    exact = gt_scores(tgt, src, tgt)
    faded = gt_scores(washout(tgt, 0.2), src, tgt)
    assert exact["overall"] == pytest.approx(1.0)
    assert faded["preserve"] < 0.9 * exact["preserve"] and faded["overall"] < exact["overall"]
    assert torch.allclose(washout(torch.full((3, 2, 2), 0.5), 0.3), torch.full((3, 2, 2), 0.5))


def test_a_partly_faded_editor_sees_both_looks_of_every_example():
    """sandbox.washout_share < 1: each draw takes an example's faded target with that probability, else its clean
    one, so one example is seen both ways over training (the editor learns both looks for one prompt)."""
    from rlkit.sandbox.editor import mixed_targets

    faded, clean = torch.zeros(4, 2, 3), torch.ones(4, 2, 3)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([1, 1, 2, 3] * 250)
    drawn = mixed_targets(faded, clean, idx, 0.8, g)
    is_clean = drawn.flatten(1).mean(dim=1)
    assert set(is_clean.tolist()) == {0.0, 1.0}  # whole targets, never a blend of the two
    assert 0.15 < float(is_clean.mean()) < 0.25  # 1 - share of them clean
    assert is_clean[idx == 1].min() == 0 and is_clean[idx == 1].max() == 1  # one example, both looks
    assert float(mixed_targets(faded, clean, idx, 1.0, g).abs().sum()) == 0  # share 1: every target faded


def test_editor_pairs_keep_every_pair_of_samples_the_truth_separates(tmp_path):
    """A stand-in editor whose 4 samples are: the exact target, the source, a blend 80% of the way to the target,
    the target again. Every pair whose truth differs by >= 0.1 becomes a pair (exact/source and exact/blend twice each,
    blend/source once), chosen = the truer one; the two exact copies tie and give none."""
    from types import SimpleNamespace

    from rlkit.sandbox.data import sample_prompts
    from rlkit.sandbox.judge import write_editor_pairs

    class StandIn:
        def sample(self, batch, samples, generator):
            out = []
            for source, (_, _, target) in zip(batch.sources, sample_prompts(len(batch), seed=3)):
                exact = to_tensor(render(target, 32))
                out += [exact, source, 0.8 * exact + 0.2 * source, exact.clone()]
            return SimpleNamespace(images=torch.stack(out))

    rows = write_editor_pairs(StandIn(), tmp_path, n_prompts=2, seed=3)
    assert len(rows) == 2 * 5  # of the 6 pairs among 4 samples, only exact/exact ties
    for r in rows:
        assert r["gt1"] >= r["gt2"] + 0.1 and r["kinds"] == ["editor", "editor"]
        assert (tmp_path / r["path1"]).is_file() and (tmp_path / r["path2"]).is_file()
    assert {r["gt1"] for r in rows} > {1.0}  # the exact edit is chosen against the others

    # contrast pairs: each sample against itself faded by half; the faded exact edit loses to the exact one
    faded = [r for r in write_editor_pairs(StandIn(), tmp_path / "c", n_prompts=2, seed=3, contrast=(0.5,))
             if r["path2"].endswith("_c0.5.png")]
    assert len(faded) >= 2 * 2 and all(r["gt1"] >= r["gt2"] + 0.1 for r in faded)
    assert {r["gt1"] for r in faded} >= {1.0} and all((tmp_path / "c" / r["path2"]).is_file() for r in faded)

    # the judge check on the same samples: a "do nothing" judge (prefers whatever is nearest the source) orders
    # every separable pair against the truth; an oracle (nearest the target) orders all of them with it
    from rlkit.sandbox.judge import judge_agreement

    class NearSource:
        def score(self, sources, edited, instructions, batch_size):
            return torch.stack([-(e - s).abs().mean() for s, e in zip(sources, edited)]), None

    prompts = sample_prompts(2, seed=3)
    wrong = judge_agreement(StandIn(), NearSource(), prompts, 4, torch.Generator())
    assert wrong["pairs"] == 2 * 6 and wrong["gap>=0.1"] == {"pairs": 10, "agreement": 0.0}

    class NearTarget:  # knows the answer: agrees with the truth on every separable pair
        def score(self, sources, edited, instructions, batch_size):
            exact = to_tensor(render(prompts[self.i][2], 32))
            self.i += 1
            return torch.stack([-(e - exact).abs().mean() for e in edited]), None

    oracle = NearTarget()
    oracle.i = 0
    assert judge_agreement(StandIn(), oracle, prompts, 4, torch.Generator())["gap>=0.1"]["agreement"] == 1.0


def test_prepare_never_damages_an_existing_folder(tmp_path, monkeypatch):
    """An interrupted preparation leaves the previous cache as it was; a folder that is not a sandbox cache is
    refused, not overwritten."""
    from rlkit.config import load_recipe
    from rlkit.core.errors import UserError
    from rlkit.sandbox import prepare as build

    cfg = load_recipe("sandbox_edit", ["sandbox.use_shipped=false"]).sandbox
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a sandbox cache"):
        build.prepare(mine, cfg)
    assert (mine / "thesis.tex").read_text() == "years of work" and len(list(mine.iterdir())) == 1

    old = tmp_path / "cache"
    (old / "editor").mkdir(parents=True)
    (old / "prepared.json").write_text(json.dumps({"config": {"seed": 99}}))  # other settings: re-prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "train_vae", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.prepare(old, cfg)
    assert json.loads((old / "prepared.json").read_text()) == {"config": {"seed": 99}}
    assert (old / "editor").is_dir() and not (old / "data").exists()  # the half-built cache went elsewhere


def test_a_run_never_replaces_a_preparation_made_with_other_settings(tmp_path, capsys):
    """`rlkit prepare ... sandbox.jrm_editor_prompts=1024` then `rlkit run sandbox_edit sandbox.path=...`
    without that override: the run must stop with what differs, not delete 12 minutes of preparation and copy the
    shipped one over it (it did). A copy of the shipped preparation, or a cache of an older world, is replaced."""
    from rlkit.cli import main
    from rlkit.config import load_recipe
    from rlkit.core.errors import UserError
    from rlkit.sandbox import cache as prep
    from rlkit.sandbox import prepare as build

    cfg = load_recipe("sandbox_edit", []).sandbox
    cache = tmp_path / "cache"
    (cache / "editor").mkdir(parents=True)
    mine = prep._settings(cfg) | {"jrm_editor_prompts": 1024}
    (cache / "prepared.json").write_text(json.dumps({"config": mine}))
    differs = "jrm_editor_prompts: 1024 there, 384 here"
    with pytest.raises(UserError, match=differs):
        build.prepare(cache, cfg, replace=False)
    assert main(["validate", "sandbox_edit", f"sandbox.path={cache}"]) == 2 and differs in capsys.readouterr().err
    assert json.loads((cache / "prepared.json").read_text())["config"] == mine and (cache / "editor").is_dir()

    prep.check_replaceable(cache, load_recipe("sandbox_edit", ["sandbox.jrm_editor_prompts=1024"]).sandbox)  # same
    shipped = prep._recorded(prep.SHIPPED / "seed_0")
    (cache / "prepared.json").write_text(json.dumps({"config": shipped}))
    prep.check_replaceable(cache, load_recipe("sandbox_edit", ["sandbox.jrm_epochs=1"]).sandbox)  # restorable
    # a copy of what an older rlkit shipped (the recipe and the shipped files changed since): also restorable
    (cache / "prepared.json").write_text(json.dumps({"config": mine, "shipped_copy": True}))
    prep.check_replaceable(cache, cfg)
    (cache / "prepared.json").write_text(json.dumps({"config": mine | {"truth": prep.TRUTH_VERSION - 1}}))
    prep.check_replaceable(cache, cfg)  # stale: no recipe of this rlkit can use it


@pytest.mark.slow  # about a minute on 2 cores: CI time; the cache rules are tested above
def test_a_new_judge_setting_reuses_the_editor_and_retrains_only_the_judge(tmp_path):
    """The editor is the expensive part: changing only the judge's settings must not re-train it. The new
    setting here is a two-judge ensemble: both are kept (how the reward combines them: test_jrm_variants)."""
    from safetensors.torch import load_file

    from rlkit.config import load_recipe
    from rlkit.sandbox import cache as prep
    from rlkit.sandbox import prepare as build

    toy = ["sandbox.vae_steps=2", "sandbox.editor_steps=2", "sandbox.editor_batch=4", "sandbox.editor_prompts=8",
           "sandbox.jrm_pairs=8", "sandbox.jrm_editor_prompts=8", "sandbox.jrm_epochs=1", "sandbox.train_prompts=8",
           "sandbox.heldout_prompts=4", "sandbox.editor_heads=2", "sandbox.judge_tries=1",
           "sandbox.judge_check_prompts=8", "sandbox.judge_refresh_steps=0"]  # the refresh: `third`, below
    cache = tmp_path / "cache"
    first = load_recipe("sandbox_edit", toy).sandbox
    build.prepare(cache, first, log=lambda _: None)
    weights = next((cache / "editor" / "transformer").glob("*.safetensors"))
    before = load_file(weights)
    assert prep.reusable_editor(cache, load_recipe("sandbox_edit", [*toy, "sandbox.editor_steps=3"]).sandbox) is None

    second = load_recipe("sandbox_edit", [*toy, "sandbox.jrm_pairs=12", "sandbox.judge_ensemble=2"]).sandbox
    logged = []
    build.prepare(cache, second, log=logged.append)
    report = json.loads((cache / "prepared.json").read_text())
    assert report["editor_reused"] and report["config"]["jrm_pairs"] == 12 and prep.is_prepared(cache, second)
    assert report["judge_kept"] == [0, 1] or report["judge_kept"] == [1, 0]
    assert len(report["member_agreement"]) == 2 and report["member_agreement"][0] >= report["member_agreement"][1]
    assert any("reusing the editor" in line for line in logged)
    after = load_file(weights)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (cache / "jrm" / "final" / "jrm.json").is_file() and (cache / "jrm_1" / "final" / "jrm.json").is_file()
    assert not list(cache.glob("jrm_try*"))
    assert any("the 2 judges together agree" in line for line in logged)  # checked as the reward scores them

    # the second stage: a short GRPO run against the judges; pairs of its samples join the judges' training pairs;
    # a second round runs against the judges the first round made, and keeps the pairs of both
    third = load_recipe("sandbox_edit", [*toy, "sandbox.judge_ensemble=2", "sandbox.judge_refresh_steps=2",
                                         "sandbox.judge_refresh_rounds=2"]).sandbox
    logged.clear()
    build.prepare(cache, third, log=logged.append)
    report = json.loads((cache / "prepared.json").read_text())
    refresh, round1 = report["judge_refresh"], report["judge_refresh"]["first_judge"]["judge_refresh"]
    assert report["editor_reused"] and refresh["steps"] == 2 and prep.is_prepared(cache, third)
    assert (round1["round"], refresh["round"]) == (1, 2)
    assert any("2 GRPO steps against the first judge" in line for line in logged)
    assert any("2 GRPO steps against the judge of refresh round 1" in line for line in logged)
    pairs = [json.loads(x) for x in (cache / "data" / "pairs_train" / "pairs.jsonl").read_text().splitlines()]
    added = [p for p in pairs if p["path_src"].startswith("rl2_")]
    added_first = [p for p in pairs if p["path_src"].startswith("rl0")]
    assert (len(added_first), len(added)) == (round1["pairs"], refresh["pairs"])
    assert len(pairs) > len(added) + len(added_first)  # the first stage's pairs stay
    assert all((cache / "data" / "pairs_train" / p[k]).is_file() for p in added for k in ("path1", "path2"))
    for check in ("first_judge_on_refreshed_policy", "judge_on_refreshed_policy"):
        assert refresh[check]["pairs"] > 0 and 0 <= refresh[check]["mean_truth"] <= 1
    assert refresh["first_judge"]["judge_agreement"]["pairs"] == report["judge_agreement"]["pairs"]  # same editor
    assert (cache / "jrm_1" / "final" / "jrm.json").is_file() and not (cache / "refresh_run").exists()


def test_a_cache_from_another_world_version_is_not_reused(tmp_path):
    """Settings alone do not say what the cached prompts and targets are: the world's version is part of them."""
    from omegaconf import OmegaConf

    from rlkit.sandbox import cache as prep
    from rlkit.sandbox.schema import SandboxConfig

    cfg = OmegaConf.structured(SandboxConfig)
    settings = prep._settings(cfg)
    (tmp_path / "prepared.json").write_text(json.dumps({"config": settings}))
    assert prep.is_prepared(tmp_path, cfg)
    (tmp_path / "prepared.json").write_text(json.dumps({"config": settings | {"world": prep.WORLD_VERSION - 1}}))
    assert not prep.is_prepared(tmp_path, cfg)


def test_a_cache_made_before_a_setting_existed_counts_as_its_default(tmp_path):
    """A new SandboxConfig field must not invalidate every cache (and the shipped one): a prepared.json without
    it was made as the field's default makes it; any other value of the field does need a new preparation."""
    from omegaconf import OmegaConf

    from rlkit.sandbox import cache as prep
    from rlkit.sandbox.schema import SandboxConfig

    cfg = OmegaConf.structured(SandboxConfig)
    older = {k: v for k, v in prep._settings(cfg).items() if k != "judge_check_prompts"}
    (tmp_path / "prepared.json").write_text(json.dumps({"config": older}))
    assert prep.is_prepared(tmp_path, cfg)
    assert not prep.is_prepared(tmp_path, OmegaConf.merge(cfg, {"judge_check_prompts": 8}))
    (tmp_path / "prepared.json").write_text(json.dumps({"judge_agreement": {}}))  # no settings recorded at all
    assert not prep.is_prepared(tmp_path, cfg)


def test_a_judge_made_under_another_truth_is_rebuilt_on_the_same_editor(tmp_path):
    """The truth ranks the judge's pairs, so a cache made under an older truth is re-prepared; its editor never
    saw the truth and is reused (a cache from before truth versions has no "truth" key at all)."""
    from omegaconf import OmegaConf

    from rlkit.sandbox import cache as prep
    from rlkit.sandbox.schema import SandboxConfig

    cfg = OmegaConf.structured(SandboxConfig)
    older = {k: v for k, v in prep._settings(cfg).items() if k != "truth"}
    (tmp_path / "editor").mkdir()
    (tmp_path / "editor" / "model_index.json").write_text("{}")
    (tmp_path / "prepared.json").write_text(json.dumps({"config": older}))
    assert not prep.is_prepared(tmp_path, cfg)
    assert prep.reusable_editor(tmp_path, OmegaConf.merge(cfg, {"use_shipped": False})) == tmp_path / "editor"


def test_the_default_recipe_starts_from_the_shipped_preparation():
    """rlkit ships what `rlkit prepare` made for sandbox_edit (seed 0). A change to the recipe's sandbox
    settings that is not re-shipped would make every first run prepare for half an hour instead: caught here."""
    from rlkit.config import load_recipe
    from rlkit.sandbox.cache import shipped_preparation

    cfg = load_recipe("sandbox_edit", []).sandbox
    assert shipped_preparation(cfg) is not None
    assert shipped_preparation(load_recipe("sandbox_edit", ["sandbox.use_shipped=false"]).sandbox) is None
    assert shipped_preparation(load_recipe("sandbox_edit", ["sandbox.editor_steps=10"]).sandbox) is None
    assert shipped_preparation(load_recipe("sandbox_edit", ["sandbox.seed=1"]).sandbox) is None


def test_the_judge_refresh_trains_the_shipped_preparations_grpo_whatever_the_recipe_trains(tmp_path):
    """The shipped judges were refreshed on GRPO policies (Flow-SDE at 0.7, lr 2e-3, the recipe's GRPO section):
    the refresh run keeps that objective though the recipe's own default is another, so preparing anew makes
    the same kind of judge."""
    from rlkit.config import load_recipe
    from rlkit.sandbox.refresh import refresh_recipe

    cfg = load_recipe("sandbox_edit", [f"sandbox.path={tmp_path}"])
    assert cfg.algorithm.name != "grpo"  # else this test checks nothing
    run = refresh_recipe(tmp_path, tmp_path / "refresh_run", cfg.sandbox, 0)
    assert run.algorithm.name == "grpo" and run.sampler.kernel == "flow_sde" and run.sampler.noise_level == 0.7
    assert run.optim.lr == 2e-3 and run.algorithm.kl_coef == 0.04 and run.algorithm.grpo.timestep_fraction == 1.0
    assert run.train.steps == cfg.sandbox.judge_refresh_steps == 100 and run.eval.every == 0
    assert run.rewards[0].kwargs.path == [str(tmp_path / "jrm" / "final")]


def test_prepare_copies_the_shipped_preparation_that_then_edits(tmp_path):
    from rlkit.config import load_recipe
    from rlkit.data import read_items
    from rlkit.policies import build_policy
    from rlkit.policies.base import PromptBatch
    from rlkit.sandbox.cache import is_prepared
    from rlkit.sandbox.prepare import prepare

    cache = tmp_path / "cache"
    cfg = load_recipe("sandbox_edit", [f"sandbox.path={cache}"])
    logged = []
    prepare(cache, cfg.sandbox, log=logged.append)
    assert is_prepared(cache, cfg.sandbox) and "shipped" in logged[0]
    assert json.loads((cache / "prepared.json").read_text())["shipped_copy"]  # replaceable after an upgrade
    train = read_items(DataConfig(source="jsonl", path=str(cache / "data/train/prompts.jsonl")))
    heldout = read_items(DataConfig(source="jsonl", path=str(cache / "data/heldout/prompts.jsonl")))
    assert (len(train), len(heldout)) == (cfg.sandbox.train_prompts, cfg.sandbox.heldout_prompts)

    policy = build_policy(cfg.policy, cfg.sampler, "cpu", 2)  # the shipped editor loads and edits
    item = heldout[0]
    src = to_tensor(render(Scene.from_json(item.metadata["scene"]), 32))
    images = policy.sample(PromptBatch(src[None], [item.instruction], ["0"]), 2, torch.Generator()).images
    tgt = to_tensor(render(Scene.from_json(item.metadata["target_scene"]), 32))
    assert images.shape == (2, 3, 32, 32) and all(0 <= gt_scores(im, src, tgt)["overall"] <= 1 for im in images)


def test_the_prompt_draws_of_a_preparation_never_share_a_seed():
    """Prompts, held-out prompts, judge pairs and judge checks are drawn from their own streams (sandbox/seeds.py),
    so no held-out prompt set is a training set under another name, for any preparation seed and refresh round."""
    from rlkit.sandbox.seeds import stream_seed

    draws = ("prompts", "heldout", "synthetic_pairs", "eval_pairs", "editor_pairs", "judge_check")
    for seed in (0, 1, 9, 123):
        seeds = [stream_seed(seed, name) for name in draws]
        seeds += [stream_seed(seed, "refresh_pairs", r) for r in range(5)]
        seeds += [stream_seed(seed, "refresh_run", r) for r in range(5)]
        assert len(set(seeds)) == len(seeds)
    assert stream_seed(0, "heldout") == 2 and stream_seed(0, "refresh_run", 1) == 17  # what seed_0 was made with


@pytest.mark.slow
def test_the_shipped_default_learns(tmp_path):
    """`rlkit run sandbox_edit` as shipped (seed 0, about 4 minutes on 2 cores): the judge as the only reward
    raises the held-out ground truth by at least 0.10, and final/ holds the best evaluation's weights."""
    from rlkit.cli import main
    from rlkit.config import load_recipe
    from rlkit.logs import read_rows

    run = tmp_path / "run"
    assert main(["run", "sandbox_edit", f"sandbox.path={tmp_path / 'world'}", f"output_dir={run}"]) == 0
    gold = [(r["step"], r["gt_heldout"]) for r in read_rows(run / "metrics.jsonl") if r.get("gt_heldout") is not None]
    assert gold[0][0] == 0 and gold[-1][0] == load_recipe("sandbox_edit", []).train.steps
    assert gold[-1][1] - gold[0][1] >= 0.10, gold
    best = max(g[1] for g in gold)
    final = json.loads((run / "final" / "rlkit_final.json").read_text())
    assert final["weights"] == "best_gold" and final["gold"] == pytest.approx(best)
