"""`rlkit train-reward`: joint preference + rationale training of JRM on the transformers Trainer.

The Trainer brings checkpoints, resume, logging, accelerate and mixed precision; JRM only supplies the loss
(`compute_loss`) and the pair collator. The trained reward goes to OUTPUT/final/; with an eval split,
OUTPUT/eval.json holds the held-out pairwise accuracy.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from rlkit.core.devices import DTYPES
from rlkit.core.images import open_rgb
from rlkit.rewards.jrm.backbone import load_backbone, tiny_backbone
from rlkit.rewards.jrm.losses import bin_ce_loss, bt_loss, joint_loss, score_gap_loss, uncertain_bt_loss
from rlkit.rewards.jrm.model import JRMConfig, JRMModel
from rlkit.rewards.jrm.pairs import Pair, read_pairs
from rlkit.rewards.jrm.synthetic import make_pairs


# ---------------------------------------------------------------------------------------------- data
class PairCollator:
    """Pairs -> one Encoded batch: the B chosen sequences, then the B rejected ones. Each rationale is dropped
    with probability ``rationale_dropout`` (DeScore stage 1)."""

    def __init__(self, model: JRMModel, with_rationales: bool, rationale_dropout: float = 0.0, seed: int = 0):
        self.encoder, self.with_rationales, self.dedupe = model.encoder, with_rationales, model.dedupe
        self.dropout, self.rng = rationale_dropout, random.Random(seed)

    def __call__(self, pairs: list[Pair]) -> dict:
        sources = [open_rgb(p.source) for p in pairs] * 2
        edited = [open_rgb(p.chosen) for p in pairs] + [open_rgb(p.rejected) for p in pairs]
        instructions = [p.instruction for p in pairs] * 2
        rationales = None
        if self.with_rationales:
            rationales = [p.rationale_chosen for p in pairs] + [p.rationale_rejected for p in pairs]
            rationales = [None if self.dropout and self.rng.random() < self.dropout else r for r in rationales]
        enc = self.encoder.encode(sources, edited, instructions, rationales, dedupe=self.dedupe)
        scores = [p.score_chosen for p in pairs] + [p.score_rejected for p in pairs]
        return {"encoded": enc, "tie": torch.tensor([p.tie for p in pairs], dtype=torch.float32),
                "scores": torch.tensor(scores, dtype=torch.float32)}


# ---------------------------------------------------------------------------------------------- trainer
class JRMTrainer(Trainer):
    def __init__(self, *args, loss_cfg, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_cfg = loss_cfg
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        enc = inputs["encoded"].to(self.args.device)
        tie = inputs["tie"].to(self.args.device)
        out = model(enc)
        n = tie.shape[0]
        mu_w, mu_l = out.mu[:n], out.mu[n:]
        if self.loss_cfg.rank_loss == "uncertain":
            rank = uncertain_bt_loss(mu_w, out.log_sigma[:n], mu_l, out.log_sigma[n:], tie, self.loss_cfg.mc_samples)
        else:
            rank = bt_loss(mu_w, mu_l, tie)
        if out.logits is not None:  # Z-Reward: CE on the annotated bin + the score-gap term
            rank = rank + self._distribution_terms(out, inputs["scores"].to(self.args.device), n)
        loss = joint_loss(rank, out.lm_loss, self.loss_cfg.alpha)
        self._sums["rank_loss"] += rank.item()
        self._sums["lm_loss"] += out.lm_loss.item() if out.lm_loss is not None else 0.0
        self._sums["pair_acc"] += (mu_w > mu_l).float().mean().item()
        self._count += 1
        return (loss, out) if return_outputs else loss

    def _distribution_terms(self, out, scores: torch.Tensor, n: int) -> torch.Tensor:
        model = self.model.module if hasattr(self.model, "module") else self.model
        extra = torch.zeros((), device=scores.device)
        ce = bin_ce_loss(out.logits, scores, model.bins)
        if ce is not None and self.loss_cfg.ce_weight:
            extra = extra + self.loss_cfg.ce_weight * ce
            self._sums["ce_loss"] += ce.item()
        gap = score_gap_loss(out.mu[:n], out.mu[n:], scores[:n], scores[n:])
        if gap is not None and self.loss_cfg.gap_weight:
            extra = extra + self.loss_cfg.gap_weight * gap
            self._sums["gap_loss"] += gap.item()
        return extra

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._count:
            logs.update({k: v / self._count for k, v in self._sums.items()})
            self._sums.clear()
            self._count = 0
        super().log(logs, *args, **kwargs)


def build_model(cfg) -> JRMModel:
    b = cfg.backbone
    if b.name == "tiny":
        backbone = tiny_backbone(b.seed, b.image_size, b.tiny_hidden, b.tiny_layers, b.tiny_patch)
    else:
        backbone = load_backbone(b.pretrained, dtype=DTYPES[b.dtype])
    if b.name == "tiny" and b.dtype != "float32":
        backbone.model.to(DTYPES[b.dtype])
    if b.lora.enabled:
        from peft import LoraConfig, get_peft_model

        backbone.model = get_peft_model(backbone.model, LoraConfig(
            r=b.lora.rank, lora_alpha=b.lora.alpha, target_modules=list(b.lora.target_modules)))
    if b.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable()
    torch.manual_seed(b.seed)
    return JRMModel(backbone, JRMConfig(kind=backbone.kind, image_size=b.image_size, head=cfg.head.kind,
                                        bins=list(cfg.head.bins), layout=cfg.head.layout))


def resolve_data(cfg, out: Path) -> tuple[list[Pair], list[Pair] | None]:
    d = cfg.data
    head_range = (min(cfg.head.bins), max(cfg.head.bins))
    if d.train == "synthetic":
        train = read_pairs(make_pairs(out / "data" / "train", d.synthetic_pairs, cfg.seed))
    else:
        train = read_pairs(d.train, d.image_root, head_range)
    if d.eval is None:
        return train, None
    if d.eval == "synthetic":
        return train, read_pairs(make_pairs(out / "data" / "eval", d.synthetic_eval_pairs, cfg.seed + 10_000, "e"))
    return train, read_pairs(d.eval, d.image_root, head_range)


def score_pairs(model: JRMModel, pairs: list[Pair], batch_size: int = 16, given_rationales: bool = False):
    """(chosen, rejected) outputs of model.score(..., with_probs=True). ``given_rationales``: a
    rationale_first model reads the pairs' rationales (the teacher's view); otherwise none is given."""
    model.eval()
    src = [open_rgb(p.source) for p in pairs]
    text = [p.instruction for p in pairs]
    rat_w = [p.rationale_chosen or "" for p in pairs] if given_rationales else None
    rat_l = [p.rationale_rejected or "" for p in pairs] if given_rationales else None
    chosen = model.score(src, [open_rgb(p.chosen) for p in pairs], text, batch_size, rat_w, with_probs=True)
    rejected = model.score(src, [open_rgb(p.rejected) for p in pairs], text, batch_size, rat_l, with_probs=True)
    return chosen, rejected


def pairwise_accuracy(model: JRMModel, pairs: list[Pair], batch_size: int = 16,
                      given_rationales: bool = False) -> float:
    (mu_w, *_), (mu_l, *_) = score_pairs(model, pairs, batch_size, given_rationales)
    decided = [i for i, p in enumerate(pairs) if not p.tie]
    return float((mu_w[decided] > mu_l[decided]).float().mean()) if decided else float("nan")


def training_arguments(cfg, out: Path) -> TrainingArguments:
    use_cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=cfg.train.epochs, learning_rate=cfg.train.lr,
        per_device_train_batch_size=cfg.train.batch_size, gradient_accumulation_steps=cfg.train.grad_accum,
        warmup_steps=cfg.train.warmup_ratio, weight_decay=cfg.train.weight_decay,
        logging_steps=cfg.train.logging_steps, save_steps=cfg.train.save_steps,
        save_total_limit=cfg.train.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        bf16=cfg.backbone.dtype == "bfloat16" and not use_cpu, use_cpu=use_cpu, remove_unused_columns=False,
        dataloader_num_workers=0, eval_strategy="no", disable_tqdm=False,
        # TensorBoard goes to OUTPUT/tensorboard, where an RL run's goes (tracker_callbacks); the others as named
        report_to=[t for t in cfg.logging.report_to if t != "tensorboard"], project=cfg.logging.project,
        run_name=cfg.logging.run_name or out.name,
    )


def tracker_callbacks(cfg, out: Path) -> list:
    """TensorBoard in OUTPUT/tensorboard (transformers' default is a dated folder under the trainer's)."""
    if "tensorboard" not in cfg.logging.report_to:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(str(out / "tensorboard")))]


def train_reward(cfg) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_pairs, eval_pairs = resolve_data(cfg, out)
    model = build_model(cfg)
    args = training_arguments(cfg, out)
    trainer = JRMTrainer(model=model, args=args, train_dataset=train_pairs,
                         data_collator=PairCollator(model, with_rationales=cfg.loss.alpha > 0 or model.thinks,
                                                    rationale_dropout=cfg.loss.rationale_dropout, seed=cfg.seed),
                         loss_cfg=cfg.loss, callbacks=tracker_callbacks(cfg, out))
    resume = any((out / "trainer").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    history = [h for h in trainer.state.log_history if "rank_loss" in h]
    (out / "train_log.json").write_text(json.dumps(history, indent=1))
    model.save(out / "final")
    if eval_pairs is not None:
        acc = pairwise_accuracy(model, eval_pairs)
        report = {"accuracy": acc, "n": len(eval_pairs)}
        if model.thinks:  # rationale_first: also with the reference rationales in context
            report["accuracy_given_rationale"] = pairwise_accuracy(model, eval_pairs, given_rationales=True)
        (out / "eval.json").write_text(json.dumps(report, indent=1))
        print(f"held-out pairwise accuracy: {acc:.3f} on {len(eval_pairs)} pairs"
              + (f" ({report['accuracy_given_rationale']:.3f} given the rationales)" if model.thinks else ""))
    return out
