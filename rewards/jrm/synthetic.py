"""A small synthetic preference set for recolouring edits, with JRM-style rationales, made from ground truth.

Source: a shape in one colour on a grey background. Instruction: "make the {shape} {colour}". The preferred
edit is the exact target; the rejected one is a typical failure: unchanged, the wrong colour, or the right
colour with the background damaged. Rationales follow the JRM format: the edit region as a box
[ymin, xmin, ymax, xmax] on a 0-1000 scale, reasoning per region, a global note, a 1-4 tier per aspect.

    python -m rlkit.rewards.jrm.synthetic OUT_DIR --pairs 256 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
SHAPES = ("square", "circle")
BOX = (8, 8, 24, 24)  # on a 32 px canvas
BOX_1000 = "[250,250,750,750]"


def draw(shape: str, colour, background=(128, 128, 128), size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    (d.rectangle if shape == "square" else d.ellipse)(BOX, fill=colour)
    return img


def rationale(shape: str, asked: str, got: str | None, background_ok: bool) -> tuple[str, float]:
    """The rationale text and a 1..5 score (the mean of the two tiers, plus one)."""
    if got == asked:
        region = f"{BOX_1000}: the {shape} is now {asked}, as the instruction asks."
        follow = 4
    elif got is None:
        region = f"{BOX_1000}: the {shape} was not changed; it should be {asked}."
        follow = 1
    else:
        region = f"{BOX_1000}: the {shape} became {got}, but the instruction asks for {asked}."
        follow = 2
    glob = "Global: the background is preserved." if background_ok else "Global: the background was altered."
    keep = 4 if background_ok else 1
    return f"{region} {glob} Tiers: instruction {follow}/4, consistency {keep}/4.", 1 + (follow + keep) / 2


def make_pairs(out_dir: Path, n_pairs: int, seed: int, prefix: str = "") -> Path:
    """Write images and `pairs.jsonl` (prompt, path_src, path1 preferred, path2, rationale1, rationale2)."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pairs):
        shape = rng.choice(SHAPES)
        src_colour, target = rng.sample(list(COLOURS), 2)
        src = draw(shape, COLOURS[src_colour])
        good = draw(shape, COLOURS[target])
        failure = rng.choice(["unchanged", "wrong_colour", "background"])
        if failure == "unchanged":
            bad, (r2, s2) = src, rationale(shape, target, None, True)
        elif failure == "wrong_colour":
            wrong = rng.choice([c for c in COLOURS if c not in (target, src_colour)])
            bad, (r2, s2) = draw(shape, COLOURS[wrong]), rationale(shape, target, wrong, True)
        else:
            bg = tuple(rng.randrange(0, 256) for _ in range(3))
            bad, (r2, s2) = draw(shape, COLOURS[target], background=bg), rationale(shape, target, target, False)
        names = [f"{prefix}{i:05d}_{k}.png" for k in ("src", "a", "b")]
        for img, name in zip((src, good, bad), names):
            img.save(out_dir / name)
        r1, s1 = rationale(shape, target, target, True)
        rows.append({"prompt": f"make the {shape} {target}", "path_src": names[0], "path1": names[1],
                     "path2": names[2], "rationale1": r1, "rationale2": r2, "score1": s1, "score2": s2,
                     "failure": failure})
    manifest = out_dir / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(make_pairs(Path(args.out_dir), args.pairs, args.seed))


if __name__ == "__main__":
    main()


def write_benchmark_samples(out_dir: Path, n: int = 8, seed: int = 0) -> dict[str, Path]:
    """Small files in each evaluation format (pairs, mmrb2, editreward-bench, genai-bench), built from the
    synthetic pairs so the preferred answer is known."""
    out_dir = Path(out_dir)
    pairs = [json.loads(x) for x in make_pairs(out_dir, n, seed).read_text().splitlines()]
    files = {"pairs": out_dir / "pairs.jsonl"}
    mmrb2, erb, genai = [], [], []
    for i, p in enumerate(pairs):
        a_first = i % 2 == 0
        a, b = (p["path1"], p["path2"]) if a_first else (p["path2"], p["path1"])
        mmrb2.append({"pair_id": f"p{i}", "prompt_text": p["prompt"], "prompt_images": [p["path_src"]],
                      "response_a_images": [a], "response_b_images": [b], "chosen": "A" if a_first else "B"})
        erb.append({"key": f"k{i}", "instruction": p["prompt"], "input_image": p["path_src"],
                    "output_images": [p["path1"], p["path2"]], "task_type": p["failure"],
                    "dimension": "overall"})
        vote = "leftvote" if a_first else "rightvote"
        if i == n - 1:
            vote = "tievote"
        genai.append({"source_image": p["path_src"], "instruct_prompt": p["prompt"], "left_output_image": a,
                      "right_output_image": b, "vote_type": vote})
    for name, rows in (("mmrb2", mmrb2), ("editreward-bench", erb), ("genai-bench", genai)):
        files[name] = out_dir / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files
