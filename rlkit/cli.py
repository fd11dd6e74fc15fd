"""`rlkit` command line: run, resume, validate, rewards.

User errors (bad recipe, missing file, unknown reward) print one line and exit 2; a failing reward stops the
run with exit 1 and names the reward. Tracebacks are for bugs only (set RLKIT_DEBUG=1 to see them always).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlkit import __version__
from rlkit.errors import CheckpointError, RewardError, UserError


def cmd_run(args) -> int:
    from rlkit.config import load_recipe
    from rlkit.trainer import Trainer

    cfg = load_recipe(args.recipe, args.overrides)
    run_dir = Trainer(cfg).fit()
    print(f"done: {run_dir}")
    return 0


def cmd_resume(args) -> int:
    from omegaconf import OmegaConf

    from rlkit.config import build_config
    from rlkit.trainer import Trainer

    run_dir = Path(args.run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} is not an rlkit run directory (no config.yaml)")
    cfg = build_config(OmegaConf.load(saved), ["resume=auto", *args.overrides], where=str(saved))
    if Path(cfg.output_dir).resolve() != run_dir.resolve():
        cfg.output_dir = str(run_dir)
    Trainer(cfg).fit()
    return 0


def cmd_validate(args) -> int:
    from rlkit.config import load_recipe
    from rlkit.data import check_images_exist, read_items
    from rlkit.plugins import load_reward_class

    cfg = load_recipe(args.recipe, args.overrides)
    for spec in cfg.rewards:
        load_reward_class(spec.name)
    items = read_items(cfg.data)
    check_images_exist(items, cfg.data.path)
    print(f"ok: {args.recipe} ({len(items)} prompts, rewards: {', '.join(s.name for s in cfg.rewards)}, "
          f"algorithm: {cfg.algorithm.name})")
    return 0


def cmd_rewards(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlkit.plugins import list_rewards

    table = Table("name", "target", "distribution", "version", title="installed reward plugins (rlkit.rewards)")
    for name, info in sorted(list_rewards().items()):
        table.add_row(name, info.target, info.distribution, info.version)
    Console(width=160).print(table)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlkit", description="Online RL fine-tuning (GRPO, online DPO) for instruction-following image editors.")
    parser.add_argument("--version", action="version", version=f"rlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train from a recipe: rlkit run RECIPE [key=value ...]")
    p.add_argument("recipe", help="recipe file, or the name of a packaged recipe (e.g. tiny_edit)")
    p.add_argument("overrides", nargs="*", help="OmegaConf dotlist overrides, e.g. train.steps=10")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a run from its newest valid checkpoint")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("validate", help="check a recipe (keys, types, data, rewards) without running it")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("rewards", help="list installed reward plugins")
    p.set_defaults(func=cmd_rewards)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, RewardError, CheckpointError) as err:
        if os.environ.get("RLKIT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        if isinstance(err, RewardError):
            print("the step was not applied; the last checkpoint is intact", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
