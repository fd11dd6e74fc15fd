"""Experiment trackers (`logging.report_to`), through accelerate's tracker classes: one interface for
TensorBoard, Weights & Biases and trackio. Each gets the resolved recipe as its configuration, every step's
scalars, the evaluation grids as images, and the stability alarms (as text; trackio as its alerts)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from rlkit.core.errors import UserError
from rlkit.secrets import scrub

TRACKERS = ("tensorboard", "wandb", "trackio")


def flat_config(values: dict, prefix: str = "") -> dict:
    """The recipe as flat `a.b.c` keys with scalar values: what TensorBoard's hparams and every tracker take."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[prefix + key] = value
        else:  # lists (rewards, target modules): one readable string
            out[prefix + key] = str(value)
    return out


class Trackers:
    def __init__(self, names, run_dir: Path, config: dict, start_step: int, project: str, run_name: str | None):
        from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

        # W&B records the command line: a secret given as an override would travel with it
        sys.argv[:] = [scrub(arg) for arg in sys.argv]
        self.trackers = []
        name = run_name or Path(run_dir).name
        for kind in names:
            if kind == "tensorboard":
                # purge_step: a resumed run drops the events of steps it will redo
                tracker = TensorBoardTracker("", Path(run_dir) / "tensorboard", purge_step=start_step + 1)
            elif kind == "wandb":
                _require("wandb")
                # a resumed run continues the same W&B run (its id is the run directory's)
                tracker = WandBTracker(project, name=name, dir=str(run_dir), resume="allow",
                                       id=_wandb_id(run_dir))
            elif kind == "trackio":
                _require("trackio")
                # a resumed run continues the trackio run of the same name
                tracker = TrackioTracker(project, name=name, resume="allow")
            else:
                raise UserError(f"logging.report_to: unknown tracker '{kind}' (choose from {', '.join(TRACKERS)})")
            tracker.start()
            self.trackers.append(tracker)
        if start_step == 0:
            values = flat_config(config)
            for tracker in self.trackers:
                tracker.store_init_configuration(values)

    def log(self, row: dict, step: int) -> None:
        scalars = {k: v for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(scalars, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        image = Image.open(path).convert("RGB")
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({key: np.asarray(image)[None]}, step=step, dataformats="NHWC")
            elif tracker.name == "trackio":
                import trackio

                tracker.log({key: trackio.Image(image)}, step=step)
            else:
                tracker.log_images({key: [image]}, step=step)

    def log_text(self, key: str, text: str, step: int) -> None:
        for tracker in self.trackers:
            tracker.log({key: text}, step=step)  # TensorBoard: a text summary; W&B and trackio: a string

    def log_alarm(self, row: dict) -> None:
        text = f"{row['kind']} -> {row['action']}: {row['message']}"
        for tracker in self.trackers:
            if tracker.name == "trackio":
                from trackio import AlertLevel

                level = AlertLevel.WARN if row["action"] == "warn" else AlertLevel.ERROR
                tracker.run.alert(f"{row['kind']} -> {row['action']}", row["message"], level, step=row["step"])
            else:
                tracker.log({"alarms": text}, step=row["step"])

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _require(package: str) -> None:
    problems = tracker_problems([package])
    if problems:
        raise UserError(*problems)


def tracker_problems(names) -> list[str]:
    """The trackers named in logging.report_to that this environment cannot import (validate and run check)."""
    import importlib.util

    return [f"logging.report_to names {name}, which is not installed (pip install {name})" for name in names
            if name in ("wandb", "trackio") and importlib.util.find_spec(name) is None]


def _wandb_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
