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
