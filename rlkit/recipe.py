"""The RL recipe's schema: every key `rlkit run` reads, with its type, default, range and one line of help.

rlkit/config.py loads recipes against it; `rlkit validate --print` and docs/recipe-keys.md show the help. Each
algorithm declares its own section beside its code (`algorithm.grpo`, `algorithm.dpo`, `algorithm.nft`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from rlkit.algorithms import ALGORITHMS
from rlkit.core.devices import DTYPES
from rlkit.core.schema import MAX_SIZE, SEED, UNIT, LoggingConfig, Range, setting
from rlkit.policies import POLICIES
from rlkit.stability import ACTIONS


@dataclass
class LoraConfig:
    rank: int = setting(64, ge=1, le=MAX_SIZE, help="LoRA rank")
    alpha: float = setting(128.0, gt=0, help="LoRA alpha (the update is scaled by alpha / rank)")
    target_modules: list[str] = setting(
        factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                         "to_add_out"], min_len=1, unique=True,
        help="transformer layers that get a LoRA (names or name suffixes)")
    init: str = setting("gaussian", choices=("gaussian", "true"),
                        help="peft's init_lora_weights (true: kaiming A, zero B)")


@dataclass
class PolicyConfig:
    name: str = setting("flux_kontext", choices=tuple(POLICIES),
                        help="the editor: flux_kontext, qwen_image_edit, qwen_image_edit_plus (2509/2511), flux2 "
                             "(FLUX.2 [klein]), flux2_dev (+ _tiny: random toy weights; _random: the real size "
                             "with random weights, for rlkit bench)")
    pretrained: str | None = setting(None, help="local diffusers folder or hub id (read from the local hub cache; "
                                               "rlkit never downloads)")
    dtype: str = setting("bfloat16", choices=tuple(DTYPES),
                         help="the transformer's dtype; step math and log-probs are always fp32")
    device: str = setting("auto", pattern=r"auto|cpu|cuda|cuda:\d+", hint="auto, cpu, cuda or cuda:N",
                          help="auto: CUDA when there is one")
    resolution: int = setting(512, ge=16, le=4096, multiple_of=16,
                              help="the pixel budget: each edit has about resolution^2 pixels at its source's "
                                   "aspect ratio (prompts of one size are batched together)")
    square: bool = setting(False, help="centre-crop every image to a resolution x resolution square instead")
    reference_resolution: int | None = setting(None, ge=16, le=4096, multiple_of=16, optional=True,
                                               help="each reference image's pixel budget (None: resolution)")
    guidance_scale: float = setting(2.5, ge=0, le=100,
                                    help="FLUX.1 Kontext's distilled guidance (an embedding, not CFG)")
    true_cfg_scale: float = setting(1.0, ge=1, le=100, help="qwen_image_edit: classifier-free guidance with the "
                                                           "empty negative prompt (1 = off; the pipeline's is 4)")
    max_sequence_length: int = setting(512, ge=1, le=1024, help="text tokens (FLUX's T5 takes at most 512)")
    gradient_checkpointing: bool = setting(False, help="recompute activations in backward: less memory, slower")
    offload: bool = setting(False, help="keep the text encoders and the VAE on the CPU except while they encode a "
                                        "group's conditioning or decode its edits: the transformer gets the memory")
    finetune: str = setting("lora", choices=("lora", "full"),
                            help="lora: train a LoRA (reference = adapter off); full: every transformer weight "
                                 "(reference = a frozen copy; sharded with FSDP2 over several processes)")
    attention_backend: str = setting("auto", choices=("auto", "default", "flash", "efficient", "cudnn", "math"),
                                     help="auto = flash, then memory-efficient, then math (cuDNN's backward "
                                          "crashed on an H100); default = torch's own choice")
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = setting(0, **SEED, help="the tiny editors' weight seed")


@dataclass
class SamplerConfig:
    num_steps: int = setting(10, ge=1, le=1000, help="denoising steps per rollout")
    kernel: str = setting("flow_sde", choices=("flow_sde", "dance_sde", "cps"),
                          help="the stochastic step: Flow-GRPO's SDE, DanceGRPO's, or coefficients-preserving")
    noise_level: float = setting(0.7, ge=0, le=2, help="SDE noise (0 = the deterministic ODE); cps reads it as an "
                                                       "angle (<= 1); above 2 latents blow up")
    sde_window: int | None = setting(None, ge=1, optional=True,
                                     help="MixGRPO: noise only this many steps (None = every step)")
    sde_window_placement: str = setting("slide", choices=("slide", "random"),
                                        help="slide: the window moves one step every sde_window_slide_every RL "
                                             "steps; random: drawn afresh per rollout (Flow-GRPO-Fast)")
    sde_window_range: str = setting("all", choices=("all", "first_half", "not_last_two"),
                                    help="where the window may sit: anywhere; within the schedule's first half "
                                         "(flow_grpo's Fast); never on the last two steps (MixGRPO)")
    sde_window_slide_every: int = setting(1, ge=1, help="slide: RL steps per one-step move (MixGRPO's script: 25)")
    batch_size: int = setting(0, ge=0, le=MAX_SIZE,
                              help="transformer batch in the rollout; 0 = algorithm.micro_batch (the same shape in "
                                   "rollout and update keeps the bf16 ratio exactly 1)")


@dataclass
class AlgorithmShared:
    name: str = setting("grpo", choices=tuple(ALGORITHMS),
                        help="grpo: clipped ratio of SDE log-probs; dpo: online Diffusion-DPO; nft: DiffusionNFT; awm: "
                             "Advantage Weighted Matching; dgpo: Direct Group Preference Optimization")
    group_size: int = setting(12, ge=2, le=MAX_SIZE,
                              help="samples per prompt; advantages compare the samples of a group")
    std_scope: str = setting("group", choices=("group", "global"), help="the std that normalises advantages")
    adv_clip: float = setting(5.0, gt=0, help="advantages are clipped to +- this")
    kl_coef: float = setting(0.01, ge=0, help="KL to the reference (grpo: the exact Gaussian KL of each transition, "
                                              "a published flow_grpo coefficient c is about c x |dt| here; nft: "
                                              "in velocity space)")
    inner_epochs: int = setting(1, ge=1, le=1000, help="passes over each rollout")
    micro_batch: int = setting(4, ge=1, le=MAX_SIZE, help="samples per forward/backward (per process)")


# shared keys, then one section per registered algorithm (algorithm.grpo, algorithm.dpo, algorithm.nft)
AlgorithmConfig = make_dataclass(
    "AlgorithmConfig", [(name, cls.settings, field(default_factory=cls.settings)) for name, cls in ALGORITHMS.items()],
    bases=(AlgorithmShared,))

# keys that moved into their algorithm's section: a recipe or override that names the old key is told where
MOVED = {**{f"algorithm.{k}": f"algorithm.grpo.{k}" for k in (
    "clip_range_low", "clip_range_high", "timestep_fraction", "ratio_norm", "reward_norm", "uncertainty_weighting",
    "uncertainty_scale")}, "algorithm.beta": "algorithm.dpo.beta"}


@dataclass
class RewardSpec:
    name: str = setting("???", pattern=r"[^\s:]+(:[A-Za-z_][\w.]*)?",
                        hint="a reward plugin name (rlkit rewards), module:Class or file.py:Class",
                        help="an installed reward (rlkit rewards), module:Class from the working directory, or "
                             "path/to/file.py:Class (made absolute, so a resume finds it)")
    weight: float = setting(1.0, ge=-1e6, le=1e6, help="its weight in the sum (negative: a penalty)")
    kwargs: dict[str, Any] = setting(factory=dict, help="given to the reward's constructor")
    log_as: str | None = setting(None, pattern=r"[A-Za-z][A-Za-z0-9_]*", optional=True,
                                 hint="a plain name (letters, digits, _)",
                                 help="eval rewards: also log the held-out mean under this name (e.g. gt_heldout)")


@dataclass
class DataConfig:
    source: str = setting("jsonl", choices=("jsonl", "folder", "hf"),
                          help="a JSONL manifest, a folder of images, or a Hugging Face dataset")
    path: str = setting("???", help="the manifest, the image folder, or the dataset name / saved dataset folder")
    instructions: list[str] = setting(factory=list, help="folder: the instructions applied to every image")
    split: str = setting("train", help="hf: the split")
    image_column: str = setting("image", help="hf: the image column")
    instruction_column: str = setting("instruction", help="hf: the instruction column")
    shuffle: bool = setting(True, help="a new order each epoch (seeded)")


@dataclass
class OptimConfig:
    lr: float = setting(1e-4, gt=0, le=1, help="AdamW's learning rate")
    weight_decay: float = setting(0.0, ge=0, help="AdamW's weight decay")
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], length=2, each=Range(ge=0, lt=1),
                                 help="AdamW's betas")
    eps: float = setting(1e-8, gt=0, le=1, help="AdamW's eps")
    max_grad_norm: float = setting(1.0, gt=0, help="gradients are clipped to this norm")
    warmup_steps: int = setting(0, ge=0, help="linear warm-up, in optimizer steps (one per micro-batch)")
    schedule: str = setting("constant", choices=("constant", "cosine"),
                            help="cosine: the rate decays to 0 over train.steps (RL steps)")


@dataclass
class TrainConfig:
    steps: int = setting(500, ge=1, help="RL steps")
    prompts_per_step: int = setting(2, ge=1, le=MAX_SIZE, help="prompts per RL step (each sampled group_size times)")
    save_every: int = setting(50, ge=0, help="a checkpoint every N steps (0: only at the end)")
    keep_last: int = setting(3, ge=0, help="checkpoints kept (0 = all)")
    log_every: int = setting(10, ge=0, help="a console line every N steps and at each evaluation (0 = none)")
    grid_every: int = setting(25, ge=0, help="a PNG grid (source | group samples) every N steps (0 = never)")
    final_weights: str = setting("best_gold", choices=("best_gold", "last"),
                                 help="best_gold: with gold evaluations final/ holds the best one's weights and the "
                                      "last go to final_last/; last: final/ is the last weights")
    report: bool = setting(True, help="write plots/*.png and report.html when the run ends")


@dataclass
class BenchmarkConfig:
    """A benchmark judged at every evaluation (rlkit/benchmarks/): its figures logged as bench/..., and
    optionally the stability guard's gold. The judge's key, if it needs one, comes from $OPENAI_API_KEY."""

    name: str | None = setting(None, choices=("gedit", "imgedit"), optional=True,
                               help="gedit (logs bench/gedit_SC, _PQ, _O) or imgedit (bench/imgedit_average)")
    data: str | None = setting(None, help="GEdit: its parquet folder or stepfun-ai/GEdit-Bench in the hub cache; "
                                          "ImgEdit: basic_edit.json or its folder")
    image_root: str | None = setting(None, help="ImgEdit: the folder its image ids are under (None: the JSON's)")
    judge_url: str | None = setting(None, help="the judge's OpenAI-compatible /v1 address")
    judge_model: str | None = setting(None, help="the judge's model (None: the server's first)")
    max_items: int = setting(16, ge=1, le=1_000_000, help="the first N items, the same at every evaluation")
    prompts: str | None = setting(None, help="a rubric YAML instead of rlkit's wording")
    concurrency: int = setting(8, ge=1, le=256, help="judge requests at once")
    score_mode: str = setting("parse", choices=("parse", "logprobs"),
                              help="parse: the scores written; logprobs: their expected values from the digits' "
                                   "logprobs (vLLM, SGLang; single-digit scales: ImgEdit)")
    gold: bool = setting(False, help="the guard's gold is the benchmark's overall figure (GEdit O, ImgEdit "
                                     "average) instead of eval.rewards")


@dataclass
class EvalConfig:
    """Held-out evaluation with fixed noise: before training (step 0) and every `every` steps."""

    every: int = setting(0, ge=0, help="evaluate every N steps (0 = never)")
    data: DataConfig | None = setting(None, help="held-out prompts (None = the training data)")
    max_prompts: int = setting(16, ge=1, le=1_000_000, help="prompts evaluated")
    samples_per_prompt: int = setting(2, ge=1, le=MAX_SIZE, help="samples of each prompt")
    rewards: list[RewardSpec] = setting(factory=list, help="gold rewards (empty = the training rewards)")
    seed: int = setting(1234, **SEED, help="the fixed noise, the same at every evaluation")
    noise_level: float | None = setting(None, ge=0, le=2, optional=True,
                                        help="the evaluation's sampler noise (None = training's; 0 = the ODE users "
                                             "deploy, one evaluation for objectives that sample differently)")
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)


@dataclass
class GoldDivergenceAlarm:
    action: str = setting("warn", choices=ACTIONS, help="what the alarm does (ignore, warn, stop, rollback)")
    window: int = setting(2, ge=1, help="evaluations over which the proxy reward must have risen")
    gold_drop: float = setting(0.03, ge=0, help="fires when gold is this far below its best so far")
    proxy_rise: float = setting(0.0, ge=0, help="... while the proxy rose by at least this")


@dataclass
class KLAlarm:
    action: str = setting("warn", choices=ACTIONS, help="what the alarm does (ignore, warn, stop, rollback)")
    max_kl_ref: float = setting(0.5, gt=0, help="fires above this KL to the reference (per latent dimension)")
    max_approx_kl: float = setting(0.1, gt=0, help="fires above this approximate KL to the rollout policy")


@dataclass
class RatioAlarm:
    action: str = setting("warn", choices=ACTIONS, help="what the alarm does (ignore, warn, stop, rollback)")
    max_ratio_dev: float = setting(0.05, gt=0, help="fires when |ratio_mean - 1| exceeds this")
    max_clipfrac: float = setting(0.5, gt=0, le=1, help="fires when more than this share of ratios is clipped")


@dataclass
class DiversityAlarm:
    action: str = setting("warn", choices=ACTIONS, help="what the alarm does (ignore, warn, stop, rollback)")
    min_fraction: float = setting(0.25, **UNIT, help="fires when group diversity falls below this share of its "
                                                     "baseline")
    baseline_steps: int = setting(5, ge=1, help="the baseline is the mean over the first N steps")


@dataclass
class StabilityConfig:
    """The stability guard (rlkit/stability/alarms.py): alarms go to RUN_DIR/alarms.jsonl."""

    gold_divergence: GoldDivergenceAlarm = field(default_factory=GoldDivergenceAlarm)
    kl_blowup: KLAlarm = field(default_factory=KLAlarm)
    ratio_blowup: RatioAlarm = field(default_factory=RatioAlarm)
    diversity_collapse: DiversityAlarm = field(default_factory=DiversityAlarm)
    rollback_lr_factor: float = setting(0.5, gt=0, le=1, help="the learning rate x this after each rollback")
    rollback_kl_factor: float = setting(4.0, ge=1, le=1000,
                                        help="algorithm.kl_coef x this after each rollback (without it a hacked run "
                                             "walks back into its hack)")
    max_rollbacks: int = setting(3, ge=0, help="then a rollback alarm stops the run instead")


@dataclass
class ExportConfig:
    """What the model card of final/ says beyond what the run knows (rlkit/export.py)."""

    base_model: str | None = setting(None, pattern=r"[\w.\-]+/[\w.\-]+", optional=True, hint="a Hub id, OWNER/NAME",
                                     help="the base model's Hub id when policy.pretrained is a local folder")
    license: str | None = setting(None, pattern=r"[\w.\-]+", optional=True, hint="a Hub license id, e.g. apache-2.0",
                                  help="the card's license (None = the base model's when its card is here, else "
                                       "other)")


@dataclass
class Recipe:
    output_dir: str = setting("runs/rlkit", pattern=r".*\S.*", hint="a folder", help="the run directory")
    seed: int = setting(0, **SEED, help="seeds data order, noise and every generator")
    resume: str = setting("auto", pattern=r".*\S.*", hint="auto, never or a checkpoint folder",
                          help="auto: from the newest valid checkpoint in output_dir; never; or a checkpoint folder")
    prepare: str | None = setting(None, pattern=r"[A-Za-z0-9_.\-]+", optional=True, hint="a preparation name",
                                  help="a preparation plugin run before training; it owns the section of its name")
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rewards: list[RewardSpec] = setting(factory=list, help="the training rewards, summed with their weights")
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
