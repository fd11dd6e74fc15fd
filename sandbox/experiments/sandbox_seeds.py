"""`gt_heldout` gain of `rlkit run sandbox_edit` (or another sandbox recipe) over several RL seeds.

Runs the recipe once per seed, one after the other (two torch runs side by side on 2 cores are several times
slower each), into OUT/seed_N, then prints gt_heldout at every evaluation, the gain of the last evaluation over
step 0, and the mean and worst gain. A finished run is not run again (resume=auto), so an interrupted sweep
picks up where it stopped (a run the stability guard stopped counts as ended: resuming it would go on past the
stop); `--only-report` just reads the runs already in OUT.

    python sandbox/experiments/sandbox_seeds.py /tmp/seeds                       # seeds 0-4, the recipe as shipped
    python sandbox/experiments/sandbox_seeds.py /tmp/seeds_x --seeds 1 2 -- algorithm.kl_coef=0.04 sandbox.path=/tmp/c
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from rlkit.logs import read_rows


def gt_series(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["gt_heldout"]) for r in read_rows(run / "metrics.jsonl") if r.get("gt_heldout") is not None]


def guard_summary(run: Path, series: list[tuple[int, float]]) -> str:
    """First alarm, best evaluation, and which weights final/ holds with their truth."""
    import json

    alarms = read_rows(run / "alarms.jsonl")
    first = (f"first alarm step {alarms[0]['step']} ({alarms[0]['kind']}), {len(alarms)} in all" if alarms
             else "no alarm")
    best_step, best = max(series, key=lambda p: (p[1], p[0]))
    info = run / "final" / "rlkit_final.json"
    final = json.loads(info.read_text()) if info.exists() else {}
    exported = dict(series).get(final.get("step"))
    return (f"{first}; start {series[0][1]:.3f}, best {best:.3f} (step {best_step}), last {series[-1][1]:.3f}; "
            f"final/ = {final.get('weights', '?')} weights of step {final.get('step', '?')}, truth "
            f"{'n/a' if exported is None else f'{exported:.3f}'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a folder for the runs (OUT/seed_N)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--recipe", default="sandbox_edit")
    ap.add_argument("--only-report", action="store_true", help="read the runs in OUT, run nothing")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (after --)")
    args = ap.parse_intermixed_args()  # overrides may follow the options
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for seed in args.seeds if not args.only_report else []:
        run = args.out / f"seed_{seed}"
        if (run / "final").is_dir():  # finished, or stopped by the guard with its best weights exported
            continue
        t0 = time.time()
        cmd = ["rlkit", "run", args.recipe, f"seed={seed}", f"output_dir={run}", *args.overrides]
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode not in (0, 3):  # 3: the stability guard stopped it, a run's legitimate end
            sys.exit(f"seed {seed} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        how = "stopped by the guard" if done.returncode == 3 else "finished"
        print(f"seed {seed}: {how} in {time.time() - t0:.0f} s", flush=True)
    gains = []
    for seed in args.seeds:
        series = gt_series(args.out / f"seed_{seed}")
        if len(series) < 2:
            print(f"seed {seed}: no finished run in {args.out / f'seed_{seed}'}")
            continue
        gain = series[-1][1] - series[0][1]
        gains.append(gain)
        steps = " / ".join(f"{v:.3f}" for _, v in series)
        print(f"seed {seed}: gt_heldout at steps {' / '.join(str(s) for s, _ in series)}: {steps}  gain {gain:+.3f}")
        print(f"  {guard_summary(args.out / f'seed_{seed}', series)}")
    if gains:
        print(f"{len(gains)} seeds: mean gain {sum(gains) / len(gains):+.3f}, worst {min(gains):+.3f}, "
              f"best {max(gains):+.3f}")


if __name__ == "__main__":
    main()
