"""What `rlkit eval` compares: a run directory (its final/ weights, or its newest checkpoint when it has none
yet), an export folder (final/, final_last/), a checkpoint folder, or a recipe (the base editor, untrained).
Each becomes its recipe, the weights to load into the policy, and a name for the page and scores.json."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rlkit.core.errors import UserError
from rlkit.core.images import resize_to
from rlkit.core.types import PromptBatch

PEFT_PREFIX = "base_model.model."  # adapter_model.safetensors, peft's layout of the export


@dataclass
class Target:
    name: str
    cfg: DictConfig
    weights: Path | None  # a safetensors file of the policy's adapter_state_dict keys (or peft's), None: base


def resolve(spec: str) -> Target:
    from rlkit import checkpoint as ckpt
    from rlkit.config import build_config, load_recipe

    path = Path(spec).expanduser()
    if path.is_dir() and (path / "rlkit_final.json").is_file():  # an export: final/ or final_last/
        cfg = build_config(OmegaConf.load(path / "config.yaml"), [], where=str(path / "config.yaml"))
        full = path / "transformer" / "diffusion_pytorch_model.safetensors"
        return Target(f"{path.parent.name}/{path.name}", cfg, full if full.is_file() else
                      path / "adapter_model.safetensors")
    if path.is_dir() and (path / "adapter.safetensors").is_file():  # a checkpoint
        problem = ckpt.verify(path)
        config = ckpt.saved_config(path)
        if problem or config is None:
            raise UserError(f"{path}: not a usable checkpoint ({problem or 'no recipe in its state.json'})")
        return Target(f"{path.parent.parent.name}/{path.name}", build_config(OmegaConf.create(config), [],
                                                                             where=str(path)),
                      path / "adapter.safetensors")
    if path.is_dir() and (path / "config.yaml").is_file():  # a run directory
        if (path / "final" / "rlkit_final.json").is_file():
            return resolve(str(path / "final"))
        found = ckpt.newest_valid(path, warn=lambda m: None)
        if found is None:
            raise UserError(f"{path}: a run with no final/ and no valid checkpoint yet: nothing to evaluate")
        return resolve(str(found.path))
    cfg = load_recipe(spec, [])
    return Target(f"{Path(spec).stem} (base)", cfg, None)


def load_policy(target: Target, device: torch.device):
    from safetensors.torch import load_file

    from rlkit.policies import build_policy

    policy = build_policy(target.cfg.policy, target.cfg.sampler, device)
    if target.weights is not None:
        try:
            state = load_file(target.weights)
        except Exception as err:  # safetensors' own errors for a damaged file
            raise UserError(f"{target.weights}: unreadable ({type(err).__name__})") from None
        state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}
        expected = policy.adapter_state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise UserError(f"{target.weights}: its tensors do not fit {target.cfg.policy.name} with this LoRA")
        policy.load_adapter_state_dict(state)
    return policy


def item_seed(seed: int, key: str) -> int:
    """Each item's noise from the seed and its key, so an item's edit does not depend on which others run."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (1 << 63)


@torch.no_grad()
def edit(policy, item, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the source as the judge sees it, the edit): [3, H, W] in [0, 1] at the size the policy edits this source
    (its aspect ratio within `policy.resolution`^2 pixels), sampled with the deterministic ODE."""
    source, refs = policy.layout.load([item.image])
    batch = PromptBatch(source[None], [item.instruction], [item.key], [{}],
                        None if refs[0] is source else [refs])
    rollout = policy.sample(batch, 1, torch.Generator().manual_seed(item_seed(seed, item.key)), noise_level=0.0)
    return shown_at(item, rollout.images[0]), rollout.images[0].float().clamp(0, 1)


def shown_at(item, edited: torch.Tensor) -> torch.Tensor:
    """The item's displayed source at the edit's size."""
    return resize_to(item.shown, (edited.shape[-1], edited.shape[-2]))
