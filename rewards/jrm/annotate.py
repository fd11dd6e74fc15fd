"""`rlkit annotate-pairs PAIRS OUT --base-url URL`: a teacher VLM writes the JRM rationale of each side of each
preference pair, so human preference data (EditReward-Data, your own) can train a JRM jointly.

The teacher sees the source and both edits (in an order drawn per pair, so it cannot learn a position) and is
told which one humans preferred (preference-anchored, as RationalRewards and PARROT do). It answers JSON: per
edit, regions as boxes [ymin, xmin, ymax, xmax] on a 0-1000 scale with their reasoning, a global note, and a 1-4
tier for instruction following and for consistency, then its own verdict. The rationale text is the JRM format
(rewards/jrm/synthetic.py):
    [250,250,750,750]: the square is now red, as asked. Global: the background is preserved.
    Tiers: instruction 4/4, consistency 4/4.
A pair is dropped, and counted, when the teacher's verdict or its tiers contradict the human label, or its answer
cannot be read. OUT is JSONL, appended as answers arrive: each kept row is the input row with `rationale1`,
`rationale2` and `teacher`, image paths made relative to OUT's folder, so `rlkit train-reward` reads it as it
is. Dropped pairs go to OUT.dropped.jsonl with the reason. Run it again and it goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from rlkit.core.errors import UserError
from rlkit.rewards.jrm.pairs import read_rows, resolve_pairs_file, tie_flag
from rlkit.rewards.openai_chat import ChatEndpoint, describe, file_data_url, image_message

ASPECTS = ("instruction", "consistency")
PROMPT = """You are annotating a human preference between two edits of the same source image, to teach a reward model.
The images are: the source, then edit A, then edit B. The instruction was: "{instruction}".
{label}
For each edit, write the regions that changed or should have changed, each as a box [ymin, xmin, ymax, xmax] on a
0-1000 scale with one sentence of reasoning; a global note on what else changed; and a tier from 1 (poor) to 4
(excellent) for instruction following and for consistency with the source. Then give your own verdict.
Reply with JSON only, in this form:
{{"A": {{"regions": [{{"box": [ymin, xmin, ymax, xmax], "reasoning": "..."}}], "global": "...",
       "tiers": {{"instruction": 1-4, "consistency": 1-4}}}},
 "B": {{...the same for edit B...}},
 "preferred": "A" or "B" or "tie"}}"""


def rationale_text(side: dict) -> str:
    """One side of the teacher's answer as JRM rationale text; ValueError when it is malformed."""
    regions = side.get("regions")
    if not isinstance(regions, list):
        raise ValueError("no regions list")
    parts = []
    for region in regions:
        box = region.get("box") if isinstance(region, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ValueError(f"a box is not [ymin, xmin, ymax, xmax]: {box!r}")
        y0, x0, y1, x1 = (int(round(v)) for v in box)
        if not (0 <= y0 <= y1 <= 1000 and 0 <= x0 <= x1 <= 1000):
            raise ValueError(f"box {box} is not on the 0-1000 scale with min <= max")
        parts.append(f"[{y0},{x0},{y1},{x1}]: {str(region.get('reasoning', '')).strip()}")
    tiers = side.get("tiers")
    if not isinstance(tiers, dict) or not all(isinstance(tiers.get(a), int) and 1 <= tiers[a] <= 4 for a in ASPECTS):
        raise ValueError(f"tiers must give instruction and consistency as 1-4, got {tiers!r}")
    parts.append(f"Global: {str(side.get('global', '')).strip()}")
    parts.append(f"Tiers: instruction {tiers['instruction']}/4, consistency {tiers['consistency']}/4.")
    return " ".join(parts)


def read_answer(text: str, chosen_shown_as: str, tie: bool) -> tuple[str, str]:
    """(rationale of the human-preferred edit, of the other) from the teacher's answer; ValueError("contradicts
    ...") when its verdict or its tiers disagree with the human label, ValueError otherwise when unreadable."""
    import json_repair

    answer = json_repair.loads(text)
    if not isinstance(answer, dict) or not all(isinstance(answer.get(k), dict) for k in ("A", "B")):
        raise ValueError("not a JSON object with A and B")
    other = "B" if chosen_shown_as == "A" else "A"
    chosen, rejected = rationale_text(answer[chosen_shown_as]), rationale_text(answer[other])
    verdict = str(answer.get("preferred", "")).strip().upper()
    total = {s: sum(answer[s]["tiers"][a] for a in ASPECTS) for s in ("A", "B")}
    if tie:
        if verdict != "TIE":
            raise ValueError(f"contradicts the label: humans judged a tie, the teacher preferred {verdict or '?'}")
    elif verdict != chosen_shown_as or total[chosen_shown_as] < total[other]:
        raise ValueError(f"contradicts the label: humans preferred {chosen_shown_as}, the teacher {verdict or '?'} "
                         f"(tiers {total['A']} vs {total['B']})")
    return chosen, rejected


def annotate_pairs(pairs: str, out: str | Path, endpoint: ChatEndpoint, image_root: str | None = None,
                   seed: int = 0, max_tokens: int = 1024, request: dict | None = None, chunk: int = 64,
                   progress: bool = True) -> dict:
    """Annotates what OUT does not hold yet; returns the counts (kept, contradicting, unreadable, failed)."""
    source = resolve_pairs_file(pairs)
    if not source.is_file():
        raise UserError(f"pairs file not found: {pairs}")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    dropped_path = out.with_name(out.name + ".dropped.jsonl") if out.suffix != ".jsonl" else \
        out.with_suffix(".dropped.jsonl")
    root = Path(image_root).expanduser() if image_root else source.parent
    every = read_rows(source)
    keys = [_checked(where, row, root) for where, row in every]  # every pair readable, before any request
    done_keys, done_indices = set(), set()
    for f in (out, dropped_path):
        for line in _own_lines(f):
            (done_keys.add(line["pair_key"]) if "pair_key" in line else done_indices.add(line.get("pair_index")))
    rng = random.Random(seed)
    second = [rng.random() < 0.5 for _ in every]  # the preferred edit shown as B, drawn per pair
    # a pair is done when OUT holds its key (older outputs hold only its row number)
    rows = [(i, row) for i, (_, row) in enumerate(every) if keys[i] not in done_keys and i not in done_indices]
    try:
        model = endpoint.connect()
    except ValueError as err:  # no server there, or one that serves no model
        raise UserError(str(err)) from None
    counts = {"kept": 0, "contradicting": 0, "unreadable": 0, "failed": 0, "already": len(every) - len(rows)}
    failures: list[str] = []
    from rich.progress import Progress

    with Progress(disable=not progress) as bar, open(out, "a") as kept_file, open(dropped_path, "a") as dropped_file:
        task = bar.add_task("annotating", total=len(rows))

        def settle(i: int, row: dict, result) -> None:
            bar.advance(task)
            if isinstance(result, Exception):  # not recorded: tried again by the next run
                counts["failed"] += 1
                failures.append(f"pair {i}: {describe(result)}")
                return
            text = (result.choices[0].message.content or "") if result.choices else ""
            try:
                r1, r2 = read_answer(text, "B" if second[i] else "A", tie_flag(row))
            except ValueError as err:
                counts["contradicting" if str(err).startswith("contradicts") else "unreadable"] += 1
                dropped_file.write(json.dumps({"pair_key": keys[i], "pair_index": i, "reason": str(err),
                                               "answer": text[:2000]}) + "\n")
                dropped_file.flush()
                return
            counts["kept"] += 1
            kept = {**_relocated(row, root, out.parent), "rationale1": r1, "rationale2": r2, "teacher": model,
                    "pair_key": keys[i], "pair_index": i}
            kept_file.write(json.dumps(kept) + "\n")
            kept_file.flush()

        for start in range(0, len(rows), chunk):  # bodies carry the images: a chunk at a time
            part = rows[start:start + chunk]
            bodies = [_body(row, root, second[i], max_tokens, request) for i, row in part]
            endpoint.complete(bodies, lambda k, result, part=part: settle(*part[k], result))
    return {**counts, "out": str(out), "dropped_file": str(dropped_path), "failures": failures}


def pair_key(row: dict) -> str:
    """A pair's identity, from what it is (instruction and images), not where it sits in the file: pairs added,
    removed or reordered between runs are each annotated once."""
    text = json.dumps([str(row.get(k)) for k in ("prompt", "path_src", "path1", "path2")])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _checked(where: str, row: object, root: Path) -> str:
    """The pair's key, once its fields and images are there (a UserError naming the row otherwise)."""
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("prompt", "path_src", "path1",
                                                                                   "path2")):
        raise UserError(f"{where}: a pair needs prompt, path_src, path1 and path2 as strings")
    for k in ("path_src", "path1", "path2"):
        if not (root / row[k]).is_file():
            raise UserError(f"{where}: image not found: {root / row[k]}")
    tie_flag(row, where)
    return pair_key(row)


