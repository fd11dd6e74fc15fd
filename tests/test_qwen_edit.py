"""The Qwen-Image-Edit policy on tiny random weights: the same log-prob contracts as FLUX.1 Kontext, the ODE
limit against diffusers' scheduler, true CFG, LoRA loading into QwenImageEditPipeline, and a run."""

import json

import pytest
import torch
from conftest import make_policy, prompt_batch, tiny_config

QWEN = "policy.name=qwen_image_edit_tiny"


@pytest.fixture(scope="module")
def qwen_policy():
    policy, _ = make_policy(QWEN, "sampler.num_steps=4")
    return policy


def test_first_update_ratio_is_exactly_one(qwen_policy):
    rollout = qwen_policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    assert rollout.images.shape == (6, 3, 32, 32) and rollout.cond.prompt_embeds.shape[0] == 2
    with torch.no_grad():
        for step in range(rollout.num_steps):
            out = qwen_policy.step_logprob(rollout, torch.arange(len(rollout)), step)
            assert (torch.exp(out.log_prob - rollout.log_probs[:, step]) - 1).abs().max() < 1e-6
        idx, steps = torch.tensor([4, 0, 2]), torch.tensor([3, 0, 1])
        out = qwen_policy.step_logprob(rollout, idx, steps)
        assert (torch.exp(out.log_prob - rollout.log_probs[idx, steps]) - 1).abs().max() < 1e-6
    assert rollout.log_probs.abs().sum() > 0


def test_noise_zero_is_the_euler_ode_of_the_pipelines_scheduler():
    """noise_level 0 = diffusers' FlowMatchEulerDiscreteScheduler.step over the pipeline's shifted schedule."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_shift

    policy, cfg = make_policy(QWEN, "sampler.noise_level=0.0", "algorithm.name=dpo", "sampler.num_steps=4")
    batch = prompt_batch(1)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    rollout = policy.sample(batch, 1, torch.Generator().manual_seed(0), initial_noise=noise)
    assert torch.all(rollout.log_probs == 0)
    sched = FlowMatchEulerDiscreteScheduler.from_config(policy.pipe.scheduler.config)
    x = policy.pipe._pack_latents(noise, 1, 4, 8, 8)
    c, n = sched.config, cfg.sampler.num_steps  # the schedule exactly as QwenImageEditPipeline sets it
    mu = calculate_shift(x.shape[1], c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device="cpu")
    cond, idx = rollout.cond, torch.tensor([0])
    with torch.no_grad():
        for t in sched.timesteps:
            v = policy.predict_velocity(x, t / 1000, cond, idx)
            x = sched.step(v, t, x, return_dict=False)[0]
    torch.testing.assert_close(rollout.latents[:, -1], x, rtol=0, atol=1e-5)
    assert x.abs().mean() > 0.1


def test_true_cfg_combines_and_rescales():
    policy, _ = make_policy(QWEN, "policy.true_cfg_scale=4.0")
    batch = prompt_batch(1)
    cond = policy.encode(batch.sources, batch.instructions)
    assert cond.negative_embeds is not None
    x, t, idx = torch.randn(1, 16, 16), torch.tensor(0.6), torch.tensor([0])
    with torch.no_grad():
        v = policy.predict_velocity(x, t, cond, idx)
        cond.negative_embeds = None
        v_cond = policy.predict_velocity(x, t, cond, idx)
    assert not torch.allclose(v, v_cond)
    torch.testing.assert_close(v.norm(dim=-1), v_cond.norm(dim=-1))  # rescaled to the conditional norm


def test_lora_loads_into_the_diffusers_pipeline(qwen_policy, tmp_path):
    from policies.tiny import tiny_qwen_edit_pipeline

    for p in qwen_policy.trainable_parameters():
        torch.nn.init.normal_(p, std=0.1)
    qwen_policy.save_lora(str(tmp_path))
    pipe = tiny_qwen_edit_pipeline(seed=0)
    kwargs = dict(hidden_states=torch.randn(1, 32, 16), encoder_hidden_states=torch.randn(1, 5, 16),
                  encoder_hidden_states_mask=torch.ones(1, 5, dtype=torch.long), timestep=torch.tensor([0.5]),
                  img_shapes=[[(1, 4, 4), (1, 4, 4)]], return_dict=False)
    with torch.no_grad():
        base = pipe.transformer(**kwargs)[0]
        pipe.load_lora_weights(str(tmp_path))
        adapted = pipe.transformer(**kwargs)[0]
    assert not torch.allclose(base, adapted)


def test_grpo_run_with_the_qwen_policy(tmp_path):
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, QWEN, "sampler.num_steps=3", "optim.lr=0.01")
    run = Trainer(cfg, progress=False).fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and abs(rows[0]["ratio_mean"] - 1) < 1e-4
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
