"""Group-relative advantages (GRPO): each sample's reward against the other samples of its group."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, std_scope: str = "group", clip: float = 5.0, eps: float = 1e-4
) -> tuple[torch.Tensor, float]:
    """(r - mean_group) / (std + eps), clipped to [-clip, clip].

    ``std_scope`` is ``group`` (each group's own std) or ``global`` (the std of the whole batch). Returns the
    advantages and the fraction of groups whose rewards are all equal (they carry no learning signal).
    """
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    zero_std = 0
    groups = torch.unique(group_ids)
    global_std = rewards.std(unbiased=False)
    for g in groups:
        mask = group_ids == g
        r = rewards[mask]
        std = r.std(unbiased=False)
        if std.item() == 0.0:  # all equal: no signal, and exactly 0 (not 0/eps noise)
            zero_std += 1
            continue
        scale = std if std_scope == "group" else global_std
        adv[mask] = (r - r.mean()) / (scale + eps)
    return adv.clamp(-clip, clip), zero_std / max(len(groups), 1)


def uncertainty_weights(uncertainty: torch.Tensor, scale: float = 0.0) -> torch.Tensor:
    """Per-sample weights in (0, 1]: 1 / (1 + (u / scale)^2). A sample the reward is unsure of (u well above
    scale) counts less; ``scale`` 0 = the batch's median uncertainty (so the typical sample keeps weight 1/2
    and only the relative confidence matters, not the reward model's units)."""
    u = uncertainty.float()
    if scale <= 0:  # median, or the mean when most of the batch is certain (median 0)
        scale = float(u.median()) or float(u.mean())
    if scale <= 0:  # every sample is certain: nothing to down-weight
        return torch.ones_like(u)
    return 1.0 / (1.0 + (u / scale) ** 2)
