"""Editing policies: the protocol, fp32 step kernels with log-probs, and FLUX.1 Kontext."""

from rlkit.policies.base import EditPolicy, PromptBatch, Rollout

__all__ = ["EditPolicy", "PromptBatch", "Rollout", "build_policy", "transformer_skeleton"]


def build_policy(cfg, sampler_cfg, device, train_micro_batch: int = 0):
    """Build the policy a recipe names (`NAME` loads `policy.pretrained`, `NAME_tiny` builds random toy
    weights, `flux_kontext_random` the real size with random weights). Imports diffusers lazily so
    `rlkit validate` stays fast."""
    import torch

    from rlkit.policies import tiny

    if cfg.name.startswith("qwen_image_edit"):
        from rlkit.policies.qwen_image_edit import QwenImageEditPolicy as policy_class

        build_tiny = tiny.tiny_qwen_edit_pipeline
    else:
        from rlkit.policies.flux_kontext import FluxKontextPolicy as policy_class

        build_tiny = tiny.tiny_kontext_pipeline
    if cfg.name.endswith("_tiny"):
        return policy_class(build_tiny(seed=cfg.seed), cfg, sampler_cfg, device, train_micro_batch)
    if cfg.name == "flux_kontext_random":  # the real FLUX.1 Kontext size, random weights: for rlkit bench
        torch.manual_seed(cfg.seed)
        return policy_class(tiny.kontext_size_pipeline(device), cfg, sampler_cfg, device, train_micro_batch)
    return policy_class.from_pretrained(cfg, sampler_cfg, device, train_micro_batch)


def transformer_skeleton(cfg):
    """The policy's transformer architecture without its weights (on the meta device, from its config), to
    check a recipe against it; for a real model this also finds the local weights or says they are missing."""
    import torch

    from rlkit.core.hub import local_pretrained
    from rlkit.policies import tiny

    qwen = cfg.name.startswith("qwen_image_edit")
    if cfg.name.endswith("_tiny"):
        return (tiny.tiny_qwen_edit_pipeline if qwen else tiny.tiny_kontext_pipeline)(seed=cfg.seed).transformer
    if qwen:
        from diffusers import QwenImageTransformer2DModel as transformer_class
    else:
        from diffusers import FluxTransformer2DModel as transformer_class
    if cfg.name == "flux_kontext_random":
        config = tiny.KONTEXT_TRANSFORMER
    else:
        config = transformer_class.load_config(str(local_pretrained(cfg.pretrained)), subfolder="transformer")
    with torch.device("meta"):
        return transformer_class.from_config(config)
