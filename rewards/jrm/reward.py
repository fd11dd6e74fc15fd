"""The `jrm` reward plugin: a trained JRM directory scoring edits in one prefill each."""

from __future__ import annotations

import torch

from rewards.base import RewardInput, RewardOutput
from rewards.jrm.model import JRMModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class JRMReward:
    """rewards: [{name: jrm, kwargs: {path: runs/jrm/final}}]

    Scores are the model's `mu`; `uncertainty` is its `sigma`. No decoding: one forward per candidate.
    """

    def __init__(self, path: str, batch_size: int = 16, device: str = "auto", dtype: str = "float32"):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = JRMModel.load(path, dtype=DTYPES[dtype], device=device)
        self.batch_size = batch_size

    def __call__(self, batch: RewardInput) -> RewardOutput:
        mu, sigma = self.model.score(list(batch.source), list(batch.edited), batch.instructions, self.batch_size)
        return RewardOutput(scores=mu, uncertainty=sigma, details={"sigma": sigma})

    def explain(self, source, edited, instruction: str, max_new_tokens: int = 256) -> str:
        return self.model.explain(source, edited, instruction, max_new_tokens)
