"""Preference pairs for `rlkit train-reward`: rlkit's pairs JSONL and EditReward-Data, read into `Pair`s.

One reader for both, since rlkit's format is EditReward's with rationales added. Each row (a JSONL line, or an
element of a JSON array as EditReward-Data's `train.json` ships):
    prompt, path_src, path1 (preferred), path2     image paths relative to the file's folder, or to image_root
    rationale1, rationale2                          optional: JRM rationales (rlkit annotate-pairs writes them)
    tie | tie_case                                  optional: the two edits are equally good
    score1, score2                                  optional: scores on the distribution head's scale
    model1_overall_score, model2_overall_score      EditReward-Data's overall scores (two dimensions of 1-4 each,
                                                    so 2-8), mapped linearly onto the head's bins
EditReward's `choice_dist`, `confidence`, `model1`/`model2` and per-dimension scores are read past.

A file may also be named `hf:OWNER/NAME/PATH` (a dataset repository in the local Hugging Face cache, e.g.
`hf:TIGER-Lab/EditReward-Data/train.json` after `hf download --repo-type dataset TIGER-Lab/EditReward-Data`);
rlkit never downloads it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlkit.core.errors import UserError

EDITREWARD_OVERALL = (2.0, 8.0)  # EditReward-Data: instruction following 1-4 + visual quality 1-4


@dataclass
class Pair:
    instruction: str
    source: Path
    chosen: Path
    rejected: Path
    rationale_chosen: str | None = None
    rationale_rejected: str | None = None
    tie: bool = False
    score_chosen: float = float("nan")  # annotated scores on the distribution head's scale (optional)
    score_rejected: float = float("nan")


def resolve_pairs_file(spec: str | Path) -> Path:
    """The local file a `data.train` / `data.eval` value names (a path, or hf:OWNER/NAME/PATH in the hub cache)."""
    spec = str(spec)
    if not spec.startswith("hf:"):
        return Path(spec).expanduser()
    parts = spec[3:].split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise UserError(f"'{spec}': a hub dataset file is hf:OWNER/NAME/PATH, e.g. "
                        f"hf:TIGER-Lab/EditReward-Data/train.json")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, filename = f"{parts[0]}/{parts[1]}", parts[2]
    try:
        return Path(hf_hub_download(repo, filename, repo_type="dataset", local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise UserError(f"'{spec}' is not in the local Hugging Face cache and rlkit never downloads; get it with "
                        f"`hf download --repo-type dataset {repo}`") from None


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each row of a JSON array or JSONL file; `where` names the file and line or index."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        return [(f"{path}[{i}]", r) for i, r in enumerate(rows)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err})") from None
    return out


def read_pairs(path: str | Path, image_root: str | Path | None = None,
               head_range: tuple[float, float] = (1.0, 5.0)) -> list[Pair]:
    """Every pair of the file, images checked; ``head_range``: the distribution head's lowest and highest bin."""
    path = resolve_pairs_file(path)
    if not path.is_file():
        raise UserError(f"pairs file not found: {path}")
    root = Path(image_root).expanduser() if image_root else path.parent
    pairs = []
    for where, row in read_rows(path):
        try:
            pair = Pair(row["prompt"], root / row["path_src"], root / row["path1"], root / row["path2"],
                        row.get("rationale1"), row.get("rationale2"), tie_flag(row, where),
                        *(_score(row, side, head_range) for side in (1, 2)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{where}: expected prompt, path_src, path1, path2 ({type(err).__name__}: {err})") \
                from None
        for p in (pair.source, pair.chosen, pair.rejected):
            if not p.is_file():
                raise UserError(f"{where}: image not found: {p}")
        pairs.append(pair)
    if not pairs:
        raise UserError(f"{path}: no pairs")
    return pairs


def tie_flag(row: dict, where: str = "a pair") -> bool:
    """`tie` (or EditReward's `tie_case`): true/false, 1/0, or those words as strings; anything else is refused
    (the string "false" is truthy: read as a bool it would make every pair a tie)."""
    value = row.get("tie", row.get("tie_case"))
    if value is None or isinstance(value, bool):
        return bool(value)
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise UserError(f"{where}: tie is {value!r}; give true or false")


def _score(row: dict, side: int, head_range: tuple[float, float]) -> float:
    if row.get(f"score{side}") is not None:
        value = float(row[f"score{side}"])
        if not (math.isfinite(value) and head_range[0] <= value <= head_range[1]):
            raise ValueError(f"score{side} {row[f'score{side}']!r} is outside the distribution head's "
                             f"{head_range[0]:g}-{head_range[1]:g}")
        return value
    overall = row.get(f"model{side}_overall_score")
    if overall is None:
        return float("nan")
    lo, hi = EDITREWARD_OVERALL
    value = float(overall)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"model{side}_overall_score {overall!r} is outside EditReward-Data's {lo:g}-{hi:g}")
    return head_range[0] + (value - lo) / (hi - lo) * (head_range[1] - head_range[0])
