"""What leaves a run: the loading snippet, the model card of final/, and the upload to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from rlkit.core.errors import UserError
from rlkit.core.hub import hub_id_of_cache_folder, is_hub_id, local_pretrained
from rlkit.policies import POLICIES
from rlkit.summary import RunSummary, summarize


def base_model_id(cfg: DictConfig) -> str | None:
    """The base model's Hub id: `export.base_model`, `policy.pretrained` when it is one, or the id a hub-cache
    folder is named after (models--OWNER--NAME/snapshots/...); None for any other local folder."""
    if cfg.export.base_model:
        return cfg.export.base_model
    pretrained = cfg.policy.pretrained
    if is_hub_id(pretrained):
        return pretrained
    return hub_id_of_cache_folder(pretrained or "")


def _base_card_license(cfg: DictConfig) -> dict:
    """license (and license_name / license_link) from the base model's own card, when it is on this machine."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(local_pretrained(cfg.policy.pretrained) / "README.md")
    except Exception:  # no local copy, or a folder without a card
        return {}
    return {k: getattr(card.data, k, None) for k in ("license", "license_name", "license_link")
            if getattr(card.data, k, None)}


def _title(cfg: DictConfig) -> str:
    return base_model_id(cfg) or (Path(cfg.policy.pretrained).name if cfg.policy.pretrained else cfg.policy.name)


def example_edit(cfg: DictConfig) -> tuple[list[str], str]:
    """(reference image paths, instruction) of the run's first prompt, for a snippet that runs as printed."""
    try:
        from rlkit.data import read_items

        item = read_items(cfg.data)[0]
        return [str(im) if isinstance(im, Path) else f"reference_{i + 1}.png" for i, im in enumerate(item.images)], \
            item.instruction
    except Exception:  # data not on this machine (a card read elsewhere): a placeholder
        return ["source.png"], "your instruction"


FIT = """
def fit(size, side, multiple=pipe.vae_scale_factor * 2):  # about side^2 pixels at the image's aspect ratio
    w, h = size
    return (max(multiple, round((side * side * w / h) ** 0.5 / multiple) * multiple),
            max(multiple, round((side * side * h / w) ** 0.5 / multiple) * multiple))

"""


def loading_snippet(cfg: DictConfig, weights: Path | str, example: tuple | None = None) -> str:
    """Python that loads the base model with these weights and makes one edit at the trained settings: the
    edit's size (its pixel budget at the source's aspect ratio, or the trained square), the reference images as
    the run saw them, the same steps and guidance, the pipeline's own resizing matched to training. Runs as
    printed (its own imports, the run's first prompt)."""
    editor = POLICIES[cfg.policy.name].editor
    pipeline, transformer = editor.pipeline, editor.transformer
    base = base_model_id(cfg) or cfg.policy.pretrained or "BASE_MODEL"
    if cfg.policy.pretrained and not is_hub_id(cfg.policy.pretrained) and Path(cfg.policy.pretrained).exists():
        base = cfg.policy.pretrained  # the folder the run trained from, when this machine has it
    dtype = "torch.bfloat16" if cfg.policy.dtype != "float32" else "torch.float32"
    images, instruction = example or example_edit(cfg)
    images = [images] if isinstance(images, str | Path) else [str(i) for i in images]
    p, r = cfg.policy, cfg.policy.resolution
    square, ref = bool(p.get("square", False)), p.get("reference_resolution") or r
    several = editor.max_references is None
    if editor.pipeline == "FluxKontextPipeline":
        settings = (f"guidance_scale={p.guidance_scale:g}, max_sequence_length={p.max_sequence_length}, "
                    f"max_area=width * height, _auto_resize=False")
    elif editor.pipeline.startswith("Flux2"):  # [dev]: the guidance embedding; [klein]: its CFG scale
        scale = p.guidance_scale if editor.guidance == "distilled" else p.true_cfg_scale
        settings = f"guidance_scale={scale:g}, max_sequence_length={p.max_sequence_length}"
    else:
        settings = f"true_cfg_scale={p.true_cfg_scale:g}" + (', negative_prompt=" "' if p.true_cfg_scale > 1 else "")
    if p.finetune == "full":
        load = (f"transformer = {transformer}.from_pretrained(\"{weights}/transformer\", dtype={dtype})\n"
                f"pipe = {pipeline}.from_pretrained(\"{base}\", transformer=transformer, dtype={dtype})\n")
    else:
        load = (f"pipe = {pipeline}.from_pretrained(\"{base}\", dtype={dtype})\n"
                f"pipe.load_lora_weights(\"{weights}\")\n")
    classes = f"{pipeline}, {transformer}" if p.finetune == "full" else pipeline
    lines = [f"import torch\nfrom diffusers import {classes}\nfrom diffusers.utils import load_image\n"
             "from PIL import Image\n", load + "pipe.to(\"cuda\" if torch.cuda.is_available() else \"cpu\")"]
    if square:
        lines += ["", "", "def square(image, side):  # as trained: centre-cropped to a square",
                  "    s = min(image.size)",
                  "    left, top = (image.width - s) // 2, (image.height - s) // 2",
                  "    return image.crop((left, top, left + s, top + s)).resize((side, side), Image.BICUBIC)", "", ""]
        lines.append(f"images = [square(load_image(path), {ref}) for path in {json.dumps(images)}]")
        lines.append(f"width = height = {r}")
        source = f"square(load_image({json.dumps(images[0])}), {r})"
    else:
        lines.append(FIT)
        lines.append(f"images = [load_image(path) for path in {json.dumps(images)}]")
        which = "last" if editor.size_from == "last" else "first"
        lines.append(f"width, height = fit(images[{-1 if which == 'last' else 0}].size, {r})  # the edit: about "
                     f"{r}^2 pixels at the {which} image's aspect ratio")
        source = "images[0].resize((width, height), Image.BICUBIC)"
        if several:
            lines.append(f"images = [im.resize(fit(im.size, {ref}), Image.BICUBIC) for im in images]  # references "
                         f"as trained: about {ref}^2 pixels each")
    if editor.pipeline == "QwenImageEditPlusPipeline" and ref != 1024:
        lines += ["import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus",
                  f"edit_plus.VAE_IMAGE_SIZE = {ref} * {ref}  # references reach the VAE at the trained size (the "
                  f"pipeline's own: 1024 * 1024)"]
    image = "images" if several else source
    lines += [f"edited = pipe(image={image}, prompt={json.dumps(instruction)}, height=height, width=width,",
              f"              num_inference_steps={cfg.sampler.num_steps}, {settings},",
              "              generator=torch.Generator().manual_seed(0)).images[0]",
              "edited.save(\"edited.png\")"]
    return "\n".join(lines)


