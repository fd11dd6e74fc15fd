"""Regenerate the tiny editing prompts (simple shapes on plain backgrounds) used by tiny_edit.yaml, and
tiny_multi/: two reference images per prompt (a scene, then an object to put in it), wide and tall scenes, for
the editors that take several references (`data.path=data/tiny_multi/prompts.jsonl`).

    python recipes/data/make_tiny.py
"""

import json
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "tiny"
MULTI = Path(__file__).parent / "tiny_multi"
# (scene shape, scene size (w, h), object shape, object colour, instruction); each object in the other orientation
# (Qwen-Image-Edit-2509 edits at the last image's aspect ratio); FLUX.2 takes no side under 64 px
SCENES = [
    ("square", (96, 64), "circle", (220, 40, 40), "put the red circle from picture 2 beside the square"),
    ("bar", (96, 64), "triangle", (230, 30, 30), "add the red triangle of picture 2 above the bar"),
    ("circle", (64, 96), "square", (210, 30, 50), "place the red square from picture 2 under the circle"),
    ("triangle", (64, 96), "bar", (240, 50, 40), "draw the red bar of picture 2 below the triangle"),
]
SHAPES = [
    ("square", (40, 90, 200), (235, 235, 235), "make the square red"),
    ("circle", (30, 160, 60), (40, 40, 40), "turn the circle red"),
    ("triangle", (220, 200, 30), (120, 120, 140), "paint the triangle red"),
    ("bar", (200, 60, 200), (250, 250, 250), "make the bar red and keep the background"),
]


def draw(shape: str, fill, background, size: int = 48, wh: tuple[int, int] | None = None) -> Image.Image:
    img = Image.new("RGB", wh or (size, size), background)
    d = ImageDraw.Draw(img)
    size = min(img.size)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(size // 2, size // 5), (size // 5, 4 * size // 5), (4 * size // 5, 4 * size // 5)], fill=fill)
    else:
        d.rectangle((size // 6, 2 * size // 5, 5 * size // 6, 3 * size // 5), fill=fill)
    return img


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, fill, bg, instruction in SHAPES:
        draw(name, fill, bg).save(OUT / f"{name}.png")
        rows.append({"image": f"{name}.png", "instruction": instruction})
    (OUT / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    MULTI.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (scene, wh, obj, colour, instruction) in enumerate(SCENES):
        draw(scene, (40, 90, 200), (235, 235, 235), wh=wh).save(MULTI / f"scene_{i}.png")
        draw(obj, colour, (255, 255, 255), wh=wh[::-1]).save(MULTI / f"object_{i}.png")  # the other orientation
        rows.append({"images": [f"scene_{i}.png", f"object_{i}.png"], "instruction": instruction})
    (MULTI / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
