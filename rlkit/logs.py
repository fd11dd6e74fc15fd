"""Run-directory logging: metrics.jsonl (one object per step), run.log (the console's lines), the experiment
trackers, a progress bar, PNG grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rlkit import console

# every figure a training row holds at its top level, whichever algorithm and guard settings (the rest are
# prefixed: reward/, eval/, gold/, adv/, time_*_s); an evaluation may not log under one of these names
LOOP_METRICS = frozenset((
    "step", "reward_mean", "reward_std", "zero_std_frac", "ratio_mean", "ratio_max_dev", "clipfrac", "approx_kl",
    "kl_ref", "loss", "grad_norm", "lr", "time_rollout_s", "time_reward_s", "time_train_s", "adv_weight_mean",
    "dpo_pairs", "dpo_acc", "best_reward", "group_diversity", "probe_start", "reward_drift", "reward_ema",
    "nft_r_mean", "ema_decay", "transformer_forwards", "dgpo_weight_mean"))
# every row has these (None in the row of the evaluation before the first update)
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
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, trackers=None,
                 progress: bool = True, enabled: bool = True, log_every: int = 0):
        """``enabled=False`` (ranks other than 0): every call does nothing. ``trackers``: rlkit.trackers.Trackers
        (or None). ``log_every``: a console line every that many steps and at every evaluation (0: none), also
        in run.log, so a run without a terminal (nohup, SLURM) shows its progress."""
        self.run_dir, self.enabled, self.log_every, self.total_steps = run_dir, enabled, log_every, total_steps
        self.progress = self.log_file = None
        self.trackers = trackers
        if not enabled:
            return
        self.console_log = console.current()
        if self.console_log is None:  # Trainer used on its own: the loop's own lines still reach run.log
            self.log_file = open(run_dir / "run.log", "a")
        self.metrics_path = run_dir / "metrics.jsonl"
        self.alarms_path = run_dir / "alarms.jsonl"
        self.rationales_path = run_dir / "samples" / "rationales.jsonl"
        for path in (self.metrics_path, self.alarms_path, self.rationales_path):
            truncate_jsonl(path, start_step)
        if progress:
            columns = (TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                       TextColumn("reward {task.fields[reward]}  {task.fields[step_s]} s/step"), TimeRemainingColumn())
            if self.console_log is not None:  # the bar on the terminal only; lines above it, and in run.log
                self.progress = Progress(*columns, console=Console(file=self.console_log.stdout),
                                         redirect_stdout=False, redirect_stderr=False)
                self.console_log.draw_progress_on(self.progress.console)
            else:
                self.progress = Progress(*columns)
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step,
                                               reward="-", step_s="-")

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {k: json_safe(v) for k, v in metrics.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        grid = self.run_dir / "samples" / f"eval_step_{row['step']:06d}.png"
        if self.trackers is not None:
            self.trackers.log(row, row["step"])
            if row.get("eval/reward") is not None and grid.is_file():
                self.trackers.log_image("eval/grid", grid, row["step"])
        step_s = None
        if row.get("time_train_s") is not None:
            step_s = row["time_rollout_s"] + row["time_reward_s"] + row["time_train_s"]
        if self.progress is not None and step_s is not None:
            self.progress.update(self.task, completed=row["step"], reward=f"{row['reward_mean']:.4f}",
                                 step_s=f"{step_s:.2f}")
        evaluated = row.get("eval/reward") is not None
        if self.log_every and (evaluated or row["step"] % self.log_every == 0):
            self._say(step_line(row, self.total_steps, step_s))

    def rationales(self, step: int, instructions: list[str], reward, keep: int = 4) -> None:
        """What the rewards said about the first `keep` samples of a training step (a judge's answer, a JRM's
        critique): a line each in samples/rationales.jsonl, and as text in the trackers."""
        if not self.enabled:
            return
        rows = [{"step": step, "sample": i, "instruction": instructions[i], "reward": name,
                 "score": float(reward.per_reward[name][i]), "rationale": out.rationales[i]}
                for name, out in reward.outputs.items() if out.rationales
                for i in range(min(keep, len(out.rationales)))]
        if not rows:
            return
        self.rationales_path.parent.mkdir(exist_ok=True)
        with open(self.rationales_path, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        if self.trackers is not None:
            for name in dict.fromkeys(r["reward"] for r in rows):
                text = "\n\n".join(f"sample {r['sample']} ({r['instruction']}), score {r['score']:.4f}: "
                                   f"{r['rationale']}" for r in rows if r["reward"] == name)
                self.trackers.log_text(f"rationales/{name}", text, step)

    def alarm(self, row: dict) -> None:
        """One line in alarms.jsonl (step, kind, figures, message, action), and on the console."""
        if not self.enabled:
            return
        with open(self.alarms_path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")
        if self.trackers is not None:
            self.trackers.log_alarm(row)
        self._say(f"[stability] step {row['step']} {row['kind']} -> {row['action']}: {row['message']}")

    def _say(self, line: str) -> None:
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()
        if self.progress is not None and self.console_log is None:  # above the bar
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.progress is not None:
            self.progress.stop()
            if self.console_log is not None:
                self.console_log.progress_done()
            self.progress = None
        if self.trackers is not None:
            trackers, self.trackers = self.trackers, None
            trackers.finish()


def step_line(row: dict, total_steps: int, step_s: float | None) -> str:
    """`step 10/150  reward 0.4213  eval 0.3850  gold 0.2040  3.12 s/step`: what a console line says."""
    parts = [f"step {row['step']}/{total_steps}"]
    for key, name in (("reward_mean", "reward"), ("eval/reward", "eval"), ("gold/reward", "gold")):
        if isinstance(row.get(key), (int, float)):
            parts.append(f"{name} {row[key]:.4f}")
    if step_s is not None:
        parts.append(f"{step_s:.2f} s/step")
    return "  ".join(parts)


def truncate_jsonl(path: Path, start_step: int) -> None:
    """On resume, drop lines for steps the resumed run will redo (the crash came after them), and lines that
    are not rows (cut by a crash, edited): said, never a reason to stop."""
    if not path.exists():
        return
    kept, unreadable = [], 0
    for raw in path.read_bytes().splitlines():
        row = _row(raw)
        unreadable += row is None and bool(raw.strip())
        if row is not None and row["step"] <= start_step:
            kept.append(raw.decode("utf-8"))
    if unreadable:
        print(f"warning: {path}: dropped {unreadable} line(s) that are not rows (cut short or edited)")
    path.write_text("".join(ln + "\n" for ln in kept))


_warned: set[tuple[str, int]] = set()


def read_rows(path: Path, numbers: bool = False) -> list[dict]:
    """The rows of metrics.jsonl / alarms.jsonl / rationales.jsonl: JSON objects with a whole step. Other lines
    (half-written by a crash, edited, not UTF-8) are skipped and said once. ``numbers``: a metrics file, whose
    values are numbers or null; any other value is left out of its row."""
    if not path.exists():
        return []
    rows, bad = [], []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        row = _row(raw)
        if row is not None:
            rows.append({k: v for k, v in row.items() if v is None or type(v) in (int, float)} if numbers else row)
        elif raw.strip():
            bad.append(number)
    if bad and (str(path), len(bad)) not in _warned:
        _warned.add((str(path), len(bad)))
        print(f"warning: {path}: skipped {len(bad)} line(s) that are not rows (first: line {bad[0]})")
    return rows


def _row(raw: bytes) -> dict | None:
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return row if type(step) is int and 0 <= step < 1 << 62 else None


def save_grid(path: Path, sources, samples, group_size: int, max_rows: int = 32, references=None) -> list[dict]:
    """One row per prompt (the first `max_rows`): the source, its other reference images (scaled to the row's
    height), a 2 px gap, then its group's samples. Images in [0, 1], [N, 3, H, W] or N images [3, H, W] of a
    size per prompt (rows of other sizes are padded with white). ``references``: each sample's reference images
    (None: the source alone). Returns each row's tiles, {"source", "references", "samples"} as [x, y, w, h]
    boxes, for whoever cuts the grid up again (the report)."""
    import torch.nn.functional as F

    n_prompts = min(len(samples) // group_size, max_rows)
    rows, boxes, top = [], [], 0
    for p in range(n_prompts):
        first = p * group_size
        group = [samples[i] for i in range(first, first + group_size)]
        src = sources[first]
        h = src.shape[1]
        extra = [F.interpolate(r[None].float(), size=(h, max(1, round(r.shape[2] * h / r.shape[1]))),
                           mode="bilinear", align_corners=False)[0].clamp(0, 1)
                 for r in (references[first][1:] if references is not None else [])]
        gap = torch.ones_like(src[:, :, :2])
        parts, x, box = [], 0, {"references": [], "samples": []}
        for kind, image in [("source", src), *[("references", r) for r in extra], ("gap", gap),
                            *[("samples", g) for g in group]]:
            if kind == "source":
                box["source"] = [x, top, image.shape[2], h]
            elif kind != "gap":
                box[kind].append([x, top, image.shape[2], h])
            parts.append(image)
            x += image.shape[2]
        rows.append(torch.cat(parts, dim=2))
        boxes.append(box)
        top += h
    width = max(r.shape[2] for r in rows)
    rows = [torch.cat([r, torch.ones(3, r.shape[1], width - r.shape[2])], dim=2) for r in rows]
    grid = torch.cat(rows, dim=1)
    array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return boxes
