"""Qwen-Image-Edit as an RL policy (the loop, kernels and LoRA are in flow_policy.py).

Conditioning as `QwenImageEditPipeline` does it: Qwen2.5-VL reads the pipeline's edit template with the source
image, its last hidden states (minus the template's first `prompt_template_encode_start_idx` tokens) are the
text stream; the source is VAE-encoded (argmax, normalised by the VAE's latents mean/std), packed in 2x2
patches and concatenated after the noisy target tokens; the prediction is sliced back. True CFG
(`policy.true_cfg_scale` > 1, the pipeline's default is 4) runs the transformer again with the empty
negative prompt and rescales the combination to the conditional prediction's norm, as the pipeline does.

The VLM's image placeholders are expanded here from the image processor's grid (what Qwen2VLProcessor does),
so no video processor (and no torchvision) is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import QwenImageEditPipeline

from rlkit.core.images import tensor_to_pil
from rlkit.policies.flow_policy import FlowEditPolicy


@dataclass
class QwenEditCondition:
    """Everything that is the same for every sample of a group: computed once per prompt."""

    prompt_embeds: torch.Tensor  # [P, S, D] VLM hidden states after the template prefix
    prompt_mask: torch.Tensor  # [P, S] 1 = real token
    negative_embeds: torch.Tensor | None  # true CFG only
    negative_mask: torch.Tensor | None
    image_latents: torch.Tensor  # [P, L_src, C] packed source latents
    img_shapes: list[tuple[int, int, int]]  # target then source, in packed (frame, height, width) units
    latent_hw: tuple[int, int]  # unpacked latent height, width


class QwenImageEditPolicy(FlowEditPolicy):
    pipeline_class = QwenImageEditPipeline
    modules = ("vae", "text_encoder", "transformer")

    def __init__(self, pipe: QwenImageEditPipeline, cfg, sampler_cfg, device="cpu", train_micro_batch: int = 0,
                 with_adapter: bool = True):
        super().__init__(pipe, cfg, sampler_cfg, device, train_micro_batch, with_adapter)
        processor = getattr(pipe, "processor", None)
        self.image_processor = processor.image_processor if processor is not None else _default_image_processor()
        self.true_cfg_scale = float(getattr(cfg, "true_cfg_scale", 1.0))

    # ----------------------------------------------------------------- conditioning
    @torch.no_grad()
    def _text(self, images: list, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe, tok = self.pipe, self.pipe.tokenizer
        vision = self.image_processor(images=images, return_tensors="pt")
        merge = int(getattr(self.image_processor, "merge_size", 2))
        counts = (vision["image_grid_thw"].prod(dim=-1) // merge**2).tolist()
        texts = [pipe.prompt_template_encode.format(p).replace("<|image_pad|>", "<|image_pad|>" * n)
                 for p, n in zip(prompts, counts)]
        ids = tok(texts, padding=True, return_tensors="pt").to(self.device)
        out = pipe.text_encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                                pixel_values=vision["pixel_values"].to(self.device, pipe.text_encoder.dtype),
                                image_grid_thw=vision["image_grid_thw"].to(self.device), output_hidden_states=True)
        hidden, mask = out.hidden_states[-1], ids["attention_mask"].bool()
        drop = pipe.prompt_template_encode_start_idx
        rows = [h[m][drop:] for h, m in zip(hidden, mask)]  # right padding: the real tokens come first
        length = max(r.shape[0] for r in rows)
        embeds = torch.stack([torch.cat([r, r.new_zeros(length - r.shape[0], r.shape[1])]) for r in rows])
        valid = torch.stack([torch.arange(length, device=self.device) < r.shape[0] for r in rows]).long()
        return embeds.to(self.dtype), valid

    @torch.no_grad()
    def encode(self, batch) -> QwenEditCondition:
        pipe, sources, instructions = self.pipe, batch.sources, batch.instructions
        pil = [tensor_to_pil(s) for s in sources]
        embeds, mask = self._text(pil, instructions)
        neg_embeds = neg_mask = None
        if self.true_cfg_scale > 1:
            neg_embeds, neg_mask = self._text(pil, [" "] * len(instructions))
        image = (sources.to(self.device, pipe.vae.dtype) * 2 - 1).unsqueeze(2)  # [P, 3, 1, H, W]
        src = pipe._encode_vae_image(image, generator=None)  # argmax of the posterior: deterministic
        P, C, _, h, w = src.shape
        image_latents = pipe._pack_latents(src, P, C, h, w)
        shape = (1, h // 2, w // 2)
        return QwenEditCondition(embeds, mask, neg_embeds, neg_mask, image_latents.to(self.dtype),
                                 [shape, shape], (h, w))

    # ----------------------------------------------------------------- model calls
    def predict_velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: QwenEditCondition,
                         prompt_index: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[0], x.shape[1]
        idx = prompt_index.to(self.device)
        hidden = torch.cat([x.to(self.device, self.dtype), cond.image_latents[idx]], dim=1)

        def call(embeds, mask):
            with self.compute_precision():
                out = self.transformer(
                    hidden_states=hidden, timestep=timestep.to(self.device, self.dtype).expand(n),
                    encoder_hidden_states=embeds[idx], encoder_hidden_states_mask=mask[idx],
                    img_shapes=[cond.img_shapes] * n, return_dict=False,
                )[0]
            return out[:, :length].float()  # drop the source tokens' predictions

        v = call(cond.prompt_embeds, cond.prompt_mask)
        if cond.negative_embeds is None:
            return v
        return self.true_cfg(v, call(cond.negative_embeds, cond.negative_mask))

    def true_cfg(self, v: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """The pipeline's true CFG: the combination rescaled to the conditional prediction's norm per token."""
        combined = negative + self.true_cfg_scale * (v - negative)
        return combined * (v.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))

    @torch.no_grad()
    def decode(self, packed: torch.Tensor, cond) -> torch.Tensor:
        pipe, vae = self.pipe, self.pipe.vae
        lat = pipe._unpack_latents(packed, *self.pixel_hw(cond), pipe.vae_scale_factor)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
        lat = lat.float() * std.to(lat.device) + mean.to(lat.device)
        image = vae.decode(lat.to(self.device, vae.dtype), return_dict=False)[0][:, :, 0]
        return (image.float() / 2 + 0.5).clamp(0, 1).cpu()


def _default_image_processor():
    """The Qwen2-VL image processor with its default settings (tiny pipelines are built without a processor)."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor()
