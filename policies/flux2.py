"""FLUX.2 [klein] (base and distilled) and FLUX.2 [dev] as RL policies, several reference images per prompt (the
loop, kernels and LoRA are in flow_policy.py).

Conditioning as `Flux2KleinPipeline.__call__` (and `Flux2Pipeline.__call__` for [dev]) does it, through the
pipeline's own methods: the text encoder (Qwen3 for [klein], Mistral Small 3.1 with the pipeline's system message
for [dev]) reads the chat template (padded to `max_sequence_length`), its hidden states of three layers stacked; each
reference is checked (sides >= 64, aspect <= 8), brought to at most 1024^2 pixels, cropped to the 16-pixel
multiple, VAE-encoded (argmax, 2x2 patchified, batch-norm normalised) and flattened; reference tokens follow
the noisy target tokens with position ids (T = 10 + 10 i, h, w, 0). The schedule's `mu` is FLUX.2's empirical
one (image tokens and step count). Guidance as the pipeline's config says: the distilled model
(`is_distilled`) takes none; the base model takes true CFG with the empty negative prompt (no rescaling) when
`policy.true_cfg_scale` > 1 (the pipeline's `guidance_scale`); a transformer with a guidance embedding (FLUX.2
[dev]'s) gets `policy.guidance_scale` as that embedding.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

from rlkit.core.errors import UserError
from rlkit.core.images import tensor_to_pil
from rlkit.policies.flow_policy import FlowEditPolicy

REFERENCE_AREA = 1024 * 1024  # the pipeline brings larger references down to this many pixels


@dataclass
class Flux2Condition:
    """Everything that is the same for every sample of a group: computed once per prompt."""

    prompt_embeds: torch.Tensor  # [P, S, D] stacked text-encoder layers
    text_ids: torch.Tensor  # [S, 4]
    negative_embeds: torch.Tensor | None  # true CFG only
    image_latents: list[torch.Tensor]  # per prompt [L_refs, C]: every reference's tokens, in order
    image_ids: list[torch.Tensor]  # per prompt [L_refs, 4]
    reference_sizes: list[tuple[tuple[int, int], ...]]  # per prompt: each reference's (height, width) in pixels
    latent_ids: torch.Tensor  # [L, 4] the target's ids
    latent_hw: tuple[int, int]  # the edit's VAE latent height, width (before 2x2 patchifying)


class Flux2Policy(FlowEditPolicy):
    pipeline_class = Flux2KleinPipeline
    modules = ("vae", "text_encoder", "transformer")

    def __init__(self, pipe, cfg, sampler_cfg, device="cpu", train_micro_batch: int = 0, with_adapter: bool = True):
        super().__init__(pipe, cfg, sampler_cfg, device, train_micro_batch, with_adapter)
        self.distilled = bool(pipe.config.get("is_distilled", False))
        self.true_cfg_scale = float(getattr(cfg, "true_cfg_scale", 1.0))
        self.cfg_active = self.true_cfg_scale > 1 and not self.distilled  # the pipeline's do_classifier_free_guidance
        self.text_layers = inspect.signature(pipe.__call__).parameters["text_encoder_out_layers"].default

    # ----------------------------------------------------------------- conditioning
    def _text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, ids = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                              max_sequence_length=self.cfg.max_sequence_length,
                                              text_encoder_out_layers=self.text_layers)
        return embeds.to(self.dtype), ids[0]

    def _references(self, refs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        pipe = self.pipe
        images = []
        for ref in refs:
            img = tensor_to_pil(ref)
            try:
                pipe.image_processor.check_image_input(img)
            except ValueError as err:
                raise UserError(f"FLUX.2 refuses a reference image: {err} (set policy.reference_resolution so "
                                f"that references keep at least 64 px a side)") from None
            if img.size[0] * img.size[1] > REFERENCE_AREA:
                img = pipe.image_processor._resize_to_target_area(img, REFERENCE_AREA)
            multiple = pipe.vae_scale_factor * 2
            w, h = img.size[0] // multiple * multiple, img.size[1] // multiple * multiple
            images.append(pipe.image_processor.preprocess(img, height=h, width=w, resize_mode="crop"))
        latents, ids = pipe.prepare_image_latents(images, 1, None, self.device, pipe.vae.dtype)
        return latents[0].to(self.dtype), ids[0], tuple(tuple(im.shape[-2:]) for im in images)

    @torch.no_grad()
    def encode(self, batch) -> Flux2Condition:
        pipe = self.pipe
        H, W = batch.edit_hw
        h, w = 2 * (H // (pipe.vae_scale_factor * 2)), 2 * (W // (pipe.vae_scale_factor * 2))
        embeds, text_ids = self._text(list(batch.instructions))
        negative = self._text([""] * len(batch))[0] if self.cfg_active else None
        refs = [self._references(r) for r in batch.all_references]
        latent_ids = pipe._prepare_latent_ids(torch.zeros(1, 1, h // 2, w // 2))[0].to(self.device)
        return Flux2Condition(embeds, text_ids, negative, [r[0] for r in refs], [r[1] for r in refs],
                              [r[2] for r in refs], latent_ids, (h, w))

    def noise_shape(self, cond: Flux2Condition) -> tuple[int, ...]:
        h, w = cond.latent_hw
        return self.transformer.config.in_channels, h // 2, w // 2

    def pack(self, noise: torch.Tensor) -> torch.Tensor:
        return self.pipe._pack_latents(noise)

    def schedule(self, image_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's schedule: linear sigmas shifted by FLUX.2's empirical mu (tokens and steps)."""
        n = self.sampler_cfg.num_steps
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        sigmas = None if sched.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / n, n)
        sched.set_timesteps(n, sigmas=sigmas, mu=compute_empirical_mu(image_seq_len, n), device="cpu")
        return sched.sigmas.float(), sched.timesteps.float()

    # ----------------------------------------------------------------- model calls
    def predict_velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Flux2Condition,
                         prompt_index: torch.Tensor) -> torch.Tensor:
        return self.velocity_by_reference_sizes(x, timestep, prompt_index, cond.reference_sizes,
                                                lambda x, t, idx: self._velocity(x, t, cond, idx))

    def _velocity(self, x, t, cond: Flux2Condition, idx) -> torch.Tensor:
        n, length = x.shape[0], x.shape[1]
        p0 = int(idx[0])
        refs = torch.stack([cond.image_latents[p] for p in idx.tolist()]).to(self.device)
        hidden = torch.cat([x.to(self.device, self.dtype), refs], dim=1)
        img_ids = torch.cat([cond.latent_ids, cond.image_ids[p0]], dim=0).expand(n, -1, -1)
        txt_ids = cond.text_ids.expand(n, -1, -1)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), self.cfg.guidance_scale, device=self.device, dtype=torch.float32)
        dev_idx = idx.to(self.device)

        def call(embeds):
            with self.compute_precision():
                out = self.transformer(hidden_states=hidden, timestep=t.to(self.device, self.dtype),
                                       guidance=guidance, encoder_hidden_states=embeds[dev_idx], txt_ids=txt_ids,
                                       img_ids=img_ids, return_dict=False)[0]
            return out[:, :length].float()  # drop the reference tokens' predictions

        v = call(cond.prompt_embeds)
        if cond.negative_embeds is None:
            return v
        neg = call(cond.negative_embeds)
        return neg + self.true_cfg_scale * (v - neg)

    @torch.no_grad()
    def decode(self, packed: torch.Tensor, cond: Flux2Condition) -> torch.Tensor:
        pipe, vae = self.pipe, self.pipe.vae
        h, w = cond.latent_hw
        lat = packed.float().permute(0, 2, 1).reshape(packed.shape[0], packed.shape[2], h // 2, w // 2)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(lat.device, lat.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(lat.device, lat.dtype)
        lat = pipe._unpatchify_latents(lat * std + mean)
        image = vae.decode(lat.to(self.device, vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1).cpu()


class Flux2DevPolicy(Flux2Policy):
    """FLUX.2 [dev]: the same conditioning through `Flux2Pipeline`; guidance is an embedding
    (`policy.guidance_scale`), with no CFG pass."""

    pipeline_class = Flux2Pipeline

    def __init__(self, pipe, cfg, sampler_cfg, device="cpu", train_micro_batch: int = 0, with_adapter: bool = True):
        super().__init__(pipe, cfg, sampler_cfg, device, train_micro_batch, with_adapter)
        self.cfg_active = False  # the pipeline runs the conditional prediction only
