"""Recipe schema for `rlkit train-reward` (JRM). Loaded and validated by rlkit.config's loader."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.errors import UserError


@dataclass
class JRMLoraConfig:
    enabled: bool = False
    rank: int = 64
    alpha: float = 128.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class BackboneConfig:
    name: str = "tiny"  # tiny (random Qwen3-VL at toy size) | pretrained
    pretrained: str | None = None  # local folder or hub id (local hub cache only) of Qwen3-VL / Qwen2.5-VL
    dtype: str = "bfloat16"
    image_size: int = 448  # both images are resized to image_size x image_size
    seed: int = 0
    tiny_hidden: int = 64  # name: tiny only: text width (vision tower half of it)
    tiny_layers: int = 2
    tiny_patch: int = 8
    gradient_checkpointing: bool = False
    lora: JRMLoraConfig = field(default_factory=JRMLoraConfig)


@dataclass
class HeadConfig:
    kind: str = "gaussian"  # gaussian (JRM: mu, log sigma) | distribution (Z-Reward: softmax over score bins)
    bins: list[float] = field(default_factory=lambda: [1.0 + 0.5 * i for i in range(9)])  # 9 bins over 1..5
    # score_first (JRM: one prefill, the rationale after the score) | rationale_first (the score reads a
    # rationale: DeScore think-then-score, Z-Reward's teacher)
    layout: str = "score_first"


@dataclass
class JRMLossConfig:
    alpha: float = 0.7  # L = (1 - alpha) L_rank + alpha L_LM
    rank_loss: str = "uncertain"  # uncertain (BT over N(mu_w - mu_l, s_w^2 + s_l^2)) | bt
    mc_samples: int = 0  # 0 = probit approximation
    # distribution head, pairs with annotated scores (score1/score2 on the bins' scale): + ce_weight x CE on
    # the annotated bin + gap_weight x |(E_w - E_l) - (s_w - s_l)|
    ce_weight: float = 1.0
    gap_weight: float = 1.0
    # DeScore stage 1: each rationale is masked (dropped from the sequence) with this probability, so the
    # score head also works without one
    rationale_dropout: float = 0.0


@dataclass
class DistillConfig:
    """`rlkit distill-reward` (RISD): a student without the rationale learns the score distribution of a
    teacher that reads it. Loss: kl_weight x KL(q_teacher || q_student) + rank_weight x BT on the student."""

    teacher: str | None = None  # a distribution-head JRM directory (final/), ideally rationale_first
    kl_weight: float = 1.0
    rank_weight: float = 0.0


@dataclass
class RewardDataConfig:
    # pairs JSONL (prompt, path_src, path1 preferred, path2, rationale1, rationale2[, tie]), or "synthetic"
    train: str = "???"
    eval: str | None = None  # held-out pairs JSONL | synthetic | null
    synthetic_pairs: int = 256
    synthetic_eval_pairs: int = 64


@dataclass
class RewardTrainConfig:
    epochs: float = 10.0
    lr: float = 2e-6
    batch_size: int = 4  # pairs per step per device (2 x batch_size sequences)
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class RewardRecipe:
    output_dir: str = "runs/jrm"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: JRMLossConfig = field(default_factory=JRMLossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    train: RewardTrainConfig = field(default_factory=RewardTrainConfig)


def check_reward_recipe(cfg, where: str) -> None:
    if cfg.backbone.name not in ("tiny", "pretrained"):
        raise UserError(f"{where}: 'backbone.name' is '{cfg.backbone.name}', expected one of: tiny, pretrained")
    if cfg.backbone.name == "pretrained" and not cfg.backbone.pretrained:
        raise UserError(f"{where}: 'backbone.pretrained' must name a local folder or hub id")
    if cfg.backbone.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"{where}: 'backbone.dtype' must be float32, bfloat16 or float16")
    if cfg.loss.rank_loss not in ("uncertain", "bt"):
        raise UserError(f"{where}: 'loss.rank_loss' is '{cfg.loss.rank_loss}', expected one of: uncertain, bt")
    if cfg.head.kind not in ("gaussian", "distribution"):
        raise UserError(f"{where}: 'head.kind' is '{cfg.head.kind}', expected one of: gaussian, distribution")
    if cfg.head.layout not in ("score_first", "rationale_first"):
        raise UserError(f"{where}: 'head.layout' is '{cfg.head.layout}', expected one of: score_first, "
                        f"rationale_first")
    if cfg.head.kind == "distribution" and (len(cfg.head.bins) < 2 or list(cfg.head.bins) != sorted(cfg.head.bins)):
        raise UserError(f"{where}: 'head.bins' must list at least 2 increasing scores")
    if not 0 <= cfg.loss.rationale_dropout <= 1:
        raise UserError(f"{where}: 'loss.rationale_dropout' must be in [0, 1]")
    if not 0 <= cfg.loss.alpha < 1:
        raise UserError(f"{where}: 'loss.alpha' must be in [0, 1)")
    if cfg.train.batch_size <= 0 or cfg.train.epochs <= 0:
        raise UserError(f"{where}: 'train.batch_size' and 'train.epochs' must be > 0")
