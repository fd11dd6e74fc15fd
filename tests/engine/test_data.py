"""Prompt sources and image handling: manifest, folder, HF datasets, bad images, resumable order."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from rlkit.core.errors import UserError
from rlkit.data import PromptStream, load_image, read_items
from rlkit.recipe import DataConfig


def _cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


def _png(path, mode="RGB", size=(40, 24), color=(255, 0, 0)):
    Image.new(mode, size, color if mode != "L" else 128).save(path)
    return path


def test_jsonl_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "imgs/a.png", "instruction": "make it blue",
                                                  "tag": 7}) + "\n\n")
    items = read_items(_cfg(source="jsonl", path=str(tmp_path / "m.jsonl")))
    assert len(items) == 1 and items[0].image == (tmp_path / "imgs" / "a.png").resolve()
    assert items[0].metadata == {"tag": 7}


@pytest.mark.parametrize("line,needle", [
    ('{"image": "a.png", "instruction": "  "}', "empty or missing instruction"),
    ('{"image": "a.png"', "not valid JSON"),
    ('["a.png"]', "expected an object"),
    ('{"image": 5, "instruction": "x"}', "'image' must be a file path \\(a string\\), got 5"),
    ('{"image": null, "instruction": "x"}', "'image' must be a file path"),
    ('{"image": ["a.png"], "instruction": "x"}', "'image' must be a file path"),
])
def test_bad_manifest_lines_name_the_line(tmp_path, line, needle):
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(UserError, match=needle) as err:
        read_items(_cfg(source="jsonl", path=str(tmp_path / "m.jsonl")))
    assert "m.jsonl:1" in str(err.value)


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "m.jsonl").write_text("")
    with pytest.raises(UserError, match="no \\(image, instruction\\) pairs"):
        read_items(_cfg(source="jsonl", path=str(tmp_path / "m.jsonl")))


def test_folder_with_sidecar_and_shared_instructions(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("remove the sky\n")
    items = read_items(_cfg(source="folder", path=str(tmp_path), instructions=["make it red", "flip it"]))
    assert [(i.image.name, i.instruction) for i in items] == [
        ("a.png", "remove the sky"), ("b.png", "make it red"), ("b.png", "flip it")]


def test_hf_dataset_from_disk(tmp_path):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (20, 20), (0, 255, 0))] * 2,
                                     "text": ["make it red", "make it blue"]}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    items = read_items(_cfg(source="hf", path=str(tmp_path / "ds"), image_column="img", instruction_column="text"))
    batch = PromptStream(items, 16, seed=0, shuffle=False).next_batch(2)
    assert batch.instructions == ["make it red", "make it blue"]
    assert batch.sources[0, 1].mean().item() == pytest.approx(1.0)
    with pytest.raises(UserError, match="no column 'caption'"):
        read_items(_cfg(source="hf", path=str(tmp_path / "ds"), image_column="img", instruction_column="caption"))
    # image paths as plain strings: refused when the data is read (validate), not at the first step
    datasets.Dataset.from_dict({"img": ["a.png", "b.png"], "text": ["x", "y"]}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(UserError, match="column 'img' holds strings, not images; cast it first"):
        read_items(_cfg(source="hf", path=str(tmp_path / "s"), image_column="img", instruction_column="text"))


def test_images_are_converted_cropped_and_resized(tmp_path):
    gray = load_image(_png(tmp_path / "g.png", mode="L"), 16)
    assert gray.shape == (3, 16, 16) and torch.allclose(gray[0], gray[2])
    rgba = tmp_path / "t.png"
    Image.new("RGBA", (30, 30), (255, 0, 0, 0)).save(rgba)  # fully transparent: composited over white
    assert load_image(rgba, 16).min().item() == pytest.approx(1.0)
    odd = load_image(_png(tmp_path / "odd.png", size=(97, 13)), 32)
    assert odd.shape == (3, 32, 32) and 0 <= odd.min() and odd.max() <= 1


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(UserError, match="image not found: .*nope.png"):
        load_image(tmp_path / "nope.png", 16)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_image(tmp_path / "broken.png", 16)


def test_prompt_stream_resumes_where_it_stopped(tmp_path):
    for i in range(5):
        _png(tmp_path / f"{i}.png", color=(i * 40, 0, 0))
    items = read_items(_cfg(source="folder", path=str(tmp_path), instructions=["x"]))
    a = PromptStream(items, 8, seed=3)
    first = [a.next_batch(2).keys for _ in range(4)]  # crosses an epoch boundary
    b = PromptStream(items, 8, seed=3)
    b.next_batch(2), b.next_batch(2)
    c = PromptStream(items, 8, seed=3)
    c.load_state_dict(b.state_dict())
    assert [c.next_batch(2).keys for _ in range(2)] == first[2:]


def test_a_manifest_not_in_utf8_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_bytes('{"image": "a.png", "instruction": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="m.jsonl: not UTF-8 text \\(byte 38"):
        read_items(_cfg(source="jsonl", path=str(tmp_path / "m.jsonl")))


# ------------------------------------------------------------------ images as people have them
def _grey_file(path, level: float, kind: str):
    """A flat grey image at `level` in [0, 1], stored the way `kind` stores it."""
    import numpy as np

    if kind == "png16":  # 16-bit greyscale PNG (scanners, medical and microscopy exports)
        Image.fromarray(np.full((8, 8), round(level * 65535), np.uint16)).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if kind == "tiff_float":  # 32-bit float TIFF in [0, 1] (HDR and scientific pipelines)
        Image.fromarray(np.full((8, 8), level, np.float32), mode="F").save(path.with_suffix(".tif"))
        return path.with_suffix(".tif")
    if kind == "tiff_int32":  # 32-bit integer TIFF holding 8-bit values
        Image.fromarray(np.full((8, 8), round(level * 255), np.int32)).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif")
    if kind == "rgb16":  # 16-bit RGB PNG (PIL reads it as 8-bit RGB)
        import zlib

        raw = b"".join(b"\x00" + (round(level * 65535).to_bytes(2, "big") * 3) * 8 for _ in range(8))
        def chunk(tag, data):
            return (len(data).to_bytes(4, "big") + tag + data
                    + zlib.crc32(tag + data).to_bytes(4, "big"))
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (8).to_bytes(4, "big") * 2 + bytes([16, 2, 0, 0, 0]))
               + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        path.with_suffix(".png").write_bytes(png)
        return path.with_suffix(".png")
    mode = {"grey8": "L", "rgba": "RGBA", "cmyk_jpeg": "CMYK"}[kind]
    v = round(level * 255)
    color = {"L": v, "RGBA": (v, v, v, 255), "CMYK": (0, 0, 0, 255 - v)}[mode]
    out = path.with_suffix(".jpg" if mode == "CMYK" else ".png")
    Image.new(mode, (8, 8), color).save(out, **({"quality": 100} if mode == "CMYK" else {}))
    return out


KINDS = ["png16", "tiff_float", "tiff_int32", "rgb16", "grey8", "rgba", "cmyk_jpeg"]


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(level=st.floats(0, 1), kind=st.sampled_from(KINDS))
def test_every_image_kind_loads_at_its_brightness(tmp_path_factory, level, kind):
    """A grey level survives every way of storing it (PIL's own convert('RGB') turns 16-bit grey white and
    float grey black)."""
    path = _grey_file(tmp_path_factory.mktemp("img") / "grey", level, kind)
    loaded = load_image(path, 8)
    tolerance = 3 / 255 if kind == "cmyk_jpeg" else 1 / 255
    assert abs(float(loaded.mean()) - level) <= tolerance + 1e-6, (kind, level, float(loaded.mean()))


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    img = Image.new("RGB", (32, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 32))  # stored: red left half
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "photo.jpg", 32)
    top, bottom = loaded[:, :12].mean(dim=(1, 2)), loaded[:, 20:].mean(dim=(1, 2))
    assert top[0] > 0.9 and top[2] < 0.1 and bottom[2] > 0.9  # as displayed: red on top


def test_non_finite_float_pixels_are_named(tmp_path):
    import numpy as np

    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(UserError, match="cannot read image .*nan.tif.*NaN or infinite"):
        load_image(tmp_path / "nan.tif", 8)
