"""Every editor rlkit trains, one entry each: what a recipe's `policy.name` means. Adding an editor is one
entry here and its policy module; nothing else dispatches on names. Classes are named as strings and imported
when used, so reading a recipe does not import diffusers."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Editor:
    policy_class: str  # module:Class of the FlowEditPolicy subclass
    pipeline: str  # the diffusers pipeline class (what `load_lora_weights` is called on)
    transformer: str  # the diffusers transformer class (the architecture a recipe is checked against)
    tiny: str  # module:function building the pipeline at toy size with random weights
    max_sequence_length: int  # what the text encoder takes
    # distilled: guidance is an embedding (policy.guidance_scale); true_cfg: classifier-free guidance with a
    # negative prompt (policy.true_cfg_scale)
    guidance: str
    max_references: int | None = 1  # reference images per prompt (None: any number)
    size_from: str = "first"  # the reference whose aspect ratio the pipeline gives the edit
    # module:function(device) building the pipeline at its real size with random weights (rlkit bench), and
    # module:NAME of that transformer's config
    real_size: str | None = None
    real_transformer: str | None = None


@dataclass(frozen=True)
class PolicyEntry:
    editor: Editor
    weights: str  # pretrained: policy.pretrained; tiny: random toy weights; random: the real size, random weights


FLUX_KONTEXT = Editor("rlkit.policies.flux_kontext:FluxKontextPolicy", "FluxKontextPipeline", "FluxTransformer2DModel",
                      "rlkit.policies.tiny:tiny_kontext_pipeline", 512, "distilled",
                      real_size="rlkit.policies.tiny:kontext_size_pipeline",
                      real_transformer="rlkit.policies.tiny:KONTEXT_TRANSFORMER")
QWEN_IMAGE_EDIT = Editor("rlkit.policies.qwen_image_edit:QwenImageEditPolicy", "QwenImageEditPipeline",
                         "QwenImageTransformer2DModel", "rlkit.policies.tiny:tiny_qwen_edit_pipeline", 1024, "true_cfg")

# Qwen-Image-Edit-2509/2511: any number of references; the edit takes the LAST one's aspect ratio
QWEN_IMAGE_EDIT_PLUS = Editor("rlkit.policies.qwen_image_edit_plus:QwenImageEditPlusPolicy",
                              "QwenImageEditPlusPipeline", "QwenImageTransformer2DModel",
                              "rlkit.policies.tiny:tiny_qwen_edit_plus_pipeline", 1024, "true_cfg",
                              max_references=None, size_from="last",
                              real_size="rlkit.policies.tiny:qwen_edit_plus_size_pipeline",
                              real_transformer="rlkit.policies.tiny:QWEN_IMAGE_TRANSFORMER")
QWEN_IMAGE_EDIT_2511 = Editor(QWEN_IMAGE_EDIT_PLUS.policy_class, QWEN_IMAGE_EDIT_PLUS.pipeline,
                              QWEN_IMAGE_EDIT_PLUS.transformer, "rlkit.policies.tiny:tiny_qwen_edit_2511_pipeline",
                              1024, "true_cfg", max_references=None, size_from="last")
FLUX2_KLEIN = Editor("rlkit.policies.flux2:Flux2Policy", "Flux2KleinPipeline", "Flux2Transformer2DModel",
                     "rlkit.policies.tiny:tiny_flux2_klein_pipeline", 512, "true_cfg", max_references=None,
                     real_size="rlkit.policies.tiny:flux2_klein_size_pipeline",
                     real_transformer="rlkit.policies.tiny:FLUX2_KLEIN_4B_TRANSFORMER")
FLUX2_DEV = Editor("rlkit.policies.flux2:Flux2DevPolicy", "Flux2Pipeline", "Flux2Transformer2DModel",
                   "rlkit.policies.tiny:tiny_flux2_dev_pipeline", 512, "distilled", max_references=None)

POLICIES = {
    "flux_kontext": PolicyEntry(FLUX_KONTEXT, "pretrained"),
    "flux_kontext_tiny": PolicyEntry(FLUX_KONTEXT, "tiny"),
    "flux_kontext_random": PolicyEntry(FLUX_KONTEXT, "random"),  # for rlkit bench: the cost at the real size
    "qwen_image_edit": PolicyEntry(QWEN_IMAGE_EDIT, "pretrained"),
    "qwen_image_edit_tiny": PolicyEntry(QWEN_IMAGE_EDIT, "tiny"),
    # 2509 and 2511 share the pipeline; 2511's transformer config sets zero_cond_t
    "qwen_image_edit_plus": PolicyEntry(QWEN_IMAGE_EDIT_PLUS, "pretrained"),
    "qwen_image_edit_plus_tiny": PolicyEntry(QWEN_IMAGE_EDIT_PLUS, "tiny"),
    "qwen_image_edit_2511_tiny": PolicyEntry(QWEN_IMAGE_EDIT_2511, "tiny"),
    "qwen_image_edit_plus_random": PolicyEntry(QWEN_IMAGE_EDIT_PLUS, "random"),  # rlkit bench at the real size
    # FLUX.2 [klein] 4B / 9B, base or step-distilled (the pipeline's is_distilled)
    "flux2": PolicyEntry(FLUX2_KLEIN, "pretrained"),
    "flux2_tiny": PolicyEntry(FLUX2_KLEIN, "tiny"),
    "flux2_random": PolicyEntry(FLUX2_KLEIN, "random"),  # rlkit bench: FLUX.2 [klein] 4B's size
    "flux2_dev": PolicyEntry(FLUX2_DEV, "pretrained"),  # FLUX.2 [dev]: Mistral text encoder, embedded guidance
    "flux2_dev_tiny": PolicyEntry(FLUX2_DEV, "tiny"),
}


def load(target: str):
    """module:attribute, imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
