"""Where models run and in which precision: one table of the dtypes a recipe may name, one device resolver."""

from __future__ import annotations

import torch

from rlkit.core.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"policy.device is '{name}' but CUDA is not available; use policy.device=cpu")
    return torch.device(name)
