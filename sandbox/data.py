"""Sandbox datasets made from the world's ground truth: editing prompts (with the exact target scene in their
metadata) and preference pairs with JRM-format rationales."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter

from rlkit.sandbox.world import (
    COLOURS,
    OPERATIONS,
    Scene,
    edit_region,
    gt_scores,
    random_edit,
    random_scene,
    render,
    to_tensor,
    washout,
)


def sample_prompts(n: int, seed: int, operations=OPERATIONS) -> list[tuple[Scene, str, Scene]]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        scene = random_scene(rng)
        edit = random_edit(scene, rng, operations)
        if edit is not None:
            out.append((scene, edit[0], edit[1]))
    return out


def write_prompts(out_dir: Path, n: int, seed: int, size: int = 32, operations=OPERATIONS) -> Path:
    """`prompts.jsonl` for rlkit's jsonl data source; `scene`/`target_scene` travel on as reward metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (scene, instruction, target) in enumerate(sample_prompts(n, seed, operations)):
        render(scene, size).save(out_dir / f"{i:05d}.png")
        rows.append({"image": f"{i:05d}.png", "instruction": instruction, "scene": scene.to_json(),
                     "target_scene": target.to_json()})
    manifest = out_dir / "prompts.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


# ------------------------------------------------------------------------------------------- preferences
def _tier(x: float) -> int:
    return 4 if x > 0.9 else 3 if x > 0.6 else 2 if x > 0.3 else 1


def region_box(source: torch.Tensor, target: torch.Tensor) -> str:
    """The edit region's bounding box as [ymin,xmin,ymax,xmax] on a 0-1000 scale."""
    ys, xs = torch.nonzero(edit_region(source, target), as_tuple=True)
    if len(ys) == 0:
        return "[0,0,0,0]"
    h, w = source.shape[-2:]
    return "[{},{},{},{}]".format(*(round(1000 * float(v)) for v in (ys.min() / h, xs.min() / w, (ys.max() + 1) / h,
                                                                (xs.max() + 1) / w)))


def rationale(instruction: str, box: str, scores: dict) -> str:
    f, p = scores["follow"], scores["preserve"]
    done = "done" if f > 0.9 else "partly done" if f > 0.3 else "not done"
    region = f"{box}: '{instruction}' is {done} in this region."
    rest = ("Global: everything else is preserved." if p > 0.9 else
            "Global: the rest of the image is slightly altered." if p > 0.5 else
            "Global: the rest of the image was damaged.")
    return f"{region} {rest} Tiers: instruction {_tier(f)}/4, consistency {_tier(p)}/4."


def candidates(scene: Scene, target: Scene, instruction: str, rng: random.Random, size: int):
    """Typical edit outcomes, from exact to failed: (name, PIL image)."""
    src, tgt = render(scene, size), render(target, size)
    out = [("exact", tgt), ("unchanged", src)]
    alpha = rng.choice([0.3, 0.5, 0.7])
    out.append((f"partial_{alpha}", Image.blend(src, tgt, alpha)))
    noise = torch.randn(3, size, size, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
    noisy = (to_tensor(tgt) + rng.choice([0.05, 0.1, 0.2]) * noise).clamp(0, 1)
    out.append(("noisy", Image.fromarray((noisy.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))))
    out.append(("blurred", tgt.filter(ImageFilter.GaussianBlur(rng.choice([0.8, 1.5])))))
    faded = washout(to_tensor(tgt), rng.choice([0.1, 0.2, 0.3]))
    out.append(("washed", Image.fromarray((faded.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))))
    other = random_edit(scene, rng)
    if other is not None and other[0] != instruction:
        out.append(("wrong_edit", render(other[1], size)))
    # the degenerate edits RL finds against a judge that never saw them: every object gone (right only when the
    # instruction removes them all), and blobs of colour splattered over the image with the edit left undone
    out.append(("emptied", render(Scene(scene.background, []), size)))
    out.append(("splattered", splatter(src, rng)))
    return out


def splatter(image: Image.Image, rng: random.Random) -> Image.Image:
    """2 to 5 blobs of palette colours at random places and sizes, painted over a copy of `image`."""
    out = image.copy()
    d, size = ImageDraw.Draw(out), image.width
    for _ in range(rng.randint(2, 5)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.08, 0.25) * size
        d.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[rng.choice(list(COLOURS))])
    return out


def write_preference_pairs(out_dir: Path, n_pairs: int, seed: int, size: int = 32, min_gap: float = 0.1) -> Path:
    """EditReward-style pairs JSONL ranked by the ground truth, with rationales for both sides."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, i = [], 0
    while len(rows) < n_pairs:
        scene, instruction, target = sample_prompts(1, rng.randrange(1 << 30))[0]
        cands = candidates(scene, target, instruction, rng, size)
        (na, a), (nb, b) = rng.sample(cands, 2)
        S, T = to_tensor(render(scene, size)), to_tensor(render(target, size))
        sa, sb = gt_scores(to_tensor(a), S, T), gt_scores(to_tensor(b), S, T)
        if abs(sa["overall"] - sb["overall"]) < min_gap:
            continue
        if sb["overall"] > sa["overall"]:
            (na, a, sa), (nb, b, sb) = (nb, b, sb), (na, a, sa)
        names = [f"{i:05d}_{k}.png" for k in ("src", "a", "b")]
        for img, name in zip((render(scene, size), a, b), names):
            img.save(out_dir / name)
        box = region_box(S, T)
        rows.append({"prompt": instruction, "path_src": names[0], "path1": names[1], "path2": names[2],
                     "rationale1": rationale(instruction, box, sa), "rationale2": rationale(instruction, box, sb),
                     "gt1": sa["overall"], "gt2": sb["overall"], "kinds": [na, nb],
                     # the truth on the 1..5 rubric scale of distribution heads (Z-Reward bins)
                     "score1": 1 + 4 * sa["overall"], "score2": 1 + 4 * sb["overall"]})
        i += 1
    manifest = out_dir / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
