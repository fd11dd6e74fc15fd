"""Qwen-Image-Edit-2509 and -2511 as an RL policy: several reference images per prompt (the loop, kernels and
LoRA are in flow_policy.py; true CFG as in qwen_image_edit.py).

Conditioning as `QwenImageEditPlusPipeline.__call__` does it, through the pipeline's own methods: each reference
is resized at its own aspect ratio twice, for the VLM (area `CONDITION_IMAGE_SIZE`, 384^2) and for the VAE (area
`VAE_IMAGE_SIZE`, here the layout's reference budget `policy.reference_resolution`^2, the pipeline's 1024^2 at
full size); the VLM reads the template with one "Picture i:" vision block per reference (`encode_prompt`); each
reference's latents are packed and all of them follow the noisy target tokens; `img_shapes` lists the target,
then every reference. The edit takes the LAST reference's aspect ratio, as the pipeline does. 2511's
`zero_cond_t` (reference tokens modulated at t = 0) is the transformer config's own switch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as stock

from rlkit.core.images import tensor_to_pil
from rlkit.policies.qwen_image_edit import QwenImageEditPolicy


@dataclass
class QwenEditPlusCondition:
    """Everything that is the same for every sample of a group: computed once per prompt."""

    prompt_embeds: torch.Tensor  # [P, S, D] VLM hidden states after the template prefix (right-padded)
    prompt_mask: torch.Tensor  # [P, S] 1 = real token
    negative_embeds: torch.Tensor | None  # true CFG only
    negative_mask: torch.Tensor | None
    image_latents: list[torch.Tensor]  # per prompt [L_refs, C]: every reference's packed latents, in order
    img_shapes: list[list[tuple[int, int, int]]]  # per prompt: the target, then each reference (packed units)
    latent_hw: tuple[int, int]  # the edit's unpacked latent height, width


class QwenImageEditPlusPolicy(QwenImageEditPolicy):
    pipeline_class = QwenImageEditPlusPipeline

    def vae_area(self) -> int:
        return self.layout.reference_side**2

    # ----------------------------------------------------------------- conditioning
    @torch.no_grad()
    def _prompt(self, refs: list[torch.Tensor], instruction: str):
        """One prompt's text stream (and the negative's) and its references' packed latents, as the pipeline."""
        pipe = self.pipe
        pil = [tensor_to_pil(r) for r in refs]
        vl_images, vae_images, shapes = [], [], []
        for img in pil:
            aspect = img.size[0] / img.size[1]
            cw, ch = stock.calculate_dimensions(stock.CONDITION_IMAGE_SIZE, aspect)
            vw, vh = stock.calculate_dimensions(self.vae_area(), aspect)
            vl_images.append(pipe.image_processor.resize(img, ch, cw))
            vae_images.append(pipe.image_processor.preprocess(img, vh, vw).unsqueeze(2))
            shapes.append((1, vh // pipe.vae_scale_factor // 2, vw // pipe.vae_scale_factor // 2))
        embeds, mask = self._encode_text(vl_images, instruction)
        negative = self._encode_text(vl_images, " ") if self.true_cfg_scale > 1 else (None, None)
        latents = []
        for image in vae_images:
            z = pipe._encode_vae_image(image.to(self.device, pipe.vae.dtype), generator=None)  # argmax
            _, C, _, h, w = z.shape
            latents.append(pipe._pack_latents(z, 1, C, h, w)[0])
        return embeds, mask, *negative, torch.cat(latents).to(self.dtype), shapes

    def _encode_text(self, vl_images: list, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self.pipe.encode_prompt(prompt=[text], image=vl_images, device=self.device)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds[0].to(self.dtype), mask[0]

    @torch.no_grad()
    def encode(self, batch) -> QwenEditPlusCondition:
        H, W = batch.edit_hw
        factor = self.pipe.vae_scale_factor
        target = (1, H // factor // 2, W // factor // 2)
        rows = [self._prompt(refs, text) for refs, text in zip(batch.all_references, batch.instructions)]
        embeds, mask = _padded([r[0] for r in rows], [r[1] for r in rows])
        neg_embeds = neg_mask = None
        if self.true_cfg_scale > 1:
            neg_embeds, neg_mask = _padded([r[2] for r in rows], [r[3] for r in rows])
        return QwenEditPlusCondition(embeds, mask, neg_embeds, neg_mask, [r[4] for r in rows],
                                     [[target, *r[5]] for r in rows], (2 * target[1], 2 * target[2]))

    # ----------------------------------------------------------------- model calls
    def predict_velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: QwenEditPlusCondition,
                         prompt_index: torch.Tensor) -> torch.Tensor:
        return self.velocity_by_reference_sizes(x, timestep, prompt_index, cond.img_shapes,
                                                lambda x, t, idx: self._velocity(x, t, cond, idx))

    def _velocity(self, x, t, cond: QwenEditPlusCondition, idx) -> torch.Tensor:
        n, length = x.shape[0], x.shape[1]
        refs = torch.stack([cond.image_latents[p] for p in idx.tolist()]).to(self.device)
        hidden = torch.cat([x.to(self.device, self.dtype), refs], dim=1)
        shapes = cond.img_shapes[int(idx[0])]
        dev_idx = idx.to(self.device)

        def call(embeds, mask):
            mask = mask[dev_idx]
            with self.compute_precision():
                out = self.transformer(
                    hidden_states=hidden, timestep=t.to(self.device, self.dtype),
                    encoder_hidden_states=embeds[dev_idx][:, : int(mask.sum(1).max())],
                    encoder_hidden_states_mask=None if bool(mask.all()) else mask[:, : int(mask.sum(1).max())],
                    img_shapes=[shapes] * n, return_dict=False,
                )[0]
            return out[:, :length].float()  # drop the reference tokens' predictions

        v = call(cond.prompt_embeds, cond.prompt_mask)
        if cond.negative_embeds is None:
            return v
        return self.true_cfg(v, call(cond.negative_embeds, cond.negative_mask))


def _padded(embeds: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt [S_p, D] states and [S_p] masks, right-padded with zeros to one length."""
    length = max(e.shape[0] for e in embeds)
    out = torch.stack([torch.cat([e, e.new_zeros(length - e.shape[0], e.shape[1])]) for e in embeds])
    mask = torch.stack([torch.cat([m.long(), m.new_zeros(length - m.shape[0]).long()]) for m in masks])
    return out, mask
