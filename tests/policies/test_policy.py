"""One test suite over every editor policy (FLUX.1 Kontext, Qwen-Image-Edit, Qwen-Image-Edit-2509/2511, FLUX.2
[klein]), on tiny random weights.

Each editor is a case that says how its stock diffusers pipeline samples (the ODE reference) and what prompts it
takes (the multi-reference editors get two reference images of other aspect ratios per prompt); every contract
test runs on every case, so a new editor is covered by adding its case. Editor-specific behaviour (true CFG)
is tested at the end.
"""

import json

import numpy as np
import pytest
import torch
from helpers import make_policy, prompt_batch, tiny_config

from rlkit.core.images import tensor_to_pil


def two_references(batch, sizes, seed=0):
    """The batch with two 8-bit reference images per prompt, of these (height, width) sizes."""
    g = torch.Generator().manual_seed(100 + seed)
    batch.references = [[(torch.rand(3, *size, generator=g) * 255).round() / 255 for size in sizes]
                        for _ in range(len(batch))]
    return batch


class Case:
    overrides: tuple[str, ...] = ()

    def batch(self, n=2, seed=0, keys=None):
        return prompt_batch(n, seed, keys)

    def make(self, *extra):
        return make_policy(f"policy.name={self.name}", *self.overrides, *extra)


class FluxKontextCase(Case):
    name = "flux_kontext_tiny"
    noise_shape = (1, 4, 16, 16)  # unpacked latents of one 32 px sample

    def ode_reference(self, policy, cfg, batch, noise):
        """FluxKontextPipeline's own deterministic sampler, from the same initial noise."""
        pipe = policy.pipe
        return pipe(
            image=batch.sources, prompt=batch.instructions[0], height=32, width=32, max_area=32 * 32,
            num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.guidance_scale,
            max_sequence_length=cfg.policy.max_sequence_length, _auto_resize=False,
            latents=pipe._pack_latents(noise, 1, 4, 16, 16), output_type="latent",
        ).images


