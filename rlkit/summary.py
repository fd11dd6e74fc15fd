"""What a run did, read back from its directory: the end-of-run summary, the model card and the report use it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlkit.logs import read_rows


@dataclass
class Trend:
    first: float
    last: float
    best: float
    best_step: int

    @classmethod
    def of(cls, points: list[tuple[int, float]]) -> Trend | None:
        if not points:
            return None
        best_step, best = max(points, key=lambda p: (p[1], -p[0]))
        return cls(points[0][1], points[-1][1], best, best_step)

    def __str__(self) -> str:
        return f"{self.first:.4f} -> {self.last:.4f} (best {self.best:.4f} at step {self.best_step})"


@dataclass
class RunSummary:
    run_dir: Path
    steps: int = 0
    seconds: float = 0.0  # rollout + reward + update time of the steps logged
    reward: Trend | None = None  # the training reward's batch mean (other prompts every step)
    reward_first_tenth: float = 0.0  # the batch means of the first and the last tenth of the steps
    reward_last_tenth: float = 0.0
    probe: Trend | None = None  # the training reward on the fixed held-out prompts and noise (eval/reward)
    gold: Trend | None = None  # held-out gold evaluations (eval.rewards)
    gold_name: str = "gold/reward"
    alarms: Counter = field(default_factory=Counter)
    final: dict = field(default_factory=dict)  # final/rlkit_final.json: weights, step, gold


def summarize(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    rows = read_rows(run_dir / "metrics.jsonl", numbers=True)
    out = RunSummary(run_dir)
    trained = [r for r in rows if r.get("reward_mean") is not None]
    out.steps = max((r["step"] for r in rows), default=0)
    out.seconds = sum(r.get(k) or 0.0 for r in trained for k in ("time_rollout_s", "time_reward_s", "time_train_s"))
    out.reward = Trend.of([(r["step"], r["reward_mean"]) for r in trained])
    if trained:
        tenth = max(1, len(trained) // 10)
        out.reward_first_tenth = sum(r["reward_mean"] for r in trained[:tenth]) / tenth
        out.reward_last_tenth = sum(r["reward_mean"] for r in trained[-tenth:]) / tenth
    out.probe = Trend.of([(r["step"], r["eval/reward"]) for r in rows if r.get("eval/reward") is not None])
    out.gold = Trend.of([(r["step"], r["gold/reward"]) for r in rows if r.get("gold/reward") is not None])
    # a gold reward logged under its own name reads better than gold/reward
    names = [s.get("log_as") for s in saved_recipe(run_dir).get("eval", {}).get("rewards", []) or []
             if isinstance(s, dict)]
    if len(names) == 1 and isinstance(names[0], str):
        out.gold_name = names[0]
    out.alarms = Counter(str(a.get("kind", "unnamed")) for a in read_rows(run_dir / "alarms.jsonl"))
    out.final = read_json(run_dir / "final" / "rlkit_final.json")
    return out


def saved_recipe(run_dir: Path) -> dict:
    """RUN_DIR/config.yaml as plain containers; {} when it is missing or damaged (what reads it only shows)."""
    from omegaconf import OmegaConf

    try:
        found = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml"))
    except Exception:  # missing, cut, not YAML, unresolvable
        return {}
    return found if isinstance(found, dict) else {}


def read_json(path: Path) -> dict:
    """A small JSON object rlkit wrote beside its outputs (rlkit_final.json, a grid's scores); {} if damaged."""
    try:
        found = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def summary_lines(s: RunSummary, snippet: str = "", ended: str = "done") -> list[str]:
    """The end-of-run summary for the console and run.log."""
    lines = [f"{ended}: {s.run_dir} ({s.steps} steps, {duration(s.seconds)} of rollout, reward and update)"]
    if s.gold:
        lines.append(f"  {s.gold_name} (held-out gold)  {s.gold}")
    if s.probe:
        lines.append(f"  reward on the fixed held-out prompts  {s.probe}")
    if s.reward:
        # each batch has other prompts, so its level moves with them: a drop here is not a regression
        why = "the held-out lines compare" if s.gold or s.probe else "set eval.every for a figure that compares"
        lines.append(f"  reward (training batches, other prompts each step: {why})  mean of the first tenth "
                     f"{s.reward_first_tenth:.4f}, of the last {s.reward_last_tenth:.4f}")
    alarms = ", ".join(f"{k} x{n}" for k, n in sorted(s.alarms.items())) if s.alarms else "none"
    lines.append(f"  alarms: {alarms}")
    if (s.run_dir / "report.html").is_file():
        lines.append(f"  report: {s.run_dir / 'report.html'}")
    if s.final:
        which = ("the best gold evaluation's" if s.final.get("weights") == "best_gold" else "the last") + \
            f" weights, step {s.final.get('step')}"
        lines.append(f"  weights: {s.run_dir / 'final'} ({which})")
        if (s.run_dir / "final_last").is_dir():
            lines.append(f"  last weights: {s.run_dir / 'final_last'}")
    if snippet:
        lines += ["  load them:"] + [f"    {line}" for line in snippet.splitlines()]
    return lines
