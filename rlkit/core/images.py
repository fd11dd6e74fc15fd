"""Image files as RGB the way a person sees them, the sizes an editor works at (an area budget at the image's
own aspect ratio, sides on the pipeline's multiple), and the [3, H, W] tensors the policies take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from rlkit.core.errors import UserError

MAX_PIXELS = 64_000_000  # refuse decompression bombs with a clear message instead of PIL's warning


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as the image is meant to be seen: EXIF orientation applied (phone photos are stored sideways),
    high-bit-depth grey scaled to 8 bits (PIL's own conversion clips 16-bit grey to white and float to black),
    transparency composited over white."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit_grey(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit. Integers are scaled by their container's range (16-bit PNGs
    use all of it; a 32-bit image holding 8- or 16-bit values is read as such); floats in [0, 1] by 255."""
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the image holds NaN or infinite pixel values")
    top = float(values.max(initial=0.0))
    if img.mode == "F":
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top
    else:
        scale = 65535.0 if img.mode.startswith("I;16") or top > 255 else 255.0
        scale = max(scale, top)
    return Image.fromarray(np.clip(values / scale * 255.0, 0, 255).round().astype(np.uint8), "L")


def image_to_tensor(img: Image.Image, resolution: int) -> torch.Tensor:
    """Centre-crop to a square, resize, return [3, R, R] in [0, 1]."""
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
    return pil_to_tensor(img)


def fit_area(size: tuple[int, int], side: int, multiple: int) -> tuple[int, int]:
    """(width, height) of about side x side pixels at the aspect ratio of ``size`` = (width, height), each side
    rounded to ``multiple`` (at least one multiple): how the editors size an image for a pixel budget."""
    w, h = size
    aspect = w / h
    width = max(multiple, round((side * side * aspect) ** 0.5 / multiple) * multiple)
    height = max(multiple, round((side * side / aspect) ** 0.5 / multiple) * multiple)
    return width, height


def resize_to(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resized to exactly ``size`` = (width, height) (the aspect ratio moves by at most the rounding)."""
    img = to_rgb(img)
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.BICUBIC)
    return pil_to_tensor(img)


def cover(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resized to cover ``size`` = (width, height), then centre-cropped to it: no distortion."""
    img = to_rgb(img)
    w, h = img.size
    scale = max(size[0] / w, size[1] / h)
    big = (max(size[0], round(w * scale)), max(size[1], round(h * scale)))
    img = img.resize(big, Image.BICUBIC)
    left, top = (big[0] - size[0]) // 2, (big[1] - size[1]) // 2
    return pil_to_tensor(img.crop((left, top, left + size[0], top + size[1])))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> an 8-bit RGB image (exact for tensors made from 8-bit images)."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def image_size(image) -> tuple[int, int]:
    """(width, height) as a person sees it (EXIF orientation applied), reading only the header of a file."""
    if isinstance(image, Image.Image):
        w, h = image.size
        orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    else:
        try:
            with Image.open(image) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UserError(f"cannot read image {image}: {err}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB (see `to_rgb`); missing, unreadable or oversized files are a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise UserError(f"image too large ({img.width}x{img.height} > {MAX_PIXELS} pixels): {path}")
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