class QwenImageEditCase(Case):
    name = "qwen_image_edit_tiny"
    noise_shape = (1, 4, 8, 8)

    def ode_reference(self, policy, cfg, batch, noise):
        """FlowMatchEulerDiscreteScheduler.step over the schedule exactly as QwenImageEditPipeline sets it (the
        tiny pipeline has no processor, which its __call__ needs)."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_shift

        rollout = policy.sample(batch, 1, torch.Generator().manual_seed(0), initial_noise=noise)
        sched = FlowMatchEulerDiscreteScheduler.from_config(policy.pipe.scheduler.config)
        x = policy.pipe._pack_latents(noise, 1, 4, 8, 8)
        c, n = sched.config, cfg.sampler.num_steps
        mu = calculate_shift(x.shape[1], c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device="cpu")
        for t in sched.timesteps:
            v = policy.predict_velocity(x, t / 1000, rollout.cond, torch.tensor([0]))
            x = sched.step(v, t, x, return_dict=False)[0]
        return x


class QwenImageEditPlusCase(Case):
    """Qwen-Image-Edit-2509: two references (the VAE sees each at the reference budget, the VLM at 384^2)."""

    name = "qwen_image_edit_plus_tiny"
    noise_shape = (1, 4, 8, 8)

    def batch(self, n=2, seed=0, keys=None):
        return two_references(prompt_batch(n, seed, keys), [(32, 48), (40, 24)], seed)

    def ode_reference(self, policy, cfg, batch, noise, monkeypatch=None):
        """QwenImageEditPlusPipeline's own __call__, its VAE reference area set to the policy's budget."""
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as stock

        monkeypatch.setattr(stock, "VAE_IMAGE_SIZE", policy.layout.reference_side**2)
        pipe = policy.pipe
        return pipe(image=[tensor_to_pil(r) for r in batch.references[0]], prompt=batch.instructions[0], height=32,
                    width=32, num_inference_steps=cfg.sampler.num_steps, true_cfg_scale=cfg.policy.true_cfg_scale,
                    latents=pipe._pack_latents(noise, 1, 4, 8, 8), output_type="latent").images


class QwenImageEdit2511Case(QwenImageEditPlusCase):
    """Qwen-Image-Edit-2511: the same pipeline, reference tokens modulated at t = 0 (zero_cond_t)."""

    name = "qwen_image_edit_2511_tiny"


class Flux2Case(Case):
    """FLUX.2 [klein] base: two references (the pipeline takes none under 64 px a side)."""

    name = "flux2_tiny"
    overrides = ("policy.reference_resolution=64",)
    noise_shape = (1, 16, 4, 4)  # patchified latents of one 32 px sample

    def batch(self, n=2, seed=0, keys=None):
        return two_references(prompt_batch(n, seed, keys), [(64, 96), (80, 64)], seed)

    def ode_reference(self, policy, cfg, batch, noise, monkeypatch=None):
        """Flux2KleinPipeline's own __call__; its latent output brought back to the policy's token layout."""
        pipe = policy.pipe
        out = pipe(image=[tensor_to_pil(r) for r in batch.references[0]], prompt=batch.instructions[0], height=32,
                   width=32, num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.true_cfg_scale,
                   max_sequence_length=cfg.policy.max_sequence_length, latents=noise, output_type="latent").images
        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return pipe._pack_latents((pipe._patchify_latents(out) - mean) / std)


class Flux2DevCase(Flux2Case):
    """FLUX.2 [dev]: the same references through Flux2Pipeline, a Mistral text encoder, embedded guidance."""

    name = "flux2_dev_tiny"

    def ode_reference(self, policy, cfg, batch, noise, monkeypatch=None):
        """Flux2Pipeline's own __call__ (its latent output is the policy's token layout already)."""
        pipe = policy.pipe
        return pipe(image=[tensor_to_pil(r) for r in batch.references[0]], prompt=batch.instructions[0], height=32,
                    width=32, num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.guidance_scale,
                    max_sequence_length=cfg.policy.max_sequence_length, latents=noise, output_type="latent").images


CASES = [FluxKontextCase(), QwenImageEditCase(), QwenImageEditPlusCase(), QwenImageEdit2511Case(), Flux2Case(),
         Flux2DevCase()]


def test_every_registered_editor_has_a_case():
    """A new editor in rlkit.policies.POLICIES is covered by this suite once it has a case here."""
    from rlkit.policies import POLICIES

    assert {c.name for c in CASES} == {name for name, entry in POLICIES.items() if entry.weights == "tiny"}


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


@pytest.fixture
def policy(case):
    return case.make()[0]


def test_first_update_ratio_is_exactly_one(case, policy):
    """Recomputing the rollout's log-probs in the training pass gives ratio 1 (within 1e-6), for the whole
    batch, for sub-batches, and with a different timestep per sample."""
    rollout = policy.sample(case.batch(2), 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for step in range(rollout.num_steps):
            out = policy.step_logprob(rollout, torch.arange(len(rollout)), step)
            assert (torch.exp(out.log_prob - rollout.log_probs[:, step]) - 1).abs().max() < 1e-6
        idx, steps = torch.tensor([4, 0, 2]), torch.tensor([3, 0, 1])
        out = policy.step_logprob(rollout, idx, steps)
        assert (torch.exp(out.log_prob - rollout.log_probs[idx, steps]) - 1).abs().max() < 1e-6
    assert rollout.log_probs.abs().sum() > 0  # the test is not comparing zeros


def test_noise_zero_is_the_stock_pipelines_ode(case, monkeypatch):
    """With noise_level 0 the unrolled sampler is the editor's own diffusers sampler, to 1e-5."""
    policy, cfg = case.make("sampler.noise_level=0.0", "algorithm.name=dpo")
    batch = case.batch(1)
    noise = torch.randn(*case.noise_shape, generator=torch.Generator().manual_seed(3))
    rollout = policy.sample(batch, 1, torch.Generator().manual_seed(0), initial_noise=noise)
    assert torch.all(rollout.log_probs == 0) and not rollout.sde_mask.any()
    with torch.no_grad():
        if isinstance(case, (FluxKontextCase, QwenImageEditCase)):
            expected = case.ode_reference(policy, cfg, batch, noise)
        else:
            expected = case.ode_reference(policy, cfg, batch, noise, monkeypatch)
    torch.testing.assert_close(rollout.latents[:, -1], expected, rtol=0, atol=1e-5)
    assert expected.abs().mean() > 0.1


def test_reference_is_the_model_without_the_adapter(case, policy):
    rollout = policy.sample(case.batch(1), 1, torch.Generator().manual_seed(0))
    for p in policy.trainable_parameters():  # make the adapter do something
        torch.nn.init.normal_(p, std=0.5)
    x, t, idx = rollout.latents[:, 0], torch.tensor([0.6]), torch.tensor([0])
    with torch.no_grad():
        with_lora = policy.predict_velocity(x, t, rollout.cond, idx)
        with policy.reference():
            ref = policy.predict_velocity(x, t, rollout.cond, idx)
        policy.transformer.disable_adapters()
        base = policy.predict_velocity(x, t, rollout.cond, idx)
        policy.transformer.enable_adapters()
        after = policy.predict_velocity(x, t, rollout.cond, idx)
    assert torch.equal(ref, base)
    assert not torch.allclose(with_lora, ref)
    assert torch.equal(after, with_lora)  # the context restores the adapter


def test_conditioning_is_computed_once_per_group(case, policy):
    rollout = policy.sample(case.batch(2), 3, torch.Generator().manual_seed(0))
    assert rollout.cond.prompt_embeds.shape[0] == 2  # one row per prompt, not per sample
    assert len(rollout.cond.image_latents) == 2
    assert rollout.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout.images.shape == (6, 3, 32, 32) and 0 <= rollout.images.min() <= rollout.images.max() <= 1


def test_group_key_includes_the_image(case, policy):
    """Same instruction on two images -> two groups; the same (image, instruction) twice -> one group."""
    batch = case.batch(3, keys=["a.png\nmake it red", "b.png\nmake it red", "a.png\nmake it red"])
    rollout = policy.sample(batch, 2, torch.Generator().manual_seed(0))
    assert rollout.group_ids.tolist() == [0, 0, 1, 1, 0, 0]


