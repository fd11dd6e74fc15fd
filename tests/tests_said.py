"""A reward that explains each score, for tests of where rationales are kept (named `tests_said:Said`)."""

from rlkit.rewards.base import RewardOutput


class Said:
    def __call__(self, batch):
        scores = batch.edited[:, 0].mean(dim=(1, 2))
        return RewardOutput(scores=scores, rationales=[f"red <{float(s):.3f}> for {t}"
                                                       for s, t in zip(scores, batch.instructions)])
