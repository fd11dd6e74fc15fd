"""The command line contract: validate, typos exit 2 with one line naming the key, packaged recipes."""

import subprocess
import sys

import pytest
from helpers import REPO, TINY_RECIPE

from rlkit.cli import main
from rlkit.config import packaged_recipes

# recipes whose weights a user downloads or trains first: validate names exactly what is missing
NEEDS_FILES = {"flux_edit": ("FLUX.1-Kontext-dev", "runs/jrm_reward/final"),
               "qwen_edit": ("Qwen-Image-Edit", "runs/jrm_reward/final"),
               "qwen_edit_plus": ("Qwen-Image-Edit-2509", "runs/jrm_reward/final"),
               "flux2_klein_edit": ("FLUX.2-klein-base-4B", "runs/jrm_reward/final"),
               "jrm_reward": ("Qwen3-VL-8B-Instruct",)}


@pytest.mark.parametrize("name", sorted(packaged_recipes()))
def test_every_packaged_recipe_validates(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    code = main(["validate", name])
    out, err = capsys.readouterr()
    if not NEEDS_FILES.get(name):
        assert code == 0 and "ok:" in out, err
        return
    assert code == 2 and len(err.strip().splitlines()) == len(NEEDS_FILES[name]), err
    for missing in NEEDS_FILES[name]:
        assert missing in err


@pytest.mark.parametrize("override,needle", [
    ("rewards=[{name: target_color, kwargs: {colour: [1, 0, 0]}}]", "unexpected keyword argument 'colour' (it "
                                                                    "takes: color, region)"),
    ("rewards=[{name: target_color, kwargs: {color: [1, 0]}}]", "color must be 3 values in [0, 1]"),
    ("rewards=[{name: jrm, kwargs: {path: /nowhere/final}}]", "'/nowhere/final': not a trained JRM reward"),
    ("rewards=[{name: remote, kwargs: {url: 'localhost:8765'}}]", "url must be http://HOST:PORT"),
    ("policy.lora.target_modules=[to_q,to_qq]", "'to_qq' match(es) no layer of FluxTransformer2DModel"),
    ("policy.name=flux_kontext", "'policy.pretrained' must name a local folder"),
    ("eval.every=1", None),  # accepted: evaluation on the training prompts
])
def test_validate_refuses_what_run_refuses(override, needle, tmp_path, capsys):
    """Each problem a run finds before loading a model, validate finds first, with the same line."""
    run = ["run", str(TINY_RECIPE), override, f"output_dir={tmp_path / 'r'}", "train.steps=1", "train.report=false"]
    validate_code = main(["validate", str(TINY_RECIPE), override])
    validate_err = capsys.readouterr().err
    run_code = main(run)
    run_err = capsys.readouterr().err
    if needle is None:
        assert validate_code == 0 and run_code == 0, validate_err + run_err
        return
    assert validate_code == run_code == 2
    assert needle in validate_err and validate_err == run_err, (validate_err, run_err)


@pytest.mark.parametrize("override,needle", [
    ("algorithm.group_sise=4", "did you mean 'algorithm.group_size'"),
    ("trian.steps=3", "unknown key 'trian' (did you mean 'train'?)"),
    ("train.stepz=3", "did you mean 'train.steps'"),
    ("train.steps=abc", "wrong type for 'train.steps'"),
    ("algorithm.name=ppo", "'algorithm.name' is 'ppo', expected one of: grpo, dpo"),
    ("data.path=/nope/prompts.jsonl", "manifest not found: /nope/prompts.jsonl"),
    ("rewards=[{name: targetcolor}]", "unknown reward 'targetcolor' (did you mean 'target_color'?)"),
    ("rewards=[{name: target_color, wieght: 2}]", "did you mean 'rewards.weight'"),
    ("algorithm.group_size=1", "must be >= 2"),
    ("optim.schedule=cosin", "'optim.schedule' is 'cosin', expected one of: constant, cosine"),
    ("algorithm.clip_range_low=0.2", "override 'algorithm.clip_range_low=0.2': 'algorithm.clip_range_low' is now "
                                     "'algorithm.grpo.clip_range_low'"),
    ("sampler.sde_window_placement=random", "'sampler.sde_window' is not set"),
    ("algorithm.beta=10", "'algorithm.beta' is now 'algorithm.dpo.beta'"),
    ("algorithm.grpo.ratio_norm=maybe", "algorithm.grpo.ratio_norm"),
    ("algorithm.nft.beta=0", "'algorithm.nft.beta' is 0.0, must be > 0 and <= 10"),
    ("algorithm.nft.sample_with=old", "'algorithm.nft.sample_with' is 'old', expected one of: ema, current"),
    (("sampler.kernel=cps", "sampler.noise_level=0.5", "eval.noise_level=1.5"), "'eval.noise_level' is 1.5: cps"),
    ("algorithm.grpo.reward_norm=mean", "'algorithm.grpo.reward_norm' is 'mean', expected one of: sum, per_reward"),
    ("sandbox.skip_edit=1.5", "'sandbox.skip_edit' is 1.5, must be >= 0 and < 1"),
    ("sandbox.washout_share=0", "'sandbox.washout_share' is 0.0, must be > 0 and <= 1"),
    ("sandbox.judge_refresh_rounds=0", "'sandbox.judge_refresh_rounds' is 0, must be >= 1"),
    ("sandbox.jrm_patch=3", "'sandbox.jrm_patch' is '3', expected one of: 2, 4, 8, 16"),
    ("sandbox.jrm_hidden=100", "'sandbox.jrm_hidden' is 100, must be >= 32 and a multiple of 32"),
    # values the schema used to accept: each a traceback from torch/numpy/peft, or a run doing nonsense
    ("optim.lr=-1", "'optim.lr' is -1.0, must be > 0"),
    ("optim.lr=nan", "'optim.lr' is nan, must be a finite number"),
    ("optim.eps=-1e-8", "'optim.eps' is -1e-08, must be > 0"),
    ("optim.betas=[0.9]", "'optim.betas' must list exactly 2 values, got 1"),
    ("optim.betas=[0.9,1.5]", "'optim.betas[1]' is 1.5, must be >= 0 and < 1"),
    ("seed=-3", "'seed' is -3, must be >= 0"),
    ("policy.device=gpu", "'policy.device' is 'gpu', expected auto, cpu, cuda or cuda:N"),
    ("policy.lora.rank=0", "'policy.lora.rank' is 0, must be >= 1"),
    ("policy.lora.target_modules=[]", "'policy.lora.target_modules' must list at least 1"),
    ("eval.max_prompts=0", "'eval.max_prompts' is 0, must be >= 1"),
    ("eval.samples_per_prompt=0", "'eval.samples_per_prompt' is 0, must be >= 1"),
    ("sampler.noise_level=0", "GRPO trains on the log-probs of SDE steps"),
    ("sampler.noise_level=50", "'sampler.noise_level' is 50.0, must be >= 0 and <= 2"),
    ("algorithm.adv_clip=-1", "'algorithm.adv_clip' is -1.0, must be > 0"),
    ("algorithm.grpo.clip_range_high=-0.1", "'algorithm.grpo.clip_range_high' is -0.1, must be >= 0"),
    ("policy.max_sequence_length=0", "'policy.max_sequence_length' is 0, must be >= 1"),
    ("policy.max_sequence_length=600", "flux_kontext_tiny's text encoder takes at most 512"),
    ("rewards=[{name: target_color, weight: 0}]", "every reward in 'rewards' has weight 0"),
    ("rewards.0.weight=nan", "'rewards[0].weight' is nan, must be a finite number"),
    ("eval.rewards=[{name: target_color, log_as: step}]", "'eval.rewards.log_as' is 'step', which the run logs"),
    ("eval.rewards=[{name: target_color, log_as: eval/x}]", "'eval.rewards[0].log_as' is 'eval/x', expected a plain"),
    ("output_dir=${nope.x}", "'output_dir': Interpolation key 'nope.x' not found"),
    ("rewards={name: target_color}", "'rewards' must be a list of {name, weight, kwargs, log_as}, got a mapping"),
    ("policy=[1]", "'policy' must be a section of keys, got a list"),
    ("rewards=[{name: target_color", "cannot parse the value"),
    ("sampler.sde_window=20", "'sampler.sde_window' (20) is more than 'sampler.num_steps' (8)"),
    (("sampler.kernel=cps", "sampler.noise_level=1.5"), "cps reads it as an angle, must be <= 1"),
    ("rewards.3.weight=2", "'rewards' has no item 3"),
    ("rewards.0.wieght=2", "did you mean 'rewards.weight'"),
])
def test_recipe_errors_exit_2_with_one_clear_line(override, needle, capsys):
    overrides = list(override) if isinstance(override, tuple) else [override]
    sandbox = any(o.startswith("sandbox.") for o in overrides)  # the section of sandbox_edit's preparation
    assert main(["validate", "sandbox_edit" if sandbox else str(TINY_RECIPE), *overrides]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "'train.lr' is -1.0, must be > 0"),
    ("loss.alpha=1", "'loss.alpha' is 1.0, must be >= 0 and < 1"),
    ("head.bins=[1]", "'head.bins' must list at least 2"),
    ("backbone.name=big", "'backbone.name' is 'big', expected one of: tiny, pretrained"),
    ("train.device=gpu", "'train.device' is 'gpu', expected auto, cpu, cuda or cuda:N"),
    ("data.train=/nope.jsonl", "data.train: pairs file not found: /nope.jsonl"),
    ("distill.teacher=/nope", "distill.teacher '/nope': not a trained JRM reward"),
])
def test_reward_recipe_errors_exit_2_in_validate_and_train_reward(override, needle, capsys, tmp_path):
    for command in ("validate", "train-reward"):
        assert main([command, "jrm_tiny", override, f"output_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_every_problem_is_reported_in_one_pass(capsys):
    assert main(["validate", str(TINY_RECIPE), "optim.lr=-1", "seed=-1", "policy.lora.rank=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    named = [line.split("'")[3] for line in err]  # error: override 'K=V': 'K' ...
    assert sorted(named) == ["optim.lr", "policy.lora.rank", "seed"]


def test_a_recipe_that_is_not_a_mapping(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- policy\n- rewards\n")
    assert main(["validate", str(tmp_path / "list.yaml")]) == 2
    assert "a recipe is a mapping of keys" in capsys.readouterr().err


def test_an_override_reaches_into_a_list_item():
    """`rewards.0.kwargs.path=...` changes that one reward; it used to crash merging a dict into the list."""
    from rlkit.config import load_recipe

    cfg = load_recipe("sandbox_edit", ["rewards.0.kwargs.path=/judges/big", "eval.rewards.0.log_as=gold"])
    assert cfg.rewards[0].name == "jrm" and cfg.rewards[0].kwargs.path == "/judges/big" and len(cfg.rewards) == 1
    assert cfg.eval.rewards[0].log_as == "gold"


def test_typo_in_a_recipe_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RECIPE.read_text().replace("group_size:", "groupsize:"))
    assert main(["validate", str(bad)]) == 2
    assert "unknown key 'algorithm.groupsize'" in capsys.readouterr().err


def test_unknown_recipe_name(capsys):
    assert main(["validate", "tiny_edt"]) == 2
    assert "did you mean 'tiny_edit'" in capsys.readouterr().err


def test_console_script_runs_without_traceback():
    out = subprocess.run([sys.executable, "-m", "rlkit", "run", str(TINY_RECIPE), "sampler.kernal=cps"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert "did you mean 'sampler.kernel'" in out.stderr and "Traceback" not in out.stderr
    help_out = subprocess.run([sys.executable, "-m", "rlkit", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "validate" in help_out.stdout and "rewards" in help_out.stdout


def test_a_missing_image_is_found_before_training(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"image": "there.png", "instruction": "x"}\n'
                                      '{"image": "gone.png", "instruction": "y"}\n')
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "there.png")
    assert main(["run", str(TINY_RECIPE), f"data.path={tmp_path / 'm.jsonl'}", f"output_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "image not found" in err and "gone.png" in err and "1 of 2 missing" in err


@pytest.mark.parametrize("pretrained", ["/nonexistent/FLUX.1-Kontext-dev", "someone/not-in-the-cache"])
def test_missing_real_weights_say_what_to_do(tmp_path, capsys, pretrained, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    assert main(["run", "flux_edit", f"output_dir={tmp_path / 'r'}", "policy.device=cpu",
                 f"policy.pretrained={pretrained}", "rewards=[{name: source_consistency}]"]) == 2
    err = capsys.readouterr().err
    assert ("is not a local diffusers folder" in err if pretrained.startswith("/") else
            "not in the local hub cache and rlkit never downloads; download it first" in err)


@pytest.mark.parametrize("overrides,blamed", [
    (["train.steps=-1"], "override 'train.steps=-1': 'train.steps' is -1"),
    (["rewards=[{name: target_color, weight: 1e9}]"], "override 'rewards=[{name: target_color, weight: 1e9}]': "
                                                       "'rewards[0].weight'"),
    (["train.steps=5", "train.steps=0"], "override 'train.steps=0': 'train.steps' is 0"),
])
def test_a_bad_override_is_blamed_not_the_recipe_file(overrides, blamed, capsys):
    assert main(["validate", str(TINY_RECIPE), *overrides]) == 2
    err = capsys.readouterr().err
    assert blamed in err and str(TINY_RECIPE) not in err, err


def test_overrides_may_follow_options(capsys):
    assert main(["validate", str(TINY_RECIPE), "--print", "train.steps=3", "--offline", "seed=4"]) == 0
    out = capsys.readouterr().out
    assert "  steps: 3" in out and "seed: 4" in out
    with pytest.raises(SystemExit):
        main(["validate", str(TINY_RECIPE), "--bogus"])


def test_a_secret_typed_in_a_failing_override_is_masked(capsys):
    assert main(["validate", str(TINY_RECIPE), "rewards.0.kwargs.api_key=sk-9f8e7d6c5b", "train.steps=0"]) == 2
    err = capsys.readouterr().err
    assert "sk-9f8e7d6c5b" not in err and "train.steps" in err
    assert main(["validate", str(TINY_RECIPE), "rewards=[{name: vlm_judge, kwargs: {api_key: sk-9f8e7d6c5b"]) == 2
    err = capsys.readouterr().err
    assert "sk-9f8e7d6c5b" not in err and "cannot parse" in err
