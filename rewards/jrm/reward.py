"""The `jrm` reward plugin: a trained JRM directory scoring edits in one prefill each.

The same plugin serves every head and layout (model.py): a distribution head's score is its expectation and
its uncertainty its spread; a rationale_first model (DeScore) writes its rationale first (`think`, slower,
and the rationales come back with the scores).
"""

from __future__ import annotations

import torch

from rewards.base import RewardInput, RewardOutput
from rewards.jrm.model import JRMConfig, JRMModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class JRMReward:
    """rewards: [{name: jrm, kwargs: {path: runs/jrm/final}}]

    Scores are the model's `mu`; `uncertainty` is its `sigma`. No decoding for score_first models.
    ``think`` (rationale_first models only; default on): generate up to ``max_new_tokens`` of rationale per
    candidate before scoring; off = score with the rationale masked (what stage-1 training's dropout allows).
    """

    def __init__(self, path: str | None = None, batch_size: int = 16, device: str = "auto", dtype: str = "float32",
                 think: bool | None = None, max_new_tokens: int = 128, random_size: str | None = None,
                 image_size: int = 448):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if random_size is not None:  # benchmarks only: the cost of a judge of that size, its scores are noise
            self.model = random_jrm(random_size, image_size, device)
        elif path is None:
            raise ValueError("give 'path' (a trained JRM's final/ folder)")
        else:
            self.model = JRMModel.load(path, dtype=DTYPES[dtype], device=device)
        if think and not self.model.thinks:
            raise ValueError(f"think=true needs a rationale_first model; {path} scores first")
        self.think = self.model.thinks if think is None else think
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def __call__(self, batch: RewardInput) -> RewardOutput:
        sources, edited = list(batch.source), list(batch.edited)
        rationales = None
        if self.think:
            mu, sigma, rationales = self.model.think_and_score(sources, edited, batch.instructions,
                                                               self.max_new_tokens, self.batch_size)
        else:
            mu, sigma = self.model.score(sources, edited, batch.instructions, self.batch_size)
        return RewardOutput(scores=mu, uncertainty=sigma, details={"sigma": sigma}, rationales=rationales)

    def explain(self, source, edited, instruction: str, max_new_tokens: int = 256) -> str:
        return self.model.explain(source, edited, instruction, max_new_tokens)


def random_jrm(size: str, image_size: int, device: str) -> JRMModel:
    """An untrained JRM at Qwen3-VL-8B size ("8b", bf16) or toy size ("tiny"), images at image_size."""
    from rewards.jrm.backbone import qwen3_vl_8b, tiny_backbone

    if size not in ("8b", "tiny"):
        raise ValueError(f"random_size must be 8b or tiny, got {size!r}")
    backbone = qwen3_vl_8b(torch.device(device)) if size == "8b" else tiny_backbone(0, image_size)
    backbone.image_processor.min_pixels = backbone.image_processor.max_pixels = image_size**2
    return JRMModel(backbone, JRMConfig(image_size=image_size)).to(device).eval()
