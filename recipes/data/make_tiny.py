"""Regenerate the tiny editing prompts (simple shapes on plain backgrounds) used by tiny_edit.yaml.

    python recipes/data/make_tiny.py
"""

import json
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "tiny"
SHAPES = [
    ("square", (40, 90, 200), (235, 235, 235), "make the square red"),
    ("circle", (30, 160, 60), (40, 40, 40), "turn the circle red"),
    ("triangle", (220, 200, 30), (120, 120, 140), "paint the triangle red"),
    ("bar", (200, 60, 200), (250, 250, 250), "make the bar red and keep the background"),
]


def draw(shape: str, fill, background, size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
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


if __name__ == "__main__":
    main()
