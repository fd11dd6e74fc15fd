"""Benchmark items read as the benchmarks publish them, from a local folder or the local hub cache (never
downloaded):

- GEdit-Bench: its hub dataset's parquet files, columns `task_type, key, instruction, instruction_language,
  input_image, input_image_raw, Intersection_exist`; the edit starts from `input_image_raw`, the judge compares
  with `input_image` (the official protocol's source).
- ImgEdit-Bench Basic: `basic_edit.json` (`{key: {"id": "SUBDIR/FILE.jpg", "prompt": ..., "edit_type": ...}}`)
  with the images under the folder it names (`--image-root`, default: the JSON's folder).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from rlkit.core.errors import UserError
from rlkit.core.images import open_rgb, to_rgb

GEDIT_COLUMNS = ("task_type", "key", "instruction", "instruction_language", "input_image", "input_image_raw",
                 "Intersection_exist")


@dataclass
class BenchItem:
    key: str  # unique within the benchmark (GEdit: task/language/key, as its result folders are laid out)
    task: str  # GEdit's task_type, ImgEdit's edit_type
    instruction: str
    image: Image.Image  # what the editor edits
    shown: Image.Image  # the source the judge compares with
    language: str = "en"
    intersection: bool = False  # GEdit's Intersection_exist


def locate(path: str, filename_hint: str) -> Path:
    """A local path, or OWNER/NAME of a dataset in the local hub cache."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(path, repo_type="dataset", local_files_only=True))
        except Exception:
            raise UserError(f"--data '{path}' is neither a local path nor a dataset in the local hub cache, and rlkit "
                            f"never downloads: get it with `hf download --repo-type dataset {path}`") from None
    raise UserError(f"--data '{path}' not found (expected {filename_hint})")


def read_gedit(path: str) -> list[BenchItem]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    root = locate(path, "GEdit-Bench's parquet files, or stepfun-ai/GEdit-Bench in the hub cache")
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    if not files:
        raise UserError(f"{root}: no parquet files (GEdit-Bench is published as parquet under data/)")
    items = []
    for file in files:
        try:
            table = pq.read_table(file)
        except (ArrowException, OSError) as err:
            raise UserError(f"{file}: not a readable parquet file ({str(err).splitlines()[0][:120]})") from None
        missing = [c for c in GEDIT_COLUMNS if c not in table.column_names]
        if missing:
            raise UserError(f"{file}: not GEdit-Bench's layout (no column {', '.join(missing)}; it has "
                            f"{', '.join(table.column_names)})")
        for i, row in enumerate(table.select(list(GEDIT_COLUMNS)).to_pylist()):
            where = f"{file.name} row {i}"
            lang = str(row["instruction_language"])
            items.append(BenchItem(f"{row['task_type']}/{lang}/{row['key']}", str(row["task_type"]),
                                   _text(row["instruction"], where), _stored_image(row["input_image_raw"], where),
                                   _stored_image(row["input_image"], where), lang, bool(row["Intersection_exist"])))
    return _unique(items, root)


def read_imgedit(path: str, image_root: str | None = None) -> list[BenchItem]:
    found = locate(path, "ImgEdit-Bench's basic_edit.json, or the folder holding it")
    table_path = found / "basic_edit.json" if found.is_dir() else found
    if not table_path.is_file():
        raise UserError(f"{found}: no basic_edit.json (ImgEdit-Bench Basic's table of edits)")
    try:
        table = json.loads(table_path.read_bytes())
    except (ValueError, OSError) as err:
        raise UserError(f"{table_path}: not JSON ({err})") from None
    if not isinstance(table, dict):
        raise UserError(f"{table_path}: expected an object of KEY: {{id, prompt, edit_type}}")
    root = Path(image_root).expanduser() if image_root else table_path.parent
    items = []
    for key, row in table.items():
        where = f"{table_path} '{key}'"
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("id", "prompt", "edit_type")):
            raise UserError(f"{where}: expected id, prompt and edit_type as strings")
        image = open_rgb(root / row["id"])
        items.append(BenchItem(str(key), row["edit_type"], _text(row["prompt"], where), image, image))
    return _unique(items, table_path)


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: empty or missing instruction")
    return value.strip()


def _stored_image(value, where: str) -> Image.Image:
    """An image as the datasets library stores it in parquet: {bytes, path}."""
    data = value.get("bytes") if isinstance(value, dict) else None
    if not data:
        raise UserError(f"{where}: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{where}: the image does not decode ({err})") from None


def _unique(items: list[BenchItem], where) -> list[BenchItem]:
    keys = [it.key for it in items]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise UserError(f"{where}: item '{repeated[0]}' appears twice")
    if not items:
        raise UserError(f"{where}: no items")
    return items
