"""Recipe schema for `rlkit train-reward` (JRM). Loaded and validated by rlkit.config's loader; every key
declares its range beside it (rlkit.core.schema.setting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.core.devices import DTYPES
from rlkit.core.errors import UserError
from rlkit.core.schema import MAX_SIZE, SEED, UNIT, LoggingConfig, Range, range_problems, resolved, setting


@dataclass
class JRMLoraConfig:
    enabled: bool = setting(False, help="train a LoRA on the backbone instead of every weight")
    rank: int = setting(64, ge=1, le=MAX_SIZE, help="LoRA rank")
    alpha: float = setting(128.0, gt=0, help="LoRA alpha (the update is scaled by alpha / rank)")
    target_modules: list[str] = setting(factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_len=1,
                                        help="backbone layers that get a LoRA")


@dataclass
class BackboneConfig:
    name: str = setting("tiny", choices=("tiny", "pretrained"),
                        help="tiny: a random Qwen3-VL at toy size; pretrained: backbone.pretrained")
    pretrained: str | None = setting(None, help="local folder or hub id (local hub cache only) of Qwen3-VL or "
                                                "Qwen2.5-VL")
    dtype: str = setting("bfloat16", choices=tuple(DTYPES), help="the backbone's dtype")
    image_size: int = setting(448, ge=16, le=4096, help="both images are resized to this square")
    seed: int = setting(0, **SEED, help="the tiny backbone's weight seed and the head's")
    tiny_hidden: int = setting(64, ge=32, le=MAX_SIZE, multiple_of=32,
                               help="tiny: text width (the vision tower is half)")
    tiny_layers: int = setting(2, ge=1, le=64, help="tiny: text layers")
    tiny_patch: int = setting(8, ge=1, le=MAX_SIZE, help="tiny: vision patch size")
    gradient_checkpointing: bool = setting(False, help="recompute activations in backward: less memory, slower")
    lora: JRMLoraConfig = field(default_factory=JRMLoraConfig)


@dataclass
class HeadConfig:
    kind: str = setting("gaussian", choices=("gaussian", "distribution"),
                        help="gaussian (JRM: mu and log sigma) or distribution (Z-Reward: softmax over score bins)")
    bins: list[float] = setting(factory=lambda: [1.0 + 0.5 * i for i in range(9)], min_len=2,
                                each=Range(ge=-1e6, le=1e6), help="distribution: the score of each bin (9 over 1..5)")
    layout: str = setting("score_first", choices=("score_first", "rationale_first"),
                          help="score_first (JRM: one prefill, the rationale after the score) or rationale_first "
                               "(the score reads a rationale: DeScore think-then-score, Z-Reward's teacher)")


@dataclass
class JRMLossConfig:
    alpha: float = setting(0.7, ge=0, lt=1, help="L = (1 - alpha) L_rank + alpha L_LM")
    rank_loss: str = setting("uncertain", choices=("uncertain", "bt"),
                             help="uncertain: Bradley-Terry over N(mu_w - mu_l, s_w^2 + s_l^2); bt: plain")
    mc_samples: int = setting(0, ge=0, le=MAX_SIZE,
                              help="Monte Carlo samples of the uncertain loss (0 = probit approximation)")
    ce_weight: float = setting(1.0, ge=0, help="distribution head, pairs with annotated scores: weight of the "
                                               "cross-entropy on the annotated bin")
    gap_weight: float = setting(1.0, ge=0, help="... and of |(E_w - E_l) - (s_w - s_l)|")
    rationale_dropout: float = setting(0.0, **UNIT, help="DeScore stage 1: each rationale is dropped with this "
                                                         "probability, so the head also scores without one")


@dataclass
class DistillConfig:
    """`rlkit distill-reward` (RISD): a student without the rationale learns the score distribution of a
    teacher that reads it. Loss: kl_weight x KL(q_teacher || q_student) + rank_weight x BT on the student."""

    teacher: str | None = setting(None, help="a distribution-head JRM's final/ folder, ideally rationale_first")
    kl_weight: float = setting(1.0, ge=0, help="weight of KL(teacher || student)")
    rank_weight: float = setting(0.0, ge=0, help="weight of Bradley-Terry on the student")


@dataclass
class RewardDataConfig:
    train: str = setting("???", help="pairs: JSONL or EditReward-Data JSON, hf:OWNER/NAME/PATH from the local hub "
                                     "cache, or synthetic")
    eval: str | None = setting(None, help="held-out pairs, in the same forms")
    image_root: str | None = setting(None, help="the folder image paths are relative to (None: the pairs file's)")
    synthetic_pairs: int = setting(256, ge=1, le=1_000_000, help="synthetic: training pairs")
    synthetic_eval_pairs: int = setting(64, ge=1, le=1_000_000, help="synthetic: held-out pairs")


@dataclass
class RewardTrainConfig:
    epochs: float = setting(10.0, gt=0, le=10_000, help="passes over the training pairs")
    lr: float = setting(2e-6, gt=0, le=1, help="learning rate")
    batch_size: int = setting(4, ge=1, le=MAX_SIZE, help="pairs per step per device (2 x batch_size sequences)")
    grad_accum: int = setting(1, ge=1, le=MAX_SIZE, help="gradient accumulation steps")
    warmup_ratio: float = setting(0.03, **UNIT, help="share of the steps spent warming up")
    weight_decay: float = setting(0.0, ge=0, help="weight decay")
    logging_steps: int = setting(10, ge=1, help="log every N steps")
    save_steps: int = setting(500, ge=1, help="a checkpoint every N steps")
    save_total_limit: int = setting(2, ge=1, help="checkpoints kept")
    device: str = setting("auto", pattern=r"auto|cpu|cuda|cuda:\d+", hint="auto, cpu, cuda or cuda:N",
                          help="auto: CUDA when there is one")


@dataclass
class RewardRecipe:
    output_dir: str = setting("runs/jrm", pattern=r".*\S.*", hint="a folder", help="where the reward model is saved")
    seed: int = setting(0, **SEED, help="seeds data order and initialisation")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: JRMLossConfig = field(default_factory=JRMLossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    train: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def check_reward_recipe(cfg, where: str, schema_cls: type = None) -> None:
    """Every problem at once: each key's Range, then the keys that depend on each other."""
    from omegaconf import OmegaConf

    values = resolved(cfg, where)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise UserError(*(f"{where}: required key '{k}' is not set" for k in sorted(missing)))
    problems = range_problems(values, schema_cls or RewardRecipe)
    if values["backbone"]["name"] == "pretrained" and not values["backbone"]["pretrained"]:
        problems.append("'backbone.pretrained' must name a local folder or hub id")
    bins = values["head"]["bins"]
    if values["head"]["kind"] == "distribution" and list(bins) != sorted(set(bins)):
        problems.append("'head.bins' must list increasing scores")
    backbone = values["backbone"]
    if backbone["name"] == "tiny" and backbone["tiny_patch"] > backbone["image_size"]:
        problems.append(f"'backbone.tiny_patch' ({backbone['tiny_patch']}) is larger than 'backbone.image_size' "
                        f"({backbone['image_size']})")
    if problems:
        raise UserError(*(f"{where}: {p}" for p in problems))


