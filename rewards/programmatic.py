"""Cheap rewards computed from pixels: they need no model, so CPU runs and tests can learn against them."""

from __future__ import annotations

import torch

from rlkit.rewards.base import Reward, RewardInput, RewardOutput


class SourceConsistency(Reward):
    """How much of the source survives the edit: 1 - mean absolute pixel difference (in [0, 1])."""

    score_range = (0.0, 1.0)

    def __init__(self) -> None:
        pass

    def __call__(self, batch: RewardInput) -> RewardOutput:
        diff = (batch.edited - batch.source).abs().mean(dim=(1, 2, 3))
        return RewardOutput(scores=1.0 - diff, details={"l1": diff})


class TargetColor(Reward):
    """Pushes the edit towards a colour: 1 - mean distance of each pixel to `color` (RGB in [0, 1]).

    `region` limits the score to the centre fraction of the image (1.0 = whole image).
    """

    score_range = (0.0, 1.0)

    def __init__(self, color: tuple[float, float, float] | list[float] = (1.0, 0.0, 0.0), region: float = 1.0):
        self.check(color, region)
        self.color = torch.tensor(list(color), dtype=torch.float32).view(1, 3, 1, 1)
        self.region = region

    @staticmethod
    def check(color=(1.0, 0.0, 0.0), region: float = 1.0) -> None:
        if not isinstance(color, (list, tuple)) or len(color) != 3 or not all(
                isinstance(c, (int, float)) and 0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"color must be 3 values in [0, 1], got {color!r}")
        if not isinstance(region, (int, float)) or not 0.0 < region <= 1.0:
            raise ValueError(f"region must be in (0, 1], got {region!r}")

    def __call__(self, batch: RewardInput) -> RewardOutput:
        img = batch.edited.float()
        h, w = img.shape[-2:]
        dh, dw = int(h * (1 - self.region) / 2), int(w * (1 - self.region) / 2)
        img = img[..., dh : h - dh, dw : w - dw]
        dist = (img - self.color.to(img.device)).abs().mean(dim=1)  # [B, h, w], in [0, 1]
        return RewardOutput(scores=1.0 - dist.mean(dim=(1, 2)))


class Colourfulness(Reward):
    """Hasler-Suesstrunk colourfulness of the edited image (0 = grey; about 1 = very colourful).

    A stand-in for the "vivid colours look better" bias many learned judges carry. On its own, or with a
    large weight, it is a deliberately flawed proxy: a policy can raise it by saturating everything, which
    ruins preservation (`recipes/sandbox_hacking.yaml` uses it to test the stability guard).
    """

    score_range = (0.0, 2.0)

    def __init__(self) -> None:
        pass

    def __call__(self, batch: RewardInput) -> RewardOutput:
        r, g, b = batch.edited.float().unbind(dim=1)
        rg, yb = r - g, 0.5 * (r + g) - b
        spread = (rg.flatten(1).var(dim=1, unbiased=False) + yb.flatten(1).var(dim=1, unbiased=False)).sqrt()
        mean = (rg.flatten(1).mean(dim=1) ** 2 + yb.flatten(1).mean(dim=1) ** 2).sqrt()
        return RewardOutput(scores=spread + 0.3 * mean)
