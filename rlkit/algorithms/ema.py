"""A second copy of the trained weights that trails them (an EMA, or the authors' "old" adapter): what NFT
samples with, AWM anchors to, and DGPO clips against. Kept in fp32 in trainable_parameters() order, stepped as
each algorithm's schedule says, swapped into the policy for a forward pass, and saved in the checkpoint."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightEMA:
    def __init__(self):
        self.weights: list[torch.Tensor] | None = None
        self.updates = 0

    def ensure(self, policy) -> None:
        """Starts as the current weights."""
        if self.weights is None:
            self.weights = [p.detach().float().clone() for p in policy.trainable_parameters()]

    @torch.no_grad()
    def step(self, policy, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * current."""
        self.ensure(policy)
        for ema, p in zip(self.weights, policy.trainable_parameters()):
            ema.mul_(decay).add_(p.detach().float(), alpha=1 - decay)
        self.updates += 1

    @contextmanager
    def swapped_in(self, policy):
        """The policy with these weights in place of the trained ones (restored on exit). Not inside a graph in
        flight: the swap is in place."""
        self.ensure(policy)
        params = policy.trainable_parameters()
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.weights):
                p.copy_(e.to(p.device, p.dtype))
        try:
            yield policy
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"ema": list(self.weights or []), "ema_updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if "ema" not in state:  # a checkpoint of another algorithm: it starts from the loaded weights
            return
        self.weights = [t.float().clone() for t in state["ema"]] or None
        self.updates = int(state["ema_updates"])