def test_sampling_is_reproducible_from_the_generator(case, policy):
    a = policy.sample(case.batch(1), 2, torch.Generator().manual_seed(5))
    b = policy.sample(case.batch(1), 2, torch.Generator().manual_seed(5))
    c = policy.sample(case.batch(1), 2, torch.Generator().manual_seed(6))
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)


def test_rollout_chunking_gives_the_same_samples(case):
    whole, _ = case.make()
    chunked, _ = case.make("sampler.batch_size=2")
    a = whole.sample(case.batch(2), 3, torch.Generator().manual_seed(0))
    b = chunked.sample(case.batch(2), 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-5)


def test_a_grpo_run_trains_and_exports(case, tmp_path):
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, f"policy.name={case.name}", *case.overrides, "sampler.num_steps=3", "optim.lr=0.01")
    run = Trainer(cfg, progress=False).fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and abs(rows[0]["ratio_mean"] - 1) < 1e-4
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_qwen_true_cfg_combines_and_rescales():
    policy, _ = make_policy("policy.name=qwen_image_edit_tiny", "policy.true_cfg_scale=4.0")
    batch = prompt_batch(1)
    cond = policy.encode(batch)
    assert cond.negative_embeds is not None
    x, t, idx = torch.randn(1, 16, 16), torch.tensor(0.6), torch.tensor([0])
    with torch.no_grad():
        v = policy.predict_velocity(x, t, cond, idx)
        cond.negative_embeds = None
        v_cond = policy.predict_velocity(x, t, cond, idx)
    assert not torch.allclose(v, v_cond)
    torch.testing.assert_close(v.norm(dim=-1), v_cond.norm(dim=-1))  # rescaled to the conditional norm


def test_gradient_checkpointing_gives_the_same_gradients(case):
    """policy.gradient_checkpointing recomputes activations in backward: the LoRA's gradients equal the plain
    backward's to fp32 rounding."""
    grads = []
    for checkpointing in (False, True):
        policy, _ = case.make(f"policy.gradient_checkpointing={str(checkpointing).lower()}")
        policy.transformer.train()  # diffusers checkpoints only while training
        rollout = policy.sample(case.batch(2), 2, torch.Generator().manual_seed(0))
        out = policy.step_logprob(rollout, torch.arange(len(rollout)), 1)
        out.log_prob.sum().backward()
        # (a layer whose output nothing reads, such as the last block's text stream, gets no gradient either way)
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in policy.trainable_parameters()])
    assert any(g.abs().max() > 0 for g in grads[0])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


def test_offload_keeps_the_encoders_on_the_cpu_and_changes_nothing(case):
    """policy.offload: the text encoders and the VAE stay on the CPU between rollouts (on a CUDA machine they
    visit the GPU only to encode and decode: tests/test_gpu.py), and the samples are the same."""
    plain, _ = case.make()
    offloaded, _ = case.make("policy.offload=true")
    assert set(offloaded.offloaded) == set(offloaded.modules) - {"transformer"} and not plain.offloaded
    a = plain.sample(case.batch(2), 2, torch.Generator().manual_seed(0))
    b = offloaded.sample(case.batch(2), 2, torch.Generator().manual_seed(0))
    assert torch.equal(a.latents, b.latents) and torch.equal(a.images, b.images)
    assert all(next(getattr(offloaded.pipe, n).parameters()).device.type == "cpu" for n in offloaded.offloaded)


def test_flux2_guidance_follows_the_pipeline_config(monkeypatch):
    """FLUX.2 [klein]: the base model runs true CFG (the empty negative prompt, no rescaling) when
    policy.true_cfg_scale > 1; the step-distilled model (the pipeline config's is_distilled) runs none, as its
    stock pipeline ignores guidance_scale, and equals that pipeline's own call."""
    from rlkit.policies.flux2 import Flux2Policy
    from rlkit.policies.tiny import tiny_flux2_klein_pipeline

    case = Flux2Case()
    base, cfg = case.make("policy.true_cfg_scale=4.0", "sampler.noise_level=0.0", "algorithm.name=dpo")
    batch = case.batch(1)
    cond = base.encode(batch)
    assert base.cfg_active and cond.negative_embeds is not None
    x, t, idx = torch.randn(1, 16, 16), torch.tensor(0.6), torch.tensor([0])
    with torch.no_grad():
        guided = base.predict_velocity(x, t, cond, idx)
        cond.negative_embeds = None
        plain = base.predict_velocity(x, t, cond, idx)
    assert not torch.allclose(guided, plain)

    distilled = Flux2Policy(tiny_flux2_klein_pipeline(0, distilled=True), cfg.policy, cfg.sampler)
    assert not distilled.cfg_active and distilled.encode(batch).negative_embeds is None
    noise = torch.randn(*case.noise_shape, generator=torch.Generator().manual_seed(3))
    ours = distilled.sample(batch, 1, torch.Generator().manual_seed(0), initial_noise=noise).latents[:, -1]
    with torch.no_grad():
        expected = case.ode_reference(distilled, cfg, batch, noise)  # guidance_scale 4: the pipeline ignores it
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
