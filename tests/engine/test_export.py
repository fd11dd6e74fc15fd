"""What leaves a run loads in its consumer at full strength: the stock diffusers pipeline, given the exported
LoRA (`load_lora_weights`) or transformer folder (`from_pretrained`), gives the trained policy's own output for
the same inputs and initial noise (noise 0: the deterministic ODE). One suite, run over every editor."""

import json

import pytest
import torch
from helpers import make_policy, prompt_batch
from safetensors import safe_open

from rlkit.core.images import tensor_to_pil

EDITORS = {
    # name: (policy name, latent channels, latent side at 32 px)
    "flux_kontext": ("flux_kontext_tiny", 4, 16),
    "qwen_image_edit": ("qwen_image_edit_tiny", 4, 8),
    "qwen_image_edit_plus": ("qwen_image_edit_plus_tiny", 4, 8),
    "flux2": ("flux2_tiny", 16, 4),  # patchified: 16 channels at 4 x 4
    "flux2_dev": ("flux2_dev_tiny", 16, 4),
}
# the multi-reference editors: two references per prompt, of other aspect ratios than the edit
REFERENCES = {"qwen_image_edit_plus": [(32, 48), (40, 24)], "flux2": [(64, 96), (80, 64)],
              "flux2_dev": [(64, 96), (80, 64)]}
# FLUX.2: its LoRA as its own training scripts place it, the fused single-block projections and their plain to_out too
FLUX2_LORA = ("policy.reference_resolution=96", "policy.lora.target_modules=[to_q,to_k,to_v,to_out.0,"
              "to_qkv_mlp_proj,'single_transformer_blocks.*.attn.to_out']")
EXTRA = {"flux2": FLUX2_LORA, "flux2_dev": FLUX2_LORA}
# alpha != rank, as in every packaged recipe: a loader that assumed alpha = rank would be 4x off
LORA = ("policy.lora.rank=4", "policy.lora.alpha=16")


def _trained_policy(editor: str, finetune: str):
    name = EDITORS[editor][0]
    policy, cfg = make_policy(f"policy.name={name}", "sampler.noise_level=0.0", "algorithm.name=dpo",
                              "sampler.num_steps=3", f"policy.finetune={finetune}", *LORA, *EXTRA.get(editor, ()))
    torch.manual_seed(1)
    with torch.no_grad():  # a "trained" state far from the start, so strength errors show
        for p in policy.trainable_parameters():
            p.add_(torch.randn_like(p) * (0.1 if finetune == "lora" else 0.02))
    return policy, cfg


