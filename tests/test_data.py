"""Prompt sources and image handling: manifest, folder, HF datasets, bad images, resumable order."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rlkit.config import DataConfig
from rlkit.data import PromptStream, load_image, read_items
from rlkit.errors import UserError


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
