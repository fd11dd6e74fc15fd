"""JRM: losses, causal isolation of the score, joint training on a tiny Qwen3-VL, the plugin, evaluation."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import tiny_config

from rlkit.cli import main
from rlkit.config import load_recipe
from rlkit.rewards import RewardInput
from rlkit.rewards.jrm.backbone import tiny_backbone
from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe
from rlkit.rewards.jrm.evaluate import evaluate
from rlkit.rewards.jrm.losses import bt_loss, joint_loss, uncertain_bt_loss
from rlkit.rewards.jrm.model import JRMConfig, JRMModel
from rlkit.rewards.jrm.synthetic import COLOURS, draw, make_pairs, write_benchmark_samples
from rlkit.rewards.jrm.train import PairCollator, read_pairs, train_reward

JRM_ARGS = ["data.synthetic_pairs=128", "data.synthetic_eval_pairs=48", "train.epochs=5", "train.logging_steps=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("jrm")
    assert main(["train-reward", "jrm_tiny", f"output_dir={out}", *JRM_ARGS]) == 0
    return out


def test_bt_losses():
    mu_w, mu_l = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    assert bt_loss(mu_w, mu_l).item() == pytest.approx(
        (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(1)))) / 2, rel=1e-5)
    tiny = torch.full((2,), -10.0)  # sigma -> 0: the uncertainty-aware loss is plain BT
    assert uncertain_bt_loss(mu_w, tiny, mu_l, tiny).item() == pytest.approx(bt_loss(mu_w, mu_l).item(), rel=1e-4)
    wide = torch.zeros(2)  # more uncertainty pulls the probability of the observed order towards 1/2
    assert uncertain_bt_loss(mu_w[:1], wide[:1], mu_l[:1], wide[:1]) > bt_loss(mu_w[:1], mu_l[:1])
    probit = uncertain_bt_loss(mu_w, wide, mu_l, wide)
    mc = uncertain_bt_loss(mu_w, wide, mu_l, wide, mc_samples=20000, generator=torch.Generator().manual_seed(0))
    assert mc > probit  # Jensen: -E[log s(z)] >= -log E[s(z)], which the probit formula approximates
    z = (mu_w - mu_l) + math.sqrt(2) * torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    assert probit.item() == pytest.approx((-torch.log(torch.sigmoid(z).mean(0))).mean().item(), abs=0.02)
    tie = torch.tensor([1.0])  # a tie is best explained by equal scores
    zero, one = torch.tensor([0.0]), torch.tensor([1.0])
    assert bt_loss(zero, zero, tie) < bt_loss(one, zero, tie)
    assert joint_loss(torch.tensor(1.0), torch.tensor(5.0), 0.0).item() == 1.0
    assert joint_loss(torch.tensor(1.0), torch.tensor(5.0), 0.7).item() == pytest.approx(0.3 + 3.5)


def test_score_does_not_see_the_rationale():
    model = JRMModel(tiny_backbone(0), JRMConfig(image_size=32))
    src, edit = draw("square", COLOURS["red"]), draw("square", COLOURS["blue"])
    args = ([src] * 3, [edit] * 3, ["make the square blue"] * 3)
    with torch.no_grad():
        plain = model(model.encoder.encode(*args))
        with_rat = model(model.encoder.encode(*args, ["[250,250,750,750]: blue now.", "totally different " * 5,
                                                     None]))
    assert with_rat.lm_loss is not None and torch.isfinite(with_rat.lm_loss)
    torch.testing.assert_close(with_rat.mu, plain.mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(with_rat.log_sigma, plain.log_sigma, rtol=0, atol=1e-6)


def test_alpha_zero_turns_the_lm_loss_off(tmp_path):
    pairs = read_pairs(make_pairs(tmp_path, 4, 0))
    model = JRMModel(tiny_backbone(0), JRMConfig(image_size=32))
    for alpha, expect_grad in ((0.0, False), (0.7, True)):
        model.zero_grad(set_to_none=True)
        batch = PairCollator(model, with_rationales=alpha > 0)(pairs)
        out = model(batch["encoded"])
        rank = uncertain_bt_loss(out.mu[:4], out.log_sigma[:4], out.mu[4:], out.log_sigma[4:])
        joint_loss(rank, out.lm_loss, alpha).backward()
        lm_head = model.vlm.get_output_embeddings().weight
        assert (lm_head.grad is not None) == expect_grad


def test_joint_training_lowers_both_losses_and_beats_chance(trained):
    log = json.loads((trained / "train_log.json").read_text())
    assert log[-1]["rank_loss"] < log[0]["rank_loss"] and log[-1]["lm_loss"] < log[0]["lm_loss"]
    report = json.loads((trained / "eval.json").read_text())
    assert report["n"] == 48 and report["accuracy"] >= 0.75
    assert (trained / "final" / "jrm.json").is_file() and (trained / "final" / "head.safetensors").is_file()


def test_plugin_scores_a_reward_input(trained):
    from rlkit.plugins import build_reward

    reward = build_reward("jrm", {"path": str(trained / "final")})

    def to_t(im):
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255

    src = to_t(draw("circle", COLOURS["red"]))
    good, bad = to_t(draw("circle", COLOURS["green"])), src
    out = reward(RewardInput(torch.stack([good, bad]), torch.stack([src, src]), ["make the circle green"] * 2,
                             torch.zeros(2, dtype=torch.long)))
    assert out.scores.shape == (2,) and torch.isfinite(out.scores).all()
    assert out.uncertainty.shape == (2,) and (out.uncertainty > 0).all()
    assert out.scores[0] > out.scores[1]
    critique = reward.explain(src, good, "make the circle green", max_new_tokens=40)
    assert critique.startswith("[")  # it learned the rationale format: a 0-1000 box first


@pytest.mark.parametrize("fmt", ["pairs", "mmrb2", "editreward-bench", "genai-bench"])
def test_each_eval_format_parses_and_scores(trained, tmp_path, fmt):
    files = write_benchmark_samples(tmp_path, n=6, seed=3)
    model = JRMModel.load(trained / "final")
    report = evaluate(lambda s, e, t: model.score(s, e, t)[0], files[fmt], fmt)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["format"] == fmt
    if fmt == "mmrb2":
        assert report["judgements"] == 12
    if fmt == "editreward-bench":
        assert set(report["per_task"]) <= {"unchanged", "wrong_colour", "background"}
    if fmt == "genai-bench":
        assert report["n"] == 5 and report["ties"] == 1


def test_eval_and_explain_cli(trained, tmp_path, capsys):
    files = write_benchmark_samples(tmp_path, n=4, seed=1)
    out = tmp_path / "report.json"
    assert main(["eval-reward", str(trained / "final"), str(files["mmrb2"]), "--format", "mmrb2",
                 "--output", str(out)]) == 0
    assert json.loads(out.read_text())["judgements"] == 8
    row = json.loads(files["pairs"].read_text().splitlines()[0])
    assert main(["explain", str(trained / "final"), str(tmp_path / row["path_src"]), str(tmp_path / row["path1"]),
                 row["prompt"], "--max-new-tokens", "20"]) == 0
    assert "reward" in capsys.readouterr().out
    assert main(["eval-reward", str(tmp_path), str(files["pairs"])]) == 2  # not a JRM directory


def test_rl_run_with_the_jrm_reward(trained, tmp_path):
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, "train.steps=1", f"rewards=[{{name: jrm, kwargs: {{path: {trained / 'final'}}}}}]")
    run = Trainer(cfg, progress=False).fit()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/jrm" in row and math.isfinite(row["reward_mean"])


def test_lora_training_saves_a_plain_merged_backbone(tmp_path):
    cfg = load_recipe("jrm_tiny", [f"output_dir={tmp_path}", "data.synthetic_pairs=16", "data.eval=null",
                                   "train.epochs=1", "backbone.lora.enabled=true", "backbone.lora.rank=4",
                                   "backbone.lora.alpha=8"], schema_cls=RewardRecipe, check=check_reward_recipe)
    train_reward(cfg)
    names = json.loads((tmp_path / "final" / "backbone" / "config.json").read_text())
    assert names["model_type"] == "qwen3_vl"
    from safetensors.torch import load_file

    weights = load_file(next((tmp_path / "final" / "backbone").glob("*.safetensors")))
    assert not any("lora_" in k for k in weights)  # merged into the base weights
    model = JRMModel.load(tmp_path / "final")
    src, edit = draw("square", COLOURS["red"]), draw("square", COLOURS["blue"])
    assert torch.isfinite(model.score([src], [edit], ["make the square blue"])[0]).all()


def test_shared_source_is_encoded_once_with_the_same_scores():
    model = JRMModel(tiny_backbone(0), JRMConfig(image_size=32)).eval()
    if not model.dedupe:  # see the next test: this transformers cannot take precomputed vision features
        pytest.skip("this transformers' Qwen3-VL has no mm_encoder_outputs argument (older than 5.2x)")
    src = draw("square", COLOURS["red"])
    edits = [draw("square", COLOURS[c]) for c in ("blue", "green", "yellow")] + [src]
    calls = []
    visual = model.causal_lm.model.visual
    hook = visual.register_forward_hook(lambda m, a, kw, out: calls.append(int(kw["grid_thw"].shape[0])),
                                        with_kwargs=True)
    with torch.no_grad():
        plain = model(model.encoder.encode([src] * 4, edits, ["make the square blue"] * 4))
        shared = model(model.encoder.encode([src] * 4, edits, ["make the square blue"] * 4, dedupe=True))
    hook.remove()
    assert calls == [8, 4]  # 4 sources + 4 edits, then 1 source + 3 new edits (the 4th edit is the source)
    torch.testing.assert_close(shared.mu, plain.mu, rtol=0, atol=1e-5)


def test_images_are_never_deduplicated_where_transformers_would_ignore_them():
    """Older transformers swallow `mm_encoder_outputs` in **kwargs: the judge would score without images."""
    from rlkit.rewards.jrm.model import accepts_vision_features

    class OlderQwen3VLModel(torch.nn.Module):
        def forward(self, input_ids=None, pixel_values=None, image_grid_thw=None, **kwargs):
            return None

    assert not accepts_vision_features(OlderQwen3VLModel())
    model = JRMModel(tiny_backbone(0), JRMConfig(image_size=32))
    assert model.dedupe == accepts_vision_features(model.causal_lm.model)
