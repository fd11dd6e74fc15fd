"""The seed papers' reward variants on tiny models: Z-Reward score distributions and RISD distillation,
DeScore think-then-score."""

import json
import math

import numpy as np
import pytest
import torch

from rlkit.cli import main
from rlkit.rewards import RewardInput
from rlkit.rewards.jrm.backbone import tiny_backbone
from rlkit.rewards.jrm.losses import bin_ce_loss, distill_kl, nearest_bin, score_gap_loss
from rlkit.rewards.jrm.model import JRMConfig, JRMModel, distribution_stats
from rlkit.rewards.jrm.synthetic import COLOURS, draw
from rlkit.rewards.jrm.train import read_pairs

SMALL = ["data.synthetic_pairs=96", "data.synthetic_eval_pairs=48", "train.logging_steps=4", "train.epochs=4"]


def _t(im):
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255


def _pair_input():
    src = _t(draw("circle", COLOURS["red"]))
    good, bad = _t(draw("circle", COLOURS["green"])), src
    return RewardInput(torch.stack([good, bad]), torch.stack([src, src]), ["make the circle green"] * 2,
                       torch.zeros(2, dtype=torch.long))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Distribution head that reads the rationale first (Z-Reward's teacher; also a DeScore model: trained
    with half of the rationales masked)."""
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train-reward", "jrm_tiny", f"output_dir={out}", "head.kind=distribution",
                 "head.layout=rationale_first", "loss.rationale_dropout=0.5", *SMALL]) == 0
    return out


# ---------------------------------------------------------------------------- losses
def test_distribution_losses_by_hand():
    bins = torch.tensor([1.0, 2.0, 3.0])
    assert nearest_bin(torch.tensor([0.2, 2.4, 2.6, 9.0]), bins).tolist() == [0, 1, 2, 2]
    logits = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    mu, log_sigma = distribution_stats(logits, bins)
    assert mu[0] == pytest.approx(2.0) and log_sigma[0].exp() == pytest.approx(math.sqrt(2 / 3), rel=1e-5)
    assert mu[1] == pytest.approx(1.0, abs=1e-3) and log_sigma[1].exp() < 0.02
    ce = bin_ce_loss(logits, torch.tensor([float("nan"), 1.1]), bins)  # the unannotated row is skipped
    assert ce.item() == pytest.approx(-torch.log_softmax(logits[1], -1)[0].item())
    assert bin_ce_loss(logits, torch.full((2,), float("nan")), bins) is None
    gap = score_gap_loss(torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([5.0]), torch.tensor([2.0]))
    assert gap.item() == pytest.approx(2.0)  # predicted gap 1, annotated gap 3
    p = torch.tensor([[0.2, 0.3, 0.5]])
    assert distill_kl(p, p.log()).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_kl(p, torch.zeros(1, 3)).item() > 0


def test_rationale_first_score_reads_the_rationale():
    """The opposite of JRM's causal isolation: in rationale_first the rationale changes the score."""
    model = JRMModel(tiny_backbone(0), JRMConfig(image_size=32, head="distribution", layout="rationale_first"))
    src, edit = draw("square", COLOURS["red"]), draw("square", COLOURS["blue"])
    args = ([src] * 2, [edit] * 2, ["make the square blue"] * 2)
    with torch.no_grad():
        out = model(model.encoder.encode(*args, ["[250,250,750,750]: blue now.", "totally different " * 5]))
    assert out.logits.shape == (2, 9) and not torch.allclose(out.mu[0], out.mu[1])
    assert ((out.mu >= 1) & (out.mu <= 5)).all()


