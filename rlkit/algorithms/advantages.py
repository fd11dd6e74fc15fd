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


def decoupled_advantages(scores: torch.Tensor, weights: list[float], group_ids: torch.Tensor,
                         std_scope: str = "group", clip: float = 5.0, eps: float = 1e-4
                         ) -> tuple[torch.Tensor, float, list[torch.Tensor]]:
    """GDPO's per-reward normalisation for several rewards: each reward ([B, R] ``scores``, one column each) is
    normalised within its groups on its own, the weighted sum of those advantages is normalised over the batch,
    then clipped. A reward with a small spread keeps its say instead of being drowned by one with a large spread
    (what the plain weighted sum does). Returns (advantages, fraction of groups where every reward is flat, each
    reward's own group-normalised advantage)."""
    parts = [group_advantages(scores[:, i], group_ids, std_scope, float("inf"), eps)[0] for i in
             range(scores.shape[1])]
    combined = sum(w * a for w, a in zip(weights, parts))
    std = combined.std(unbiased=False)
    adv = (combined - combined.mean()) / (std + eps) if std > 0 else torch.zeros_like(combined)
    groups = torch.unique(group_ids)
    flat = sum(bool((scores[group_ids == g].std(dim=0, unbiased=False) == 0).all()) for g in groups)
    return adv.clamp(-clip, clip), flat / max(len(groups), 1), parts


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
