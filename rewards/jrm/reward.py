"""The `jrm` reward plugin: a trained JRM directory scoring edits in one prefill each.

The same plugin serves every head and layout (model.py): a distribution head's score is its expectation and
its uncertainty its spread; a rationale_first model (DeScore) writes its rationale first (`think`, slower,
and the rationales come back with the scores).
"""

from __future__ import annotations

import torch

from rlkit.core.devices import DTYPES
from rlkit.rewards.base import RewardInput, RewardOutput
from rlkit.rewards.jrm.model import JRMConfig, JRMModel


class JRMReward:
    """rewards: [{name: jrm, kwargs: {path: runs/jrm/final}}]

    Scores are the model's `mu`; `uncertainty` is its `sigma`. No decoding for score_first models.
    ``think`` (rationale_first models only; default on): generate up to ``max_new_tokens`` of rationale per
    candidate before scoring; off = score with the rationale masked (what stage-1 training's dropout allows).

    ``path`` may list several judges (an ensemble, e.g. other initialisations on the same pairs): a policy that
    exploits one judge's blind spots is caught by the others. ``combine``: ``mean`` of their scores, or ``min``
    (the most pessimistic judge). The uncertainty is then the mixture's spread: each judge's own sigma and their
    disagreement (sqrt(mean sigma^2 + var mu)).

    A prompt with several reference images is judged against its source (the first reference) and the
    instruction: a JRM is trained on (source, edit, instruction) pairs and reads one source image.
    """

    def __init__(self, path: str | list[str] | None = None, batch_size: int = 16, device: str = "auto",
                 dtype: str = "float32", think: bool | None = None, max_new_tokens: int = 128,
                 random_size: str | None = None, image_size: int = 448, combine: str = "mean"):
        self.check(path, batch_size, device, dtype, think, max_new_tokens, random_size, image_size, combine)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if random_size is not None:  # benchmarks only: the cost of a judge of that size, its scores are noise
            self.models = [random_jrm(random_size, image_size, device)]
        elif not path:
            raise ValueError("give 'path' (a trained JRM's final/ folder, or a list of them)")
        else:
            paths = [path] if isinstance(path, str) else list(path)
            self.models = [JRMModel.load(str(p), dtype=DTYPES[dtype], device=device) for p in paths]
        self.model, self.combine = self.models[0], combine
        if think and not all(m.thinks for m in self.models):
            raise ValueError(f"think=true needs rationale_first models; {path} scores first")
        self.think = all(m.thinks for m in self.models) if think is None else think
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    @staticmethod
    def check(path=None, batch_size: int = 16, device: str = "auto", dtype: str = "float32", think=None,
              max_new_tokens: int = 128, random_size=None, image_size: int = 448, combine: str = "mean") -> None:
        """The kwargs and that each path holds a trained JRM, without loading it."""
        from pathlib import Path

        if combine not in ("mean", "min"):
            raise ValueError(f"combine must be mean or min, got {combine!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens),
                            ("image_size", image_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if random_size is not None:
            if random_size not in ("8b", "tiny"):
                raise ValueError(f"random_size must be 8b or tiny, got {random_size!r}")
            return
        if not path:
            raise ValueError("give 'path' (a trained JRM's final/ folder, or a list of them)")
        missing = [str(p) for p in ([path] if isinstance(path, str) else list(path))
                   if not (Path(str(p)).expanduser() / "jrm.json").is_file()]
        if missing:
            raise ValueError(f"path {', '.join(repr(p) for p in missing)}: not a trained JRM reward (no jrm.json); "
                             f"train one with `rlkit train-reward` and pass its final/ folder")

    def __call__(self, batch: RewardInput) -> RewardOutput:
        scores, spread, details, rationales = self._judge(list(batch.source), list(batch.edited), batch.instructions)
        return RewardOutput(scores=scores, uncertainty=spread, details=details, rationales=rationales)

    def score(self, sources, edited, instructions, batch_size: int | None = None):
        """(scores, uncertainty) as the reward gives them, with JRMModel.score's signature: what the sandbox's
        judge checks measure, one judge or an ensemble."""
        scores, spread, _, _ = self._judge(sources, edited, instructions, batch_size)
        return scores, spread

    def _judge(self, sources, edited, instructions, batch_size: int | None = None):
        batch_size = batch_size or self.batch_size
        mus, sigmas, rationales = [], [], None
        for model in self.models:
            if self.think:
                mu, sigma, said = model.think_and_score(sources, edited, instructions, self.max_new_tokens,
                                                        batch_size)
                rationales = rationales or said  # the first judge's
            else:
                mu, sigma = model.score(sources, edited, instructions, batch_size)
            mus.append(mu)
            sigmas.append(sigma)
        if len(self.models) == 1:
            return mus[0], sigmas[0], {"sigma": sigmas[0]}, rationales
        mu, sigma = torch.stack(mus), torch.stack(sigmas)
        spread = (sigma.pow(2).mean(0) + mu.var(0, unbiased=False)).sqrt()
        scores = mu.mean(0) if self.combine == "mean" else mu.min(0).values
        return scores, spread, {"sigma": spread, "disagreement": mu.std(0), "members": mu.T}, rationales

    def prepared_forward(self, batch: RewardInput):
        """The model forwards alone on this batch, encoded now: a callable that `rlkit bench` times as the
        reward's pure compute (the judge's prefill), apart from image encoding."""
        model, bs, calls = self.model, self.batch_size, []
        for i in range(0, len(batch), bs):
            enc = model.encoder.encode(list(batch.source[i : i + bs]), list(batch.edited[i : i + bs]),
                                       batch.instructions[i : i + bs], dedupe=model.dedupe).to(model.device)
            calls.append(enc)
        return lambda: [model(enc) for enc in calls]

    def explain(self, source, edited, instruction: str, max_new_tokens: int = 256) -> str:
        return self.model.explain(source, edited, instruction, max_new_tokens)


def random_jrm(size: str, image_size: int, device: str) -> JRMModel:
    """An untrained JRM at Qwen3-VL-8B size ("8b", bf16) or toy size ("tiny"), images at image_size."""
    from rlkit.rewards.jrm.backbone import qwen3_vl_8b, tiny_backbone

    if size not in ("8b", "tiny"):
        raise ValueError(f"random_size must be 8b or tiny, got {size!r}")
    backbone = qwen3_vl_8b(torch.device(device)) if size == "8b" else tiny_backbone(0, image_size)
    backbone.image_processor.min_pixels = backbone.image_processor.max_pixels = image_size**2
    return JRMModel(backbone, JRMConfig(image_size=image_size)).to(device).eval()
