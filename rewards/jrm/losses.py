"""JRM losses: (uncertainty-aware) Bradley-Terry ranking and the joint objective with the rationale LM loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _tie_aware(margin: torch.Tensor, tie: torch.Tensor | None) -> torch.Tensor:
    """-log p(winner beats loser); for ties the symmetric loss -(log s(m) + log s(-m)) / 2 (minimum at m = 0)."""
    loss = -F.logsigmoid(margin)
    if tie is not None:
        tie = tie.to(margin.dtype)
        loss = (1 - tie) * loss + tie * 0.5 * (-F.logsigmoid(margin) - F.logsigmoid(-margin))
    return loss


def bt_loss(mu_w: torch.Tensor, mu_l: torch.Tensor, tie: torch.Tensor | None = None) -> torch.Tensor:
    """Plain Bradley-Terry: -log sigmoid(mu_w - mu_l)."""
    return _tie_aware(mu_w - mu_l, tie).mean()


def uncertain_bt_loss(mu_w, log_sigma_w, mu_l, log_sigma_l, tie=None, mc_samples: int = 0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Uncertainty-aware BT: the margin z ~ N(mu_w - mu_l, sigma_w^2 + sigma_l^2).

    ``mc_samples > 0``: -E[log sigmoid(z)] by Monte Carlo (reparameterised, so sigma gets gradients).
    ``mc_samples == 0``: the probit approximation -log sigmoid((mu_w - mu_l) / sqrt(1 + pi var / 8)).
    """
    var = torch.exp(2 * log_sigma_w) + torch.exp(2 * log_sigma_l)
    margin = mu_w - mu_l
    if mc_samples > 0:
        eps = torch.randn((mc_samples, *margin.shape), generator=generator).to(margin.device, margin.dtype)
        z = margin + torch.sqrt(var) * eps
        return _tie_aware(z, None if tie is None else tie.expand_as(z)).mean()
    return _tie_aware(margin / torch.sqrt(1 + math.pi * var / 8), tie).mean()


def joint_loss(rank: torch.Tensor, lm: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """L = (1 - alpha) L_rank + alpha L_LM. With alpha == 0 (or no rationale in the batch) only the ranking
    term is left, and the LM loss is not part of the graph at all."""
    if alpha == 0 or lm is None:
        return rank
    return (1 - alpha) * rank + alpha * lm


# ------------------------------------------------------------------ score distributions (Z-Reward)
def nearest_bin(scores: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Index of the bin closest to each annotated score."""
    return (scores.unsqueeze(-1) - bins).abs().argmin(dim=-1)


def bin_ce_loss(logits: torch.Tensor, scores: torch.Tensor, bins: torch.Tensor) -> torch.Tensor | None:
    """Cross-entropy on the annotated score's bin; rows without an annotation (NaN) are skipped."""
    known = torch.isfinite(scores)
    if not known.any():
        return None
    return F.cross_entropy(logits[known].float(), nearest_bin(scores[known], bins))


def score_gap_loss(mu_w, mu_l, score_w, score_l) -> torch.Tensor | None:
    """|(E_w - E_l) - (s_w - s_l)|: the expected scores keep the annotated gap, not only the order."""
    known = torch.isfinite(score_w) & torch.isfinite(score_l)
    if not known.any():
        return None
    return ((mu_w - mu_l)[known] - (score_w - score_l)[known]).abs().mean()


def distill_kl(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """RISD: KL(q_teacher || q_student), mean over rows. The teacher's probabilities are fixed targets."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    p = teacher_probs.float()
    return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(dim=-1).mean()
