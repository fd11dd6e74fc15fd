"""Truth gained per second of compute: each objective in the sandbox, over several RL seeds.

Every arm is `rlkit run sandbox_edit` (the shipped judge as the only reward, `gt_heldout` as gold) with its own
overrides and its own `train.steps`, sized so that it spends about a third of the reference's compute (the
former default: 150 GRPO steps). All arms evaluate with the same plain ODE (`eval.noise_level=0`), so the truth is read
alike. Compute is the run's own rollout + reward + update seconds (`time_*_s`, evaluations excluded; a step
slower than 1.5x the run's median counts as the median) and its transformer forwards (samples through the
transformer). Runs go to OUT/ARM/seed_N, one after the other (two torch
runs side by side on 2 cores are several times slower each, which would corrupt the seconds); a finished run is
not run again. Prints per arm and seed: the gain over step 0 at the end, at the budget (a third of the same
seed's reference compute seconds) and at a third of its transformer forwards (a count: unlike seconds it depends
neither on the machine nor on other work on it), compute and forwards to +0.10, and whether the arm reached the
reference's gain within each budget; writes OUT/learning_efficiency.png (truth against seconds and against
forwards). "disturbed" is the time slow outlier steps added (other work on the machine) and that the compute
leaves out: rerun a run where it is a large share of its compute.

    python benchmarks/learning_efficiency.py /tmp/le --arms grpo_150 grpo_50 fast_grpo nft dpo --seeds 0 1 2
    python benchmarks/learning_efficiency.py /tmp/le --arms nft_beta0.5 --seeds 0 -- sandbox.path=/tmp/sbx
    python benchmarks/learning_efficiency.py /tmp/le --arms grpo_150 awm_lr1e-3 nft_lr1e-3 nft nft_authors \
        dgpo_lr1e-3 --seeds 0 1 2 3 4 --keep benchmarks/results/learning_efficiency
    python benchmarks/learning_efficiency.py benchmarks/results/learning_efficiency --only-report --arms grpo_150 nft
    python benchmarks/learning_efficiency.py /tmp/le --only-report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rlkit.logs import read_rows
from rlkit.sandbox.refresh import GRPO_SETTINGS

ODE_EVAL = ["eval.noise_level=0"]
# Every arm starts from the recipe as these arms were first measured (GRPO, Flow-SDE at 0.7, lr 2e-3), whatever
# its default is now; each then states what it changes.
FORMER = list(GRPO_SETTINGS)
GRPO = [*FORMER, *ODE_EVAL]
ODE = [*FORMER, "sampler.noise_level=0"]  # objectives that learn from ODE samples, evaluated alike
# Step counts put each arm at or past a third of the reference's compute on 2 cores (the reference near 6 s a step
# on the slower machine); the reading "at the budget" does not depend on them matching exactly.
ARMS = {
    "grpo_150": [*GRPO, "train.steps=150"],  # the reference: the recipe's former default
    "grpo_50": [*GRPO, "train.steps=50"],
    "grpo_50_lr4e-3": [*GRPO, "train.steps=50", "optim.lr=4e-3"],
    "fast_grpo": [*GRPO, "sampler.sde_window=2", "sampler.sde_window_placement=random", "train.steps=100"],
    "fast_grpo_lr4e-3": [*GRPO, "sampler.sde_window=2", "sampler.sde_window_placement=random",
                         "train.steps=100", "optim.lr=4e-3"],
    "nft": [*ODE, "algorithm.name=nft", "train.steps=130"],
    "nft_lr1e-3": [*ODE, "algorithm.name=nft", "train.steps=130", "optim.lr=1e-3"],
    "nft_lr4e-3": [*ODE, "algorithm.name=nft", "train.steps=130", "optim.lr=4e-3"],
    "nft_beta0.5": [*ODE, "algorithm.name=nft", "train.steps=130", "algorithm.nft.beta=0.5"],
    # the authors' NFT (old policy blended once per update, 7 of the 8 timesteps per sample, global std): 6.6 s a step
    "nft_authors": [*ODE, "algorithm.name=nft", "algorithm.nft.old_update=epoch_blend",
                    "algorithm.nft.timesteps=schedule", "algorithm.std_scope=global", "train.steps=50"],
    # AWM (5.5 s a step) and DGPO (6 s a step) at their authors' defaults
    "awm": [*ODE, "algorithm.name=awm", "train.steps=60"],
    "awm_lr1e-3": [*ODE, "algorithm.name=awm", "train.steps=60", "optim.lr=1e-3"],  # sandbox_edit's default
    "awm_lr4e-3": [*ODE, "algorithm.name=awm", "train.steps=60", "optim.lr=4e-3"],
    "dgpo": [*ODE, "algorithm.name=dgpo", "train.steps=55"],
    "dgpo_lr1e-3": [*ODE, "algorithm.name=dgpo", "train.steps=55", "optim.lr=1e-3"],
    "dgpo_lr4e-3": [*ODE, "algorithm.name=dgpo", "train.steps=55", "optim.lr=4e-3"],
    "dpo": [*GRPO, "algorithm.name=dpo", "train.steps=140"],
    "dpo_lr5e-4": [*GRPO, "algorithm.name=dpo", "train.steps=140", "optim.lr=5e-4"],
}
REFERENCE, TARGET = "grpo_150", 0.10


KEPT = ("step", "time_rollout_s", "time_reward_s", "time_train_s", "transformer_forwards", "gt_heldout")


def metrics(run: Path) -> Path:
    """A run's metrics: its own metrics.jsonl, or the compact copy `--keep` wrote (RUN.jsonl)."""
    full = run / "metrics.jsonl"
    return full if full.exists() else run.with_suffix(".jsonl")


