"""Recipe schema and loading: YAML + `key=value` overrides, validated against typed dataclasses.

Every recipe key is declared here once, with its type and default. OmegaConf enforces the schema; this module
turns its exceptions into one-line `UserError`s that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from rlkit.core.errors import UserError
from rlkit.core.schema import SEED, UNIT, LoggingConfig, Range, range_problems, resolved, setting, shape_problems
from rlkit.preparation import load_preparation, with_section
from rlkit.secrets import remember

ACTIONS = ("ignore", "warn", "stop", "rollback")


@dataclass
class LoraConfig:
    rank: int = setting(64, ge=1)
    alpha: float = setting(128.0, gt=0)
    target_modules: list[str] = setting(
        factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                         "to_add_out"], min_len=1)
    init: str = setting("gaussian", choices=("gaussian", "true"))  # peft init_lora_weights (true: kaiming A, zero B)


@dataclass
class PolicyConfig:
    # flux_kontext | qwen_image_edit (+ _tiny: random toy weights for tests); flux_kontext_random: the real
    # size with random weights (benchmarks)
    name: str = setting("flux_kontext", choices=("flux_kontext", "flux_kontext_tiny", "flux_kontext_random",
                                             "qwen_image_edit", "qwen_image_edit_tiny"))
    pretrained: str | None = None  # local folder or hub id (read from the local hub cache only)
    # transformer dtype; step math and log-probs are always fp32
    dtype: str = setting("bfloat16", choices=("float32", "bfloat16", "float16"))
    device: str = setting("auto", pattern=r"auto|cpu|cuda|cuda:\d+", hint="auto, cpu, cuda or cuda:N")
    # source and edit are resized (centre crop) to resolution x resolution; 16 = VAE factor x patch
    resolution: int = setting(512, ge=16, le=4096, multiple_of=16)
    guidance_scale: float = setting(2.5, ge=0, le=100)  # FLUX Kontext [dev] is guidance-distilled: an embedding
    # qwen_image_edit: true CFG with the empty negative prompt (pipeline default 4; 1 = off)
    true_cfg_scale: float = setting(1.0, ge=1, le=100)
    max_sequence_length: int = setting(512, ge=1, le=1024)  # FLUX's T5 takes at most 512 (checked per editor)
    gradient_checkpointing: bool = False
    # lora: train a peft LoRA (reference = adapter off); full: train every transformer weight (reference = a
    # frozen copy; with several processes the transformer is sharded with FSDP2)
    finetune: str = setting("lora", choices=("lora", "full"))
    # auto = flash, then memory-efficient, then math: cuDNN attention is left out because its backward
    # crashed (illegal memory access) on an H100 with torch 2.11 / cuDNN 9.19; default = torch's own choice
    attention_backend: str = setting("auto", choices=("auto", "default", "flash", "efficient", "cudnn", "math"))
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = setting(0, **SEED)  # weights seed for the tiny builder


@dataclass
class SamplerConfig:
    num_steps: int = setting(10, ge=1, le=1000)
    kernel: str = setting("flow_sde", choices=("flow_sde", "dance_sde", "cps"))
    # SDE noise (0 = the deterministic ODE, for DPO or evaluation); cps reads it as an angle and takes <= 1.
    # Above 2 Flow-GRPO's SDE pushes latents to inf in a handful of steps
    noise_level: float = setting(0.7, ge=0, le=2)
    sde_window: int | None = setting(None, ge=1, optional=True)  # MixGRPO: SDE only on this many steps
    # where the window sits: slide (MixGRPO: moves one step per RL step) or random (Flow-GRPO-Fast: drawn afresh
    # for every rollout; with sde_window 1-2 only those steps are noised and trained, the ODE elsewhere)
    sde_window_placement: str = setting("slide", choices=("slide", "random"))
    # transformer batch in the rollout; 0 = algorithm.micro_batch. Matching the training micro-batch keeps the
    # bf16 importance ratio exactly 1 (measured on an H100: 0.0 deviation vs 6.6e-5 with batch 16 vs 4)
    batch_size: int = setting(0, ge=0)


@dataclass
class NFTConfig:
    """DiffusionNFT (rlkit/algorithms/nft.py): the old policy is an EMA of the trained weights."""

    beta: float = setting(1.0, gt=0, le=10)  # how far the implicit positive/negative policies sit from the old one
    ema_decay: float = setting(0.9, ge=0, lt=1)  # the EMA's decay after its warm-up, (1 + n) / (10 + n)
    t_min: float = setting(0.02, ge=0, lt=0.5)  # re-noising times drawn uniformly from [t_min, 1 - t_min]
    adaptive_weighting: bool = True  # each sample's x0 error divided by its mean absolute value (detached)
    sample_with: str = setting("ema", choices=("ema", "current"))  # which weights the rollouts sample with
    # the weights a user gets: evaluations, best_gold's choice and final/ use them (the model card says which)
    export: str = setting("trained", choices=("trained", "ema"))


@dataclass
class AlgorithmConfig:
    # grpo: clipped ratio of SDE log-probs; dpo: online Diffusion-DPO; nft: DiffusionNFT (no log-probs, any sampler)
    name: str = setting("grpo", choices=("grpo", "dpo", "nft"))
    group_size: int = setting(12, ge=2)  # advantages compare samples of a group
    std_scope: str = setting("group", choices=("group", "global"))  # which std normalises advantages
    adv_clip: float = setting(5.0, gt=0)
    clip_range_low: float = setting(1e-4, ge=0, lt=1)  # the ratio is clipped to [1 - low, 1 + high]
    clip_range_high: float = setting(1e-4, ge=0)
    # KL to the reference (adapter disabled): the exact Gaussian KL of each transition,
    # ||mean - mean_ref||^2 / (2 std_t^2 |dt|), which is flow_grpo's KL (no |dt|) divided by |dt| (5-18x on a
    # 10-step FLUX schedule): a published flow_grpo kl_coef c is about c x |dt| here
    kl_coef: float = setting(0.01, ge=0)
    timestep_fraction: float = setting(0.6, gt=0, le=1)  # random subset of SDE steps trained per sample
    inner_epochs: int = setting(1, ge=1)
    micro_batch: int = setting(4, ge=1)  # samples per forward/backward in the update
    beta: float = setting(2000.0, gt=0)  # online DPO (Diffusion-DPO) temperature
    # GRPO: scale each advantage by 1 / (1 + (u / uncertainty_scale)^2), u = the reward's uncertainty
    # (e.g. JRM's sigma); uncertainty_scale 0 = the batch median
    # several rewards: sum = group-normalise their weighted sum; per_reward = normalise each within its groups,
    # weight, normalise the sum over the batch (GDPO): a reward with a small spread keeps its say
    reward_norm: str = setting("sum", choices=("sum", "per_reward"))
    # GRPO-Guard's regulated clipping: each step's log-ratio rescaled by its std and freed of the bias that
    # pulls plain flow-SDE ratios below 1, so the clip acts evenly across timesteps (rlkit/algorithms/grpo.py)
    ratio_norm: bool = False
    nft: NFTConfig = field(default_factory=NFTConfig)
    uncertainty_weighting: bool = False
    uncertainty_scale: float = setting(0.0, ge=0)


@dataclass
class RewardSpec:
    # an installed plugin's name (rlkit rewards), module:Class importable from the working directory, or
    # path/to/file.py:Class (made absolute, so a resume finds it from anywhere)
    name: str = setting("???", pattern=r"[^\s:]+(:[A-Za-z_][\w.]*)?",
                        hint="a reward plugin name (rlkit rewards), module:Class or file.py:Class")
    weight: float = setting(1.0, ge=-1e6, le=1e6)  # negative: a penalty
    kwargs: dict[str, Any] = field(default_factory=dict)
    # eval rewards: also log the held-out mean under this key (e.g. gt_heldout); a plain name, not one the
    # loop logs itself
    log_as: str | None = setting(None, pattern=r"[A-Za-z][A-Za-z0-9_]*", optional=True,
                                 hint="a plain name (letters, digits, _)")


@dataclass
class DataConfig:
    source: str = setting("jsonl", choices=("jsonl", "folder", "hf"))
    path: str = "???"  # manifest file, image folder, or dataset name / saved dataset folder
    instructions: list[str] = field(default_factory=list)  # folder: instructions applied to every image
    split: str = "train"  # hf
    image_column: str = "image"  # hf
    instruction_column: str = "instruction"  # hf
    shuffle: bool = True


@dataclass
class OptimConfig:
    lr: float = setting(1e-4, gt=0, le=1)
    weight_decay: float = setting(0.0, ge=0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], length=2, each=Range(ge=0, lt=1))
    eps: float = setting(1e-8, gt=0, le=1)
    max_grad_norm: float = setting(1.0, gt=0)
    warmup_steps: int = setting(0, ge=0)  # linear warm-up, in optimizer steps
    # constant, or cosine: lr decays to 0 over train.steps (RL steps)
    schedule: str = setting("constant", choices=("constant", "cosine"))


@dataclass
class TrainConfig:
    steps: int = setting(500, ge=1)
    prompts_per_step: int = setting(2, ge=1)
    save_every: int = setting(50, ge=0)  # 0: only at the end
    keep_last: int = setting(3, ge=0)  # checkpoints kept; 0 = all
    log_every: int = setting(10, ge=0)  # a console line every N steps and at each evaluation; 0 = none
    grid_every: int = setting(25, ge=0)  # PNG grid (source | group samples) every N steps; 0 = never
    # with gold evaluations (eval.rewards), final/ holds the weights of the best one and the last weights go to
    # final_last/ (like transformers' load_best_model_at_end); last: final/ is always the last weights
    final_weights: str = setting("best_gold", choices=("best_gold", "last"))
    report: bool = True  # write plots/*.png and report.html when the run ends (also: rlkit report RUN_DIR)


@dataclass
class EvalConfig:
    """Held-out evaluation with fixed noise: before training (step 0) and every `every` steps."""

    every: int = setting(0, ge=0)  # 0 = no evaluation
    data: DataConfig | None = None  # held-out prompts; None = the training data
    max_prompts: int = setting(16, ge=1)
    samples_per_prompt: int = setting(2, ge=1)
    rewards: list[RewardSpec] = field(default_factory=list)  # gold rewards; empty = the training rewards
    seed: int = setting(1234, **SEED)  # the fixed noise: the same for every evaluation
    # the evaluation's sampler noise; None = the training sampler's. One value (e.g. 0, the ODE users deploy)
    # puts objectives that sample differently (GRPO's SDE, NFT's ODE) under one evaluation
    noise_level: float | None = setting(None, ge=0, le=2, optional=True)


@dataclass
class GoldDivergenceAlarm:
    action: str = setting("warn", choices=ACTIONS)  # not "off": YAML reads that as false
    window: int = setting(2, ge=1)  # evaluations over which the proxy must have risen
    gold_drop: float = setting(0.03, ge=0)  # gold this far below its best so far
    proxy_rise: float = setting(0.0, ge=0)


@dataclass
class KLAlarm:
    action: str = setting("warn", choices=ACTIONS)
    max_kl_ref: float = setting(0.5, gt=0)  # per latent dimension, as logged in kl_ref
    max_approx_kl: float = setting(0.1, gt=0)


@dataclass
class RatioAlarm:
    action: str = setting("warn", choices=ACTIONS)
    max_ratio_dev: float = setting(0.05, gt=0)  # |ratio_mean - 1|
    max_clipfrac: float = setting(0.5, gt=0, le=1)


@dataclass
class DiversityAlarm:
    action: str = setting("warn", choices=ACTIONS)
    min_fraction: float = setting(0.25, **UNIT)  # of the mean over the first baseline_steps steps
    baseline_steps: int = setting(5, ge=1)


@dataclass
class StabilityConfig:
    """The stability guard (rlkit/stability/alarms.py): alarms go to RUN_DIR/alarms.jsonl."""

    gold_divergence: GoldDivergenceAlarm = field(default_factory=GoldDivergenceAlarm)
    kl_blowup: KLAlarm = field(default_factory=KLAlarm)
    ratio_blowup: RatioAlarm = field(default_factory=RatioAlarm)
    diversity_collapse: DiversityAlarm = field(default_factory=DiversityAlarm)
    rollback_lr_factor: float = setting(0.5, gt=0, le=1)  # learning rate x this after each rollback
    # algorithm.kl_coef x this after each rollback: without it the hacking recipe walked back into its hack after
    # every rollback (3 seeds: 4 alarms and a stop each, last truth -0.043); at 4: 2-3 alarms, -0.010
    rollback_kl_factor: float = setting(4.0, ge=1, le=1000)
    max_rollbacks: int = setting(3, ge=0)  # then a rollback alarm stops the run instead


@dataclass
class ExportConfig:
    """What the model card of final/ says beyond what the run knows (rlkit/export.py)."""

    # the Hub id of the base model when policy.pretrained is a local folder (a hub-cache folder names its own)
    base_model: str | None = setting(None, pattern=r"[\w.\-]+/[\w.\-]+", optional=True, hint="a Hub id, OWNER/NAME")
    # the card's license; None = the base model's (from its model card, when it is on this machine), else other
    license: str | None = setting(None, pattern=r"[\w.\-]+", optional=True, hint="a Hub license id, e.g. apache-2.0")


@dataclass
class Recipe:
    output_dir: str = setting("runs/rlkit", pattern=r".*\S.*", hint="a folder")
    seed: int = setting(0, **SEED)
    resume: str = setting("auto", pattern=r".*\S.*", hint="auto, never or a checkpoint folder")
    # a preparation plugin (rlkit/preparation.py) run before the trainer is built; it owns the recipe section of
    # its name (e.g. `prepare: sandbox` and a `sandbox:` section)
    prepare: str | None = setting(None, pattern=r"[A-Za-z0-9_.\-]+", optional=True, hint="a preparation name")
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rewards: list[RewardSpec] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _all_keys(node._get_node(k), full + ".")
    return keys


def _suggest(bad_key: str, schema_cls: type) -> str:
    valid = _all_keys(OmegaConf.structured(schema_cls)) + list(_list_item_keys(schema_cls))
    close = difflib.get_close_matches(bad_key, valid, n=1, cutoff=0.6)
    if not close:  # a typo in the last part only: compare leaf names under the same parent
        parent, _, leaf = bad_key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == parent]
        leaf_close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.5)
        close = [f"{parent}.{leaf_close[0]}" if parent else leaf_close[0]] if leaf_close else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _list_item_keys(schema_cls: type) -> list[str]:
    """Keys inside list-of-dataclass fields (e.g. rewards.name), which the structured schema does not list."""
    import dataclasses

    return [f"{path}.{f.name}" for t, paths in _schema_paths(schema_cls).items() for path in paths
            for f in dataclasses.fields(t)]


def _schema_paths(cls: type, prefix: str = "") -> dict[type, list[str]]:
    """Dataclass type -> its dotted paths in the recipe (list items such as RewardSpec map to the list key;
    RewardSpec sits under both `rewards` and `eval.rewards`)."""
    import dataclasses
    import typing

    paths: dict[type, list[str]] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)] or [hint]
        for t in inner:
            if dataclasses.is_dataclass(t):
                paths.setdefault(t, []).append(prefix + f.name)
                for sub_t, sub_paths in _schema_paths(t, prefix + f.name + ".").items():
                    paths.setdefault(sub_t, []).extend(sub_paths)
    return paths


def _key_of(err: OmegaConfBaseException, schema_cls: type, hint: str = "") -> str:
    """The dotted key an OmegaConf error is about. Errors inside list items lose their parent path; ``hint``
    (the override's key) picks the right parent when a type sits under several."""
    key = str(getattr(err, "full_key", None) or getattr(err, "key", None) or "")
    owners = _schema_paths(schema_cls).get(getattr(err, "object_type", None), [])
    if owners and not any(key.startswith(o.split(".")[0]) for o in owners):
        owner = next((o for o in owners if hint.startswith(o)), min(owners, key=len))
        key = f"{owner}.{key}"
    return key


def _user_error(err: OmegaConfBaseException, where: str, schema_cls: type, hint: str = "") -> UserError:
    key = _key_of(err, schema_cls, hint)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        # strip list indices for the suggestion: rewards[0].wieght -> rewards.wieght
        plain = key.replace("[", ".").replace("]", "").replace("..", ".")
        plain = ".".join(p for p in plain.split(".") if not p.isdigit())
        return UserError(f"{where}: unknown key '{key}'{_suggest(plain, schema_cls) or _owner_hint(plain)}")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return UserError(f"{where}: wrong type for '{key}': {msg}")
    return UserError(f"{where}: {str(err).splitlines()[0]}")


def _owner_hint(key: str) -> str:
    """' (...add prepare: NAME)' when the unknown key is the section of an installed preparation."""
    from rlkit.plugins import PREPARATIONS, list_plugins

    top = key.split(".")[0]
    for name in list_plugins(PREPARATIONS):
        try:
            section = load_preparation(name).section
        except UserError:
            continue
        if section == top:
            return f" ('{top}' is the section of the '{name}' preparation: add prepare: {name})"
    return ""


def packaged_recipes() -> dict[str, Path]:
    """Recipes shipped in the `recipes` package, by name (file stem)."""
    root = resources.files("rlkit.recipes")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def recipe_summary(path: Path) -> str:
    """A recipe's first comment line: what it is."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy_recipe(name: str, dest: Path) -> Path:
    """A packaged recipe copied to edit (`rlkit recipes cp`). Data paths the recipe gives relative to itself
    become absolute, so the copy runs from wherever it is put. Never overwrites a file."""
    import re

    named = packaged_recipes()
    if name not in named:
        close = difflib.get_close_matches(name, list(named), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; packaged recipes: {', '.join(sorted(named))}"
        raise UserError(f"no packaged recipe '{name}'{hint}")
    src = named[name]
    target = dest / src.name if dest.is_dir() else dest
    if target.exists():
        raise UserError(f"{target} exists; choose a new file name")
    text = src.read_text()

    def absolute(match: re.Match) -> str:
        value = match.group(2)
        beside = src.parent / value
        return f"{match.group(1)}{beside.resolve()}" if not Path(value).is_absolute() and beside.exists() else \
            match.group(0)

    text = re.sub(r"^(\s*path:\s*)([^\s#$'\"{}]+)", absolute, text, flags=re.M)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    return target


def resolve_recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    named = packaged_recipes()
    stem = Path(recipe).stem if recipe.endswith(".yaml") else recipe
    if stem in named and (not path.parent.parts or path.parent.name == "recipes"):
        return named[stem]
    close = difflib.get_close_matches(stem, list(named), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; packaged recipes: {', '.join(sorted(named))}"
    raise UserError(f"recipe not found: '{recipe}'{hint}")


def load_recipe(recipe: str | Path, overrides: list[str] | None = None, schema_cls: type = None,
                check=None) -> DictConfig:
    """Load a recipe file (or packaged recipe name), apply dotlist overrides, validate. Raises UserError.

    ``schema_cls``/``check`` default to the RL recipe; other commands (train-reward) pass their own."""
    path = resolve_recipe_path(str(recipe))
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors
        raise UserError(f"{path}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    cfg = build_config(raw, overrides or [], where=str(path), schema_cls=schema_cls, check=check)
    if "data" not in cfg or "source" not in cfg.data:
        return cfg
    for spec in [*cfg.rewards, *cfg.eval.rewards]:  # file.py:Class from the working directory or the recipe's
        file, colon, attr = str(spec.name).rpartition(":")
        if colon and file.endswith(".py") and not Path(file).expanduser().is_absolute():
            found = next((p for p in (Path(file), path.parent / file) if p.is_file()), None)
            if found is not None:
                spec.name = f"{found.resolve()}:{attr}"
    # data paths in a recipe are relative to the recipe file (unless they exist from the working dir); store
    # them absolute so config.yaml in the run directory resumes from anywhere
    data_path = Path(cfg.data.path)
    if cfg.data.source in ("jsonl", "folder") and not data_path.is_absolute() and not data_path.exists():
        beside = path.parent / data_path
        if beside.exists():
            cfg.data.path = str(beside.resolve())
    return cfg


def build_config(raw: DictConfig | dict, overrides: list[str], where: str, schema_cls: type = None,
                 check=None) -> DictConfig:
    schema_cls = schema_cls or Recipe
    check = check or check_values
    if not isinstance(raw, (DictConfig, dict)):
        raise UserError(f"{where}: a recipe is a mapping of keys (policy:, rewards:, ...), this file holds a "
                        f"{'list' if isinstance(raw, ListConfig) else type(raw).__name__}")
    prep = _named_preparation(raw, overrides, where) if schema_cls is Recipe else None
    if prep is not None:
        schema_cls = with_section(schema_cls, prep)
    shape = shape_problems(raw, schema_cls)
    if shape:
        raise UserError(*(f"{where}: {p}" for p in shape))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema_cls), raw)
    except OmegaConfBaseException as err:
        raise _user_error(err, where, schema_cls) from None
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        parts = key.split(".")
        at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]  # unresolved
        except Exception as err:  # YAML syntax inside the value (an unclosed bracket, a quote)
            raise UserError(f"override '{item}': cannot parse the value: {str(err).splitlines()[0]}") from None
        try:
            if at is None:
                shape = shape_problems(OmegaConf.create(_nest(parts, parsed)), schema_cls)
                if shape:
                    raise UserError(*(f"override '{item}': {p}" for p in shape))
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
            else:  # inside a list (rewards.0.kwargs.path=...): a merge would replace the list with a dict
                items = OmegaConf.select(cfg, ".".join(parts[:at]))
                if not isinstance(items, ListConfig) or int(parts[at]) >= len(items):
                    raise UserError(f"override '{item}': '{'.'.join(parts[:at])}' has no item {parts[at]}")
                OmegaConf.update(cfg, key, parsed, merge=True)
        except OmegaConfBaseException as err:
            raise _user_error(err, f"override '{item}'", schema_cls, key) from None
    if prep is not None:
        prep.normalise(cfg[prep.section])
    remember(cfg)  # its secrets are masked in whatever is printed from now on, this recipe's problems included
    try:
        check(cfg, where, schema_cls)
    except UserError as err:
        raise UserError(*(_blame_override(p, where, overrides) for p in err.problems)) from None
    return cfg


def load_saved_recipe(run_dir: Path, overrides: list[str]) -> DictConfig:
    """A run directory's recipe (its config.yaml) for `resume`, with overrides; output_dir is that folder."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} is not an rlkit run directory (no config.yaml)")
    try:
        raw = OmegaConf.load(saved)
    except Exception as err:
        raise UserError(f"{saved}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    cfg = build_config(raw, ["resume=auto", *overrides], where=str(saved))
    from rlkit.secrets import unsaved_secrets

    unsaved = unsaved_secrets(cfg)
    if unsaved:  # before anything is touched
        raise UserError(*(f"'{key}' is a secret the recipe gave as a literal, which rlkit never saves: give it "
                          f"again, e.g. rlkit resume {run_dir} '{key}=${{oc.env:NAME}}' with NAME set in the "
                          f"environment" for key in unsaved))
    if Path(cfg.output_dir).resolve() != Path(run_dir).resolve():
        cfg.output_dir = str(run_dir)
    return cfg


def _blame_override(problem: str, where: str, overrides: list[str]) -> str:
    """A problem with a value that came from the command line names that override, not the recipe file."""
    import re

    found = re.match(re.escape(where) + r": '([^']+)'", problem)
    if not found:
        return problem
    key = re.sub(r"\[(\d+)\]", r".\1", found.group(1))
    for item in reversed(overrides):  # the last override of a key is the one that counts
        set_key = item.split("=", 1)[0]
        if key == set_key or key.startswith(set_key + "."):
            return f"override '{item}'" + problem[len(where):]
    return problem


def _named_preparation(raw, overrides: list[str], where: str):
    """The preparation a recipe names (`prepare:`, or a `prepare=` override), loaded: its section's schema
    joins the recipe's before anything is merged."""
    name = raw.get("prepare") if isinstance(raw, (dict, DictConfig)) else None
    for item in overrides:
        if item.startswith("prepare="):
            name = item.split("=", 1)[1] or None
    if name in (None, "null", "None"):
        return None
    if not isinstance(name, str):
        raise UserError(f"{where}: 'prepare' is {name!r}, expected a preparation name")
    return load_preparation(name)


def _nest(parts: list[str], value: Any) -> dict:
    for p in reversed(parts):
        value = {p: value}
    return value


# flat metric names the loop itself logs: an eval reward's `log_as` must not overwrite one
LOGGED_BY_THE_LOOP = frozenset((
    "step", "reward_mean", "reward_std", "zero_std_frac", "ratio_mean", "ratio_max_dev", "clipfrac", "approx_kl",
    "kl_ref", "loss", "grad_norm", "lr", "time_rollout_s", "time_reward_s", "time_train_s", "adv_weight_mean",
    "dpo_pairs", "dpo_acc", "best_reward", "group_diversity", "probe_start", "reward_drift", "reward_ema",
    "nft_r_mean", "ema_decay"))


def check_values(cfg: DictConfig, where: str, schema_cls: type = None) -> None:
    """Every recipe problem at once: each key's declared Range, then what ranges cannot say (keys that
    depend on each other, here and in a preparation's section). Raises one UserError with a line per problem."""
    values = resolved(cfg, where)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise UserError(*(f"{where}: required key '{k}' is not set" for k in sorted(missing)))
    problems = range_problems(values, schema_cls or Recipe) + _cross_key_problems(values)
    if values.get("prepare"):
        prep = load_preparation(values["prepare"])
        problems += prep.problems(cfg[prep.section])
    if problems:
        raise UserError(*(f"{where}: {p}" for p in problems))


def _cross_key_problems(c: dict) -> list[str]:
    out = []
    policy, sampler, algo = c["policy"], c["sampler"], c["algorithm"]
    if not c["rewards"]:
        out.append("'rewards' must list at least one reward, e.g. rewards=[{name: target_color}]")
    elif all(r["weight"] == 0 for r in c["rewards"]):
        out.append("every reward in 'rewards' has weight 0: nothing to learn from")
    if algo["name"] == "grpo" and sampler["noise_level"] == 0:
        out.append("'sampler.noise_level' is 0 (the deterministic ODE): GRPO trains on the log-probs of SDE "
                   "steps; use a noise level > 0, or algorithm.name=dpo")
    if sampler["kernel"] == "cps" and (c["eval"]["noise_level"] or 0) > 1:
        out.append(f"'eval.noise_level' is {c['eval']['noise_level']}: cps reads it as an angle, must be <= 1")
    if sampler["kernel"] == "cps" and sampler["noise_level"] > 1:
        out.append(f"'sampler.noise_level' is {sampler['noise_level']}: cps reads it as an angle, must be <= 1")
    if sampler["sde_window_placement"] == "random" and sampler["sde_window"] is None:
        out.append("'sampler.sde_window_placement' is random but 'sampler.sde_window' is not set: every step is "
                   "already an SDE step (Flow-GRPO-Fast: sampler.sde_window=2)")
    if sampler["sde_window"] is not None and sampler["sde_window"] > sampler["num_steps"]:
        out.append(f"'sampler.sde_window' ({sampler['sde_window']}) is more than 'sampler.num_steps' "
                   f"({sampler['num_steps']})")
    if algo["uncertainty_weighting"] and algo["name"] != "grpo":
        out.append("'algorithm.uncertainty_weighting' applies to grpo only")
    if algo["reward_norm"] == "per_reward" and algo["name"] != "grpo":
        out.append("'algorithm.reward_norm' per_reward applies to grpo only")
    if algo["ratio_norm"] and algo["name"] != "grpo":
        out.append("'algorithm.ratio_norm' (GRPO-Guard) applies to grpo only")
    if policy["name"] in ("flux_kontext", "qwen_image_edit") and not policy["pretrained"]:
        out.append(f"'policy.pretrained' must name a local folder or hub id for {policy['name']}")
    if policy["name"].startswith("flux_kontext") and policy["max_sequence_length"] > 512:
        out.append(f"'policy.max_sequence_length' is {policy['max_sequence_length']}: FLUX's T5 encoder takes "
                   f"at most 512")
    names = [r.get("log_as") for r in c["eval"]["rewards"] if r.get("log_as")]
    for name in sorted(set(names)):
        if name in LOGGED_BY_THE_LOOP:
            out.append(f"'eval.rewards.log_as' is '{name}', which the run logs itself; choose another name")
        elif names.count(name) > 1:
            out.append(f"'eval.rewards.log_as' names '{name}' twice")
    return out


def to_yaml(cfg: DictConfig) -> str:
    """The recipe as YAML, resolved, with its secrets redacted (rlkit/secrets.py): every copy rlkit writes or
    prints goes through here."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper  # OmegaConf.to_yaml's own dumper, on plain containers

    from rlkit.secrets import redacted

    # dumped from the containers: building a config again from them failed once in OmegaConf 2.4 when a signal
    # handler ran inside the build ('NoneType' object has no attribute '_invalidate_flags_cache')
    return yaml.dump(redacted(cfg), Dumper=get_omega_conf_dumper(), default_flow_style=False, allow_unicode=True,
                     sort_keys=False)
