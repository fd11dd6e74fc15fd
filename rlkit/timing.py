"""Named stage timers: `with timer("rollout"): ...` adds the stage's wall time to `timer.totals["rollout"]`.

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
