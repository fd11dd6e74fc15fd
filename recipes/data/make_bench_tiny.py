"""Regenerate the tiny GEdit-Bench and ImgEdit-Bench fixtures, stored exactly as the benchmarks publish theirs:
GEdit-Bench as its hub dataset's parquet (task_type, key, instruction, instruction_language, input_image,
input_image_raw, Intersection_exist), ImgEdit-Bench Basic as basic_edit.json beside its image folder.

    python recipes/data/make_bench_tiny.py
"""

import json
from pathlib import Path

from make_tiny import draw

HERE = Path(__file__).parent
GEDIT = [  # task_type, key, instruction, language, intersection, shape
    ("color_alter", "a1", "make the square red", "en", True, "square"),
    ("color_alter", "a2", "把圆变成红色", "cn", True, "circle"),
    ("subject-remove", "b1", "remove the triangle", "en", False, "triangle"),
    ("subject-remove", "b2", "remove the bar", "en", True, "bar"),
    ("style_change", "c1", "make it look like a pencil sketch", "en", False, "square"),
    ("style_change", "c2", "把它变成水彩画", "cn", True, "circle"),
]
IMGEDIT = {  # key: (subdir/file, instruction, edit_type, shape)
    "1001": ("animal/1001.jpg", "add a red hat to the square", "add", "square"),
    "1002": ("object/1002.jpg", "remove the circle", "remove", "circle"),
    "1003": ("object/1003.jpg", "turn the scene into an oil painting", "style", "triangle"),
    "1004": ("animal/1004.jpg", "replace the bar with a ball", "replace", "bar"),
}
COLOURS = {"square": ((40, 90, 200), (235, 235, 235)), "circle": ((30, 160, 60), (40, 40, 40)),
           "triangle": ((220, 200, 30), (120, 120, 140)), "bar": ((200, 60, 200), (250, 250, 250))}


def gedit() -> None:
    import datasets

    images = {s: draw(s, *COLOURS[s], size=40) for s in COLOURS}
    raw = {s: draw(s, *COLOURS[s], size=56) for s in COLOURS}  # input_image_raw: the larger original
    rows = {"task_type": [], "key": [], "instruction": [], "instruction_language": [], "input_image": [],
            "input_image_raw": [], "Intersection_exist": []}
    for task, key, text, lang, both, shape in GEDIT:
        for column, value in zip(rows, (task, key, text, lang, images[shape], raw[shape], both)):
            rows[column].append(value)
    features = datasets.Features({"task_type": datasets.Value("string"), "key": datasets.Value("string"),
                                  "instruction": datasets.Value("string"),
                                  "instruction_language": datasets.Value("string"), "input_image": datasets.Image(),
                                  "input_image_raw": datasets.Image(), "Intersection_exist": datasets.Value("bool")})
    out = HERE / "gedit_tiny" / "data"
    out.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(out / "train-00000-of-00001.parquet"))


def imgedit() -> None:
    out = HERE / "imgedit_tiny"
    for key, (path, _, _, shape) in IMGEDIT.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        draw(shape, *COLOURS[shape], size=48).save(out / path, quality=95)
    table = {key: {"id": path, "prompt": text, "edit_type": kind} for key, (path, text, kind, _) in IMGEDIT.items()}
    (out / "basic_edit.json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    gedit()
    imgedit()
