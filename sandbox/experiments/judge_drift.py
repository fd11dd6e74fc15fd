"""Does the sandbox judge still rank the policy's samples after RL? Agreement with the truth on pairs of samples.

`rlkit prepare` checks the judge on the *starting* editor's samples. RL moves the editor away from them, and a
judge that only knows the starting editor ranks the trained policy's samples at chance (docs/experiments.md,
2026-11-23, "The judge after RL"): from there GRPO has no signal, whatever its settings. This prints the judge's
agreement with the truth on the starting editor's samples and, for each checkpoint given, on that policy's
samples (48 held-out prompts x 8 samples, every pair the truth puts at least 0.1 / 0.2 / 0.3 apart).

    python sandbox/experiments/judge_drift.py CACHE                                  # the cache's own judge, start only
    python sandbox/experiments/judge_drift.py CACHE --judge OTHER/final RUN/checkpoints/step_000060
    python sandbox/experiments/judge_drift.py CACHE --judge A/final --judge B/final ...   # an ensemble: their mean

A cache prepared with `sandbox.judge_ensemble: K` is scored by its K judges' mean (jrm/, jrm_1/, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rlkit import checkpoint as ckpt
from rlkit.config import load_recipe
from rlkit.policies import build_policy
from rlkit.rewards.jrm.reward import JRMReward
from rlkit.sandbox.data import sample_prompts
from rlkit.sandbox.judge import judge_agreement, judge_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="a prepared sandbox (sandbox.path)")
    ap.add_argument("checkpoints", nargs="*", type=Path, help="run checkpoints (checkpoints/step_NNNNNN)")
    ap.add_argument("--judge", action="append", help="a JRM folder; repeat for an ensemble (default: the cache's "
                    "judges, jrm/final and any jrm_N/final)")
    ap.add_argument("--seed", type=int, default=6, help="held-out prompts and sampling noise (prepare uses 6)")
    args = ap.parse_args()
    cache = args.cache.expanduser()
    cfg = load_recipe("sandbox_edit", [f"sandbox.path={cache}"])
    policy = build_policy(cfg.policy, cfg.sampler, "cpu", 8)
    folders = args.judge or [str(cache / judge_folder(i) / "final") for i in range(100)
                             if (cache / judge_folder(i) / "final").is_dir()]
    judge = JRMReward(folders, device="cpu")  # one judge, or their mean: the reward RL gets
    print(f"judge: {' + '.join(folders)}")
    prompts = sample_prompts(cfg.sandbox.judge_check_prompts, args.seed)
    start = policy.adapter_state_dict()  # the LoRA at its initialisation: the starting editor
    print(f"{'policy':40s} {'pairs>=0.1':>10s} {'agree':>6s} {'>=0.2':>6s} {'>=0.3':>6s} {'mean truth':>10s}")
    for name in ["start", *args.checkpoints]:
        policy.load_adapter_state_dict(start if name == "start" else ckpt.load_checkpoint(name)["adapter"])
        check = judge_agreement(policy, judge, prompts, 8, torch.Generator().manual_seed(args.seed))
        print(f"{str(name)[-40:]:40s} {check['gap>=0.1']['pairs']:10d} {check['gap>=0.1']['agreement']:6.3f} "
              f"{check['gap>=0.2']['agreement']:6.3f} {check['gap>=0.3']['agreement']:6.3f} "
              f"{check['mean_truth']:10.3f}")


if __name__ == "__main__":
    main()