def has_metrics(run: Path) -> bool:
    return metrics(run).exists()


def keep(run: Path, dest: Path) -> None:
    """The columns this benchmark reads, one row per step: a finished run's record, small enough to commit."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: r[k] for k in KEPT if r.get(k) is not None} for r in read_rows(run / "metrics.jsonl")]
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows))


def curve(run: Path) -> list[tuple[int, float, float, float | None]]:
    """(step, compute seconds, transformer forwards, gt_heldout) at every step, the truth only where evaluated.
    A disturbed step (over 1.5x the run's median: other work on the machine, or the run paused) counts as the
    median: every step of an arm does the same work."""
    rows = list(read_rows(metrics(run)))
    times = step_times(run)
    median = sorted(times)[len(times) // 2] if times else 0.0
    out, seconds, forwards = [], 0.0, 0.0
    for r in rows:
        spent = sum(r.get(k) or 0.0 for k in ("time_rollout_s", "time_reward_s", "time_train_s"))
        seconds += median if r["step"] > 0 and spent > 1.5 * median else spent
        if r["step"] > 0 and forwards is not None:  # None: a run logged before forwards were counted
            forwards = forwards + r["transformer_forwards"] if "transformer_forwards" in r else None
        out.append((r["step"], seconds, forwards, r.get("gt_heldout")))
    return out


def evaluations(run: Path):
    return [(s, sec, fw, gt) for s, sec, fw, gt in curve(run) if gt is not None]


def step_times(run: Path) -> list[float]:
    return [sum(r.get(k) or 0.0 for k in ("time_rollout_s", "time_reward_s", "time_train_s"))
            for r in read_rows(metrics(run)) if r["step"] > 0]


def disturbed(run: Path) -> float:
    """Seconds above 1.5x the run's median step time, summed: what other work on the machine may have added
    (a step of one arm costs about the same throughout); a clean run has close to 0."""
    times = step_times(run)
    median = sorted(times)[len(times) // 2]
    return sum(t - median for t in times if t > 1.5 * median)


def run_arm(arm: str, seed: int, out: Path, overrides: list[str], kept: Path | None) -> None:
    run = out / arm / f"seed_{seed}"
    if (run / "final").is_dir() or (kept and (kept / arm / f"seed_{seed}.jsonl").exists()):
        return
    cmd = [sys.executable, "-m", "rlkit", "run", "sandbox_edit", f"seed={seed}", f"output_dir={run}", *ARMS[arm],
           *overrides]
    t0 = time.time()
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, 3):  # 3: the stability guard stopped it, a legitimate end
        sys.exit(f"{arm} seed {seed} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    print(f"{arm} seed {seed}: {'stopped by the guard' if done.returncode == 3 else 'finished'} in "
          f"{time.time() - t0:.0f} s", flush=True)
    if kept:
        keep(run, kept / arm / f"seed_{seed}.jsonl")


def gain_within(ev, budget: float, column: int) -> float | None:
    """The gain at the last evaluation within the budget (column 1: compute seconds, 2: forwards), as the
    reference's gain is read at its last evaluation."""
    within = [e[3] for e in ev if e[column] <= budget]
    return within[-1] - ev[0][3] if within else None


def reached(gain: float | None, ref_gain: float | None) -> str:
    return "-" if gain is None or ref_gain is None else "yes" if gain >= ref_gain else "no"


def report(out: Path, arms: list[str], seeds: list[int]) -> None:
    ref = {s: evaluations(out / REFERENCE / f"seed_{s}") for s in seeds
           if has_metrics(out / REFERENCE / f"seed_{s}")}
    print(f"{'arm':<18} {'seed':>4} {'steps':>5} {'compute s':>9} {'disturbed':>9} {'forwards':>9} {'gain':>7} "
          f"{'gain@budget':>11} {'gain@fw/3':>11} {'s to +0.10':>10} {'fw to +0.10':>11} {'ref gain':>8}  "
          f"reached (s / fw)")
    for arm in arms:
        for seed in seeds:
            run = out / arm / f"seed_{seed}"
            if not has_metrics(run):
                continue
            ev = evaluations(run)
            if len(ev) < 2:
                continue
            start = ev[0][3]
            last = ev[-1]
            hit = next(((sec, fw) for _, sec, fw, gt in ev if gt - start >= TARGET), None)
            ref_gain = at_budget = at_fw_budget = None
            if seed in ref and len(ref[seed]) > 1:
                ref_gain = ref[seed][-1][3] - ref[seed][0][3]
                at_budget = gain_within(ev, ref[seed][-1][1] / 3, 1)
                if ref[seed][-1][2] is not None and last[2] is not None:
                    at_fw_budget = gain_within(ev, ref[seed][-1][2] / 3, 2)
            fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
            print(f"{arm:<18} {seed:>4} {last[0]:>5} {last[1]:>9.0f} {disturbed(run):>9.0f} {fmt(last[2], '.0f'):>9} "
                  f"{last[3] - start:>+7.3f} {fmt(at_budget, '+.3f'):>11} {fmt(at_fw_budget, '+.3f'):>11} "
                  f"{fmt(hit and hit[0], '.0f'):>10} {fmt(hit and hit[1], '.0f'):>11} {fmt(ref_gain, '+.3f'):>8}  "
                  f"{reached(at_budget, ref_gain)} / {reached(at_fw_budget, ref_gain)}")
    plot(out, arms, seeds)


def plot(out: Path, arms: list[str], seeds: list[int]) -> None:
    """One row per seed: truth against compute seconds (the budget and the reference's gain drawn) and against
    transformer forwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(seeds), 2, figsize=(12, 3.4 * len(seeds)), squeeze=False)
    colors = dict(zip(arms, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for row, seed in zip(axes, seeds):
        ref = out / REFERENCE / f"seed_{seed}"
        ref_ev = evaluations(ref) if has_metrics(ref) else []
        for arm in arms:
            run = out / arm / f"seed_{seed}"
            ev = evaluations(run) if has_metrics(run) else []
            if len(ev) < 2:
                continue
            row[0].plot([e[1] for e in ev], [e[3] for e in ev], color=colors[arm], label=arm, marker=".")
            if all(e[2] is not None for e in ev):
                row[1].plot([e[2] for e in ev], [e[3] for e in ev], color=colors[arm], label=arm, marker=".")
        if len(ref_ev) > 1:
            target = ref_ev[-1][3]
            row[0].axvline(ref_ev[-1][1] / 3, color="grey", ls=":", label="a third of the reference's compute")
            for ax in row:
                ax.axhline(target, color="grey", ls="--", label="the reference's final truth")
        row[0].set_xlabel("compute seconds (rollout + reward + update, 2 CPU cores)")
        row[1].set_xlabel("transformer forwards (samples)")
        for ax in row:
            ax.set_ylabel(f"gt_heldout, seed {seed}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle("sandbox_edit: held-out truth against compute, per RL seed")
    fig.tight_layout()
    fig.savefig(out / "learning_efficiency.png", dpi=100)
    print(f"plot: {out / 'learning_efficiency.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--arms", nargs="+", default=[REFERENCE, "grpo_50", "fast_grpo", "nft", "dpo"], choices=ARMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only-report", action="store_true", help="read the runs in OUT, run nothing")
    ap.add_argument("--keep", type=Path, help="also write each finished run's curve to KEEP/ARM/seed_N.jsonl "
                    "(a run kept there is not run again); --only-report reads KEEP as OUT")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (after --)")
    args = ap.parse_intermixed_args()
    if not args.only_report:
        for seed in args.seeds:
            for arm in args.arms:
                run_arm(arm, seed, args.out, args.overrides, args.keep)
    report(args.out, args.arms, args.seeds)


if __name__ == "__main__":
    main()
