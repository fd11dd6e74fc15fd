"""The FLUX.1 Kontext policy on tiny random weights: log-prob consistency, the ODE limit, the reference."""

import torch
from conftest import make_policy, prompt_batch


def test_first_update_ratio_is_exactly_one(tiny_policy):
    """Recomputing the rollout's log-probs in the training pass gives ratio 1 (within 1e-6), for the whole
    batch, for sub-batches, and with a different timestep per sample."""
    rollout = tiny_policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    n = len(rollout)
    with torch.no_grad():
        for step in range(rollout.num_steps):
            out = tiny_policy.step_logprob(rollout, torch.arange(n), step)
            ratio = torch.exp(out.log_prob - rollout.log_probs[:, step])
            assert (ratio - 1).abs().max() < 1e-6
        idx = torch.tensor([4, 0, 2])
        steps = torch.tensor([3, 0, 1])
        out = tiny_policy.step_logprob(rollout, idx, steps)
        ratio = torch.exp(out.log_prob - rollout.log_probs[idx, steps])
        assert (ratio - 1).abs().max() < 1e-6
    assert rollout.log_probs.abs().sum() > 0  # the test is not comparing zeros


def test_noise_zero_reproduces_the_diffusers_kontext_pipeline():
    """With noise_level 0 our unrolled sampler is FluxKontextPipeline's own deterministic sampler."""
    policy, cfg = make_policy("sampler.noise_level=0.0", "algorithm.name=dpo")  # the ODE: no GRPO
    batch = prompt_batch(1)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    rollout = policy.sample(batch, 1, torch.Generator().manual_seed(0), initial_noise=noise)
    assert torch.all(rollout.log_probs == 0) and not rollout.sde_mask.any()
    pipe = policy.pipe
    expected = pipe(
        image=batch.sources, prompt=batch.instructions[0], height=32, width=32, max_area=32 * 32,
        num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.guidance_scale,
        max_sequence_length=cfg.policy.max_sequence_length, _auto_resize=False,
        latents=pipe._pack_latents(noise, 1, 4, 16, 16), output_type="latent",
    ).images
    torch.testing.assert_close(rollout.latents[:, -1], expected, rtol=0, atol=1e-5)
    assert expected.abs().mean() > 0.1


def test_reference_is_the_model_without_the_adapter(tiny_policy):
    batch = prompt_batch(1)
    for p in tiny_policy.trainable_parameters():  # make the adapter do something
        torch.nn.init.normal_(p, std=0.5)
    cond = tiny_policy.encode(batch.sources, batch.instructions)
    x = torch.randn(1, 64, 16)
    t, idx = torch.tensor([0.6]), torch.tensor([0])
    with torch.no_grad():
        with_lora = tiny_policy.predict_velocity(x, t, cond, idx)
        with tiny_policy.reference():
            ref = tiny_policy.predict_velocity(x, t, cond, idx)
        tiny_policy.transformer.disable_adapters()
        base = tiny_policy.predict_velocity(x, t, cond, idx)
        tiny_policy.transformer.enable_adapters()
        after = tiny_policy.predict_velocity(x, t, cond, idx)
    assert torch.equal(ref, base)
    assert not torch.allclose(with_lora, ref)
    assert torch.equal(after, with_lora)  # the context restores the adapter


def test_conditioning_is_computed_once_per_group(tiny_policy):
    rollout = tiny_policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    assert rollout.cond.prompt_embeds.shape[0] == 2  # one row per prompt, not per sample
    assert rollout.cond.image_latents.shape[0] == 2
    assert rollout.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout.images.shape == (6, 3, 32, 32) and 0 <= rollout.images.min() <= rollout.images.max() <= 1


def test_group_key_includes_the_image(tiny_policy):
    """Same instruction on two images -> two groups; the same (image, instruction) twice -> one group."""
    batch = prompt_batch(3, keys=["a.png\nmake it red", "b.png\nmake it red", "a.png\nmake it red"])
    rollout = tiny_policy.sample(batch, 2, torch.Generator().manual_seed(0))
    assert rollout.group_ids.tolist() == [0, 0, 1, 1, 0, 0]


def test_sampling_is_reproducible_from_the_generator(tiny_policy):
    a = tiny_policy.sample(prompt_batch(1), 2, torch.Generator().manual_seed(5))
    b = tiny_policy.sample(prompt_batch(1), 2, torch.Generator().manual_seed(5))
    c = tiny_policy.sample(prompt_batch(1), 2, torch.Generator().manual_seed(6))
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)


def test_rollout_chunking_gives_the_same_samples():
    whole, _ = make_policy()
    chunked, _ = make_policy("sampler.batch_size=2")
    a = whole.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    b = chunked.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-5)
