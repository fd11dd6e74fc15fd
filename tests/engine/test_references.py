"""Several reference images per prompt and edits at their source's aspect ratio, end to end: the three data
sources, the size buckets (a batch, so a group, never mixes sizes; resume continues the same stream), `square`,
the single-reference editors' refusal, the new editors' runs on a two-reference, non-square manifest, a reward
written for one source running unchanged on it, and exact resume of such a run."""

import json

import pytest
import torch
from helpers import REPO, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rlkit.core.errors import UserError
from rlkit.core.layout import EditLayout
from rlkit.data import EditItem, PromptStream, read_items
from rlkit.trainer import Trainer

MULTI = REPO / "recipes" / "data" / "tiny_multi" / "prompts.jsonl"


def _cfg(**kw):
    from omegaconf import OmegaConf

    base = {"source": "jsonl", "path": "", "split": "train", "image_column": "image",
            "instruction_column": "instruction", "instructions": [], "shuffle": True}
    return OmegaConf.create({**base, **kw})


def _png(path, size=(48, 32), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_a_manifest_row_gives_several_images_in_order(tmp_path):
    _png(tmp_path / "scene.png", (64, 32))
    _png(tmp_path / "hat.png", (20, 40))
    (tmp_path / "m.jsonl").write_text(json.dumps({"images": ["scene.png", "hat.png"], "instruction": "add the hat",
                                                  "style": 3}) + "\n" + json.dumps({"image": "hat.png",
                                                                                     "instruction": "red"}) + "\n")
    items = read_items(_cfg(path=str(tmp_path / "m.jsonl")))
    assert [p.name for p in items[0].images] == ["scene.png", "hat.png"] and items[0].metadata == {"style": 3}
    assert items[0].image.name == "scene.png" and len(items[1].images) == 1
    assert items[0].origin.endswith("m.jsonl:1")
    batch = PromptStream(items[:1], EditLayout(32, multiple=8), 0).next_batch(1)
    assert batch.sources.shape == (1, 3, 24, 48)  # about 32^2 pixels at 2:1, sides on 8
    assert [tuple(r.shape) for r in batch.references[0]] == [(3, 24, 48), (3, 48, 24)]


@pytest.mark.parametrize("row,needle", [
    ({"image": "a.png", "images": ["a.png"], "instruction": "x"}, "'image' \\(or 'images'"),
    ({"images": [], "instruction": "x"}, "'images' must be a non-empty list"),
    ({"images": "a.png", "instruction": "x"}, "'images' must be a non-empty list"),
    ({"images": ["a.png", 3], "instruction": "x"}, "'images'\\[1\\] must be a file path"),
])
def test_bad_image_lists_name_the_line(tmp_path, row, needle):
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=needle) as err:
        read_items(_cfg(path=str(tmp_path / "m.jsonl")))
    assert "m.jsonl:1" in str(err.value)


def test_a_folder_entry_with_images_is_one_prompt(tmp_path):
    (tmp_path / "try_on").mkdir()
    _png(tmp_path / "try_on" / "1_person.png")
    _png(tmp_path / "try_on" / "2_garment.png")
    (tmp_path / "try_on.txt").write_text("dress the person in the garment")
    _png(tmp_path / "single.png")
    items = read_items(_cfg(source="folder", path=str(tmp_path), instructions=["make it red"]))
    assert [len(it.images) for it in items] == [1, 2]
    assert [p.name for p in items[1].images] == ["1_person.png", "2_garment.png"]
    assert items[1].instruction == "dress the person in the garment"


def test_an_hf_column_of_image_lists_gives_several_references(tmp_path):
    import datasets

    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (32, 48))
    ds = datasets.Dataset.from_dict({"imgs": [[str(a), str(b)]], "text": ["combine them"]})
    ds.cast_column("imgs", datasets.Sequence(datasets.Image())).save_to_disk(str(tmp_path / "ds"))
    items = read_items(_cfg(source="hf", path=str(tmp_path / "ds"), image_column="imgs", instruction_column="text"))
    assert len(items[0].images) == 2 and items[0].images[1].size == (32, 48)


