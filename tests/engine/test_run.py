"""Whole runs of the tiny recipe: the run directory contract, the diffusers LoRA, exact resume, plugins."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import REPO, TINY_RECIPE, tiny_config
from safetensors.torch import load_file

from rlkit.cli import main
from rlkit.logs import REQUIRED_KEYS, save_grid
from rlkit.trainer import Trainer


def _run(cfg):
    return Trainer(cfg, progress=False).fit()


def test_tiny_run_fills_the_run_directory(tmp_path):
    run = _run(tiny_config(tmp_path, "train.steps=3", "train.save_every=2"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in REQUIRED_KEYS:
        assert key in rows[0], key
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000003"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert list((run / "samples").glob("step_*.png"))
    assert list((run / "tensorboard").iterdir())


def test_final_lora_loads_into_the_diffusers_kontext_pipeline(tmp_path):
    run = _run(tiny_config(tmp_path, "train.steps=2", "optim.lr=0.05"))
    from rlkit.policies.tiny import tiny_kontext_pipeline

    pipe = tiny_kontext_pipeline(seed=0)  # the same base weights the run trained on
    kwargs = dict(image=torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), prompt="make it red",
                  height=32, width=32, max_area=32 * 32, num_inference_steps=3, max_sequence_length=32,
                  _auto_resize=False, output_type="latent")
    base = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(run / "final"))
    state = load_file(run / "final" / "pytorch_lora_weights.safetensors")
    assert state and all(k.startswith("transformer.") for k in state)
    edited = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not torch.allclose(base, edited)  # the adapter is loaded and active
    # at the recipe's strength (alpha 16 / rank 8): equality with the policy's output is tests/engine/test_export.py
    from safetensors import safe_open

    with safe_open(str(run / "final" / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (8, 16)


def test_dpo_run(tmp_path):
    run = _run(tiny_config(tmp_path, "algorithm.name=dpo"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["dpo_pairs"] == 2 and rows[-1]["ratio_mean"] is None and rows[-1]["loss"] > 0


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight = _run(tiny_config(tmp_path / "a", "train.steps=4", "train.save_every=2"))
    cut = tiny_config(tmp_path / "b", "train.steps=2", "train.save_every=2")
    _run(cut)
    assert main(["resume", str(cut.output_dir), "train.steps=4"]) == 0
    a = load_file(straight / "checkpoints" / "step_000004" / "adapter.safetensors")
    b = load_file(tmp_path / "b" / "run" / "checkpoints" / "step_000004" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_a_run_prints_a_line_every_log_every_steps_and_at_evaluations(tmp_path, capsys):
    """Without a terminal (nohup, SLURM) these lines are what the log file shows of a run."""
    _run(tiny_config(tmp_path, "train.steps=4", "train.log_every=2", "eval.every=3", "eval.max_prompts=2"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["0/4", "2/4", "3/4", "4/4"]  # 0 and 3: evaluations
    assert "eval " in lines[0] and "reward " not in lines[0]  # step 0 evaluates only
    assert "reward " in lines[1] and "s/step" in lines[1] and "eval " in lines[2]


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    _run(cfg)
    assert main(["resume", cfg.output_dir]) == 0
    out = capsys.readouterr().out
    assert "already finished at step 2" in out and f"done: {cfg.output_dir}" in out


# --------------------------------------------------------------------------- an outside reward plugin
PLUGIN_PY = '''
import torch
from rlkit.rewards import RewardInput, RewardOutput


class RedJudge:
    """Scores redness; returns NaN on call number `nan_at_call` (0 = never) to test mid-run failures."""

    def __init__(self, nan_at_call: int = 0):
        self.nan_at_call, self.calls = nan_at_call, 0

    def __call__(self, batch: RewardInput) -> RewardOutput:
        self.calls += 1
        scores = batch.edited[:, 0].mean(dim=(1, 2)) - batch.edited[:, 1:].mean(dim=(1, 2, 3))
        if self.calls == self.nan_at_call:
            scores[0] = float("nan")
        return RewardOutput(scores=scores)
'''


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory):
    """Build and pip-install (into a temporary target) a package registering the reward 'red_judge'."""
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "red_judge_pkg").mkdir()
    (src / "red_judge_pkg" / "__init__.py").write_text(PLUGIN_PY)
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "red-judge"
        version = "0.3.1"
        [project.entry-points."rlkit.rewards"]
        red_judge = "red_judge_pkg:RedJudge"
        [tool.setuptools]
        packages = ["red_judge_pkg"]
    '''))
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1")
    return env


def _rlkit(env, *args):
    return subprocess.run([sys.executable, "-m", "rlkit", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_outside_plugin_is_listed_and_used_by_a_run(plugin_env, tmp_path):
    listed = _rlkit(plugin_env, "rewards")
    assert listed.returncode == 0
    assert "red_judge" in listed.stdout and "red-judge" in listed.stdout and "0.3.1" in listed.stdout
    out = _rlkit(plugin_env, "run", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", "train.steps=1",
                 "sampler.num_steps=3", "algorithm.group_size=2", "rewards=[{name: red_judge, weight: 1.0}]")
    assert out.returncode == 0, out.stderr
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/red_judge" in row


def test_nan_reward_mid_run_stops_without_touching_the_checkpoint(plugin_env, tmp_path):
    run = tmp_path / "run"
    args = ["run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=4", "train.save_every=2",
            "sampler.num_steps=3", "algorithm.group_size=2",
            "rewards=[{name: red_judge, weight: 1.0, kwargs: {nan_at_call: 3}}]"]
    out = _rlkit(plugin_env, *args)
    assert out.returncode == 1
    assert "red_judge" in out.stderr and "non-finite" in out.stderr and "Traceback" not in out.stderr
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000002"]
    assert not (run / "final").exists()
    resumed = _rlkit(plugin_env, "resume", str(run), "rewards=[{name: red_judge, weight: 1.0}]")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and (run / "final").exists()


def test_flux_kontext_loads_a_diffusers_folder(tmp_path):
    """The real-model path (`policy.name=flux_kontext`) on a saved pipeline folder, offline."""
    from rlkit.policies.tiny import tiny_kontext_pipeline

    tiny_kontext_pipeline(seed=0).save_pretrained(tmp_path / "kontext")
    cfg = tiny_config(tmp_path, "policy.name=flux_kontext", f"policy.pretrained={tmp_path / 'kontext'}",
                      "train.steps=1")
    run = _run(cfg)
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_full_finetuning_trains_every_weight_and_resumes_exactly(tmp_path):
    from diffusers import FluxTransformer2DModel

    from rlkit.policies.tiny import tiny_kontext_pipeline

    args = ["policy.finetune=full", "optim.lr=1e-3", "train.save_every=1"]
    straight = _run(tiny_config(tmp_path / "a", "train.steps=2", *args))
    _run(tiny_config(tmp_path / "b", "train.steps=1", *args))
    resumed = _run(tiny_config(tmp_path / "b", "train.steps=2", *args))
    trained = FluxTransformer2DModel.from_pretrained(straight / "final" / "transformer")  # diffusers loads it
    base = tiny_kontext_pipeline(seed=0).transformer.state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, base[k])]
    assert len(changed) == len(base)  # every weight moved, not only attention projections
    a = load_file(straight / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact resume with full weights + optimizer state
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["kl_ref"] > 0  # the reference is the frozen start, so the trained policy has moved off it


def test_full_finetuning_in_bf16_keeps_fp32_master_weights(tmp_path):
    """A bf16 full fine-tune at a realistic lr: the update is far below bf16's rounding step of the weights,
    so it must land in fp32 masters (forward under autocast), and the first ratio is still exactly 1."""
    from rlkit.policies.tiny import tiny_kontext_pipeline

    run = _run(tiny_config(tmp_path, "train.steps=1", "policy.finetune=full", "policy.dtype=bfloat16",
                           "optim.lr=1e-5"))
    trained = load_file(run / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    start = tiny_kontext_pipeline(seed=0).transformer.state_dict()  # fp32, as the masters start
    assert all(v.dtype == torch.float32 for v in trained.values())
    changed = sum(int((trained[k] != start[k]).sum()) for k in start)
    assert changed > 0.9 * sum(v.numel() for v in start.values())  # the update landed on (nearly) every weight
    # had the weights been stored in bf16, most of these updates would have rounded away
    lost = sum(int(((trained[k] != start[k]) & (trained[k].bfloat16() == start[k].bfloat16())).sum()) for k in start)
    assert lost > 0.5 * changed
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["ratio_mean"] == 1.0


def test_cosine_schedule_follows_rl_steps_and_resumes_exactly(tmp_path):
    import math
    import shutil

    straight = _run(tiny_config(tmp_path / "a", "train.steps=4", "optim.schedule=cosine", "train.keep_last=4"))
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    base = tiny_config(tmp_path / "a").optim.lr
    # the lr logged after RL step s was set at the end of that step's update, from s - 1 steps done
    expected = [base * 0.5 * (1 + math.cos(math.pi * (s - 1) / 4)) for s in (1, 2, 3, 4)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-6)

    # resume from step 2 of the same run: the schedule picks up where it was
    cut = tmp_path / "b" / "run"
    shutil.copytree(straight, cut)
    for name in ("step_000003", "step_000004"):
        shutil.rmtree(cut / "checkpoints" / name)
    shutil.rmtree(cut / "final")
    (cut / "checkpoints" / "latest").write_text("step_000002\n")
    assert main(["resume", str(cut)]) == 0
    a = load_file(straight / "checkpoints" / "step_000004" / "adapter.safetensors")
    b = load_file(cut / "checkpoints" / "step_000004" / "adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["lr"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [r["lr"] for r in rows]


def test_sample_grid_rows_are_capped(tmp_path):
    """A 128-prompt evaluation must not write a 4,000-pixel-tall grid: the first `max_rows` prompts only."""
    from PIL import Image

    sources = torch.rand(40 * 2, 3, 8, 8)
    samples = torch.rand(40 * 2, 3, 8, 8)
    save_grid(tmp_path / "all.png", sources, samples, group_size=2, max_rows=64)
    save_grid(tmp_path / "capped.png", sources, samples, group_size=2, max_rows=5)
    assert Image.open(tmp_path / "all.png").size == (8 * 3 + 2, 40 * 8)
    assert Image.open(tmp_path / "capped.png").size == (8 * 3 + 2, 5 * 8)


def test_a_sampler_that_blows_up_is_named_not_the_reward(tmp_path):
    """Latents gone to inf/NaN (here an SDE noise level far past the schema's range, set after validation) stop
    the step naming the sampler; before, the first reward to see the NaN images took the blame."""
    from omegaconf import OmegaConf

    from rlkit.core.errors import RolloutError

    cfg = tiny_config(tmp_path)
    OmegaConf.update(cfg, "sampler.noise_level", 1e30)
    with pytest.raises(RolloutError, match="sampling produced non-finite latents .*lower sampler.noise_level"):
        _run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
