"""FLUX.1 Kontext as an RL policy (the loop, kernels and LoRA are in flow_policy.py).

Conditioning as the pipeline does it: T5 + CLIP text encodings, the source encoded by the VAE and packed into
extra tokens after the noisy target tokens (position ids offset on the first axis), the prediction sliced back
to the target tokens; guidance-distilled, so guidance is an embedding, not true CFG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxKontextPipeline

from rlkit.policies.flow_policy import FlowEditPolicy


@dataclass
class KontextCondition:
    """Everything that is the same for every sample of a group: computed once per prompt."""

    prompt_embeds: torch.Tensor  # [P, S, D] T5
    pooled: torch.Tensor  # [P, D'] CLIP pooled
    text_ids: torch.Tensor  # [S, 3]
    image_latents: torch.Tensor  # [P, L_src, C] packed source latents (the extra Kontext tokens)
    img_ids: torch.Tensor  # [L + L_src, 3] target ids then source ids (first axis = 1)
    latent_hw: tuple[int, int]  # unpacked latent height, width


class FluxKontextPolicy(FlowEditPolicy):
    pipeline_class = FluxKontextPipeline
    modules = ("vae", "text_encoder", "text_encoder_2", "transformer")
    download_note = " (FLUX.1 Kontext [dev] needs its license accepted on the hub)"

    # ----------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode(self, batch) -> KontextCondition:
        """Text and source-image encodings for P prompts (one row per prompt, shared by its group)."""
        pipe, sources, instructions = self.pipe, batch.sources, batch.instructions
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=instructions, prompt_2=None, device=self.device,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        vae_dtype = pipe.vae.dtype
        image = sources.to(self.device, vae_dtype) * 2 - 1
        src = pipe._encode_vae_image(image, generator=None)  # argmax of the posterior: deterministic
        P, C, h, w = src.shape
        image_latents = pipe._pack_latents(src, P, C, h, w)
        image_ids = pipe._prepare_latent_image_ids(P, h // 2, w // 2, self.device, self.dtype)
        image_ids[..., 0] = 1  # Kontext: source tokens are offset on the first position axis
        latent_ids = pipe._prepare_latent_image_ids(P, h // 2, w // 2, self.device, self.dtype)
        return KontextCondition(
            prompt_embeds=prompt_embeds.to(self.dtype), pooled=pooled.to(self.dtype),
            text_ids=text_ids.to(self.dtype), image_latents=image_latents.to(self.dtype),
            img_ids=torch.cat([latent_ids, image_ids], dim=0), latent_hw=(h, w),
        )

    # ----------------------------------------------------------------- model calls
    def predict_velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: KontextCondition,
                         prompt_index: torch.Tensor) -> torch.Tensor:
        """Velocity for packed target latents ``x`` [N, L, C] (fp32 out). ``timestep`` is t/1000 = sigma."""
        n, length = x.shape[0], x.shape[1]
        idx = prompt_index.to(self.device)
        hidden = torch.cat([x.to(self.device, self.dtype), cond.image_latents[idx]], dim=1)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), self.cfg.guidance_scale, device=self.device, dtype=torch.float32)
        with self.compute_precision():
            out = self.transformer(
                hidden_states=hidden,
                timestep=timestep.to(self.device, self.dtype).expand(n),
                guidance=guidance,
                pooled_projections=cond.pooled[idx],
                encoder_hidden_states=cond.prompt_embeds[idx],
                txt_ids=cond.text_ids,
                img_ids=cond.img_ids,
                return_dict=False,
            )[0]
        return out[:, :length].float()  # drop the source tokens' predictions

    @torch.no_grad()
    def decode(self, packed: torch.Tensor, cond: KontextCondition) -> torch.Tensor:
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(packed, *self.pixel_hw(cond), self.pipe.vae_scale_factor)
        lat = lat / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(lat.to(self.device, vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1).cpu()
