"""Regenerate the tiny EditReward-Data sample (recolouring edits in EditReward-Data's own format and columns).

The preferred edit is the exact target; the other is a typical failure (unchanged, the wrong colour, the
background damaged), scored on EditReward's two dimensions (instruction following, visual quality; 1-4 each,
overall = their sum). Every sixth pair is a tie: two correct edits. No rationales: `rlkit annotate-pairs` adds
them.

    python recipes/data/make_editreward_tiny.py
"""

import json
import random
from pathlib import Path

from rlkit.rewards.jrm.synthetic import COLOURS, SHAPES, draw

OUT = Path(__file__).parent / "editreward_tiny"
FAILURES = {"unchanged": (1, 4), "wrong_colour": (2, 4), "background": (4, 1)}  # (dim1, dim2)


def main(n_pairs: int = 24, seed: int = 0) -> None:
    rng = random.Random(seed)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pairs):
        shape = rng.choice(SHAPES)
        src_colour, target = rng.sample(list(COLOURS), 2)
        good = draw(shape, COLOURS[target])
        tie = i % 6 == 5
        failure = None if tie else rng.choice(list(FAILURES))
        if tie:
            other = draw(shape, COLOURS[target])
        elif failure == "unchanged":
            other = draw(shape, COLOURS[src_colour])
        elif failure == "wrong_colour":
            other = draw(shape, COLOURS[rng.choice([c for c in COLOURS if c not in (target, src_colour)])])
        else:
            other = draw(shape, COLOURS[target], background=tuple(rng.randrange(256) for _ in range(3)))
        names = [f"images/{i:03d}_{k}.png" for k in ("source", "editor_a", "editor_b")]
        for img, name in zip((draw(shape, COLOURS[src_colour]), good, other), names):
            img.save(OUT / name)
        d1, d2 = (4, 4) if tie else FAILURES[failure]
        rows.append({"prompt": f"make the {shape} {target}", "choice_dist": None, "confidence": None,
                     "path_src": names[0], "path1": names[1], "path2": names[2],
                     "model1": "editor_a", "model2": "editor_b",
                     "model1_dim1_score": 4, "model1_dim2_score": 4, "model1_overall_score": 8,
                     "model2_dim1_score": d1, "model2_dim2_score": d2, "model2_overall_score": d1 + d2,
                     "tie_case": tie})
    (OUT / "train.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