def _stock_pipeline(editor: str):
    from rlkit.policies import tiny

    pipe = {"flux_kontext": tiny.tiny_kontext_pipeline, "qwen_image_edit": tiny.tiny_qwen_edit_pipeline,
            "qwen_image_edit_plus": tiny.tiny_qwen_edit_plus_pipeline,
            "flux2": tiny.tiny_flux2_klein_pipeline, "flux2_dev": tiny.tiny_flux2_dev_pipeline}[editor](seed=0)
    for module in pipe.components.values():  # as from_pretrained leaves them (built from configs: train mode)
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def _stock_output(editor: str, pipe, cfg, batch, noise) -> torch.Tensor:
    """The final latents of the stock pipeline, in the policy's token layout. Kontext, Qwen-Image-Edit-2509 and
    FLUX.2: the pipeline's own __call__. Qwen-Image-Edit: the tiny pipeline has no processor (its __call__ needs
    one), so the loaded transformer runs inside a policy built on the stock pipeline without an adapter of its
    own (its ODE equals the pipeline's: test_policy)."""
    C, side = EDITORS[editor][1:]
    refs = [tensor_to_pil(r) for r in batch.all_references[0]]
    if editor == "qwen_image_edit_plus":
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as stock

        stock.VAE_IMAGE_SIZE = cfg.policy.resolution**2  # (restored by the caller's monkeypatch)
        return pipe(image=refs, prompt=batch.instructions[0], height=32, width=32,
                    num_inference_steps=cfg.sampler.num_steps, true_cfg_scale=cfg.policy.true_cfg_scale,
                    latents=pipe._pack_latents(noise, 1, C, side, side), output_type="latent").images
    if editor == "flux2_dev":  # its latent output is the token layout already
        return pipe(image=refs, prompt=batch.instructions[0], height=32, width=32,
                    num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.guidance_scale,
                    max_sequence_length=cfg.policy.max_sequence_length, latents=noise, output_type="latent").images
    if editor == "flux2":
        out = pipe(image=refs, prompt=batch.instructions[0], height=32, width=32,
                   num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.true_cfg_scale,
                   max_sequence_length=cfg.policy.max_sequence_length, latents=noise, output_type="latent").images
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        return pipe._pack_latents((pipe._patchify_latents(out) - mean) / std)
    if editor == "flux_kontext":
        return pipe(image=batch.sources, prompt=batch.instructions[0], height=32, width=32, max_area=32 * 32,
                    num_inference_steps=cfg.sampler.num_steps, guidance_scale=cfg.policy.guidance_scale,
                    max_sequence_length=cfg.policy.max_sequence_length, _auto_resize=False,
                    latents=pipe._pack_latents(noise, 1, C, side, side), output_type="latent").images
    from rlkit.policies.qwen_image_edit import QwenImageEditPolicy

    cfg.policy.finetune = "lora"  # the wrapper must not copy or re-wrap the loaded transformer
    return _ode_output(QwenImageEditPolicy(pipe, cfg.policy, cfg.sampler, with_adapter=False), batch, noise)


def _ode_output(policy, batch, noise) -> torch.Tensor:
    return policy.sample(batch, 1, torch.Generator().manual_seed(0), initial_noise=noise).latents[:, -1]


