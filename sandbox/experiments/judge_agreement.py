"""How well a sandbox judge ranks the editor's *own* samples, the only ranking GRPO uses.

Synthetic held-out accuracy (what `rlkit prepare` prints) predicts a run's success only loosely; this
measures the judge where RL needs it: P prompts x K samples from the prepared editor, every within-group pair
the truth separates by at least a gap, and the fraction the judge orders the same way.

    python sandbox/experiments/judge_agreement.py ~/.cache/rlkit/sandbox/seed_0            # the cache's own judge
    python sandbox/experiments/judge_agreement.py CACHE --judge runs/other_jrm/final --prompts 48 --samples 8
    python sandbox/experiments/judge_agreement.py CACHE --contrast 0.8 1.25 1.5   # also along the washout flaw's axis

`--contrast C ...` also pairs every sample with itself at contrast C about mid-grey (C < 1 fades it further,
C > 1 undoes fading): the direction GRPO must find on a faded editor, which samples of one prompt barely span.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rlkit.config import load_recipe
from rlkit.policies import build_policy
from rlkit.rewards.jrm.model import JRMModel
from rlkit.sandbox.data import sample_prompts
from rlkit.sandbox.judge import editor_samples, judge_agreement
from rlkit.sandbox.world import gt_scores, washout

GAPS = (0.1, 0.2, 0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="a prepared sandbox (sandbox.path)")
    ap.add_argument("--judge", type=Path, help="a JRM final/ folder (default: the cache's jrm/final)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=777, help="prompts")
    ap.add_argument("--noise-seed", type=int, default=0, help="the editor's sampling noise")
    ap.add_argument("--contrast", type=float, nargs="*", default=[], help="contrast factors to pair samples with")
    args = ap.parse_args()
    cache = args.cache.expanduser()
    cfg = load_recipe("sandbox_edit", [f"sandbox.path={cache}"])
    policy = build_policy(cfg.policy, cfg.sampler, "cpu", 8)
    judge = JRMModel.load(str(args.judge or cache / "jrm" / "final"), dtype=torch.float32, device="cpu")
    res = judge_agreement(policy, judge, sample_prompts(args.prompts, args.seed), args.samples,
                          torch.Generator().manual_seed(args.noise_seed), GAPS)
    print(f"editor samples: {args.prompts} prompts x {args.samples}, mean truth {res['mean_truth']:.3f}")
    for gap in GAPS:
        r = res[f"gap>={gap}"]
        print(f"  pairs the truth separates by >= {gap}: {r['pairs']:5d}, judge agrees on {r['agreement']:.3f}")
    prompts = sample_prompts(args.prompts, args.seed)
    for c in args.contrast:
        r = contrast_agreement(policy, judge, prompts, args.samples, c, torch.Generator().manual_seed(args.noise_seed))
        print(f"  each sample against itself at contrast {c}: truth {r['truth_change']:+.3f} on average, "
              f"judge agrees on {r['agreement']:.3f} of {r['pairs']} pairs the truth separates")


@torch.no_grad()
def contrast_agreement(policy, judge, prompts, samples: int, c: float, generator: torch.Generator) -> dict:
    agree, change = [], []
    for _, instruction, src, tgt, images, scores in editor_samples(policy, prompts, samples, generator):
        moved = washout(images, 1 - c).clamp(0, 1)
        gt = [gt_scores(m, src, tgt)["overall"] - s["overall"] for m, s in zip(moved, scores)]
        mu, _ = judge.score([src] * 2 * samples, list(images) + list(moved), [instruction] * 2 * samples, samples)
        for k, d in enumerate(gt):
            change.append(d)
            if d != 0:
                agree.append(bool((mu[samples + k] - mu[k]) * d > 0))
    return {"truth_change": sum(change) / len(change), "pairs": len(agree),
            "agreement": sum(agree) / len(agree) if agree else float("nan")}


if __name__ == "__main__":
    main()
