"""At what size each prompt is edited, and at what size its reference images are handed to the policy.

An edit keeps its source's aspect ratio within a pixel budget (about `policy.resolution`^2 pixels), its sides
rounded to the editor's multiple (the VAE's downsampling x the 2x2 packing), as the pipelines round them. Which
reference sets the aspect ratio is the pipeline's rule: the first for FLUX.1 Kontext, Qwen-Image-Edit and FLUX.2,
the last for Qwen-Image-Edit-2509/2511. `square` keeps the earlier behaviour: every image centre-cropped to a
`resolution` x `resolution` square.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from rlkit.core.errors import UserError
from rlkit.core.images import cover, fit_area, image_size, image_to_tensor, open_rgb, resize_to, to_rgb


@dataclass(frozen=True)
class EditLayout:
    resolution: int  # the edit's pixel budget: about resolution^2 pixels
    multiple: int = 16  # every side a multiple of this
    reference_resolution: int | None = None  # each reference's pixel budget (None: the edit's)
    size_from: str = "first"  # which reference sets the edit's aspect ratio: first or last
    square: bool = False  # centre-crop every image to resolution x resolution

    @property
    def reference_side(self) -> int:
        return self.reference_resolution or self.resolution

    def edit_size(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """(width, height) of the edit of a prompt whose references have these (width, height) sizes."""
        if self.square:
            return self.resolution, self.resolution
        return fit_area(sizes[-1] if self.size_from == "last" else sizes[0], self.resolution, self.multiple)

    def reference_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.square:
            return self.reference_side, self.reference_side
        return fit_area(size, self.reference_side, self.multiple)

    def bucket(self, images: list) -> tuple[int, int]:
        """The edit size of a prompt, from its images' headers only (prompts of one size are sampled together)."""
        if self.square:
            return self.resolution, self.resolution
        return self.edit_size([image_size(im) for im in images])

    def load(self, images: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the source: the first reference at the edit's size, [3, H, W]; every reference at its own size)."""
        pil = [_rgb(im) for im in images]
        if self.square:
            source = image_to_tensor(pil[0], self.resolution)
            refs = [source if self.reference_side == self.resolution and i == 0 else
                    image_to_tensor(im, self.reference_side) for i, im in enumerate(pil)]
            return source, refs
        edit = self.edit_size([im.size for im in pil])
        # the reference that set the size is resized to it (as the pipelines do); another one is cropped to fit
        sets_size = len(pil) == 1 or self.size_from == "first"
        source = resize_to(pil[0], edit) if sets_size else cover(pil[0], edit)
        refs = []
        for im in pil:
            size = self.reference_size(im.size)
            refs.append(source if size == edit and im is pil[0] and sets_size else resize_to(im, size))
        return source, refs


def _rgb(image) -> Image.Image:
    if isinstance(image, Path):
        return open_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    raise UserError(f"an image is a {type(image).__name__}, not an image")
