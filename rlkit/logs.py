"""Run-directory logging: metrics.jsonl (one object per step), tensorboard, a progress bar, PNG grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

REQUIRED_KEYS = ("step", "reward_mean", "reward_std", "zero_std_frac", "ratio_mean", "clipfrac", "approx_kl",
                 "kl_ref", "loss", "time_rollout_s", "time_reward_s", "time_train_s")


def json_safe(value):
    """Plain JSON values: tensors as numbers, NaN and infinities as null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf
    return value


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, tensorboard: bool = True,
                 progress: bool = True, enabled: bool = True):
        """``enabled=False`` (ranks other than 0): every call does nothing."""
        self.run_dir, self.enabled = run_dir, enabled
        self.tb = self.progress = None
        if not enabled:
            return
        self.metrics_path = run_dir / "metrics.jsonl"
        self.alarms_path = run_dir / "alarms.jsonl"
        for path in (self.metrics_path, self.alarms_path):
            truncate_jsonl(path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        if progress:
            self.progress = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("reward {task.fields[reward]}  {task.fields[step_s]} s/step"), TimeRemainingColumn(),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step,
                                               reward="-", step_s="-")

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {k: json_safe(v) for k, v in metrics.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, row["step"])
        if self.progress is not None and row.get("time_train_s") is not None:
            step_s = row["time_rollout_s"] + row["time_reward_s"] + row["time_train_s"]
            self.progress.update(self.task, completed=row["step"], reward=f"{row['reward_mean']:.4f}",
                                 step_s=f"{step_s:.2f}")

    def alarm(self, row: dict) -> None:
        """One line in alarms.jsonl (step, kind, figures, message, action), and on the console."""
        if not self.enabled:
            return
        with open(self.alarms_path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")
        say = self.progress.console.print if self.progress is not None else print
        say(f"[stability] step {row['step']} {row['kind']} -> {row['action']}: {row['message']}")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.progress is not None:
            self.progress.stop()


def truncate_jsonl(path: Path, start_step: int) -> None:
    """On resume, drop lines for steps the resumed run will redo (the crash came after them)."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines()
            if ln.strip() and _line_step(ln) is not None and _line_step(ln) <= start_step]
    path.write_text("".join(ln + "\n" for ln in kept))


def read_rows(path: Path) -> list[dict]:
    """The rows of metrics.jsonl / alarms.jsonl."""
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def save_grid(path: Path, sources: torch.Tensor, samples: torch.Tensor, group_size: int, max_rows: int = 32) -> None:
    """One row per prompt (the first `max_rows`): the source, then its group's samples. Tensors in [0, 1],
    [N, 3, H, W]."""
    n_prompts = min(samples.shape[0] // group_size, max_rows)
    rows = []
    for p in range(n_prompts):
        group = samples[p * group_size : (p + 1) * group_size]
        src = sources[p * group_size]
        row = torch.cat([src, torch.ones_like(src[:, :, :2]), *group.unbind(0)], dim=2)
        rows.append(row)
    grid = torch.cat(rows, dim=1)
    array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
