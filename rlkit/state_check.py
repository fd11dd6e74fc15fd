"""What a checkpoint must hold before any of it is applied: every tensor the policy trains, with its shape; the
generators' states; and each field of state.json of the right type and range. A checksum proves a file is the
one written; this proves it is one this run can continue from (another version, another model, an edit).

Each checkpointed part declares its fields as ``STATE = {field: kind}``, with the kinds below.
"""

from __future__ import annotations

import json
import math

import torch

# a field's kind -> (what it accepts, said in a problem)
KINDS = {
    "whole": (lambda v: type(v) is int and 0 <= v < 1 << 62, "a whole number >= 0"),
    "number?": (lambda v: v is None or (type(v) in (int, float) and math.isfinite(v)), "a finite number or null"),
    "numbers": (lambda v: isinstance(v, list) and all(type(x) in (int, float) and math.isfinite(x) for x in v),
                "a list of finite numbers"),
    "wholes": (lambda v: isinstance(v, list) and all(type(x) is int and x >= 0 for x in v),
               "a list of whole numbers"),
    "strings": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def field_problems(state: object, fields: dict[str, str], where: str, optional: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(state, dict):
        return [f"{where} is {type(state).__name__}, expected an object"]
    out = []
    for name, kind in fields.items():
        if name not in state:
            if name not in optional:
                out.append(f"{where} has no '{name}'")
            continue
        accepts, said = KINDS[kind]
        if not accepts(state[name]):
            out.append(f"{where}.{name} is {json.dumps(state[name], default=str)[:40]}, expected {said}")
    return out


def rng_problems(state: object) -> list[str]:
    """Python's and numpy's generator states as rlkit.checkpoint.capture_rng writes them."""
    try:
        (version, keys, gauss), (kind, np_keys, pos, has_gauss, cached) = state["python"], state["numpy"]
        ok = (type(version) is int and isinstance(keys, list) and len(keys) == 625
              and all(type(k) is int and 0 <= k < 1 << 32 for k in keys) and (gauss is None or type(gauss) is float)
              and kind == "MT19937" and isinstance(np_keys, list) and len(np_keys) == 624
              and all(type(k) is int and 0 <= k < 1 << 32 for k in np_keys) and type(pos) is int
              and 0 <= pos <= 624 and type(has_gauss) is int and type(cached) in (int, float))
    except (TypeError, ValueError, KeyError):
        ok = False
    return [] if ok else ["state.json 'rng' is not the python and numpy generator states rlkit writes"]


def tensor_problems(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> list[str]:
    """Every expected tensor present with its shape and a floating dtype; none the model lacks."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    out = []
    if missing:
        out.append(f"{what} lacks {len(missing)} tensor(s) the policy trains (e.g. '{missing[0]}')")
    if extra:
        out.append(f"{what} has {len(extra)} tensor(s) the policy does not have (e.g. '{extra[0]}'): another "
                   f"model or LoRA target set?")
    shaped = [k for k in sorted(set(found) & set(expected)) if found[k].shape != expected[k].shape]
    if shaped:
        k = shaped[0]
        out.append(f"{what}: '{k}' has shape {tuple(found[k].shape)}, the policy's is {tuple(expected[k].shape)} "
                   f"({len(shaped)} such)")
    if any(not found[k].is_floating_point() for k in set(found) & set(expected)):
        out.append(f"{what} holds non-floating-point weights")
    return out


def generator_problems(found: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> list[str]:
    out = []
    for name in ["torch_cpu", *(f"gen_{g}" for g in generators)]:
        want = torch.get_rng_state() if name == "torch_cpu" else generators[name[4:]].get_state()
        got = found.get(name)
        if got is None or got.dtype != torch.uint8 or got.shape != want.shape:
            out.append(f"rng.safetensors has no usable '{name}' generator state")
    return out
