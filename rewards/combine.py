"""A weighted sum of reward plugins that checks every plugin's output before anything trains on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.core.errors import RewardError
from rlkit.rewards.base import RewardInput, RewardOutput

SCALE = 1e6  # no reward's scores are this large; beyond it they are a bug (an overflow, an unscaled logit sum)


@dataclass
class CombinedReward:
    total: torch.Tensor  # [B] weighted sum
    per_reward: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] raw scores
    outputs: dict[str, RewardOutput] = field(default_factory=dict)
    # [B] uncertainty of the weighted sum (independent errors: sqrt(sum (w u)^2)) over the rewards that report
    # one; None when none does
    uncertainty: torch.Tensor | None = None


class RewardSet:
    """Calls each named reward, validates its output (type, shape, finite), returns the weighted sum."""

    def __init__(self, rewards: list[tuple[str, float, object]]):
        if not rewards:
            raise ValueError("RewardSet needs at least one reward")
        names = [n for n, _, _ in rewards]
        if len(set(names)) != len(names):
            # two entries with one name (e.g. two target colours): key them name, name#2, ...
            seen: dict[str, int] = {}
            keyed = []
            for n, w, r in rewards:
                seen[n] = seen.get(n, 0) + 1
                keyed.append((n if seen[n] == 1 else f"{n}#{seen[n]}", w, r))
            rewards = keyed
        self.rewards = rewards
        self.names = [n for n, _, _ in rewards]  # as logged: reward/<name>
        self.weights = [w for _, w, _ in rewards]
        self.functions = [r for _, _, r in rewards]

    def __call__(self, batch: RewardInput) -> CombinedReward:
        n = len(batch)
        total = torch.zeros(n, dtype=torch.float32)
        out = CombinedReward(total)
        for name, weight, fn in self.rewards:
            try:
                result = fn(batch)
            except Exception as err:  # a plugin bug must name the plugin, not crash anonymously
                raise RewardError(name, f"raised {type(err).__name__}: {err}") from err
            scores = self._check(name, result, n, fn)
            out.per_reward[name] = scores
            out.outputs[name] = result
            total = total + weight * scores
            if result.uncertainty is not None:
                u = self._check_uncertainty(name, result.uncertainty, n)
                variance = (weight * u) ** 2 if out.uncertainty is None else out.uncertainty**2 + (weight * u) ** 2
                out.uncertainty = variance.sqrt()
        out.total = total
        return out

    @staticmethod
    def _check_uncertainty(name: str, u: object, n: int) -> torch.Tensor:
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (n,):
            raise RewardError(name, f"uncertainty must be a tensor of shape ({n},) or None")
        u = u.detach().float().cpu()
        if not torch.isfinite(u).all() or (u < 0).any():
            raise RewardError(name, "uncertainty has negative or non-finite values")
        return u

    @staticmethod
    def _check(name: str, result: object, n: int, fn=None) -> torch.Tensor:
        """Scores a step may train on: a float tensor [n], finite, and within the reward's `score_range` (with
        room of ten times its width) or, for a reward that states none, within +-1e6."""
        if not isinstance(result, RewardOutput):
            raise RewardError(name, f"returned {type(result).__name__}, expected rlkit.rewards.RewardOutput")
        scores = result.scores
        if not isinstance(scores, torch.Tensor):
            raise RewardError(name, f"scores is {type(scores).__name__}, expected a torch.Tensor of shape [{n}]")
        if tuple(scores.shape) != (n,):
            raise RewardError(name, f"scores has shape {tuple(scores.shape)}, expected ({n},)")
        if not scores.is_floating_point():  # integer or boolean scores would train on rounded signals
            raise RewardError(name, f"scores are {scores.dtype}, expected floating-point values")
        scores = scores.detach().float().cpu()
        bad = ~torch.isfinite(scores)
        if bad.any():
            raise RewardError(name, f"returned {int(bad.sum())} non-finite score(s) (NaN/inf) out of {n}")
        low, high = getattr(fn, "score_range", None) or (-SCALE, SCALE)
        slack = 10 * (high - low) if (low, high) != (-SCALE, SCALE) else 0.0
        far = (scores < low - slack) | (scores > high + slack)
        if far.any():
            worst = float(scores[far].abs().max()) * (1 if float(scores[far][0]) > 0 else -1)
            raise RewardError(name, f"returned {int(far.sum())} score(s) far outside its range [{low:g}, {high:g}] "
                                    f"(e.g. {worst:.3g}); nothing trains on them")
        return scores


def concat(parts: list[CombinedReward]) -> CombinedReward:
    """Several batches' rewards as one (an evaluation samples each edit size as its own batch)."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda values: torch.cat(values) if all(v is not None for v in values) else None  # noqa: E731
    out = CombinedReward(torch.cat([p.total for p in parts]),
                         uncertainty=cat([p.uncertainty for p in parts]))
    for name in parts[0].per_reward:
        out.per_reward[name] = torch.cat([p.per_reward[name] for p in parts])
        outputs = [p.outputs[name] for p in parts]
        details = {k: torch.cat([o.details[k] for o in outputs]) for k, v in (outputs[0].details or {}).items()
                   if torch.is_tensor(v) and v.dim() == 1 and all(torch.is_tensor((o.details or {}).get(k))
                                                                  for o in outputs)}
        rationales = None
        if all(o.rationales for o in outputs):
            rationales = [r for o in outputs for r in o.rationales]
        out.outputs[name] = RewardOutput(out.per_reward[name], cat([o.uncertainty for o in outputs]), details,
                                         rationales)
    return out
