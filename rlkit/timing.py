"""What a step costs. `StageTimer`: `with timer("rollout"): ...` adds the stage's wall time to
`timer.totals["rollout"]`. `ForwardCounter`: the samples that went through the transformer, a cost measure
that does not depend on the machine or on what else runs on it.

On CUDA the device is synchronised at each edge, so a stage's time is its own work, not kernels still queued
from the stage before (three synchronisations per step: nothing beside a rollout)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class StageTimer:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device, self.totals = torch.device(device), {}

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class ForwardCounter:
    """Counts transformer forwards in samples (the batch rows of every call summed), so a batch of 8 counts 8 and
    gradient checkpointing's recomputation counts as the work it is."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._add, with_kwargs=True)

    def _add(self, module, args, kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        self.count += int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1

    def remove(self):
        self._handle.remove()
