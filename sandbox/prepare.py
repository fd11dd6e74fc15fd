"""`rlkit prepare sandbox_edit`: the sandbox's prompts, editor and judge, built into `sandbox.path`, seeded.

VAE and editor (sandbox/editor.py), then the judge (sandbox/judge.py) and its refresh stages
(sandbox/refresh.py). A preparation whose editor settings match an existing editor (shipped, or the cache it
replaces) reuses it and trains only the judge; one whose settings all match the shipped preparation copies it
(sandbox/cache.py).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from pathlib import Path

from diffusers import FluxKontextPipeline

from rlkit.core.errors import UserError
from rlkit.sandbox.cache import _settings, check_replaceable, is_prepared, reusable_editor, shipped_preparation
from rlkit.sandbox.data import sample_prompts, write_preference_pairs, write_prompts
from rlkit.sandbox.editor import SIZE, build_pipeline, editor_policy, pretrain_editor, train_vae
from rlkit.sandbox.judge import check_samples, train_judges, write_editor_pairs
from rlkit.sandbox.refresh import refresh_judges
from rlkit.sandbox.seeds import stream_seed


def prepare(out: Path, cfg, log=print, replace: bool = True) -> Path:
    """Build everything into `out` (data/, editor/, jrm/final); returns `out`. Skips it when already done with
    the same settings. `cfg` is the recipe's `sandbox` section (sandbox.schema.SandboxConfig). `replace=False`
    (a run, a benchmark) refuses to replace a preparation made here with other settings (check_replaceable);
    `rlkit prepare` replaces it, which is what that command is asked to do.

    Built in a sibling folder and swapped in only when complete: an interrupted preparation (Ctrl-C, a crash)
    leaves the previous cache as it was. A folder that is neither empty nor a sandbox cache is never touched.
    Several processes (the ranks of one run) may call it at once: one prepares, the others wait and reuse it."""
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        return _prepare(out, cfg, log, replace)


def _prepare(out: Path, cfg, log, replace: bool) -> Path:
    done = out / "prepared.json"
    if is_prepared(out, cfg):
        log(f"sandbox already prepared in {out}")
        return out
    if not replace:
        check_replaceable(out, cfg)
    if out.exists() and any(out.iterdir()) and not done.exists():
        raise UserError(f"sandbox.path {out} exists and is not a sandbox cache (no prepared.json); "
                        f"choose an empty or new folder")
    work = out.parent / f".{out.name}.preparing"
    shutil.rmtree(work, ignore_errors=True)  # a previous interrupted attempt
    t0 = time.time()
    shipped = shipped_preparation(cfg)
    if shipped is not None:  # the editor and judge as `rlkit prepare` made them; the prompts are cheap
        shutil.copytree(shipped, work)
        record = json.loads((work / "prepared.json").read_text())  # marked: after an upgrade that re-ships it,
        (work / "prepared.json").write_text(json.dumps(record | {"shipped_copy": True}, indent=1))  # still a copy
        _write_data(work, cfg)
        log(f"using the sandbox preparation shipped with rlkit ({shipped}); sandbox.use_shipped=false "
            f"prepares it here instead")
    else:
        report = _build(work, cfg, log, reusable_editor(out, cfg))
        (work / "prepared.json").write_text(json.dumps({"config": _settings(cfg), "seconds": time.time() - t0,
                                                        **report}, indent=1))
    if out.exists():  # an older preparation with other settings
        shutil.rmtree(out)
    work.rename(out)
    log(f"sandbox prepared in {out} ({time.time() - t0:.0f} s)")
    return out


def _write_data(out: Path, cfg) -> None:
    """RL's training prompts and the held-out prompts of gt_heldout (seeded: the same on every machine)."""
    write_prompts(out / "data" / "train", cfg.train_prompts, stream_seed(cfg.seed, "prompts"))
    write_prompts(out / "data" / "heldout", cfg.heldout_prompts, stream_seed(cfg.seed, "heldout"))


def _build(out: Path, cfg, log, editor: Path | None = None) -> dict:
    out.mkdir(parents=True)
    _write_data(out, cfg)
    if editor is not None:  # made with these very editor settings: only the judge changes
        shutil.copytree(editor, out / "editor")
        policy = editor_policy(FluxKontextPipeline.from_pretrained(out / "editor"), cfg.device)
        log(f"reusing the editor of {editor.parent} (same editor settings); training the judge")
    else:
        vae = train_vae(cfg, log)
        pipe = build_pipeline(vae, cfg.seed, cfg.editor_heads)
        policy = pretrain_editor(pipe, cfg, log)
        pipe.save_pretrained(out / "editor")
    seed = cfg.seed
    pairs_train = write_preference_pairs(out / "data" / "pairs_train", cfg.jrm_pairs,
                                         stream_seed(seed, "synthetic_pairs"), SIZE)
    editor_rows = write_editor_pairs(policy, out / "data" / "pairs_train", cfg.jrm_editor_prompts,
                                     stream_seed(cfg.seed, "editor_pairs"),
                                     contrast=tuple(cfg.jrm_editor_contrast))
    with open(pairs_train, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in editor_rows)
    log(f"reward pairs: {cfg.jrm_pairs} synthetic + {len(editor_rows)} from the editor's own samples")
    pairs_eval = write_preference_pairs(out / "data" / "pairs_eval", 128, stream_seed(cfg.seed, "eval_pairs"), SIZE)
    prompts = sample_prompts(cfg.judge_check_prompts, stream_seed(seed, "judge_check"))  # where judges are checked
    held = check_samples(policy, prompts, cfg)
    report = train_judges(out, cfg, pairs_train, pairs_eval, held, log)
    for round_ in range(cfg.judge_refresh_rounds if cfg.judge_refresh_steps else 0):
        report = refresh_judges(out, cfg, pairs_train, pairs_eval, held, prompts, report, log, round_)
    return report | {"editor_reused": editor is not None}

