"""Crash-safe checkpoints that load without unpickling anything.

Layout of `checkpoints/step_NNNNNN/`:
  adapter.safetensors    the trainable weights (LoRA)
  optimizer.pt           optimizer + LR-scheduler state, read with torch.load(weights_only=True)
  rng.safetensors        torch CPU/CUDA RNG and the rollout/train generator states
  state.json             step, python/numpy RNG, data position, trackers, rlkit version
  manifest.json          sha256 of every file above: a truncated or edited file is refused by name

A checkpoint is written into a temporary folder and renamed when complete; `latest` is written last. A
partial folder from a crash is never mistaken for a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlkit.core.errors import UserError

FILES = ("adapter.safetensors", "optimizer.pt", "rng.safetensors", "state.json")
TMP_PREFIX = ".tmp-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def capture_rng(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    for name, gen in generators.items():
        tensors[f"gen_{name}"] = gen.get_state()
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    for name, gen in generators.items():
        gen.set_state(tensors[f"gen_{name}"])
    v, state, gauss = plain["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


@dataclass
class Checkpoint:
    path: Path
    step: int


def save_checkpoint(
    run_dir: Path, step: int, adapter: dict[str, torch.Tensor], optimizer_state: dict,
    generators: dict[str, torch.Generator], state: dict, keep_last: int,
) -> Path:
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f"{TMP_PREFIX}step_{step:06d}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.contiguous() for k, v in adapter.items()}, tmp / "adapter.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        rng_tensors, rng_plain = capture_rng(generators)
        save_file(rng_tensors, tmp / "rng.safetensors")
        full_state = {**state, "step": step, "rng": rng_plain, "rlkit_version": version("rlkit")}
        (tmp / "state.json").write_text(json.dumps(full_state))
        usual_permissions(tmp)
        manifest = {name: _sha256(tmp / name) for name in FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for name in (*FILES, "manifest.json"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a stop signal): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic_text(ckpt_root / "latest", final.name + "\n")
    prune(ckpt_root, keep_last)
    return final


def usual_permissions(folder: Path) -> None:
    """Files as the umask would make them: safetensors writes 0600 whatever the umask, so weights would be
    unreadable to the group that reads everything else in a run."""
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints that verify; delete the older ones. A damaged checkpoint never
    counts towards `keep_last` (it would leave nothing to resume from); one newer than every good checkpoint
    stays for inspection (resume skips it, naming the problem), older damaged ones go."""
    if keep_last <= 0:
        return
    found = find_checkpoints(ckpt_root.parent)
    good = [c for c in reversed(found) if verify(c.path) is None][:keep_last]
    if not good:
        return
    oldest_kept = good[-1].step
    for c in found:
        if c.step < oldest_kept or (c.step < good[0].step and c not in good):
            shutil.rmtree(c.path, ignore_errors=True)


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete and unmodified, else why not."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest.json (incomplete checkpoint)"
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (ValueError, OSError):  # not JSON, not UTF-8, unreadable
        return "manifest.json is corrupt"
    if not isinstance(manifest, dict):
        return "manifest.json is corrupt"
    for name in FILES:
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != manifest.get(name):
            return f"{name} does not match its checksum (truncated or modified)"
    return None


def find_checkpoints(run_dir: Path) -> list[Checkpoint]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.glob("step_*"):
        if p.is_dir() and p.name[5:].isdigit():
            found.append(Checkpoint(p, int(p.name[5:])))
    return sorted(found, key=lambda c: c.step)


def saved_config(path: Path) -> dict | None:
    """The resolved recipe a checkpoint was written with (None for a damaged or foreign folder)."""
    try:
        config = json.loads((path / "state.json").read_bytes()).get("config")
    except (ValueError, OSError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder holds, from its state.json (None when unreadable)."""
    try:
        step = json.loads((path / "state.json").read_bytes()).get("step")
    except (ValueError, OSError, AttributeError):
        return None
    return step if type(step) is int else None


def newest_valid(run_dir: Path, warn=print) -> Checkpoint | None:
    """The newest checkpoint that verifies; says which newer ones were skipped and why."""
    for ckpt in reversed(find_checkpoints(run_dir)):
        problem = verify(ckpt.path)
        if problem is None:
            return ckpt
        warn(f"skipping checkpoint {ckpt.path}: {problem}")
    return None


def load_checkpoint(path: Path) -> dict:
    """Load a verified checkpoint's parts. Nothing is unpickled beyond plain tensors and containers."""
    problem = verify(path) if path.is_dir() else "not a folder"
    if problem is not None:
        raise UserError(f"checkpoint {path} is not usable: {problem}")
    try:
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    except Exception as err:
        raise UserError(f"{path / 'optimizer.pt'}: refused to load ({type(err).__name__}: "
                        f"{str(err).splitlines()[0]})") from None
    parts = {"optimizer": optimizer_state}
    for key, name, read in (("adapter", "adapter.safetensors", load_file), ("rng", "rng.safetensors", load_file),
                            ("state", "state.json", lambda p: json.loads(p.read_bytes()))):
        try:
            parts[key] = read(path / name)
        except Exception as err:  # safetensors' and json's own errors for bytes that are not theirs
            raise UserError(f"{path / name}: unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
                            ) from None
    return parts
