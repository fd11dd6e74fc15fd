"""Editing prompts: (reference images, instruction) from a JSONL manifest, an image folder, or HF datasets. A
prompt has one reference image (the source) or several, in order (subject and style, garment and person).

`PromptStream` hands out batches in a seeded shuffled order and remembers its position, so a resumed run
continues with exactly the prompts the uninterrupted run would have seen. A batch holds prompts of one edit
size: each prompt is edited at its own aspect ratio (rlkit.core.layout), and prompts wait in their size's
bucket until it has a batch.

Images: converted to RGB (grayscale expanded; RGBA composited over white), resized to the editor's sizes (or
centre-cropped to squares with `policy.square`), returned as float tensors in [0, 1].
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
from rlkit.core.layout import EditLayout
from rlkit.core.types import PromptBatch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class EditItem:
    images: list[Any]  # the reference images in order, each a Path or a PIL image (HF datasets); [0] the source
    instruction: str
    key: str  # identity of (images, instruction)
    metadata: dict = field(default_factory=dict)
    origin: str = ""  # where it was read: "FILE:LINE", a folder entry, "dataset row N"

    @property
    def image(self) -> Any:
        """The source: the first reference."""
        return self.images[0]


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """One image file centre-cropped to a resolution x resolution square, [3, R, R] in [0, 1]."""
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
    """Manifest lines: {"image": path relative to the file, "instruction": text, ...extra kept as metadata}, or
    {"images": [path, ...], ...} for several reference images in order."""
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
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or ("image" in row) == ("images" in row):
            raise UserError(f"{where}: expected an object with 'image' (or 'images': a list) and 'instruction'")
        text = _check_instruction(row.get("instruction"), where)
        if "images" in row and (not isinstance(row["images"], list) or not row["images"]):
            raise UserError(f"{where}: 'images' must be a non-empty list of file paths, got {row['images']!r}")
        given = [row["image"]] if "image" in row else row["images"]
        for i, name in enumerate(given):
            if not isinstance(name, str) or not name.strip() or "\0" in name:
                field = "'image'" if "image" in row else f"'images'[{i}]"
                raise UserError(f"{where}: {field} must be a file path (a string), got {name!r}")
        images = [_resolved(path.parent / name, where) for name in given]
        meta = {k: v for k, v in row.items() if k not in ("image", "images", "instruction")}
        items.append(EditItem(images, text, _key(images, text), meta, where))
    return items


def _key(images: list, text: str) -> str:
    return "\n".join([*map(str, images), text])


def read_folder(path: Path, instructions: list[str]) -> list[EditItem]:
    """Every image in a folder is a prompt, and every sub-folder is a prompt whose images (in name order) are its
    references; the instruction from `NAME.txt` beside the image or sub-folder, else each of `instructions`."""
    if not path.is_dir():
        raise UserError(f"data.path: image folder not found: {path}")
    items = []
    entries = sorted(p for p in path.iterdir() if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES)
    for entry in entries:
        if entry.is_dir():
            images = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                continue
            sidecar = entry.with_name(entry.name + ".txt")
        else:
            images, sidecar = [entry], entry.with_suffix(".txt")
        texts = [read_utf8(sidecar)] if sidecar.is_file() else list(instructions)
        if not texts:
            raise UserError(f"{entry}: no instruction (add {sidecar.name} or set data.instructions)")
        resolved = [_resolved(image, str(path)) for image in images]
        for text in texts:
            text = _check_instruction(text, str(sidecar if sidecar.is_file() else "data.instructions"))
            items.append(EditItem(resolved, text, _key(resolved, text), origin=str(entry)))
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
    inner = getattr(feature, "feature", None)  # a list of images per row: several references in order
    several = (isinstance(feature, list) and len(feature) == 1 and isinstance(feature[0], datasets.Image)) or \
        isinstance(inner, datasets.Image)
    if not several and not isinstance(feature, datasets.Image):  # paths or bytes as plain values: would fail later
        raise UserError(f"dataset '{cfg.path}': column '{cfg.image_column}' holds {_feature_name(feature)}, not "
                        f"images; cast it first: ds.cast_column('{cfg.image_column}', datasets.Image()) (or a "
                        f"list of images per row: [datasets.Image()])")
    items = []
    for i, row in enumerate(ds):
        text = _check_instruction(row[cfg.instruction_column], f"dataset row {i}")
        images = list(row[cfg.image_column]) if several else [row[cfg.image_column]]
        if not images:
            raise UserError(f"dataset '{cfg.path}' row {i}: column '{cfg.image_column}' holds no image")
        items.append(EditItem(images, text, f"{cfg.path}#{i}\n{text}", origin=f"dataset '{cfg.path}' row {i}"))
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


def check_references(items: list[EditItem], max_references: int | None, editor: str) -> None:
    """An editor that takes one reference image refuses prompts with several, naming the first."""
    if max_references is None:
        return
    over = [it for it in items if len(it.images) > max_references]
    if over:
        raise UserError(f"{over[0].origin or over[0].instruction[:60]}: {len(over[0].images)} reference images, but "
                        f"{editor} takes {max_references} ({len(over)} such prompts); use an editor that takes "
                        f"several (qwen_image_edit_plus, flux2) or one image per prompt")


DECODE_LIMIT = 2000  # images decoded before a run starts; a larger dataset has an even sample of this many


def check_images(items: list[EditItem], where: str) -> None:
    """Fail at start-up, not at step 500: every image is there and decodes (a file cut short, not an image),
    or, beyond DECODE_LIMIT distinct images, an even sample of them does."""
    every = [im for it in items for im in it.images]
    missing = [im for im in every if isinstance(im, Path) and not im.is_file()]
    if missing:
        raise UserError(f"image not found: {missing[0]} ({len(missing)} of {len(every)} missing in {where})")
    images = list({id(im) if not isinstance(im, Path) else im: im for im in every}.values())
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
    n = len({id(im) if not isinstance(im, Path) else im for it in items for im in it.images})
    step = -(-n // DECODE_LIMIT)
    return f"all {n} images decode" if step == 1 else f"an even sample of {len(range(0, n, step))} of {n} images " \
                                                      f"decodes"


class PromptStream:
    """Endless, seeded, resumable stream of prompt batches. Order is a permutation per epoch; a prompt waits in
    its edit size's bucket until the bucket holds a batch (with one size, batches follow the order exactly)."""

    STATE = {"epoch": "whole", "position": "whole", "num_items": "whole", "pending": "wholes"}
    STATE_OPTIONAL = ("pending",)  # (not kept by checkpoints of square-only rlkit)

    def __init__(self, items: list[EditItem], layout: EditLayout | int, seed: int, shuffle: bool = True):
        self.items, self.seed, self.shuffle = items, seed, shuffle
        self.layout = EditLayout(layout, multiple=1, square=True) if isinstance(layout, int) else layout
        self.epoch, self.position = 0, 0
        self.pending: list[int] = []  # items drawn, waiting for their bucket to fill, in drawing order
        self._order = self._permutation(0)
        self._buckets: list[tuple[int, int]] | None = None  # read from the image headers when first needed

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.items)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.items), generator=g).tolist()

    def bucket(self, index: int) -> tuple[int, int]:
        """The edit size (width, height) of item ``index``."""
        if self.layout.square:
            return self.layout.resolution, self.layout.resolution
        if self._buckets is None:
            self._buckets = [self.layout.bucket(it.images) for it in self.items]
        return self._buckets[index]

    def _draw(self) -> int:
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        self.position += 1
        return self._order[self.position - 1]

    def next_batch(self, n: int) -> PromptBatch:
        """The next n prompts of one edit size: the first bucket to hold n of the prompts drawn."""
        while True:
            for size in dict.fromkeys(self.bucket(i) for i in self.pending):
                waiting = [i for i in self.pending if self.bucket(i) == size]
                if len(waiting) >= n:
                    chosen = waiting[:n]
                    for i in chosen:
                        self.pending.remove(i)
                    return self.load([self.items[i] for i in chosen])
            self.pending.append(self._draw())

    def load(self, chosen: list[EditItem]) -> PromptBatch:
        """A batch of these prompts (all of one edit size)."""
        loaded = [self._load(it) for it in chosen]
        refs = [r for _, r in loaded]
        alone = all(len(r) == 1 and r[0] is s for s, r in loaded)  # the source is every reference there is
        return PromptBatch(
            sources=torch.stack([s for s, _ in loaded]),
            instructions=[it.instruction for it in chosen],
            keys=[it.key for it in chosen],
            metadata=[dict(it.metadata) for it in chosen],
            references=None if alone else refs,
        )

    def _load(self, item: EditItem) -> tuple[torch.Tensor, list[torch.Tensor]]:
        try:
            return self.layout.load(item.images)
        except UserError as err:
            raise UserError(f"{err.problems[0]} (prompt '{item.instruction[:60]}')") from None

    def buckets(self, n: int) -> list[PromptBatch]:
        """Every prompt once, in order, as batches of at most n prompts of one edit size (evaluations)."""
        sizes: dict[tuple[int, int], list[int]] = {}
        for i in range(len(self.items)):
            sizes.setdefault(self.bucket(i), []).append(i)
        return [self.load([self.items[i] for i in rows[k : k + n]])
                for rows in sizes.values() for k in range(0, len(rows), n)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_items": len(self.items),
                "pending": list(self.pending)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_items"] != len(self.items):
            raise UserError(f"the dataset changed since the checkpoint ({state['num_items']} items then, "
                            f"{len(self.items)} now); exact resume needs the same data")
        pending = list(state.get("pending", []))
        if any(i >= len(self.items) for i in pending):
            raise UserError("state.json 'data'.pending names prompts the dataset does not have")
        self.epoch, self.position, self.pending = state["epoch"], state["position"], pending
        self._order = self._permutation(self.epoch)