def reward_recipe_problems(cfg) -> list[str]:
    """What `rlkit train-reward` / `distill-reward` need on disk before loading anything: the pairs files, the
    backbone's weights (a local folder or the local hub cache) and the teacher. `rlkit validate` says the same."""
    from pathlib import Path

    from rlkit.core.hub import has_local_model
    from rlkit.rewards.jrm.pairs import resolve_pairs_file

    problems = []
    for split, spec in (("train", cfg.data.train), ("eval", cfg.data.eval)):
        if spec in (None, "synthetic"):
            continue
        try:
            if not resolve_pairs_file(spec).is_file():
                problems.append(f"data.{split}: pairs file not found: {spec}")
        except UserError as err:
            problems.append(f"data.{split}: {err}")
    if cfg.data.image_root and not Path(cfg.data.image_root).expanduser().is_dir():
        problems.append(f"data.image_root: not a folder: {cfg.data.image_root}")
    if cfg.backbone.name == "pretrained" and not has_local_model(cfg.backbone.pretrained):
        problems.append(f"backbone.pretrained '{cfg.backbone.pretrained}' is not a local folder nor in the local hub "
                        f"cache and rlkit never downloads; download it first (`hf download "
                        f"{cfg.backbone.pretrained}`) or point backbone.pretrained at a folder")
    teacher = cfg.distill.teacher
    if teacher and not (Path(teacher).expanduser() / "jrm.json").is_file():
        problems.append(f"distill.teacher '{teacher}': not a trained JRM reward (no jrm.json)")
    return problems
