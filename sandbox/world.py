"""A procedural editing world with ground truth: shapes in colours on plain backgrounds.

Every (source, instruction) has an exact target, so any edited image can be scored against the truth. A pixel
is right when its colour is within a tolerance of the colour it should have (the largest channel error; credit
falls linearly from 1 at no error to 0 at the tolerance), so a colour half-way between two others is wrong, as
the eye sees it:
- `follow`: the share of the required change that was made, over the pixels where source and target differ.
  Those are split into what must be cleared (the target shows the background there) and what must be painted
  (a new or changed object); follow is the geometric mean of the two, so a move needs both halves and an
  empty canvas does not half-follow it. The tolerance is never looser than the change itself: doing nothing is 0.
- `preserve`: how untouched everything else is, outside the edit region (dilated by one pixel: edges may
  blur): the geometric mean of the objects that must stay and of the background. Wiping an object that should
  stay costs its whole share, not the few per cent of the canvas it covers.
- `overall`: sqrt(follow * preserve), so an edit must both follow the instruction and keep the rest.
World 2 scored by the mean colour error over the whole region and the whole rest: an empty canvas scored
0.34 on the held-out prompts, twice the starting editor, and RL learnt to wipe scenes (docs/experiments.md,
2026-12-01).
Scenes are plain JSON (`Scene.to_json`) so they travel in manifests and reward metadata.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (50, 80, 220), "yellow": (230, 200, 40),
           "purple": (150, 60, 190), "white": (240, 240, 240)}
BACKGROUNDS = {"grey": (110, 110, 110), "black": (20, 20, 20), "teal": (30, 100, 110)}
SHAPES = ("square", "circle", "triangle")
CELLS = (0, 1, 2)  # a 3 x 3 grid of positions
SIZES = {"small": 0.22, "large": 0.34}  # half-extent as a fraction of the canvas
PLACES = {(0, 0): "top left", (1, 0): "top", (2, 0): "top right", (0, 1): "left", (1, 1): "centre",
          (2, 1): "right", (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right"}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SINGLE_OPERATIONS = ("recolour", "remove", "move", "add", "resize")
OPERATIONS = (*SINGLE_OPERATIONS, "compose")  # compose: two single edits in one instruction, joined by "and"
WORLD_VERSION = 2  # bumped when instructions or rendering change: a cache prepared with another one is rebuilt
TRUTH_VERSION = 3  # bumped when gt_scores changes: the editor is the same, the judge (trained on it) is not
TOLERANCE = 0.25  # largest channel error at which a pixel earns no credit (palette colours differ by >= 0.275)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    x: int  # grid cell, 0..2
    y: int
    size: str = "small"

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    background: str
    objects: list[Obj] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"background": self.background, "objects": [asdict(o) for o in self.objects]})

    @classmethod
    def from_json(cls, text: str | dict) -> Scene:
        d = json.loads(text) if isinstance(text, str) else text
        return cls(d["background"], [Obj(**o) for o in d["objects"]])


def render(scene: Scene, size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    d = ImageDraw.Draw(img)
    cell = size / 3
    for o in scene.objects:
        cx, cy, r = (o.x + 0.5) * cell, (o.y + 0.5) * cell, SIZES[o.size] * size
        box = (round(cx - r), round(cy - r), round(cx + r) - 1, round(cy + r) - 1)
        fill = COLOURS[o.colour]
        if o.shape == "square":
            d.rectangle(box, fill=fill)
        elif o.shape == "circle":
            d.ellipse(box, fill=fill)
        else:
            d.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3).permute(
        2, 0, 1).float() / 255


# ------------------------------------------------------------------------------------------- scenes
def random_scene(rng: random.Random, max_objects: int = 2) -> Scene:
    n = rng.randint(1, max_objects)
    cells = rng.sample([(x, y) for x in CELLS for y in CELLS], n)
    objs, names = [], set()
    for x, y in cells:
        while True:
            o = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), x, y, rng.choice(list(SIZES)))
            if o.name not in names:  # every object can be named unambiguously
                break
        names.add(o.name)
        objs.append(o)
    return Scene(rng.choice(list(BACKGROUNDS)), objs)


def _free_cells(scene: Scene) -> list[tuple[int, int]]:
    taken = {(o.x, o.y) for o in scene.objects}
    return [(x, y) for x in CELLS for y in CELLS if (x, y) not in taken]


def random_edit(scene: Scene, rng: random.Random, operations=OPERATIONS) -> tuple[str, Scene] | None:
    """One instruction and the exact target scene, or None when `operations` has nothing valid here."""
    options = list(operations)
    rng.shuffle(options)
    for op in options:
        objs = list(scene.objects)
        if op == "recolour" and objs:
            o = rng.choice(objs)
            names = {x.name for x in objs}
            colours = [c for c in COLOURS if c != o.colour and f"{c} {o.shape}" not in names]
            c = rng.choice(colours)
            return f"make the {o.name} {c}", Scene(scene.background, [replace(x, colour=c) if x == o else x
                                                                      for x in objs])
        if op == "remove" and objs:
            o = rng.choice(objs)
            return f"remove the {o.name}", Scene(scene.background, [x for x in objs if x != o])
        if op == "move" and objs:
            o = rng.choice(objs)
            free = set(_free_cells(scene))
            moves = [(d, (o.x + dx, o.y + dy)) for d, (dx, dy) in DIRECTIONS.items() if (o.x + dx, o.y + dy) in free]
            if moves:
                d, (x, y) = rng.choice(moves)
                return f"move the {o.name} {d}", Scene(scene.background, [replace(x_, x=x, y=y) if x_ == o else x_
                                                                          for x_ in objs])
        if op == "add" and _free_cells(scene):
            x, y = rng.choice(_free_cells(scene))
            names = {o.name for o in objs}
            while True:
                new = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), x, y, "small")
                if new.name not in names:
                    break
            return f"add a {new.name} at the {PLACES[(x, y)]}", Scene(scene.background, [*objs, new])
        if op == "resize" and objs:
            o = rng.choice(objs)
            bigger = o.size == "small"
            word = "bigger" if bigger else "smaller"
            return f"make the {o.name} {word}", Scene(scene.background, [
                replace(x, size="large" if bigger else "small") if x == o else x for x in objs])
        if op == "compose" and (first := random_edit(scene, rng, SINGLE_OPERATIONS)) is not None:
            untouched = set(objs) & set(first[1].objects)  # the second edit names one of these (or adds one),
            for _ in range(8):  # so every name in the instruction means the same object before and after
                second = random_edit(first[1], rng, SINGLE_OPERATIONS)
                if second is not None and set(first[1].objects) - set(second[1].objects) <= untouched:
                    return f"{first[0]} and {second[0]}", second[1]
    return None


# ------------------------------------------------------------------------------------------- ground truth
def edit_region(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: pixels the instruction requires to change, dilated by one pixel (edges may blur)."""
    dilated = torch.nn.functional.max_pool2d(_changed(source, target)[None, None].float(), 3, stride=1, padding=1)
    return dilated[0, 0] > 0


