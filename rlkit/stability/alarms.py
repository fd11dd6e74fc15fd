"""The stability guard: stated tests over the metric streams that raise alarms, each with an action.

Alarm kinds (thresholds in the recipe's `stability.*`):
  gold_divergence     at an evaluation, the gold score (held-out, e.g. the sandbox's ground truth) has fallen
                      `gold_drop` below its best so far while the proxy (the training reward on the same fixed
                      probe prompts and noise) rose by more than `proxy_rise` over the last `window` evaluations:
                      the policy is learning the reward's flaws, not the task.
  kl_blowup           KL to the reference above `max_kl_ref`, or the policy-vs-rollout KL above `max_approx_kl`.
  ratio_blowup        mean importance ratio more than `max_ratio_dev` from 1, or clip fraction above
                      `max_clipfrac`: updates too large for the trust region.
  diversity_collapse  within-group image diversity (slow average) below `min_fraction` of its value over the
                      first `baseline_steps` steps: the samples of a group became the same image.
An alarm fires when its condition becomes true and again only after the condition has cleared. Actions:
`ignore | warn | stop | rollback` (rollback = back to the last good checkpoint, learning rate lowered).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ACTIONS = ("ignore", "warn", "stop", "rollback")
KINDS = ("gold_divergence", "kl_blowup", "ratio_blowup", "diversity_collapse")


@dataclass
class Alarm:
    step: int
    kind: str
    figures: dict  # the values that triggered it
    message: str
    action: str = "warn"  # the action taken (may differ from the configured one, e.g. rollback -> stop)

    def to_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------- the tests, as pure functions
def gold_divergence(proxy: list[float], gold: list[float], window: int, gold_drop: float,
                    proxy_rise: float) -> dict | None:
    """Proxy rising while gold falls, at the latest of a series of evaluations (same prompts and noise)."""
    if len(gold) < 2 or len(proxy) != len(gold):
        return None
    drop = max(gold) - gold[-1]
    rise = proxy[-1] - proxy[max(0, len(proxy) - 1 - window)]
    if drop >= gold_drop and rise > proxy_rise:
        return {"gold": gold[-1], "gold_best": max(gold), "gold_drop": drop, "proxy": proxy[-1],
                "proxy_rise": rise}
    return None


def kl_blowup(kl_ref: float | None, approx_kl: float | None, max_kl_ref: float,
              max_approx_kl: float) -> dict | None:
    bad = _over(kl_ref, max_kl_ref) or _over(approx_kl, max_approx_kl)
    return {"kl_ref": kl_ref, "approx_kl": approx_kl} if bad else None


def ratio_blowup(ratio_mean: float | None, clipfrac: float | None, max_ratio_dev: float,
                 max_clipfrac: float) -> dict | None:
    dev = None if ratio_mean is None else abs(ratio_mean - 1)
    bad = _over(dev, max_ratio_dev) or _over(clipfrac, max_clipfrac)
    return {"ratio_mean": ratio_mean, "clipfrac": clipfrac} if bad else None


def diversity_collapse(diversity_ema: float | None, baseline: float | None, min_fraction: float) -> dict | None:
    if diversity_ema is None or baseline is None or baseline <= 0:
        return None
    if diversity_ema < min_fraction * baseline:
        return {"diversity": diversity_ema, "baseline": baseline, "fraction": diversity_ema / baseline}
    return None


def _over(value: float | None, limit: float) -> bool:
    """True for a value above its limit; a non-finite value counts as above any limit."""
    return value is not None and (not math.isfinite(value) or value > limit)


# ------------------------------------------------------------------------- the guard (stateful)
class StabilityGuard:
    """Feeds the streams to the tests and decides the action for each alarm. Checkpointed with the run."""

    STATE = {"proxy": "numbers", "gold": "numbers", "eval_steps": "wholes", "diversity_seen": "numbers",
             "diversity_ema": "number?", "active": "strings", "rollbacks": "whole"}  # (rlkit/state_check.py)

    def __init__(self, cfg):
        self.cfg = cfg
        self.proxy: list[float] = []  # per evaluation
        self.gold: list[float] = []
        self.eval_steps: list[int] = []
        self.diversity_seen: list[float] = []  # the first baseline_steps values
        self.diversity_ema: float | None = None
        self.active: list[str] = []  # alarm kinds whose condition currently holds
        self.rollbacks = 0

    def action_of(self, kind: str) -> str:
        return getattr(self.cfg, kind).action

    @property
    def wants_rollback(self) -> bool:
        return any(self.action_of(k) == "rollback" for k in KINDS)

    def check_step(self, step: int, metrics: dict) -> list[Alarm]:
        c = self.cfg
        diversity = metrics.get("group_diversity")
        if diversity is not None:
            if len(self.diversity_seen) < c.diversity_collapse.baseline_steps:
                self.diversity_seen.append(diversity)
            self.diversity_ema = diversity if self.diversity_ema is None else 0.9 * self.diversity_ema + 0.1 * diversity
        baseline = (sum(self.diversity_seen) / len(self.diversity_seen)
                    if len(self.diversity_seen) >= c.diversity_collapse.baseline_steps else None)
        found = {
            "kl_blowup": kl_blowup(metrics.get("kl_ref"), metrics.get("approx_kl"), c.kl_blowup.max_kl_ref,
                                   c.kl_blowup.max_approx_kl),
            "ratio_blowup": ratio_blowup(metrics.get("ratio_mean"), metrics.get("clipfrac"),
                                         c.ratio_blowup.max_ratio_dev, c.ratio_blowup.max_clipfrac),
            "diversity_collapse": diversity_collapse(self.diversity_ema, baseline,
                                                     c.diversity_collapse.min_fraction),
        }
        return self._fire(step, found)

    def check_eval(self, step: int, proxy: float, gold: float | None) -> list[Alarm]:
        """After an evaluation: proxy on the probe prompts, gold on the held-out prompts (None: no gold)."""
        self.eval_steps.append(step)
        self.proxy.append(proxy)
        if gold is None:
            return []
        self.gold.append(gold)
        g = self.cfg.gold_divergence
        found = gold_divergence(self.proxy, self.gold, g.window, g.gold_drop, g.proxy_rise)
        return self._fire(step, {"gold_divergence": found})

    def is_good(self) -> bool:
        """Whether the current weights are a rollback target: gold at its best so far (or, without gold, no
        alarm holding)."""
        if self.gold:
            return self.gold[-1] >= max(self.gold)
        return not self.active

    def _fire(self, step: int, found: dict[str, dict | None]) -> list[Alarm]:
        alarms = []
        for kind, figures in found.items():
            action = self.action_of(kind)
            if figures is None or action == "ignore":
                if kind in self.active:
                    self.active.remove(kind)
                continue
            if kind in self.active:  # still the same episode: already reported
                continue
            self.active.append(kind)
            if action == "rollback" and self.rollbacks >= self.cfg.max_rollbacks:
                action = "stop"
            alarms.append(Alarm(step, kind, figures, _describe(kind, figures), action))
        return alarms

    def rolled_back(self) -> None:
        self.rollbacks += 1
        self.active.clear()
        self.diversity_ema = None

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("proxy", "gold", "eval_steps", "diversity_seen", "diversity_ema",
                                              "active", "rollbacks")}

    def load_state_dict(self, state: dict) -> None:
        for k in self.STATE:
            if k in state:
                setattr(self, k, state[k])


def _describe(kind: str, f: dict) -> str:
    def n(x):
        return "n/a" if x is None else f"{x:.4g}"

    if kind == "gold_divergence":
        return (f"gold fell to {n(f['gold'])} ({n(f['gold_drop'])} below its best {n(f['gold_best'])}) while the "
                f"proxy rose by {n(f['proxy_rise'])}: likely reward hacking")
    if kind == "kl_blowup":
        return f"KL to the reference {n(f['kl_ref'])}, policy KL {n(f['approx_kl'])}: the policy ran away"
    if kind == "ratio_blowup":
        return f"importance ratio {n(f['ratio_mean'])}, clip fraction {n(f['clipfrac'])}: updates too large"
    return (f"within-group diversity {n(f['diversity'])} is {n(f['fraction'])} of its start "
            f"{n(f['baseline'])}: samples are collapsing")
