"""Editing policies: the protocol, fp32 step kernels with log-probs, and FLUX.1 Kontext."""

from policies.base import EditPolicy, PromptBatch, Rollout

__all__ = ["EditPolicy", "PromptBatch", "Rollout", "build_policy"]


def build_policy(cfg, sampler_cfg, device, train_micro_batch: int = 0):
    """Build the policy a recipe names. Imports diffusers lazily so `rlkit validate` stays fast."""
    from policies.flux_kontext import FluxKontextPolicy

    if cfg.name == "flux_kontext_tiny":
        from policies.tiny import tiny_kontext_pipeline

        pipe = tiny_kontext_pipeline(seed=cfg.seed)
        return FluxKontextPolicy(pipe, cfg, sampler_cfg, device, train_micro_batch)
    return FluxKontextPolicy.from_pretrained(cfg, sampler_cfg, device, train_micro_batch)
