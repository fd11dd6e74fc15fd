"""Reward-model variants in the sandbox world, against its ground truth (CPU, minutes).

    python sandbox/experiments/reward_ablation.py --pairs 1000 --epochs 3 --out runs/reward_ablation

Same in-world preference pairs (ranked by the truth, JRM-format rationales, 1..5 scores) and the same
compute for every variant; held-out pairwise accuracy on separate pairs:
  jrm_alpha0.7 / jrm_alpha0      JRM's joint loss vs Bradley-Terry only (and again with half the pairs)
  dist_bt                        Z-Reward distribution head, no rationale anywhere
  teacher (rationale_first)      distribution head that reads the rationale (Z-Reward's teacher)
  risd_student                   one-prefill student distilled from that teacher (rlkit distill-reward)
Prints a table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlkit.config import load_recipe
from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe
from rlkit.rewards.jrm.distill import distill_reward
from rlkit.rewards.jrm.train import train_reward
from rlkit.sandbox.data import write_preference_pairs
from rlkit.sandbox.seeds import stream_seed


def recipe(out: Path, train: Path, eval_: Path, epochs: float, *extra: str):
    args = [f"output_dir={out}", f"data.train={train}", f"data.eval={eval_}", f"train.epochs={epochs}",
            "train.logging_steps=50", *extra]
    return load_recipe("jrm_tiny", args, schema_cls=RewardRecipe, check=check_reward_recipe)


def half(pairs: Path, out: Path) -> Path:
    rows = pairs.read_text().splitlines()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows[: len(rows) // 2]) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--eval-pairs", type=int, default=200)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants")
    ap.add_argument("--out", default="runs/reward_ablation")
    args = ap.parse_args()
    out = Path(args.out)
    train = write_preference_pairs(out / "pairs_train", args.pairs, stream_seed(args.seed, "synthetic_pairs"))
    eval_ = write_preference_pairs(out / "pairs_eval", args.eval_pairs, stream_seed(args.seed, "eval_pairs"))
    train_half = half(train, out / "pairs_train" / "half.jsonl")  # same folder: image paths stay valid
    variants = {
        "jrm_alpha0.7": lambda: train_reward(recipe(out / "jrm_a07", train, eval_, args.epochs, "loss.alpha=0.7")),
        "jrm_alpha0": lambda: train_reward(recipe(out / "jrm_a0", train, eval_, args.epochs, "loss.alpha=0")),
        "jrm_alpha0.7_half": lambda: train_reward(recipe(out / "jrm_a07_half", train_half, eval_, 2 * args.epochs,
                                                         "loss.alpha=0.7")),
        "jrm_alpha0_half": lambda: train_reward(recipe(out / "jrm_a0_half", train_half, eval_, 2 * args.epochs,
                                                       "loss.alpha=0")),
        "dist_bt": lambda: train_reward(recipe(out / "dist_bt", train, eval_, args.epochs, "head.kind=distribution",
                                               "loss.alpha=0")),
        "teacher": lambda: train_reward(recipe(out / "teacher", train, eval_, args.epochs, "head.kind=distribution",
                                               "head.layout=rationale_first", "loss.alpha=0")),
        "risd_student": lambda: distill_reward(recipe(out / "risd", train, eval_, args.epochs,
                                                      f"distill.teacher={out / 'teacher' / 'final'}", "loss.alpha=0",
                                                      "distill.rank_weight=1.0")),
    }
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    for name, run in variants.items():
        if args.only and name not in args.only:
            continue
        folder = run()
        report = json.loads(((folder / "distill_eval.json") if name == "risd_student"
                             else (folder / "eval.json")).read_text())
        results[name] = report
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'variant':22s} held-out pairwise accuracy ({args.eval_pairs} pairs; {args.pairs} train pairs)")
    for name, r in results.items():
        extra = {k: round(v, 3) for k, v in r.items() if k not in ("accuracy", "n")}
        print(f"{name:22s} {r.get('accuracy', r.get('student_accuracy')):.3f}  {extra or ''}")


if __name__ == "__main__":
    main()