def _shared_example(cfg: DictConfig) -> tuple[list[str], str]:
    """The example edit of a card that leaves this machine: the images by their file names, not local paths."""
    images, instruction = example_edit(cfg)
    return [Path(i).name for i in images], instruction


def model_card(cfg: DictConfig, info: dict, summary: RunSummary, weights: str = "final",
               repo_id: str | None = None) -> str:
    """final/README.md: what was trained from what, with which reward, what it measured, and how to use it.
    ``repo_id``: the Hub repository it is pushed to (the snippet then loads from there)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_id(cfg)
    license_ = {"license": cfg.export.license} if cfg.export.license else _base_card_license(cfg) or \
        {"license": "other"}
    data = ModelCardData(base_model=base, library_name="diffusers", pipeline_tag="image-to-image",
                         tags=["rlkit", "image-editing", "diffusers", cfg.algorithm.name,
                               "lora" if cfg.policy.finetune == "lora" else "full-finetune"],
                         **({"base_model_relation": "adapter"} if base and cfg.policy.finetune == "lora" else {}),
                         **license_)
    rewards = ", ".join(f"`{r.name}` (weight {r.weight:g})" for r in cfg.rewards)
    gold = ", ".join(f"`{r.name}`" for r in cfg.eval.rewards) if cfg.eval.every else ""
    what = "LoRA" if cfg.policy.finetune == "lora" else "fully fine-tuned transformer"
    lines = [f"# {what} for {_title(cfg)}, trained with rlkit", "",
             f"Online RL ({cfg.algorithm.name}) on an instruction-following image editor "
             f"(`{cfg.policy.name}`, {_trained_at(cfg)}) with the reward {rewards}." + _references_said(cfg), ""]
    if not base:
        lines += ["Base model: a local folder (`" + _title(cfg) + "`), not a Hub id: set `export.base_model` in the "
                  "recipe to name it in this card's metadata.", ""]
    lines += ["## Weights", ""]
    step = info.get("step")
    which = ("the EMA of the trained weights (DiffusionNFT's old policy, `algorithm.nft.export: ema`)"
             if info.get("export") == "ema" else "the trained weights")
    if info.get("weights") == "best_gold":
        lines.append(f"The weights of the best held-out gold evaluation, step {step} of {summary.steps}: {which}.")
    else:
        lines.append(f"The weights after step {step} of {summary.steps}: {which}.")
    if cfg.policy.finetune == "lora":
        lora = cfg.policy.lora
        lines.append(f"LoRA rank {lora.rank}, alpha {lora.alpha:g}, on {', '.join(lora.target_modules)}: "
                     f"`pytorch_lora_weights.safetensors` for diffusers' `load_lora_weights` (the adapter's config "
                     f"travels in its metadata), the same adapter as `adapter_model.safetensors` + "
                     f"`adapter_config.json` for `peft.PeftModel.from_pretrained(pipe.transformer, ...)`.")
    lines += ["", "## Measured during training", "", "| figure | first | last | best (step) |",
              "| --- | --- | --- | --- |"]
    if summary.gold:
        g = summary.gold
        lines.append(f"| {summary.gold_name}, held-out ({gold}) | {g.first:.4f} | {g.last:.4f} | "
                     f"{g.best:.4f} ({g.best_step}) |")
    if summary.probe:
        q = summary.probe
        lines.append(f"| training reward on fixed held-out prompts | {q.first:.4f} | {q.last:.4f} | "
                     f"{q.best:.4f} ({q.best_step}) |")
    if summary.reward:
        r = summary.reward
        lines.append(f"| training reward (batch mean; other prompts each step) | {r.first:.4f} | {r.last:.4f} | "
                     f"{r.best:.4f} ({r.best_step}) |")
    alarms = ", ".join(f"{k} x{n}" for k, n in sorted(summary.alarms.items())) or "none"
    lines += ["", f"Stability alarms: {alarms}.", "", "## How to use", "",
              f"One edit at the settings it was trained at ({_trained_at(cfg)}, {cfg.sampler.num_steps} steps):",
              "", "```python",
              loading_snippet(cfg, repo_id or weights, _shared_example(cfg) if repo_id else None), "```", "",
              "## Recipe", "", "`config.yaml` beside the weights is the resolved recipe (secrets left out): "
              "`rlkit run config.yaml` trains it again where its data and model paths exist.", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _references_said(cfg: DictConfig) -> str:
    """How many reference images the training prompts had (where the data is on this machine)."""
    try:
        from rlkit.data import read_items

        counts = sorted({len(it.images) for it in read_items(cfg.data)})
    except Exception:
        return ""
    if counts == [1]:
        return " Each prompt had one source image."
    many = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return f" Each prompt had {many} reference images, in order (the first is the source)."


def _trained_at(cfg: DictConfig) -> str:
    p = cfg.policy
    size = (f"sources centre-cropped to {p.resolution} x {p.resolution}" if p.get("square") else
            f"about {p.resolution}^2 pixels at the source's aspect ratio")
    several = POLICIES[p.name].editor.max_references is None
    refs = f", references at about {p.get('reference_resolution') or p.resolution}^2 pixels each" if several else ""
    return size + refs


def write_model_card(folder: Path, cfg: DictConfig, info: dict, run_dir: Path, name: str = "final") -> None:
    """README.md (the model card) and config.yaml into an export folder being written (`name`: what it will be
    called in the run directory, for the loading snippet: the run directory as the recipe gives it)."""
    from rlkit.config import to_yaml

    summary = summarize(run_dir)
    (folder / "README.md").write_text(model_card(cfg, info, summary, weights=f"{cfg.output_dir}/{name}"))
    (folder / "config.yaml").write_text(to_yaml(cfg))


def push_to_hub(run_dir: Path, repo_id: str, weights: str = "final", private: bool = False) -> str:
    """Upload RUN_DIR/final (or final_last) as a model repository; returns its URL. What is uploaded is the
    folder as rlkit wrote it (weights in both layouts, adapter_config.json, config.yaml, rlkit_final.json) with
    the model card written again for the repository: its snippet loads from REPO_ID."""
    import shutil
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    folder = Path(run_dir) / weights
    if not (folder / "rlkit_final.json").is_file():
        exported = [n for n in ("final", "final_last") if (Path(run_dir) / n / "rlkit_final.json").is_file()]
        if exported:
            raise UserError(f"{run_dir} has no {weights}/; it exported {' and '.join(f'{n}/' for n in exported)} "
                            f"(final_last/ exists only when final/ holds an earlier, best-gold step)")
        raise UserError(f"{run_dir} has no finished export (no {weights}/rlkit_final.json); run or resume it to "
                        f"the end first")
    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise HFValidationError("expected OWNER/NAME")
    except HFValidationError as err:
        raise UserError(f"'{repo_id}' is not a Hub repository id ({str(err).splitlines()[0]})") from None
    api = HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / weights
        shutil.copytree(folder, staged)
        _card_for_repo(staged, Path(run_dir), repo_id, weights)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(staged), repo_id=repo_id, repo_type="model",
                              commit_message=f"rlkit: {weights} of {Path(run_dir).name}")
        except OfflineModeIsEnabled:
            raise UserError("the Hugging Face Hub is off (HF_HUB_OFFLINE=1); unset it to push") from None
        except HfHubHTTPError as err:
            raise UserError(f"push to {repo_id} failed: {str(err).splitlines()[0]} (logged in? `hf auth login`)") \
                from None
        except Exception as err:  # no network: the HTTP client's connection errors (httpx, requests, OSError)
            raise UserError(f"push to {repo_id} failed: cannot reach the Hub ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no details'})") from None
    return str(url)


def _card_for_repo(folder: Path, run_dir: Path, repo_id: str, weights: str) -> None:
    """The model card again, its snippet loading from the repository instead of the run's folder."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.merge({"export": {"base_model": None, "license": None}},
                              OmegaConf.load(folder / "config.yaml"))
        info = json.loads((folder / "rlkit_final.json").read_text())
        card = model_card(cfg, info, summarize(run_dir), weights=weights, repo_id=repo_id)
    except Exception as err:  # an export written by an older rlkit: its card goes as it is
        print(f"warning: the model card keeps its local paths ({type(err).__name__}: {err})")
        return
    (folder / "README.md").write_text(card)
