"""Online Diffusion-DPO: pair the best and worst edit of each group, push the policy's flow-matching error
down on the winner and up on the loser, relative to the reference (adapter disabled)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlkit.algorithms.base import Stateless, chunks, optimizer_step
from rlkit.core.schema import setting


@dataclass
class DPOSettings:
    """algorithm.dpo: what only online DPO reads."""

    beta: float = setting(2000.0, gt=0, help="Diffusion-DPO's temperature on the winner-loser error difference")


def best_worst_pairs(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(winner, loser) sample indices, one pair per group whose rewards are not all equal."""
    winners, losers = [], []
    for g in torch.unique(group_ids):
        members = torch.nonzero(group_ids == g).flatten()
        r = rewards[members]
        if r.max() > r.min():
            winners.append(members[r.argmax()])
            losers.append(members[r.argmin()])
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long)


class OnlineDPO(Stateless):
    settings = DPOSettings

    def __init__(self, cfg, max_grad_norm: float):
        self.cfg, self.max_grad_norm = cfg, max_grad_norm
        self.grad_sync = None  # set by a multi-process trainer: averages gradients over ranks before each step

    def advantages(self, rewards, group_ids, uncertainty=None, per_reward=None):
        # DPO uses only the ordering inside each group; the "advantage" passed on is the raw reward.
        zero = sum(int(rewards[group_ids == g].std(unbiased=False) == 0) for g in torch.unique(group_ids))
        return rewards.float(), {"zero_std_frac": zero / len(torch.unique(group_ids))}

    def update(self, policy, rollout, advantages, optimizer, lr_scheduler, generator) -> dict:
        cfg = self.cfg
        params = policy.trainable_parameters()
        win, lose = best_worst_pairs(advantages, rollout.group_ids)
        if len(win) == 0:  # no ordering anywhere: nothing to learn from this batch
            return {"loss": 0.0, "dpo_pairs": 0, "dpo_acc": None, "grad_norm": 0.0}
        x0 = rollout.latents[:, -1]
        stats: dict[str, list[float]] = {"loss": [], "dpo_acc": [], "grad_norm": []}
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(len(win), generator=generator)
            for pidx in chunks(order, max(1, cfg.micro_batch // 2)):
                w, lo = win[pidx], lose[pidx]
                n = len(pidx)
                sigma = torch.rand(n, generator=generator)  # shared by the winner and the loser of a pair
                eps = torch.randn((n, *x0.shape[1:]), generator=generator)
                samples = torch.cat([w, lo])
                s = sigma.repeat(2).view(-1, *([1] * (x0.ndim - 1)))
                noise = eps.repeat(2, *([1] * (x0.ndim - 1)))
                x_t = (1 - s) * x0[samples] + s * noise
                target = (noise - x0[samples]).to(policy.device)
                cond_idx = rollout.prompt_index[samples]
                v = policy.predict_velocity(x_t, sigma.repeat(2), rollout.cond, cond_idx)
                with torch.no_grad(), policy.reference():
                    v_ref = policy.predict_velocity(x_t, sigma.repeat(2), rollout.cond, cond_idx)
                dims = tuple(range(1, v.ndim))
                err = ((v - target) ** 2).mean(dim=dims)
                err_ref = ((v_ref - target) ** 2).mean(dim=dims)
                diff = (err[:n] - err_ref[:n]) - (err[n:] - err_ref[n:])
                loss = -F.logsigmoid(-cfg.dpo.beta / 2 * diff).mean()
                loss.backward()
                stats["loss"].append(loss.item())
                stats["dpo_acc"].append((diff < 0).float().mean().item())
                grad_norm = optimizer_step(params, optimizer, lr_scheduler, self.max_grad_norm, self.grad_sync)
                stats["grad_norm"].append(grad_norm)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["dpo_pairs"] = len(win)
        # importance ratios and KL to the reference are not part of DPO's objective: reported as null
        out.update(ratio_mean=None, clipfrac=None, approx_kl=None, kl_ref=None)
        return out
