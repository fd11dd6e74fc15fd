"""Editing policies: the protocol (base), the registry of editors (registry), fp32 step kernels with log-probs
(sde), the shared flow-matching policy (flow_policy), where a LoRA goes (lora) and one module per editor
(flux_kontext, qwen_image_edit, qwen_image_edit_plus, flux2).
The rest of rlkit imports policies through this package only."""

from rlkit.policies.base import EditPolicy, PromptBatch, Rollout
from rlkit.policies.lora import lora_targets
from rlkit.policies.registry import POLICIES, Editor, PolicyEntry, load

__all__ = ["POLICIES", "EditPolicy", "Editor", "PolicyEntry", "PromptBatch", "Rollout", "build_policy",
           "lora_targets", "transformer_skeleton"]


def build_policy(cfg, sampler_cfg, device, train_micro_batch: int = 0):
    """The policy a recipe names (POLICIES): loaded from `policy.pretrained`, built tiny with random weights, or
    at the real size with random weights. Imports diffusers only now, so reading a recipe stays fast."""
    import torch

    entry = POLICIES[cfg.name]
    policy_class = load(entry.editor.policy_class)
    if entry.weights == "tiny":
        return policy_class(load(entry.editor.tiny)(seed=cfg.seed), cfg, sampler_cfg, device, train_micro_batch)
    if entry.weights == "random":
        torch.manual_seed(cfg.seed)
        return policy_class(load(entry.editor.real_size)(device), cfg, sampler_cfg, device, train_micro_batch)
    return policy_class.from_pretrained(cfg, sampler_cfg, device, train_micro_batch)


def transformer_skeleton(cfg):
    """The policy's transformer architecture without its weights (on the meta device, from its config), to
    check a recipe against it; for a real model this also finds the local weights or says they are missing."""
    import diffusers
    import torch

    from rlkit.core.hub import local_pretrained

    entry = POLICIES[cfg.name]
    if entry.weights == "tiny":
        return load(entry.editor.tiny)(seed=cfg.seed).transformer
    transformer_class = getattr(diffusers, entry.editor.transformer)
    if entry.weights == "random":
        config = load(entry.editor.real_transformer)
    else:
        config = transformer_class.load_config(str(local_pretrained(cfg.pretrained)), subfolder="transformer")
    with torch.device("meta"):
        return transformer_class.from_config(config)
