"""Which preparation a folder holds, and whether it may be reused or replaced.

A preparation's `prepared.json` records the settings it was made with. A folder is ready when they equal the
recipe's; an editor is reused when only the judge's settings differ; the shipped preparation (sandbox/shipped)
is copied when it matches exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlkit.core.errors import UserError
from rlkit.sandbox.schema import SandboxConfig
from rlkit.sandbox.world import TRUTH_VERSION, WORLD_VERSION

SHIPPED = Path(__file__).parent / "shipped"  # shipped preparations: seed_<N>/{editor, jrm, prepared.json}


def _settings(cfg) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.create(cfg))  # the recipe section or a SandboxConfig alike
    # the truth ranks the judge's pairs (and checks the judge), so a judge made under another one is rebuilt;
    # the editor never sees the truth, so "truth" is not one of EDITOR_SETTINGS
    return {"world": WORLD_VERSION, "truth": TRUTH_VERSION} | {k: v for k, v in d.items() if k not in WHERE}


WHERE = ("path", "device", "use_shipped")  # how and where a preparation is made, not what


# The settings that make the editor (with its VAE): a preparation that changes only the others (the judge's,
# the prompt counts) reuses an editor made with these, shipped or in the cache it replaces.
EDITOR_SETTINGS = ("world", "seed", "vae_steps", "vae_blocks", "latent_channels", "editor_heads", "editor_steps",
                   "editor_batch", "editor_lr", "editor_prompts", "washout", "washout_share", "skip_edit",
                   "editor_schedule")


def _recorded(folder: Path) -> dict | None:
    """The settings a preparation in `folder` was made with. A setting added to SandboxConfig after it was made
    takes its default, which is how rlkit behaved before the setting existed, so caches stay valid."""
    done = folder / "prepared.json"
    made = json.loads(done.read_text()).get("config") if done.is_file() else None
    if made is None:
        return None
    # world and truth versions are not settings: a cache without them predates them and is not the current one
    defaults = {k: v for k, v in dataclasses.asdict(SandboxConfig()).items() if k not in WHERE}
    return defaults | made


def reusable_editor(out: Path, cfg) -> Path | None:
    """An editor folder made with exactly these editor settings: the shipped one (unless use_shipped is off) or
    the one in the cache at `out`."""
    settings = _settings(cfg)
    want = {k: settings.get(k) for k in EDITOR_SETTINGS}
    places = ([SHIPPED / f"seed_{cfg.seed}"] if cfg.use_shipped else []) + [out]
    for folder in places:
        made = _recorded(folder)
        if made is not None and (folder / "editor" / "model_index.json").is_file():
            if {k: made.get(k) for k in EDITOR_SETTINGS} == want:
                return folder / "editor"
    return None


def shipped_preparation(cfg) -> Path | None:
    """The preparation rlkit ships for these exact settings (made by `rlkit prepare` with them), if any."""
    folder = SHIPPED / f"seed_{cfg.seed}"
    return folder if cfg.use_shipped and _recorded(folder) == _settings(cfg) else None


def is_prepared(out: Path, cfg) -> bool:
    return _recorded(out) == _settings(cfg)


def check_replaceable(out: Path, cfg) -> None:
    """A run may replace a cache only when nothing is lost: one copied from a shipped preparation (copied again
    in seconds; also one an older rlkit shipped, marked `shipped_copy`) or one of an older world or truth (no
    recipe can use it). A preparation made here with other
    settings took minutes to tens of minutes; a run that forgot the overrides it was made with must not delete it."""
    made = _recorded(out)
    if made is None or made == _settings(cfg):
        return
    current = {"world": WORLD_VERSION, "truth": TRUTH_VERSION}
    if {k: made.get(k) for k in current} != current:
        return
    if any(_recorded(folder) == made for folder in SHIPPED.glob("seed_*")):
        return
    if json.loads((out / "prepared.json").read_text()).get("shipped_copy"):  # of an older rlkit's shipped one
        return
    want = _settings(cfg)
    diffs = ", ".join(f"{k}: {made.get(k)!r} there, {want.get(k)!r} here" for k in sorted(want | made)
                      if made.get(k) != want.get(k))
    raise UserError(f"sandbox.path {out} holds a preparation made with other settings ({diffs}); a run does not "
                    f"replace it. Pass the same sandbox.* overrides it was made with, choose another sandbox.path, "
                    f"or replace it on purpose with `rlkit prepare RECIPE sandbox.path={out} ...`")

