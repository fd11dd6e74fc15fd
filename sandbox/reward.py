"""`sandbox_gt`: the sandbox world's ground truth as a reward (for ablations and as the gold reference).

Needs the prompt's `target_scene` in the reward metadata, which the sandbox manifests carry.
"""

from __future__ import annotations

import torch

from rlkit.rewards.base import RewardInput, RewardOutput
from rlkit.sandbox.world import Scene, gt_scores, render, to_tensor


class SandboxGT:
    def __init__(self, score: str = "overall"):
        self.check(score)
        self.score = score

    @staticmethod
    def check(score: str = "overall") -> None:
        if score not in ("overall", "follow", "preserve"):
            raise ValueError(f"score must be overall, follow or preserve, got {score!r}")

    def __call__(self, batch: RewardInput) -> RewardOutput:
        rows = []
        for i, meta in enumerate(batch.metadata):
            if "target_scene" not in meta:
                raise ValueError("metadata has no 'target_scene': sandbox_gt only scores sandbox prompts")
            size = batch.source.shape[-1]
            target = to_tensor(render(Scene.from_json(meta["target_scene"]), size))
            rows.append(gt_scores(batch.edited[i].float().cpu(), batch.source[i].float().cpu(), target))
        details = {k: torch.tensor([r[k] for r in rows]) for k in ("follow", "preserve", "overall")}
        return RewardOutput(scores=details[self.score].clone(), details=details)