def _inputs(editor: str):
    C, side = EDITORS[editor][1:]
    batch = prompt_batch(1)
    if editor in REFERENCES:
        g = torch.Generator().manual_seed(7)
        batch.references = [[(torch.rand(3, *size, generator=g) * 255).round() / 255 for size in REFERENCES[editor]]]
    return batch, torch.randn(1, C, side, side, generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def _restore_reference_area(monkeypatch):
    """Qwen-Image-Edit-2509's VAE reference area is a module constant the stock calls here set."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as stock

    monkeypatch.setattr(stock, "VAE_IMAGE_SIZE", stock.VAE_IMAGE_SIZE)


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_exported_lora_loads_at_its_trained_strength(editor, tmp_path):
    policy, cfg = _trained_policy(editor, "lora")
    batch, noise = _inputs(editor)
    trained = _ode_output(policy, batch, noise)
    with policy.reference():
        untrained = _ode_output(policy, batch, noise)
    policy.save_lora(str(tmp_path))
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.lora_alpha"] == 16 and meta["transformer.r"] == 4
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(tmp_path))  # adapter_config.json, as peft reads it
    assert (config.r, config.lora_alpha) == (4, 16)
    from rlkit.policies import lora_targets

    given = lora_targets(_stock_pipeline(editor).transformer, list(cfg.policy.lora.target_modules))[0]
    assert set(config.target_modules) == set(given)  # a glob is saved as the layers it matched

    pipe = _stock_pipeline(editor)
    pipe.load_lora_weights(str(tmp_path))
    loaded = _stock_output(editor, pipe, cfg, batch, noise)
    assert (trained - untrained).abs().max() > 0.05  # the LoRA matters, so a wrong strength would show
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_fully_finetuned_transformer_loads_with_from_pretrained(editor, tmp_path):
    policy, cfg = _trained_policy(editor, "full")
    batch, noise = _inputs(editor)
    trained = _ode_output(policy, batch, noise)
    policy.save_lora(str(tmp_path))

    pipe = _stock_pipeline(editor)
    pipe.transformer = type(pipe.transformer).from_pretrained(tmp_path / "transformer")
    loaded = _stock_output(editor, pipe, cfg, batch, noise)
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)


SNIPPET_CASES = [("flux_kontext", "lora"), ("flux_kontext", "full"), ("qwen_image_edit_plus", "lora"),
                 ("flux2", "lora"), ("flux2_dev", "lora")]


@pytest.mark.parametrize("editor,finetune", SNIPPET_CASES)
def test_the_printed_snippet_alone_makes_the_trained_edit(editor, finetune, tmp_path, monkeypatch):
    """The snippet the run prints (and the model card shows), run as it is against a saved base model: from
    non-square source files (two references for the editors that take several) it makes the trained policy's own
    edit, as rlkit's data path feeds it (size, references, steps, guidance, noise)."""
    import numpy as np
    from PIL import Image

    from rlkit.data import PromptStream, read_items
    from rlkit.export import loading_snippet

    policy, cfg = _trained_policy(editor, finetune)
    rng = np.random.default_rng(0)
    sizes = [(56, 40)] if editor not in REFERENCES else [(100, 70), (66, 90)]  # (width, height): not square
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"photo_{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    instruction = "make the square red"
    (tmp_path / "m.jsonl").write_text(json.dumps({"images": [p.name for p in paths], "instruction": instruction}))
    policy.save_lora(str(tmp_path / "final"))
    stock = _stock_pipeline(editor)
    if editor == "qwen_image_edit_plus":  # its tiny processor is built in memory: the base model is handed over
        monkeypatch.setattr(type(stock), "from_pretrained", classmethod(lambda cls, *a, **k: stock))
    else:
        stock.save_pretrained(tmp_path / "base")
    cfg.policy.pretrained, cfg.policy.dtype = str(tmp_path / "base"), "float32"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(loading_snippet(cfg, tmp_path / "final", example=([str(p) for p in paths], instruction)), scope)  # as printed
    edited = np.asarray(Image.open(tmp_path / "edited.png").convert("RGB"), dtype=np.float32)

    cfg.data.path = str(tmp_path / "m.jsonl")
    batch = PromptStream(read_items(cfg.data), policy.layout, 0).next_batch(1)  # as a run loads it
    cond = policy.encode(batch)
    noise = torch.randn(1, *policy.noise_shape(cond), generator=torch.Generator().manual_seed(0))  # the pipeline's
    trained = policy.sample(batch, 1, torch.Generator(), initial_noise=noise).images[0]
    with policy.reference():
        untrained = policy.sample(batch, 1, torch.Generator(), initial_noise=noise).images[0]
    ours = trained.permute(1, 2, 0).numpy() * 255
    assert edited.shape == ours.shape and edited.shape[0] != edited.shape[1]  # the trained, non-square size
    assert np.abs(edited - ours).max() <= 1.0  # uint8 rounding
    assert (trained - untrained).abs().max() * 255 > 5  # the weights matter in this comparison


def test_peft_loads_the_exported_adapter(tmp_path):
    """final/ in peft's own layout too: PeftModel.from_pretrained on the stock transformer puts the trained
    adapter on every trained layer at its trained scale (alpha / rank)."""
    from peft import PeftModel

    policy, cfg = _trained_policy("flux_kontext", "lora")
    policy.save_lora(str(tmp_path))
    loaded = PeftModel.from_pretrained(_stock_pipeline("flux_kontext").transformer, str(tmp_path)).base_model.model
    ours = {n: m for n, m in policy.transformer.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    theirs = {n: m for n, m in loaded.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert set(theirs) == set(ours) and ours
    for name, module in ours.items():
        assert theirs[name].scaling["default"] == module.scaling["default"] == 16 / 4
        for part in ("lora_A", "lora_B"):
            assert torch.equal(getattr(theirs[name], part)["default"].weight, getattr(module, part)["default"].weight)
