"""The reward server's wire format: safetensors bytes, never pickle.

Request  = safetensors {edited, source: [B, 3, H, W] uint8 or float32, group_ids: [B] int64, and for prompts
           with several reference images `reference/G/K`: [3, h, w], group G's K-th reference}, and in its
           string metadata `rlkit` = JSON {"instructions": [...], "metadata": [...], "references": {G: count}
           (only with reference images)}.
Response = safetensors {scores: [B] float32, uncertainty?: [B], details/NAME?: [B]}, metadata `rlkit` =
           JSON {"rationales": [...] | null}.
Both sides validate shapes and types and raise `WireError` with a message that says what was wrong.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load, save

from rlkit.core.images import MAX_PIXELS
from rlkit.rewards.base import RewardInput, RewardOutput


class WireError(ValueError):
    """A malformed request or response."""


def encode_input(batch: RewardInput, dtype: str = "uint8") -> bytes:
    def images(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().clamp(0, 1).cpu().contiguous()
        return (x * 255).round().to(torch.uint8) if dtype == "uint8" else x

    meta = {"instructions": list(batch.instructions), "metadata": list(batch.metadata) or None}
    tensors = {"edited": images(batch.edited), "source": images(batch.source),
               "group_ids": batch.group_ids.detach().long().cpu().contiguous()}
    if batch.references is not None:  # once per group: its samples share them
        counts = {}
        for g, refs in zip(batch.group_ids.tolist(), batch.references):
            if str(g) not in counts:
                counts[str(g)] = len(refs)
                tensors.update({f"reference/{g}/{k}": images(r[None])[0] for k, r in enumerate(refs)})
        meta["references"] = counts
    return save(tensors, metadata={"rlkit": json.dumps(meta)})


def decode_input(data: bytes) -> RewardInput:
    """A request, every field checked: shapes, types, finite pixels in [0, 1], one string instruction and one
    JSON object of metadata per image. Anything else is a WireError naming the field (the server's 400)."""
    tensors, meta = _load(data)
    for key in ("edited", "source", "group_ids"):
        if key not in tensors:
            raise WireError(f"request has no '{key}' tensor")
    edited, source = (_as_unit_float(tensors[k], k) for k in ("edited", "source"))
    n, group_ids = edited.shape[0], tensors["group_ids"]
    if source.shape != edited.shape or group_ids.shape != (n,):
        raise WireError(f"shapes disagree: edited {tuple(edited.shape)}, source {tuple(source.shape)}, "
                        f"group_ids {tuple(group_ids.shape)}")
    if n == 0:
        raise WireError("request holds no images")
    if group_ids.dtype not in (torch.int64, torch.int32) or (group_ids < 0).any():
        raise WireError(f"'group_ids' must be non-negative int64, got {group_ids.dtype}")
    instructions = meta.get("instructions")
    if not isinstance(instructions, list) or len(instructions) != n or \
            not all(isinstance(t, str) for t in instructions):
        raise WireError(f"metadata 'instructions' must be a list of {n} strings")
    metadata = meta.get("metadata")
    if metadata is None or metadata == []:  # (none given: an empty list from older clients)
        metadata = [{} for _ in range(n)]
    if not isinstance(metadata, list) or len(metadata) != n or not all(isinstance(m, dict) for m in metadata):
        raise WireError(f"metadata 'metadata' must be a list of {n} JSON objects (or absent)")
    return RewardInput(edited, source, instructions, group_ids.long(), metadata,
                       _references(tensors, meta.get("references"), group_ids.tolist()))


def _references(tensors: dict, counts, group_ids: list[int]) -> list[list[torch.Tensor]] | None:
    """Each sample's reference images from `reference/G/K` (None: the request has none beyond the source)."""
    if counts is None:
        return None
    if not isinstance(counts, dict) or not all(isinstance(c, int) and 1 <= c <= 64 for c in counts.values()):
        raise WireError("metadata 'references' must map each group id to its number of reference images (1-64)")
    by_group = {}
    for g in dict.fromkeys(group_ids):
        if str(g) not in counts:
            raise WireError(f"metadata 'references' has no count for group {g}")
        refs = []
        for k in range(counts[str(g)]):
            key = f"reference/{g}/{k}"
            if key not in tensors:
                raise WireError(f"request has no '{key}' tensor")
            refs.append(_as_unit_float(tensors[key][None], key)[0])
        by_group[g] = refs
    return [by_group[g] for g in group_ids]


def encode_output(out: RewardOutput) -> bytes:
    # every field is copied: a reward may hand back one tensor under two names (JRM's uncertainty is also
    # details/sigma), and safetensors refuses tensors that share memory
    tensors = {"scores": _own(out.scores)}
    if out.uncertainty is not None:
        tensors["uncertainty"] = _own(out.uncertainty)
    for name, value in (out.details or {}).items():
        if isinstance(value, torch.Tensor):
            tensors[f"details/{name}"] = _own(value)
    return save(tensors, metadata={"rlkit": json.dumps({"rationales": out.rationales})})


def _own(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32, copy=True).contiguous()


def decode_output(data: bytes) -> RewardOutput:
    tensors, meta = _load(data)
    if "scores" not in tensors:
        raise WireError("response has no 'scores' tensor")
    details = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("details/")}
    return RewardOutput(scores=tensors["scores"], uncertainty=tensors.get("uncertainty"), details=details,
                        rationales=meta.get("rationales"))


def _load(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("rlkit", "{}"))
    except Exception as err:  # safetensors raises its own error types for every kind of bad byte string
        raise WireError(f"not a safetensors payload ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(meta, dict):
        raise WireError("metadata 'rlkit' must be a JSON object")
    return tensors, meta


def _as_unit_float(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 3:
        raise WireError(f"'{name}' must be [B, 3, H, W], got {tuple(x.shape)}")
    if min(x.shape[2:]) < 1 or x.shape[2] * x.shape[3] > MAX_PIXELS:
        raise WireError(f"'{name}' images must have 1 to {MAX_PIXELS} pixels, got {x.shape[2]}x{x.shape[3]}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if x.dtype != torch.float32:
        raise WireError(f"'{name}' must be uint8 or float32, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise WireError(f"'{name}' holds non-finite values (NaN/inf)")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise WireError(f"'{name}' float32 pixels must be in [0, 1], got {float(x.min()):.3g} to "
                        f"{float(x.max()):.3g}")
    return x
