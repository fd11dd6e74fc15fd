"""Pairwise reward evaluation with each benchmark's own rule.

All formats are JSONL with image paths relative to the file:
- pairs: prompt, path_src, path1 (preferred), path2[, tie]; accuracy of s1 > s2 over non-tied pairs.
- mmrb2: pair_id, prompt_text, prompt_images, response_a_images, response_b_images, chosen (A|B); judged in
  both orders with the reversed verdict flipped; accuracy over both judgements (an exact tie is wrong).
- editreward-bench: key, instruction, input_image, output_images (index 0 preferred), task_type, dimension;
  strict s0 > s1, accuracy per task type, macro-averaged (and per dimension).
- genai-bench: source_image, instruct_prompt, left_output_image, right_output_image, vote_type; accuracy on
  left/right votes; ties are reported separately (a tie is right when |s_l - s_r| <= tie_margin); bothbad is
  left out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from rlkit.core.errors import UserError
from rlkit.core.images import open_rgb

ScoreFn = Callable[[list, list, list[str]], torch.Tensor]
FORMATS = ("pairs", "mmrb2", "editreward-bench", "genai-bench")


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"evaluation data not found: {path}")
    rows = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{i}: not valid JSON ({err.msg})") from None
            if not isinstance(rows[-1], dict):
                raise UserError(f"{path}:{i}: a row is a JSON object of fields, got {line.strip()[:40]}")
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _img(base: Path, rel: str) -> Image.Image:
    if not isinstance(rel, str) or "\0" in rel:
        raise UserError(f"an image path in {base} is {rel!r}, not a file path")
    return open_rgb(base / rel)


def _field(row: dict, key: str, path: Path, i: int):
    if key not in row:
        raise UserError(f"{path}:{i + 1}: missing field '{key}' (is --format right?)")
    return row[key]


def _first(value):
    return value[0] if isinstance(value, list) else value


def _pair_scores(score: ScoreFn, base, src, a, b, text) -> tuple[torch.Tensor, torch.Tensor]:
    sources = [_img(base, s) for s in src]
    sa = score(sources, [_img(base, x) for x in a], text)
    sb = score(sources, [_img(base, x) for x in b], text)
    return sa, sb


def evaluate(score: ScoreFn, data: str | Path, fmt: str) -> dict:
    path = Path(data)
    rows, base = _rows(path), path.parent

    def f(i: int, key: str):
        return _field(rows[i], key, path, i)

    n = len(rows)
    if fmt == "pairs":
        sa, sb = _pair_scores(score, base, [f(i, "path_src") for i in range(n)], [f(i, "path1") for i in range(n)],
                              [f(i, "path2") for i in range(n)], [f(i, "prompt") for i in range(n)])
        decided = torch.tensor([not r.get("tie", False) for r in rows])
        return {"format": fmt, "n": int(decided.sum()), "accuracy": float((sa > sb)[decided].float().mean())}
    if fmt == "mmrb2":
        sa, sb = _pair_scores(score, base, [_first(f(i, "prompt_images")) for i in range(n)],
                              [_first(f(i, "response_a_images")) for i in range(n)],
                              [_first(f(i, "response_b_images")) for i in range(n)],
                              [f(i, "prompt_text") for i in range(n)])
        # the reversed order (B shown first) is scored again: an order-sensitive judge gets both chances to err
        sb_rev, sa_rev = _pair_scores(score, base, [_first(f(i, "prompt_images")) for i in range(n)],
                                      [_first(f(i, "response_b_images")) for i in range(n)],
                                      [_first(f(i, "response_a_images")) for i in range(n)],
                                      [f(i, "prompt_text") for i in range(n)])
        chosen_a = torch.tensor([str(f(i, "chosen")).upper() == "A" for i in range(n)])
        forward = torch.where(chosen_a, sa > sb, sb > sa)
        reverse = torch.where(chosen_a, sa_rev > sb_rev, sb_rev > sa_rev)
        return {"format": fmt, "n": n, "judgements": 2 * n,
                "accuracy": float(torch.cat([forward, reverse]).float().mean())}
    if fmt == "editreward-bench":
        outs = [f(i, "output_images") for i in range(n)]
        sa, sb = _pair_scores(score, base, [f(i, "input_image") for i in range(n)], [o[0] for o in outs],
                              [o[1] for o in outs], [f(i, "instruction") for i in range(n)])
        correct = (sa > sb).tolist()
        by_task, by_dim = defaultdict(list), defaultdict(list)
        for i, ok in enumerate(correct):
            by_task[f(i, "task_type")].append(ok)
            by_dim[rows[i].get("dimension", "overall")].append(ok)
        per_task = {k: sum(v) / len(v) for k, v in sorted(by_task.items())}
        return {"format": fmt, "n": n, "accuracy": sum(per_task.values()) / len(per_task), "per_task": per_task,
                "per_dimension": {k: sum(v) / len(v) for k, v in sorted(by_dim.items())}}
    if fmt == "genai-bench":
        votes = [f(i, "vote_type") for i in range(n)]
        sl, sr = _pair_scores(score, base, [f(i, "source_image") for i in range(n)],
                              [f(i, "left_output_image") for i in range(n)],
                              [f(i, "right_output_image") for i in range(n)],
                              [f(i, "instruct_prompt") for i in range(n)])
        decided = [(sl[i] > sr[i]) if v == "leftvote" else (sr[i] > sl[i])
                   for i, v in enumerate(votes) if v in ("leftvote", "rightvote")]
        ties = [bool(abs(sl[i] - sr[i]) <= 0.0) for i, v in enumerate(votes) if v == "tievote"]
        return {"format": fmt, "n": len(decided), "accuracy": float(sum(decided) / max(len(decided), 1)),
                "ties": len(ties), "tie_accuracy": float(sum(ties) / len(ties)) if ties else None,
                "bothbad_skipped": sum(v == "bothbad_vote" for v in votes)}
    raise UserError(f"unknown format '{fmt}'; expected one of: {', '.join(FORMATS)}")
