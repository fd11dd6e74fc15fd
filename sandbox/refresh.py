"""The judge refresh: RL against a judge moves the editor to samples the judge never saw, where it ranks at
chance within about 30 steps. A short GRPO run against it makes such a policy; the pairs of that policy's samples
join the training pairs and the judge is trained again, from scratch, on all of them (iterated reward modelling
in miniature). Measured in docs/experiments.md: without it the judge is hacked on the shipped editor."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rlkit.sandbox.judge import agreement_on, check_samples, judge_folder, kept_judges, train_judges, write_editor_pairs
from rlkit.sandbox.seeds import stream_seed

# sandbox_edit's GRPO: its default before AWM, and the refresh run's objective whatever the recipe trains with
# (the shipped preparation's judges were refreshed on GRPO policies with these and the recipe's other settings).
GRPO_SETTINGS = ("algorithm.name=grpo", "sampler.noise_level=0.7", "optim.lr=2.0e-3")


def refresh_recipe(out: Path, run: Path, cfg, round_: int):
    """The refresh run: sandbox_edit on the preparation being built (its paths resolved, nothing left to prepare),
    `judge_refresh_steps` steps of GRPO_SETTINGS against all of the kept judges, nothing saved."""
    from omegaconf import OmegaConf

    from rlkit.config import build_config, load_recipe

    rcfg = load_recipe("sandbox_edit", [
        *GRPO_SETTINGS,
        f"sandbox.path={out}", f"output_dir={run}", f"seed={stream_seed(cfg.seed, 'refresh_run', round_)}",
        f"train.steps={cfg.judge_refresh_steps}", "train.save_every=0", "train.grid_every=0", "train.report=false",
        "eval.every=0", f"policy.device={cfg.device}"])
    # the recipe's one reward is the jrm judge: all of the kept judges
    rcfg.rewards[0].kwargs.path = [str(out / judge_folder(i) / "final") for i in range(cfg.judge_ensemble)]
    plain = OmegaConf.to_container(rcfg, resolve=True)
    plain.pop("sandbox")
    return build_config(plain | {"prepare": None}, [], where="the judge refresh run")


def refresh_judges(out: Path, cfg, pairs_train: Path, pairs_eval: Path, held: list, prompts, first: dict,
                   log, round_: int = 0) -> dict:
    """One refresh stage: `judge_refresh_steps` GRPO steps of the sandbox_edit recipe against the current
    judge, every pair of that policy's samples the truth separates added to the training pairs, the judge trained
    again. It changes what the judge knows, which an ensemble of more copies of it did not. Returns train_judges'
    report for the new judge, with the previous stage's under `judge_refresh`
    ("first_judge"). With `judge_refresh_rounds` > 1 it runs again against the judge it made (`round_` 1, 2, ...:
    its own seeds and image names; the pairs of every round are kept)."""
    from rlkit.trainer import Trainer

    t0 = time.time()
    run = out / "refresh_run"
    rcfg = refresh_recipe(out, run, cfg, round_)
    prev = "first judge" if round_ == 0 else f"judge of refresh round {round_}"
    log(f"judge refresh: {cfg.judge_refresh_steps} GRPO steps against the {prev}")
    trainer = Trainer(rcfg, progress=False)
    trainer.fit()
    refreshed = trainer.policy  # the editor with the refresh run's LoRA
    held_refreshed = check_samples(refreshed, prompts, cfg)
    before = agreement_on(held_refreshed, kept_judges(out, cfg))
    rows = write_editor_pairs(refreshed, out / "data" / "pairs_train", cfg.jrm_editor_prompts,
                              stream_seed(cfg.seed, "refresh_pairs", round_),
                              prefix="rl" if round_ == 0 else f"rl{round_ + 1}_",
                              contrast=tuple(cfg.jrm_editor_contrast))
    with open(pairs_train, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    log(f"judge refresh: {len(rows)} pairs of the refreshed policy's samples added; on that policy's held-out "
        f"samples the {prev} agrees with the truth on {before['gap>=0.1']['agreement']:.3f}")
    for i in range(cfg.judge_ensemble):
        shutil.rmtree(out / judge_folder(i))
    shutil.rmtree(run)
    report = train_judges(out, cfg, pairs_train, pairs_eval, held, log)
    after = agreement_on(held_refreshed, kept_judges(out, cfg))
    log(f"judge refresh: the new judge agrees on {after['gap>=0.1']['agreement']:.3f} of the refreshed policy's "
        f"pairs ({prev} {before['gap>=0.1']['agreement']:.3f}) and on "
        f"{report['judge_agreement']['gap>=0.1']['agreement']:.3f} of the starting editor's "
        f"({prev} {first['judge_agreement']['gap>=0.1']['agreement']:.3f})")
    return report | {"judge_refresh": {"round": round_ + 1, "steps": cfg.judge_refresh_steps, "pairs": len(rows),
                                       "seconds": time.time() - t0, "first_judge": first,
                                       "first_judge_on_refreshed_policy": before,
                                       "judge_on_refreshed_policy": after}}