def _items(sizes):
    return [EditItem([Image.new("RGB", s, (i * 7 % 255, 0, 0))], f"edit {i}", f"k{i}") for i, s in enumerate(sizes)]


SIZES = st.lists(st.sampled_from([(64, 32), (32, 64), (48, 48), (40, 30), (100, 20)]), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=SIZES, n=st.integers(1, 4), stop=st.integers(0, 6))
def test_batches_hold_one_size_and_resume_continues_the_same_stream(sizes, n, stop):
    """Whatever the mix of aspect ratios: every batch has n prompts of one edit size (the size of each of its
    prompts), every prompt comes round, and a stream restored from its state after `stop` batches hands out the
    batches the uninterrupted stream does."""
    layout = EditLayout(32, multiple=8)
    items = _items(sizes)
    straight = PromptStream(items, layout, seed=3)
    batches = [straight.next_batch(n) for _ in range(stop + 4)]
    for b in batches:
        assert len(b) == n
        hw = tuple(b.sources.shape[-2:])
        for key in b.keys:
            w, h = layout.edit_size([items[int(key[1:])].images[0].size])
            assert (h, w) == hw
    drawn = {k for b in batches for k in b.keys}
    if stop + 4 >= len(items) * 3:  # long enough for every bucket to fill
        assert drawn == {it.key for it in items}
    first = PromptStream(items, layout, seed=3)
    for _ in range(stop):
        first.next_batch(n)
    resumed = PromptStream(items, layout, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through state.json
    for b in batches[stop:]:
        assert resumed.next_batch(n).keys == b.keys


def test_one_size_gives_the_stream_of_square_crops(tmp_path):
    """With every source of one shape the stream draws exactly as before sizes existed: the permutation, n at a
    time; square=true centre-crops as before."""
    from rlkit.data import load_image

    sizes = [(48, 48)] * 5
    paths = [_png(tmp_path / f"{i}.png", s, (i * 40, 10, 10)) for i, s in enumerate(sizes)]
    items = [EditItem([p], f"edit {i}", f"k{i}") for i, p in enumerate(paths)]
    order = torch.randperm(5, generator=torch.Generator().manual_seed(2 * 1_000_003)).tolist()
    stream = PromptStream(items, EditLayout(32, multiple=4), seed=2)
    assert stream.next_batch(2).keys == [f"k{i}" for i in order[:2]]
    wide = _png(tmp_path / "wide.png", (80, 40))
    square = PromptStream([EditItem([wide], "x", "w")], EditLayout(32, multiple=4, square=True), 0).next_batch(1)
    assert torch.equal(square.sources[0], load_image(wide, 32)) and square.references is None


def test_a_single_reference_editor_refuses_a_multi_reference_dataset(tmp_path):
    from rlkit.preflight import preflight

    cfg = tiny_config(tmp_path, f"data.path={MULTI}")
    problems = preflight(cfg)
    assert any("tiny_multi/prompts.jsonl:1: 2 reference images, but flux_kontext_tiny takes 1 (4 such prompts)" in p
               for p in problems), problems
    assert not preflight(tiny_config(tmp_path, f"data.path={MULTI}", "policy.name=qwen_image_edit_plus_tiny"))


EDITORS = {"qwen_image_edit_plus_tiny": (), "flux2_tiny": ("policy.reference_resolution=96",)}  # FLUX.2: sides >= 64


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_the_new_editors_train_on_two_references_and_non_square_sources(editor, tmp_path):
    """A tiny run on the two-reference manifest (wide and tall scenes): the rollouts have the scenes' own
    shapes, never mixed in a group, the ratio is 1 at the first update, and the run exports. The README's
    single-source reward runs unchanged; a reward that looks at every reference sees both, in order."""
    seen = []

    def keeps_the_source(batch):  # written for one source: edited and source have one shape
        seen.append((tuple(batch.edited.shape), tuple(batch.source.shape), [len(r) for r in batch.all_references],
                     [tuple(r[1].shape) for r in batch.all_references]))
        return (1 - (batch.edited - batch.source).abs().mean(dim=(1, 2, 3))).float()

    from rlkit.api import train

    run = train("tiny_edit", [f"output_dir={tmp_path / 'run'}", f"data.path={MULTI}", f"policy.name={editor}",
                              *EDITORS[editor], "train.steps=2", "sampler.num_steps=3", "algorithm.group_size=2",
                              "algorithm.micro_batch=4", "train.report=false"], rewards=[keeps_the_source])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["ratio_mean"] - 1) < 1e-4
    from rlkit.policies import POLICIES
    from rlkit.policies.registry import load

    stock = load(POLICIES[editor].editor.tiny)(seed=0)  # final/ into the stock pipeline class (its output equals
    stock.load_lora_weights(str(run / "final"))  # the trained policy's: tests/engine/test_export.py)
    assert [c.r for c in stock.transformer.peft_config.values()] == [8]  # the recipe's rank, one adapter
    shapes = {s[0][2:] for s in seen}
    assert all(s[0] == s[1] for s in seen) and all(h != w for h, w in shapes)  # non-square, one shape per batch
    assert all(counts == [2] * len(counts) for _, _, counts, _ in seen)
    for edited, _, _, objects in seen:  # the object, the second reference: in the other orientation than its scene
        wide_edit = edited[3] > edited[2]
        scene_wide = wide_edit if editor == "flux2_tiny" else not wide_edit  # 2509: the edit follows the object
        assert all((w < h) == scene_wide for _, h, w in objects)


