"""What leaves a run: the loading snippet, the model card of final/, and the upload to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlkit.errors import UserError
from rlkit.summary import RunSummary, summarize

PIPELINES = {"flux_kontext": ("FluxKontextPipeline", "FluxTransformer2DModel"),
             "qwen_image_edit": ("QwenImageEditPipeline", "QwenImageTransformer2DModel")}


def _editor(cfg: DictConfig) -> str:
    return next(k for k in PIPELINES if cfg.policy.name.startswith(k))


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def loading_snippet(cfg: DictConfig, weights: Path | str) -> str:
    """The lines of diffusers that load the base model with these weights, ready to paste."""
    pipeline, transformer = PIPELINES[_editor(cfg)]
    base = cfg.policy.pretrained or "BASE_MODEL"
    dtype = "torch.bfloat16" if cfg.policy.dtype != "float32" else "torch.float32"
    if cfg.policy.finetune == "full":
        return (f"import torch\nfrom diffusers import {pipeline}, {transformer}\n"
                f"transformer = {transformer}.from_pretrained(\"{weights}/transformer\", dtype={dtype})\n"
                f"pipe = {pipeline}.from_pretrained(\"{base}\", transformer=transformer, dtype={dtype})")
    return (f"import torch\nfrom diffusers import {pipeline}\n"
            f"pipe = {pipeline}.from_pretrained(\"{base}\", dtype={dtype})\n"
            f"pipe.load_lora_weights(\"{weights}\")")


def model_card(cfg: DictConfig, info: dict, summary: RunSummary, weights: str = "final") -> str:
    """final/README.md: what was trained from what, with which reward, what it measured, and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    base = cfg.policy.pretrained
    data = ModelCardData(base_model=base if _is_hub_id(base) else None, library_name="diffusers",
                         tags=["rlkit", "image-editing", cfg.algorithm.name,
                               "lora" if cfg.policy.finetune == "lora" else "full-finetune"])
    rewards = ", ".join(f"`{r.name}` (weight {r.weight:g})" for r in cfg.rewards)
    gold = ", ".join(f"`{r.name}`" for r in cfg.eval.rewards) if cfg.eval.every else ""
    what = "LoRA" if cfg.policy.finetune == "lora" else "fully fine-tuned transformer"
    lines = [f"# {what} for {base or cfg.policy.name}, trained with rlkit", "",
             f"Online RL ({cfg.algorithm.name}) on an instruction-following image editor "
             f"(`{cfg.policy.name}`, {cfg.policy.resolution} px) with the reward {rewards}.", "",
             "## Weights", ""]
    step = info.get("step")
    which = ("the EMA of the trained weights (DiffusionNFT's old policy, `algorithm.nft.export: ema`)"
             if info.get("export") == "ema" else "the trained weights")
    if info.get("weights") == "best_gold":
        lines.append(f"The weights of the best held-out gold evaluation, step {step} of {summary.steps}: {which}.")
    else:
        lines.append(f"The weights after step {step} of {summary.steps}: {which}.")
    if cfg.policy.finetune == "lora":
        lora = cfg.policy.lora
        lines.append(f"LoRA rank {lora.rank}, alpha {lora.alpha:g}, on {', '.join(lora.target_modules)} "
                     f"(`adapter_config.json`; the same config travels in the weights file's metadata).")
    lines += ["", "## Measured during training", "", "| figure | first | last | best (step) |",
              "| --- | --- | --- | --- |"]
    if summary.reward:
        r = summary.reward
        lines.append(f"| training reward (batch mean) | {r.first:.4f} | {r.last:.4f} | {r.best:.4f} ({r.best_step}) |")
    if summary.gold:
        g = summary.gold
        lines.append(f"| {summary.gold_name}, held-out ({gold}) | {g.first:.4f} | {g.last:.4f} | "
                     f"{g.best:.4f} ({g.best_step}) |")
    alarms = ", ".join(f"{k} x{n}" for k, n in sorted(summary.alarms.items())) or "none"
    lines += ["", f"Stability alarms: {alarms}.", "", "## How to load", "", "```python",
              loading_snippet(cfg, weights), "```", "",
              "## Recipe", "", "`config.yaml` beside the weights is the resolved recipe: `rlkit run config.yaml` "
              "trains it again where its data and model paths exist.", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(folder: Path, cfg: DictConfig, info: dict, run_dir: Path, name: str = "final") -> None:
    """README.md (the model card) and config.yaml into an export folder being written (`name`: what it will be
    called in the run directory, for the loading snippet)."""
    from rlkit.config import to_yaml

    summary = summarize(run_dir)
    (folder / "README.md").write_text(model_card(cfg, info, summary, weights=str(Path(run_dir) / name)))
    (folder / "config.yaml").write_text(to_yaml(cfg))


def push_to_hub(run_dir: Path, repo_id: str, weights: str = "final", private: bool = False) -> str:
    """Upload RUN_DIR/final (or final_last) as a model repository; returns its URL. The folder is uploaded as
    rlkit wrote it: weights, adapter_config.json, README.md (the model card), config.yaml, rlkit_final.json."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(run_dir) / weights
    if not (folder / "rlkit_final.json").is_file():
        raise UserError(f"{folder} is not a finished run's export (no rlkit_final.json); run or resume it first")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=f"rlkit: {weights} of {Path(run_dir).name}")
    except OfflineModeIsEnabled:
        raise UserError("the Hugging Face Hub is off (HF_HUB_OFFLINE=1); unset it to push") from None
    except HfHubHTTPError as err:
        raise UserError(f"push to {repo_id} failed: {str(err).splitlines()[0]} (logged in? `hf auth login`)") from None
    return str(url)