def _changed(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (source - target).abs().amax(dim=0) > 1e-3


def background_mask(image: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: the pixels showing the scene's background colour (the background palette colour that covers
    most of the image; object colours are never background colours). All False for an image of no scene."""
    masks = [(image - torch.tensor(c).view(3, 1, 1) / 255).abs().amax(dim=0) < 1e-3 for c in BACKGROUNDS.values()]
    return max(masks, key=lambda m: int(m.sum()))


def washout(image: torch.Tensor, strength: float) -> torch.Tensor:
    """Pull every pixel towards mid-grey by ``strength``: the low-contrast, faded look of an editor trained on
    badly processed targets. A global flaw: it costs preservation everywhere, and RL can learn it away."""
    return (1 - strength) * image + strength * 0.5


def _credit(image: torch.Tensor, want: torch.Tensor, tolerance: torch.Tensor | float = TOLERANCE) -> torch.Tensor:
    """Per pixel, 1 where the colour is right, falling to 0 at `tolerance` (largest channel error)."""
    return (1 - (image - want).abs().amax(dim=0) / tolerance).clamp(0, 1)


def _geometric_mean(credit: torch.Tensor, parts: list[torch.Tensor]) -> float:
    """The geometric mean over the non-empty parts (masks) of each part's mean credit; 1 if all are empty."""
    means = [float(credit[m].mean()) for m in parts if m.any()]
    return math.prod(means) ** (1 / len(means)) if means else 1.0


def gt_scores(edited: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Ground truth for one edit; tensors [3, H, W] in [0, 1] at the same size."""
    changed, outside = _changed(source, target), ~edit_region(source, target)
    clear = changed & background_mask(target)
    need = (source - target).abs().amax(dim=0).clamp(min=1e-3)  # never more tolerant than the change itself
    follow = _geometric_mean(_credit(edited, target, need.clamp(max=TOLERANCE)), [clear, changed & ~clear])
    bg = background_mask(source)
    preserve = _geometric_mean(_credit(edited, source), [outside & ~bg, outside & bg])
    return {"follow": follow, "preserve": preserve, "overall": math.sqrt(follow * preserve)}