# ---------------------------------------------------------------------------- Z-Reward distribution head
def test_distribution_head_trains_and_scores_as_a_reward(tmp_path):
    out = tmp_path / "dist"
    assert main(["train-reward", "jrm_tiny", f"output_dir={out}", "head.kind=distribution", *SMALL]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log[-1]["ce_loss"] < log[0]["ce_loss"] and log[-1]["gap_loss"] < log[0]["gap_loss"]
    assert json.loads((out / "eval.json").read_text())["accuracy"] >= 0.7
    from rlkit.plugins import build_reward

    reward = build_reward("jrm", {"path": str(out / "final")})
    scores = reward(_pair_input())
    assert ((scores.scores >= 1) & (scores.scores <= 5)).all()  # an expectation over the 1..5 bins
    assert (scores.uncertainty > 0).all() and (scores.uncertainty <= 2).all()  # its spread
    assert scores.scores[0] > scores.scores[1]


# ---------------------------------------------------------------------------- DeScore think-then-score
def test_think_then_score_writes_a_rationale_then_scores(teacher):
    report = json.loads((teacher / "eval.json").read_text())
    assert report["accuracy_given_rationale"] >= report["accuracy"] - 0.05  # reading the reasoning helps
    from rlkit.plugins import build_reward

    thinking = build_reward("jrm", {"path": str(teacher / "final"), "max_new_tokens": 48})
    fast = build_reward("jrm", {"path": str(teacher / "final"), "think": False})
    batch = _pair_input()
    slow_out, fast_out = thinking(batch), fast(batch)
    assert slow_out.rationales is not None and len(slow_out.rationales) == 2
    assert all(r.startswith("[") for r in slow_out.rationales)  # learned the format: a 0-1000 box first
    assert fast_out.rationales is None and not torch.allclose(slow_out.scores, fast_out.scores)
    # (whether its own rationales rank this pair right depends on how well the tiny LM learned to write them:
    # with the reference rationales it is perfect, with none 0.9, its own are not yet reliable at this size)
    assert fast_out.scores[0] > fast_out.scores[1]
    from rlkit.rewards.jrm.reward import JRMReward

    with pytest.raises(ValueError, match="rationale_first"):
        JRMReward(_score_first_dir(teacher), think=True)


def _score_first_dir(teacher):
    """A score_first model directory next to the teacher (saved untrained)."""
    path = teacher.parent / "score_first"
    if not (path / "jrm.json").exists():
        JRMModel(tiny_backbone(0), JRMConfig(image_size=32)).save(path)
    return str(path)


# ---------------------------------------------------------------------------- RISD
def test_distill_reward_student_learns_the_teachers_distribution(teacher, tmp_path):
    out = tmp_path / "student"
    assert main(["distill-reward", "jrm_tiny", f"output_dir={out}", f"distill.teacher={teacher / 'final'}",
                 "loss.alpha=0", "distill.rank_weight=1.0", *SMALL]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log[-1]["kl"] < 0.5 * log[0]["kl"]
    report = json.loads((out / "distill_eval.json").read_text())
    assert set(report) == {"n", "teacher_accuracy", "student_accuracy", "agreement", "mean_kl"}
    assert report["agreement"] >= 0.7 and report["student_accuracy"] >= 0.6
    student = JRMModel.load(out / "final")
    assert student.jrm_config.head == "distribution" and student.jrm_config.layout == "score_first"
    pairs = read_pairs(teacher / "data" / "eval" / "pairs.jsonl")
    assert len(pairs) == 48


def test_distill_reward_refuses_a_gaussian_teacher(tmp_path, capsys):
    teacher_dir = _score_first_dir(tmp_path / "x")
    code = main(["distill-reward", "jrm_tiny", f"output_dir={tmp_path / 's'}", f"distill.teacher={teacher_dir}"])
    assert code == 2 and "distribution" in capsys.readouterr().err


# ---------------------------------------------------------------------------- ensembles
def test_an_ensemble_of_judges_scores_as_their_mean_or_their_minimum(tmp_path):
    """`path` may list judges: the reward is their mean (or min), its uncertainty the mixture's spread."""
    from rlkit.plugins import build_reward

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        JRMModel(tiny_backbone(seed), JRMConfig(image_size=32)).save(tmp_path / f"j{seed}")
        paths.append(str(tmp_path / f"j{seed}"))
    batch = _pair_input()
    each = [build_reward("jrm", {"path": p})(batch) for p in paths]
    mus, sigmas = torch.stack([o.scores for o in each]), torch.stack([o.uncertainty for o in each])
    assert not torch.allclose(mus[0], mus[1])  # two different judges, or the test proves nothing

    reward = build_reward("jrm", {"path": paths})
    mean = reward(batch)
    assert torch.allclose(mean.scores, mus.mean(0), atol=1e-6)
    scores, _ = reward.score(list(batch.source), list(batch.edited), batch.instructions)  # the sandbox's checks
    assert torch.equal(scores, mean.scores)
    spread = (sigmas.pow(2).mean(0) + mus.var(0, unbiased=False)).sqrt()
    assert torch.allclose(mean.uncertainty, spread, atol=1e-6)
    assert torch.allclose(mean.details["disagreement"], mus.std(0), atol=1e-6)
    assert torch.allclose(build_reward("jrm", {"path": paths, "combine": "min"})(batch).scores, mus.min(0).values)
    from rlkit.core.errors import UserError

    with pytest.raises(UserError, match="combine must be mean or min"):  # a recipe typo, said clearly
        build_reward("jrm", {"path": paths, "combine": "max"})