def _own_lines(path: Path) -> list[dict]:
    """The rows an earlier run wrote to OUT (or its dropped file). A last line cut short by an interrupted run
    is removed (its pair is annotated again); a file that is not annotate-pairs' own is refused."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines, rows = data.split(b"\n"), []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError:
            row = None
        if isinstance(row, dict) and ("pair_key" in row or "pair_index" in row):
            rows.append(row)
        elif number == len(lines) and (rows or b'"path_src"' in raw or b'"pair_key"' in raw):
            # the last line, with no newline, among annotate-pairs' own rows: an interrupted write
            print(f"note: {path} line {number} was cut short by an interrupted run: removed (that pair is "
                  f"annotated again)")
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(raw))
        else:
            raise UserError(f"{path} line {number} is not a row annotate-pairs wrote: choose a new output file "
                            f"(it appends to its own output only)")
    return rows


def _body(row: dict, root: Path, preferred_second: bool, max_tokens: int, request: dict | None) -> dict:
    try:
        source, first, second = (root / row[k] for k in ("path_src", "path1", "path2"))
        instruction = row["prompt"]
    except (KeyError, TypeError) as err:
        raise UserError(f"a pair lacks {err} (needs prompt, path_src, path1, path2)") from None
    if preferred_second:
        first, second = second, first
    tie = tie_flag(row)
    label = ("Humans judged the two edits equally good." if tie else
             f"Humans preferred edit {'B' if preferred_second else 'A'}.")
    images = [("Source image:", file_data_url(source)), ("Edit A:", file_data_url(first)),
              ("Edit B:", file_data_url(second))]
    body = {"messages": image_message(images, PROMPT.format(instruction=instruction, label=label)),
            "max_tokens": max_tokens, "temperature": 0.0}
    return {**body, **(request or {})}


def _relocated(row: dict, root: Path, out_dir: Path) -> dict:
    """The row with its image paths relative to OUT's folder (where train-reward will look for them)."""
    moved = dict(row)
    for key in ("path_src", "path1", "path2"):
        moved[key] = os.path.relpath((root / row[key]).resolve(), out_dir.resolve())
    return moved
