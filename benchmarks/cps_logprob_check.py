"""How the clip acts on CPS transitions under three log-ratio conventions, measured on a real update.

CPS's authors and Flow-Factory score a transition as -mean((x - mean)^2) (no 1 / (2 std^2), no constants);
rlkit scores the exact Gaussian density, mean over dims; GRPO-Guard (algorithm.grpo.ratio_norm) rescales rlkit's by
the std and removes the mean-shift bias. For x drawn from the old transition the three log-ratios relate exactly:
    paper = 2 s^2 * gaussian,   guard = s * gaussian + mean((mu - mu_old)^2) / (2 s)
with s the step's std. This script takes one rollout of a recipe with `sampler.kernel=cps`, one GRPO update
(at noise 0.7 unless the overrides say otherwise), then for every SDE step prints s and, under each convention,
the median |log-ratio| of the samples and the share the recipe's clip range would clip.

    python benchmarks/cps_logprob_check.py sandbox_edit sandbox.path=/tmp/sbx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlkit.algorithms.grpo import regulated_log_ratio  # noqa: E402
from rlkit.config import load_recipe  # noqa: E402
from rlkit.preparation import prepare_recipe  # noqa: E402
from rlkit.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out_dir = tempfile.mkdtemp(prefix="cps_logprob_check_")
    # GRPO at an SDE noise (sandbox_edit's default objective learns from ODE samples: nothing to clip there)
    cfg = load_recipe(args.recipe, ["algorithm.name=grpo", "sampler.noise_level=0.7", *args.overrides,
                                    "sampler.kernel=cps", f"output_dir={out_dir}", "eval.every=0"])
    prepare_recipe(cfg)
    trainer = Trainer(cfg, progress=False)
    batch = trainer.prompts.next_batch(cfg.train.prompts_per_step)
    rollout = trainer.policy.sample(batch, cfg.algorithm.group_size, trainer.generators["rollout"], keep_means=True)
    rewards = trainer.rewards(rollout.as_reward_input())
    adv, _ = trainer.algorithm.advantages(rewards.total, rollout.group_ids)
    trainer.algorithm.update(trainer.policy, rollout, adv, trainer.optimizer, trainer.lr_scheduler,
                             trainer.generators["train"])
    low, high = cfg.algorithm.grpo.clip_range_low, cfg.algorithm.grpo.clip_range_high
    idx = torch.arange(len(rollout))
    print(f"{args.recipe}, kernel cps, noise {cfg.sampler.noise_level}, clip [1 - {low:g}, 1 + {high:g}], "
          f"{len(rollout)} samples, after one GRPO update")
    print(f"{'step':>4} {'std s':>8}   {'median |log r|: gaussian':>24} {'paper':>10} {'guard':>10}   "
          f"{'clipped: gaussian':>17} {'paper':>6} {'guard':>6}")
    with torch.no_grad():
        for step in torch.nonzero(rollout.sde_mask).flatten().tolist():
            out = trainer.policy.step_logprob(rollout, idx, step)
            gaussian = out.log_prob - rollout.log_probs[idx, step]
            x, mu_old = rollout.latents[idx, step + 1], rollout.means[idx, step]
            dims = tuple(range(1, x.ndim))
            paper = -((x - out.mean) ** 2).mean(dim=dims) + ((x - mu_old) ** 2).mean(dim=dims)
            guard = regulated_log_ratio(gaussian, out.mean, mu_old, out.std)
            logs = {"gaussian": gaussian, "paper": paper, "guard": guard}
            clipped = {k: float(((v.exp() < 1 - low) | (v.exp() > 1 + high)).float().mean()) for k, v in logs.items()}
            med = {k: float(v.abs().median()) for k, v in logs.items()}
            print(f"{step:>4} {float(out.std[0]):>8.4f}   {med['gaussian']:>24.2e} {med['paper']:>10.2e} "
                  f"{med['guard']:>10.2e}   {clipped['gaussian']:>17.2f} {clipped['paper']:>6.2f} "
                  f"{clipped['guard']:>6.2f}")


if __name__ == "__main__":
    main()
