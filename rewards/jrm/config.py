"""Recipe schema for `rlkit train-reward` (JRM). Loaded and validated by rlkit.config's loader; every key
declares its range beside it (rlkit.core.schema.setting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.core.errors import UserError
from rlkit.core.schema import SEED, UNIT, LoggingConfig, Range, range_problems, resolved, setting

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class JRMLoraConfig:
    enabled: bool = False
    rank: int = setting(64, ge=1)
    alpha: float = setting(128.0, gt=0)
    target_modules: list[str] = setting(factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_len=1)


@dataclass
class BackboneConfig:
    name: str = setting("tiny", choices=("tiny", "pretrained"))  # tiny: random Qwen3-VL at toy size
    pretrained: str | None = None  # local folder or hub id (local hub cache only) of Qwen3-VL / Qwen2.5-VL
    dtype: str = setting("bfloat16", choices=DTYPES)
    image_size: int = setting(448, ge=16, le=4096)  # both images are resized to image_size x image_size
    seed: int = setting(0, **SEED)
    tiny_hidden: int = setting(64, ge=32, multiple_of=32)  # name: tiny only: text width (vision tower half)
    tiny_layers: int = setting(2, ge=1)
    tiny_patch: int = setting(8, ge=1)
    gradient_checkpointing: bool = False
    lora: JRMLoraConfig = field(default_factory=JRMLoraConfig)


@dataclass
class HeadConfig:
    # gaussian (JRM: mu, log sigma) | distribution (Z-Reward: softmax over score bins)
    kind: str = setting("gaussian", choices=("gaussian", "distribution"))
    # 9 bins over 1..5
    bins: list[float] = setting(factory=lambda: [1.0 + 0.5 * i for i in range(9)], min_len=2,
                                each=Range(ge=-1e6, le=1e6))
    # score_first (JRM: one prefill, the rationale after the score) | rationale_first (the score reads a
    # rationale: DeScore think-then-score, Z-Reward's teacher)
    layout: str = setting("score_first", choices=("score_first", "rationale_first"))


@dataclass
class JRMLossConfig:
    alpha: float = setting(0.7, ge=0, lt=1)  # L = (1 - alpha) L_rank + alpha L_LM
    # uncertain (BT over N(mu_w - mu_l, s_w^2 + s_l^2)) | bt
    rank_loss: str = setting("uncertain", choices=("uncertain", "bt"))
    mc_samples: int = setting(0, ge=0)  # 0 = probit approximation
    # distribution head, pairs with annotated scores (score1/score2 on the bins' scale): + ce_weight x CE on
    # the annotated bin + gap_weight x |(E_w - E_l) - (s_w - s_l)|
    ce_weight: float = setting(1.0, ge=0)
    gap_weight: float = setting(1.0, ge=0)
    # DeScore stage 1: each rationale is masked (dropped from the sequence) with this probability, so the
    # score head also works without one
    rationale_dropout: float = setting(0.0, **UNIT)


@dataclass
class DistillConfig:
    """`rlkit distill-reward` (RISD): a student without the rationale learns the score distribution of a
    teacher that reads it. Loss: kl_weight x KL(q_teacher || q_student) + rank_weight x BT on the student."""

    teacher: str | None = None  # a distribution-head JRM directory (final/), ideally rationale_first
    kl_weight: float = setting(1.0, ge=0)
    rank_weight: float = setting(0.0, ge=0)


@dataclass
class RewardDataConfig:
    # pairs: JSONL or EditReward-Data JSON (prompt, path_src, path1 preferred, path2[, rationale1, rationale2,
    # tie/tie_case, scores]), hf:OWNER/NAME/PATH from the local hub cache, or "synthetic" (rewards/jrm/pairs.py)
    train: str = "???"
    eval: str | None = None  # held-out pairs, same forms | synthetic | null
    image_root: str | None = None  # the folder image paths are relative to (default: the pairs file's folder)
    synthetic_pairs: int = setting(256, ge=1)
    synthetic_eval_pairs: int = setting(64, ge=1)


@dataclass
class RewardTrainConfig:
    epochs: float = setting(10.0, gt=0)
    lr: float = setting(2e-6, gt=0, le=1)
    batch_size: int = setting(4, ge=1)  # pairs per step per device (2 x batch_size sequences)
    grad_accum: int = setting(1, ge=1)
    warmup_ratio: float = setting(0.03, **UNIT)
    weight_decay: float = setting(0.0, ge=0)
    logging_steps: int = setting(10, ge=1)
    save_steps: int = setting(500, ge=1)
    save_total_limit: int = setting(2, ge=1)
    device: str = setting("auto", pattern=r"auto|cpu|cuda|cuda:\d+", hint="auto, cpu, cuda or cuda:N")


@dataclass
class RewardRecipe:
    output_dir: str = setting("runs/jrm", pattern=r".*\S.*", hint="a folder")
    seed: int = setting(0, **SEED)
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
    if problems:
        raise UserError(*(f"{where}: {p}" for p in problems))


def reward_recipe_problems(cfg) -> list[str]:
    """What `rlkit train-reward` / `distill-reward` need on disk before loading anything: the pairs files, the
    backbone's weights (a local folder or the local hub cache) and the teacher. `rlkit validate` says the same."""
    from pathlib import Path

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
    if cfg.backbone.name == "pretrained" and not _local_model(cfg.backbone.pretrained):
        problems.append(f"backbone.pretrained '{cfg.backbone.pretrained}' is not a local folder nor in the local hub "
                        f"cache and rlkit never downloads; download it first (`hf download "
                        f"{cfg.backbone.pretrained}`) or point backbone.pretrained at a folder")
    teacher = cfg.distill.teacher
    if teacher and not (Path(teacher).expanduser() / "jrm.json").is_file():
        problems.append(f"distill.teacher '{teacher}': not a trained JRM reward (no jrm.json)")
    return problems


def _local_model(name: str) -> bool:
    """A transformers checkpoint folder, or a repo id present in the local hub cache."""
    from pathlib import Path

    if (Path(name).expanduser() / "config.json").is_file():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id
        return False
