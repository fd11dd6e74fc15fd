"""`rlkit distill-reward RECIPE`: RISD (Z-Reward) on the transformers Trainer.

The teacher is a distribution-head JRM that reads the rationale before scoring (layout rationale_first): it
scores better, but needs a rationale at inference. The student is the same recipe's model without it
(score_first, one prefill) and learns the teacher's whole score distribution:
    L = kl_weight * KL(q_teacher(s | with reasoning) || q_student(s | without)) + rank_weight * BT(student)
and, as in JRM, (1 - alpha) * that + alpha * L_LM when the student also learns the rationale after its score.
The teacher's distributions are computed once before training (it is frozen). OUTPUT/final/ holds the
student; OUTPUT/distill_eval.json compares student and teacher on the eval pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from rlkit.core.errors import UserError
from rlkit.rewards.jrm.losses import bt_loss, distill_kl, joint_loss
from rlkit.rewards.jrm.model import JRMModel
from rlkit.rewards.jrm.train import (
    JRMTrainer,
    Pair,
    PairCollator,
    build_model,
    resolve_data,
    score_pairs,
    tracker_callbacks,
    training_arguments,
)


@dataclass
class DistillItem:
    pair: Pair
    teacher_chosen: torch.Tensor  # [K] teacher's score-bin probabilities
    teacher_rejected: torch.Tensor


class DistillCollator:
    def __init__(self, pairs: PairCollator):
        self.pairs = pairs

    def __call__(self, items: list[DistillItem]) -> dict:
        batch = self.pairs([it.pair for it in items])
        batch["teacher"] = torch.stack([it.teacher_chosen for it in items] + [it.teacher_rejected for it in items])
        return batch


class DistillTrainer(JRMTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs["encoded"].to(self.args.device))
        d = self.distill_cfg
        kl = distill_kl(inputs["teacher"].to(self.args.device), out.logits)
        target = d.kl_weight * kl
        n = inputs["tie"].shape[0]
        if d.rank_weight:
            target = target + d.rank_weight * bt_loss(out.mu[:n], out.mu[n:], inputs["tie"].to(self.args.device))
        loss = joint_loss(target, out.lm_loss, self.loss_cfg.alpha)
        self._sums["kl"] += kl.item()
        self._sums["lm_loss"] += out.lm_loss.item() if out.lm_loss is not None else 0.0
        self._sums["pair_acc"] += (out.mu[:n] > out.mu[n:]).float().mean().item()
        self._count += 1
        return (loss, out) if return_outputs else loss


def load_teacher(path: str | None) -> JRMModel:
    if not path:
        raise UserError("distill-reward needs 'distill.teacher': a distribution-head JRM directory (final/)")
    teacher = JRMModel.load(path)
    if teacher.jrm_config.head != "distribution":
        raise UserError(f"distill.teacher {path} has a {teacher.jrm_config.head} head; RISD needs a distribution "
                        f"head (train it with head.kind=distribution)")
    return teacher


def compare(student: JRMModel, teacher: JRMModel, pairs: list[Pair]) -> dict:
    """Held-out accuracy of each, how often the student prefers what the teacher prefers, and their mean KL."""
    (t_w, _, tp_w), (t_l, _, tp_l) = score_pairs(teacher, pairs, given_rationales=True)
    (s_w, _, sp_w), (s_l, _, sp_l) = score_pairs(student, pairs)
    decided = torch.tensor([not p.tie for p in pairs])
    kl = 0.5 * (distill_kl(tp_w, sp_w.log()) + distill_kl(tp_l, sp_l.log()))
    return {
        "n": len(pairs),
        "teacher_accuracy": float((t_w > t_l)[decided].float().mean()),
        "student_accuracy": float((s_w > s_l)[decided].float().mean()),
        "agreement": float(((s_w > s_l) == (t_w > t_l)).float().mean()),
        "mean_kl": float(kl),
    }


def distill_reward(cfg) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.distill.teacher)
    train_pairs, eval_pairs = resolve_data(cfg, out)
    print(f"teacher distributions for {len(train_pairs)} training pairs (rationales in context) ...")
    (_, _, p_w), (_, _, p_l) = score_pairs(teacher, train_pairs, given_rationales=True)
    items = [DistillItem(pair, p_w[i], p_l[i]) for i, pair in enumerate(train_pairs)]
    # the student: the recipe's backbone, a distribution head over the teacher's bins, scoring first
    cfg.head.kind, cfg.head.layout, cfg.head.bins = "distribution", "score_first", list(teacher.jrm_config.bins)
    student = build_model(cfg)
    collator = DistillCollator(PairCollator(student, with_rationales=cfg.loss.alpha > 0))
    trainer = DistillTrainer(model=student, args=training_arguments(cfg, out), train_dataset=items,
                             data_collator=collator, loss_cfg=cfg.loss, callbacks=tracker_callbacks(cfg, out))
    trainer.distill_cfg = cfg.distill
    resume = any((out / "trainer").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    (out / "train_log.json").write_text(json.dumps([h for h in trainer.state.log_history if "kl" in h], indent=1))
    student.save(out / "final")
    if eval_pairs is not None:
        report = compare(student, teacher, eval_pairs)
        (out / "distill_eval.json").write_text(json.dumps(report, indent=1))
        print(f"held-out: student accuracy {report['student_accuracy']:.3f}, teacher (with rationales) "
              f"{report['teacher_accuracy']:.3f}, agreement {report['agreement']:.3f}, KL {report['mean_kl']:.4f}")
    return out
