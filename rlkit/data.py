"""Editing prompts: (source image, instruction) pairs from a JSONL manifest, an image folder, or HF datasets.

`PromptStream` hands out batches in a seeded shuffled order and remembers its position, so a resumed run
continues with exactly the prompts the uninterrupted run would have seen.

Images: converted to RGB (grayscale expanded; RGBA composited over white), centre-cropped to a square,
resized to `policy.resolution`, returned as float tensors in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rlkit.core.errors import UserError
from rlkit.core.images import image_to_tensor, open_rgb
from rlkit.core.types import PromptBatch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class EditItem:
    image: Any  # a Path, or a PIL image (HF datasets)
    instruction: str
    key: str  # identity of (image, instruction)
    metadata: dict = field(default_factory=dict)


def load_image(path: Path, resolution: int) -> torch.Tensor:
    return image_to_tensor(open_rgb(path), resolution)


def _check_instruction(text: Any, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: empty or missing instruction")
    return text.strip()


def read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                        f"save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror}") from None


def read_jsonl(path: Path) -> list[EditItem]:
    """Manifest lines: {"image": path relative to the file, "instruction": text, ...extra kept as metadata}."""
    if not path.is_file():
        raise UserError(f"data.path: manifest not found: {path}")
    items = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or "image" not in row:
            raise UserError(f"{path}:{lineno}: expected an object with 'image' and 'instruction'")
        text = _check_instruction(row.get("instruction"), f"{path}:{lineno}")
        if not isinstance(row["image"], str) or not row["image"].strip() or "\0" in row["image"]:
            raise UserError(f"{path}:{lineno}: 'image' must be a file path (a string), got {row['image']!r}")
        image = _resolved(path.parent / row["image"], f"{path}:{lineno}")
        meta = {k: v for k, v in row.items() if k not in ("image", "instruction")}
        items.append(EditItem(image, text, f"{image}\n{text}", meta))
    return items


def read_folder(path: Path, instructions: list[str]) -> list[EditItem]:
    """Every image in a folder; its instruction from `NAME.txt` beside it, else each of `instructions`."""
    if not path.is_dir():
        raise UserError(f"data.path: image folder not found: {path}")
    items = []
    for image in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = image.with_suffix(".txt")
        texts = [read_utf8(sidecar)] if sidecar.is_file() else list(instructions)
        if not texts:
            raise UserError(f"{image}: no instruction (add {sidecar.name} or set data.instructions)")
        for text in texts:
            text = _check_instruction(text, str(sidecar if sidecar.is_file() else "data.instructions"))
            resolved = _resolved(image, str(path))
            items.append(EditItem(resolved, text, f"{resolved}\n{text}"))
    return items


def _resolved(path: Path, where: str) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop (RuntimeError before Python 3.13)
        raise UserError(f"{where}: cannot follow '{path}': {getattr(err, 'strerror', None) or err}") from None


def read_hf(cfg) -> list[EditItem]:
    import datasets

    try:
        local = Path(cfg.path)
        saved = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
        if local.is_dir() and any((local / name).exists() for name in saved):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.split]
        else:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except Exception as err:
        raise UserError(f"data.path: cannot load dataset '{cfg.path}': {str(err).splitlines()[0]}") from None
    for col in (cfg.image_column, cfg.instruction_column):
        if col not in ds.column_names:
            raise UserError(f"dataset '{cfg.path}' has no column '{col}' (columns: {', '.join(ds.column_names)})")
    feature = ds.features[cfg.image_column]
    if not isinstance(feature, datasets.Image):  # paths or bytes as plain values: every step would fail on them
        raise UserError(f"dataset '{cfg.path}': column '{cfg.image_column}' holds {_feature_name(feature)}, not "
                        f"images; cast it first: ds.cast_column('{cfg.image_column}', datasets.Image())")
    items = []
    for i, row in enumerate(ds):
        text = _check_instruction(row[cfg.instruction_column], f"dataset row {i}")
        items.append(EditItem(row[cfg.image_column], text, f"{cfg.path}#{i}\n{text}"))
    return items


def _feature_name(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    return {"string": "strings", "large_string": "strings", "binary": "bytes"}.get(dtype, type(feature).__name__)


def read_items(cfg) -> list[EditItem]:
    path = Path(cfg.path)
    if cfg.source == "jsonl":
        items = read_jsonl(path)
    elif cfg.source == "folder":
        items = read_folder(path, list(cfg.instructions))
    else:
        items = read_hf(cfg)
    if not items:
        raise UserError(f"data.path: no (image, instruction) pairs in {cfg.path}")
    return items


DECODE_LIMIT = 2000  # images decoded before a run starts; a larger dataset has an even sample of this many


def check_images(items: list[EditItem], where: str) -> None:
    """Fail at start-up, not at step 500: every image is there and decodes (a file cut short, not an image),
    or, beyond DECODE_LIMIT distinct images, an even sample of them does."""
    missing = [it.image for it in items if isinstance(it.image, Path) and not it.image.is_file()]
    if missing:
        raise UserError(f"image not found: {missing[0]} ({len(missing)} of {len(items)} missing in {where})")
    images = list({id(it.image) if not isinstance(it.image, Path) else it.image: it.image for it in items}.values())
    bad = []
    for image in images[:: -(-len(images) // DECODE_LIMIT)]:
        try:
            if isinstance(image, Path):
                open_rgb(image)
            elif isinstance(image, Image.Image):
                image.load()
            else:
                raise UserError(f"an image is a {type(image).__name__}, not an image")
        except UserError as err:
            bad.append(err.problems[0])
        except (OSError, SyntaxError, ValueError) as err:  # an HF dataset's image that does not decode
            bad.append(f"cannot read an image of {where}: {err}")
    if bad:
        raise UserError(f"{bad[0]}" + (f" ({len(bad)} images of {where} do not decode)" if len(bad) > 1 else ""))


def decoded_share(items: list[EditItem]) -> str:
    """What check_images decoded, as `rlkit validate` says it."""
    n = len({id(it.image) if not isinstance(it.image, Path) else it.image for it in items})
    step = -(-n // DECODE_LIMIT)
    return f"all {n} images decode" if step == 1 else f"an even sample of {len(range(0, n, step))} of {n} images " \
                                                      f"decodes"


class PromptStream:
    """Endless, seeded, resumable stream of prompt batches. Order is a permutation per epoch."""

    STATE = {"epoch": "whole", "position": "whole", "num_items": "whole"}  # (rlkit/state_check.py)

    def __init__(self, items: list[EditItem], resolution: int, seed: int, shuffle: bool = True):
        self.items, self.resolution, self.seed, self.shuffle = items, resolution, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.items)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.items), generator=g).tolist()

    def _load(self, item: EditItem) -> torch.Tensor:
        if isinstance(item.image, Path):
            return load_image(item.image, self.resolution)
        if isinstance(item.image, Image.Image):
            return image_to_tensor(item.image, self.resolution)
        raise UserError(f"unsupported image value for '{item.instruction}': {type(item.image).__name__}")

    def next_batch(self, n: int) -> PromptBatch:
        chosen = []
        for _ in range(n):
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            chosen.append(self.items[self._order[self.position]])
            self.position += 1
        return PromptBatch(
            sources=torch.stack([self._load(it) for it in chosen]),
            instructions=[it.instruction for it in chosen],
            keys=[it.key for it in chosen],
            metadata=[dict(it.metadata) for it in chosen],
        )

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_items": len(self.items)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_items"] != len(self.items):
            raise UserError(f"the dataset changed since the checkpoint ({state['num_items']} items then, "
                            f"{len(self.items)} now); exact resume needs the same data")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
