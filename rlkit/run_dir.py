"""A run's output directory: owned by one run at a time, never someone else's folder, and where it resumes.

`claim` makes the folder and locks it (the OS releases the lock when the process dies, however it dies);
`resume_checkpoint` picks the checkpoint to continue from and refuses a recipe that cannot continue it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlkit import checkpoint as ckpt
from rlkit.config import RECIPE_END, moved_to_their_place, to_yaml
from rlkit.core.errors import UserError
from rlkit.secrets import redacted

# Changing these between a checkpoint and its resume would load weights into another model, or continue random
# streams and a data order that were drawn for another seed. Every other setting applies on resume.
FIXED_ON_RESUME = ("policy.name", "policy.pretrained", "policy.seed", "policy.finetune", "policy.lora.rank",
                   "policy.lora.alpha", "policy.lora.target_modules", "policy.resolution", "seed",
                   "data.shuffle")
# what a run writes into its directory (anything else there means the folder is someone else's)
RUN_FILES = {"config.yaml", "metrics.jsonl", "alarms.jsonl", "tensorboard", "samples", "checkpoints", "final",
             "final_last", "best", "guard", "plots", "report.html", "run.log", "trackio", "wandb"}
# left by a run that failed after some steps but before its first checkpoint: the next run here replaces it
FAILED_MARK = ".rlkit-failed"


def lock_run_dir(run_dir: Path):
    """An exclusive lock on RUN_DIR/.rlkit.lock for this process's lifetime (the returned file must stay open)."""
    import fcntl

    handle = open(run_dir / ".rlkit.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"output_dir '{run_dir}' is in use by {holder}; wait for it to finish or choose another "
                        f"output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"rlkit pid {os.getpid()}\n")
    handle.flush()
    return handle


def config_differences(old: DictConfig, new: DictConfig) -> list[tuple[str, object, object]]:
    a, b = redacted(old), redacted(new)  # secrets compare (and print) as their references, never their values
    diffs: list[tuple[str, object, object]] = []

    def walk(x, y, prefix):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            diffs.append((prefix.rstrip("."), x, y))

    walk(a, b, "")
    return diffs



class RunDirectory:
    def __init__(self, cfg: DictConfig, dist):
        self.cfg, self.dist, self.path = cfg, dist, Path(cfg.output_dir)
        self._lock = None
        self._found: set[str] | None = None  # what the folder held before this run (None: no folder)

    def lock(self) -> None:
        if self._lock is None and self.dist.is_main:
            self._lock = lock_run_dir(self.path)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def claim(self) -> None:
        """Make the run directory and own it: a lock held while this process lives (the OS releases it when
        the process dies, however it dies), so two runs never write one directory. A folder holding files
        that are not an rlkit run is refused, never written over."""
        try:
            if self.path.is_dir() and self.dist.is_main:
                # (another rank's write probe or a crashed export may be there too: rlkit's own)
                foreign = sorted(p.name for p in self.path.iterdir()
                                 if p.name not in RUN_FILES and not p.name.startswith((".rlkit", ".tmp-")))
                if foreign and not (self.path / "config.yaml").is_file():
                    raise UserError(f"output_dir '{self.path}' holds files that are not an rlkit run (e.g. "
                                    f"{foreign[0]}); choose a new or empty folder")
            self._found = {p.name for p in self.path.iterdir()} if self.path.is_dir() else None
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".rlkit-write-test.{os.getpid()}"  # per process: ranks probe at once
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise UserError(f"output_dir '{self.path}' is not writable: {err.strerror}") from None
        self.lock()

    def abandon(self, steps_done: int) -> None:
        """A run that failed before its first checkpoint: what it wrote goes when no step was done (an exit 2
        writes nothing), else stays for inspection, marked so that the corrected rerun here replaces it."""
        if not self.dist.is_main or not self.path.is_dir() or ckpt.find_checkpoints(self.path):
            return
        found = self._found or set()
        if steps_done:
            with contextlib.suppress(OSError):
                (self.path / FAILED_MARK).write_text(f"failed after {steps_done} step(s), before a checkpoint\n")
            return
        for name in RUN_FILES - found:
            path = self.path / name
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        if self._found is None:  # the folder is this run's own: it goes too, when nothing else is in it
            with contextlib.suppress(OSError):
                (self.path / ".rlkit.lock").unlink(missing_ok=True)
                self.path.rmdir()

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint this run continues from (recipe's `resume`: auto, never or a folder), after checking
        that the recipe may continue it; then config.yaml is (re)written with this recipe."""
        mode = str(self.cfg.resume)
        saved_cfg = self.path / "config.yaml"
        if mode == "never":
            if ckpt.find_checkpoints(self.path):
                raise UserError(f"output_dir '{self.path}' already holds checkpoints and resume=never; "
                                f"choose another output_dir or use resume=auto")
            chosen = None
        elif mode == "auto":
            found = ckpt.newest_valid(self.path, warn=lambda m: print(f"warning: {m}"))
            chosen = found.path if found else None
        else:
            chosen = Path(mode).expanduser()
            if not chosen.is_dir():
                raise UserError(f"resume: checkpoint folder not found: {chosen}")
            problem = ckpt.verify(chosen)
            if problem:
                raise UserError(f"resume: checkpoint {chosen} is not usable: {problem}")
        if chosen is not None:  # the checkpoint's own recipe decides, wherever it came from
            old = ckpt.saved_config(chosen)
            self._check_compatible(moved_to_their_place(OmegaConf.create(old) if old else OmegaConf.load(saved_cfg)))
            step = ckpt.step_of(chosen)
            if step is not None and step > self.cfg.train.steps:
                raise UserError(f"the run in {self.path} is at step {step}, beyond train.steps="
                                f"{self.cfg.train.steps} (it was extended): resume it with train.steps={step} or more")
        elif (self.path / FAILED_MARK).exists() and self.dist.is_main:  # a failed run without a checkpoint
            print(f"output_dir '{self.path}' holds a run that failed before its first checkpoint: starting over "
                  f"in its place")
            self._replace_failed_run()
        elif saved_cfg.is_file():  # an earlier run with nothing to resume: only the same recipe may restart it
            try:
                old = OmegaConf.load(saved_cfg)
            except Exception:
                raise UserError(f"output_dir '{self.path}' holds a config.yaml that is not an rlkit recipe; "
                                f"choose a new or empty folder") from None
            self._check_restart(moved_to_their_place(old))
            if (self.path / "metrics.jsonl").exists():
                print(f"no valid checkpoint in {self.path}: starting from step 0")
        self.dist.barrier()  # every rank has read the old config before rank 0 replaces it
        if self.dist.is_main:
            ckpt.write_atomic_text(saved_cfg, to_yaml(self.cfg) + RECIPE_END)
        return chosen

    def _replace_failed_run(self) -> None:
        for name in RUN_FILES - {"run.log"}:  # (run.log is being written: it keeps the failed run's lines above)
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        (self.path / FAILED_MARK).unlink()

    def _check_compatible(self, old: DictConfig) -> None:
        """Settings that cannot change on resume are refused; the others apply from the next step."""
        diffs = [d for d in config_differences(old, self.cfg) if d[0] not in ("resume", "output_dir")]
        bad = [d for d in diffs if any(d[0] == k or d[0].startswith(k + ".") for k in FIXED_ON_RESUME)]
        if bad:
            listed = "; ".join(f"'{k}' {a!r} -> {b!r}" for k, a, b in bad)
            raise UserError(f"cannot resume with changed {listed}: the checkpoint holds weights and random "
                            f"streams for the old setting (use a new output_dir to start over)")
        if diffs:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
            print(f"resuming with changed settings, applied from the next step: {listed}")

    def _check_restart(self, old: DictConfig) -> None:
        diffs = [d for d in config_differences(old, self.cfg) if d[0] not in ("resume", "output_dir")]
        if diffs:
            key, was, now = diffs[0]
            more = f" and {len(diffs) - 1} more" if len(diffs) > 1 else ""
            raise UserError(f"output_dir '{self.path}' holds another run ('{key}' {was!r} -> {now!r}{more}) "
                            f"with no valid checkpoint to resume; choose another output_dir, or delete that run")