def test_a_multi_reference_run_resumes_bit_identically(tmp_path):
    from rlkit.cli import main

    overrides = [f"data.path={MULTI}", "policy.name=qwen_image_edit_plus_tiny", "sampler.num_steps=3",
                 "train.save_every=1", "train.keep_last=0"]
    straight = Trainer(tiny_config(tmp_path / "a", *overrides, "train.steps=3"), progress=False).fit()
    halted = tiny_config(tmp_path / "b", *overrides, "train.steps=1")
    Trainer(halted, progress=False).fit()
    assert main(["resume", halted.output_dir, "train.steps=3"]) == 0
    from safetensors.torch import load_file

    a = load_file(straight / "checkpoints" / "step_000003" / "adapter.safetensors")
    b = load_file(tmp_path / "b" / "run" / "checkpoints" / "step_000003" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_report_and_the_card_show_every_reference(tmp_path):
    """Evaluation grids hold each prompt's references beside its source (their tiles recorded beside the grid);
    the report shows them next to the samples, whatever their sizes; the model card says how many a prompt
    had."""
    run = Trainer(tiny_config(tmp_path, f"data.path={MULTI}", "policy.name=qwen_image_edit_plus_tiny",
                              "sampler.num_steps=2", "eval.every=2", "eval.samples_per_prompt=2",
                              "train.report=true"), progress=False).fit()
    scores = json.loads((run / "samples" / "eval_step_000002.json").read_text())
    assert len(scores["tiles"]) == 4 and all(len(t["references"]) == 1 and len(t["samples"]) == 2
                                             for t in scores["tiles"])
    sizes = {tuple(t["source"][2:]) for t in scores["tiles"]}
    assert len(sizes) == 2  # wide and tall prompts in one grid
    page = (run / "report.html").read_text()
    assert page.count("<small>reference 2</small>") == 4
    assert "Each prompt had 2 reference images, in order (the first is the source)." in \
        (run / "final" / "README.md").read_text()


@pytest.mark.parametrize("algorithm", ["dpo", "nft", "awm", "dgpo"])
def test_every_objective_trains_a_multi_reference_editor(algorithm, tmp_path):
    """The objectives that draw their own timesteps per sample (NFT, AWM, DGPO) or pair samples (DPO) call the
    multi-reference editors as GRPO does: a tiny run completes and its loss is finite."""
    run = Trainer(tiny_config(tmp_path, f"data.path={MULTI}", "policy.name=flux2_tiny",
                              "policy.reference_resolution=96", f"algorithm.name={algorithm}", "sampler.num_steps=3",
                              "train.steps=1"), progress=False).fit()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and all(v is None or v == v for v in row.values() if isinstance(v, float))
