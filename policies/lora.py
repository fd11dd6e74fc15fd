"""Which transformer layers get a LoRA: `policy.lora.target_modules` entries are layer names or name suffixes, as
peft reads them (`to_q` is every `...attn.to_q`), or `*` globs over the layers' full paths, for layers a suffix
cannot single out (FLUX.2's single blocks end in a plain `attn.to_out`, which `to_out` would also match in the
double blocks, where `attn.to_out` is a list: `single_transformer_blocks.*.attn.to_out`)."""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch


def lora_targets(transformer: torch.nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """(the target list peft is given: suffixes as they are, each glob expanded to the full names of the linear
    layers it matches; the entries that match no layer)."""
    names = [n for n, _ in transformer.named_modules()]
    linear = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    given, unmatched = [], []
    for target in targets:
        if any(c in target for c in "*?["):
            hits = [n for n in linear if fnmatchcase(n, target)]
            given += hits
        else:
            hits = [n for n in names if n == target or n.endswith("." + target)]
            given.append(target)
        if not hits:
            unmatched.append(target)
    return list(dict.fromkeys(given)), unmatched
