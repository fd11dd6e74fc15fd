"""`rlkit` command line. Training: run, resume, validate, prepare, bench, report. Plugins: rewards,
preparations. Reward models: annotate-pairs, train-reward, distill-reward, eval-reward, explain, serve-reward.

User errors (bad recipe, missing file, unknown reward) print one line and exit 2; a failing reward stops the
run with exit 1 and names the reward. Tracebacks are for bugs only (set RLKIT_DEBUG=1 to see them always).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from rlkit import __version__
from rlkit.cli_types import non_negative_int as _non_negative_int
from rlkit.cli_types import port as _port
from rlkit.cli_types import positive_int as _positive_int
from rlkit.cli_types import seconds as _seconds
from rlkit.core.errors import CheckpointError, GuardStop, OutputError, RewardError, RolloutError, UserError


def cmd_run(args) -> int:
    from rlkit.config import load_recipe
    from rlkit.preparation import prepare_recipe
    from rlkit.trainer import Trainer

    cfg = load_recipe(args.recipe, args.overrides)
    _warn_literal_secrets(cfg)
    prepare_recipe(cfg)
    return _fit(Trainer(cfg))


def _warn_literal_secrets(cfg) -> None:
    from rlkit.secrets import literal_secrets

    for key in literal_secrets(cfg):
        print(f"note: '{key}' is written in the recipe; rlkit keeps it out of every file it writes, so a resume "
              f"will ask for it again (an environment reference such as ${{oc.env:JUDGE_API_KEY}} avoids that)")


def _fit(trainer) -> int:
    try:
        run_dir = trainer.fit()
    except GuardStop:  # a run's legitimate end: say what it reached, then the stop's own line (exit 3)
        if trainer.dist.is_main:
            _say_summary(trainer.cfg, trainer.run_dir, ended="stopped by the stability guard")
        raise
    if trainer.stopped_by_signal:  # a checkpoint was saved and the message printed: not a finished run
        return 128 + trainer.stopped_by_signal
    if trainer.stop_requested:  # after the last step (during the final save or the report): nothing was lost
        print(f"signal {trainer.stop_requested} arrived after the last step: the run is complete")
    if trainer.dist.is_main:
        _say_summary(trainer.cfg, run_dir)
    return 0


def _say_summary(cfg, run_dir: Path, ended: str = "done") -> None:
    """The end-of-run summary, on the console and at the end of RUN_DIR/run.log."""
    from rlkit.export import loading_snippet
    from rlkit.summary import summarize, summary_lines

    final = run_dir / "final"
    lines = summary_lines(summarize(run_dir), loading_snippet(cfg, final) if final.is_dir() else "", ended)
    print("\n".join(lines))  # (run.log has it too: the console is logged)


def cmd_resume(args) -> int:
    from rlkit.config import load_saved_recipe
    from rlkit.plugins import PYTHON
    from rlkit.preparation import prepare_recipe
    from rlkit.trainer import Trainer

    cfg = load_saved_recipe(Path(args.run_dir), args.overrides)
    given = [str(s.name) for s in [*cfg.rewards, *cfg.eval.rewards] if str(s.name).startswith(PYTHON)]
    if given:
        raise UserError(f"{args.run_dir} was trained with rewards given in Python ({', '.join(given)}): resume it "
                        f"from Python, rlkit.resume('{args.run_dir}', rewards=...) with the same names")
    prepare_recipe(cfg)
    return _fit(Trainer(cfg))


def cmd_validate(args) -> int:
    from omegaconf import OmegaConf

    from rlkit.config import load_recipe, recipe_schema, resolve_recipe_path, to_yaml
    from rlkit.data import decoded_share, read_items
    from rlkit.preflight import preflight, raise_problems
    from rlkit.preparation import recipe_preparation

    # with --print, stdout is the recipe alone (it loads back as a recipe file); the verdict goes to stderr
    say = (lambda line: print(line, file=sys.stderr)) if args.print_config else print
    raw = OmegaConf.load(resolve_recipe_path(args.recipe))
    if "backbone" in raw:  # a reward-model recipe (rlkit train-reward)
        from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe, reward_recipe_problems

        cfg = load_recipe(args.recipe, args.overrides, schema_cls=RewardRecipe, check=check_reward_recipe)
        if args.print_config:
            print(to_yaml(cfg, RewardRecipe), end="")
        raise_problems(reward_recipe_problems(cfg))
        say(f"ok: {args.recipe} (reward recipe, backbone: {cfg.backbone.pretrained or cfg.backbone.name}, "
            f"alpha {cfg.loss.alpha})")
        return 0
    cfg = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(to_yaml(cfg, recipe_schema(cfg)), end="")
    prep = recipe_preparation(cfg)
    pending = prep.pending(cfg[prep.section]) if prep else None
    raise_problems(preflight(cfg, made_later=prep.outputs(cfg[prep.section]) if pending else (),
                             live=not args.offline))
    if pending:
        say(f"ok: {args.recipe} ({pending})")
        return 0
    items = read_items(cfg.data)
    say(f"ok: {args.recipe} ({len(items)} prompts, {decoded_share(items)}, rewards: "
        f"{', '.join(s.name for s in cfg.rewards)}, algorithm: {cfg.algorithm.name})")
    return 0


def cmd_recipes(args) -> int:
    """`rlkit recipes`: the packaged recipes with their first comment line; `rlkit recipes cp NAME DEST`."""
    from rlkit.config import copy_recipe, packaged_recipes, recipe_summary

    if args.action == "keys":
        print(key_reference(), end="")
        return 0
    if args.action == "cp":
        if not args.name or not args.dest:
            raise UserError("usage: rlkit recipes cp NAME DEST (NAME: one of `rlkit recipes`)")
        print(f"wrote {copy_recipe(args.name, Path(args.dest))}")
        return 0
    named = packaged_recipes()
    width = max(map(len, named))
    for name in sorted(named):
        print(f"{name:<{width}}  {recipe_summary(named[name])}")
    return 0


def key_reference() -> str:
    """docs/recipe-keys.md: every key of each command's recipe and of each installed preparation's section,
    from the declarations beside the keys."""
    from rlkit.core.schema import key_rows
    from rlkit.plugins import PREPARATIONS, list_plugins
    from rlkit.preparation import load_preparation
    from rlkit.recipe import Recipe
    from rlkit.rewards.jrm.config import RewardRecipe

    parts = ["# Recipe keys", "",
             "Every key a recipe may set, with its default, what it accepts and what it is for. Generated from the "
             "declarations beside the keys (`rlkit recipes keys`); `rlkit validate RECIPE --print` shows a "
             "recipe's values with the same help.", ""]
    sections = [("`rlkit run`", Recipe, ""), ("`rlkit train-reward` and `rlkit distill-reward`", RewardRecipe, "")]
    for name in sorted(list_plugins(PREPARATIONS)):
        prep = load_preparation(name)
        sections.append((f"`prepare: {name}` (the `{prep.section}` section)", prep.schema, f"{prep.section}."))
    for title, schema, prefix in sections:
        parts += [f"## {title}", "", "| key | default | accepts | what it does |", "| --- | --- | --- | --- |"]
        parts += [f"| `{k}` | `{d}` | {a.replace('|', '/')} | {h.replace('|', chr(92) + '|')} |"
                  for k, d, a, h in key_rows(schema, prefix)]
        parts.append("")
    return "\n".join(parts)


def cmd_push(args) -> int:
    from rlkit.export import push_to_hub

    url = push_to_hub(Path(args.run_dir), args.repo_id, weights=args.weights, private=args.private)
    print(f"pushed {Path(args.run_dir) / args.weights} to {url}")
    return 0


def cmd_plugins(args) -> int:
    """`rlkit rewards` and `rlkit preparations`: the installed plugins of one entry-point group."""
    from rich.console import Console
    from rich.table import Table

    from rlkit.plugins import KIND, list_plugins

    table = Table("name", "target", "distribution", "version",
                  title=f"installed {KIND[args.group]} plugins ({args.group})")
    for name, info in sorted(list_plugins(args.group).items()):
        table.add_row(name, info.target, info.distribution, info.version)
    Console(width=160).print(table)
    return 0


def cmd_prepare(args) -> int:
    """Run a recipe's preparation alone; unlike a run, it may replace outputs made with other settings."""
    from rlkit.config import load_recipe
    from rlkit.preparation import prepare_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    if not cfg.prepare:
        raise UserError(f"{args.recipe} names no preparation (its 'prepare' key is not set): nothing to prepare")
    prepare_recipe(cfg, replace=True)
    return 0


def cmd_train_reward(args) -> int:
    """train-reward and distill-reward: both read a reward recipe and write OUTPUT/final/."""
    from rlkit.config import load_recipe
    from rlkit.preflight import raise_problems
    from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe, reward_recipe_problems

    cfg = load_recipe(args.recipe, args.overrides, schema_cls=RewardRecipe, check=check_reward_recipe)
    raise_problems(reward_recipe_problems(cfg))  # what validate checks, before loading anything
    if args.command == "distill-reward":
        from rlkit.rewards.jrm.distill import distill_reward as train
    else:
        from rlkit.rewards.jrm.train import train_reward as train
    print(f"done: {train(cfg) / 'final'}")
    return 0


def cmd_annotate_pairs(args) -> int:
    from rlkit.rewards.jrm.annotate import annotate_pairs
    from rlkit.rewards.openai_chat import ChatEndpoint

    try:
        request = json.loads(args.request) if args.request else None
    except ValueError as err:
        raise UserError(f"--request is not JSON: {err}") from None
    if request is not None and not isinstance(request, dict):
        raise UserError("--request must be a JSON object")
    try:
        endpoint = ChatEndpoint(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                args.timeout, args.retries, args.concurrency)
    except ValueError as err:  # an address that is not one, a timeout out of range
        raise UserError(str(err)) from None
    counts = annotate_pairs(args.pairs, args.out, endpoint, args.image_root, args.seed, args.max_tokens, request)
    print(f"annotated {counts['kept'] + counts['contradicting'] + counts['unreadable']} pairs: kept "
          f"{counts['kept']}, dropped {counts['contradicting']} contradicting the human label and "
          f"{counts['unreadable']} unreadable (reasons in {counts['dropped_file']}); {counts['already']} done before")
    if counts["failed"]:
        print(f"error: {counts['failed']} pairs got no answer (first: {counts['failures'][0]}); run the same "
              f"command again to retry them", file=sys.stderr)
        return 1
    print(f"done: {counts['out']}")
    return 0


def cmd_eval_reward(args) -> int:
    from rlkit.logs import json_safe
    from rlkit.rewards.jrm.evaluate import evaluate
    from rlkit.rewards.jrm.model import JRMModel

    out = Path(args.output) if args.output else Path(args.reward_dir) / f"eval_{args.format}.json"
    _check_writable(out)  # before the evaluation, not after it
    model = JRMModel.load(args.reward_dir, device="cuda" if _cuda() else "cpu")
    report = evaluate(lambda s, e, t: model.score(s, e, t, args.batch_size)[0], args.data, args.format)
    report.update(reward=str(args.reward_dir), data=str(args.data))
    # no decided pair (all ties) leaves an accuracy of NaN: null in strict JSON
    out.write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
    from rich.console import Console
    from rich.table import Table

    print(f"{args.format}: {args.data}")
    table = Table("metric", "value")
    for k, v in report.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                table.add_row(f"{k}/{kk}", f"{vv:.4f}" if isinstance(vv, float) else str(vv))
        elif k not in ("reward", "data"):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))  # nan prints as nan here
    Console(width=120).print(table)
    print(f"report: {out}")
    return 0


def cmd_explain(args) -> int:
    from rlkit.core.images import open_rgb
    from rlkit.rewards.jrm.model import JRMModel

    model = JRMModel.load(args.reward_dir, device="cuda" if _cuda() else "cpu")
    images = [open_rgb(args.source), open_rgb(args.edited)]
    mu, sigma = model.score([images[0]], [images[1]], [args.instruction])
    print(f"reward {mu.item():.4f} (sigma {sigma.item():.4f})")
    print(model.explain(images[0], images[1], args.instruction, args.max_new_tokens))
    return 0


def cmd_serve_reward(args) -> int:
    from omegaconf import OmegaConf

    from rlkit.serve import serve

    bad = [o for o in args.kwargs if "=" not in o]
    if bad:
        raise UserError(f"reward kwargs must be key=value, got '{bad[0]}'")
    kwargs = OmegaConf.to_container(OmegaConf.from_dotlist(args.kwargs)) if args.kwargs else {}
    from rlkit.secrets import is_secret, remember_value, secret_kwargs

    declared = secret_kwargs(args.name)
    for key, value in kwargs.items():  # masked in whatever the server prints
        if is_secret(key, declared):
            remember_value(value)
    serve(args.name, kwargs, args.host, args.port, args.token, args.max_batch, args.max_wait)
    return 0


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlkit.bench import bench
    from rlkit.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    figures = bench(cfg, iterations=args.iterations, warmup=args.warmup)
    table = Table(title=f"rlkit bench {args.recipe} ({figures['device']}, {args.iterations} iteration(s))")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def cmd_eval(args) -> int:
    """`rlkit eval`: runs and base editors judged on GEdit-Bench or ImgEdit-Bench (rlkit/benchmarks/)."""
    from rlkit.benchmarks.evaluate import run_eval
    from rlkit.benchmarks.judging import JudgeSettings

    judge = JudgeSettings(args.judge_url, args.judge_model, args.judge_api_key or os.environ.get("OPENAI_API_KEY"),
                          args.temperature, args.max_tokens, args.concurrency, score_mode=args.score_mode)
    out = run_eval(args.targets, args.benchmark, args.data, judge, args.output, args.max_items, args.prompts,
                   args.image_root, args.seed, retry_missing=args.retry_missing)
    scores = json.loads((out / "scores.json").read_text())
    key = "O" if args.benchmark == "gedit" else "average"
    for name, figures in scores["targets"].items():
        overall = figures["overall"].get(key)
        print(f"{name}: {args.benchmark} {key} {'n/a' if overall is None else f'{overall:.3f}'} "
              f"({figures['overall']['n']} items, {figures['missing']} missing)")
    print(f"wrote {out / 'scores.json'} and {out / 'page.html'}")
    return 0


def cmd_report(args) -> int:
    from rlkit.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def _check_writable(path: Path) -> None:
    """Make the output's folder now and prove it takes a file, so a typo fails before minutes of work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".rlkit-write-test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--output '{path}': cannot write there ({err.strerror or err})") from None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _Parser(argparse.ArgumentParser):
    """argparse with rlkit's error format: the usage, then one `error:` line, exit status 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def _command(sub, name: str, func, summary: str, example: str, args=(), recipe: bool = False, **defaults):
    """A subcommand with a one-line summary (the COMMAND list), a description with an example (its --help)."""
    p = sub.add_parser(name, help=summary, description=f"{summary}\n\nexample:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if recipe:
        p.add_argument("recipe", help="a recipe file, or the name of a packaged recipe (rlkit recipes)")
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="overrides of any recipe key, e.g. train.steps=10 (OmegaConf dotlist)")
    for flags, kwargs in args:
        p.add_argument(*flags, **kwargs)
    p.set_defaults(func=func, **defaults)
    return p


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlkit", description="Online RL fine-tuning (GRPO, online DPO) for instruction-following "
                                               "image editors. `rlkit COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"rlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    overrides = (["overrides"], dict(nargs="*", default=[], metavar="KEY=VALUE", help="settings to change"))

    _command(sub, "run", cmd_run, "train from a recipe", "rlkit run sandbox_edit train.steps=50 output_dir=runs/try",
             recipe=True)
    _command(sub, "resume", cmd_resume, "continue a run from its newest valid checkpoint, with its saved recipe "
             "(changed settings apply from the next step)", "rlkit resume runs/sandbox_edit optim.lr=1e-3",
             [(["run_dir"], dict(help="the run's output_dir")), overrides])
    _command(sub, "validate", cmd_validate, "check a recipe as `run` does before it loads a model: keys, ranges, "
             "data, rewards, weights", "rlkit validate flux_edit --print", recipe=True,
             args=[(["--print"], dict(action="store_true", dest="print_config",
                                      help="also print the resolved recipe (YAML, every default filled in)")),
                   (["--offline"], dict(action="store_true", help="skip the checks that contact a server (a "
                                                                   "remote reward's, a judge's)"))])
    _command(sub, "recipes", cmd_recipes, "list the packaged recipes, or copy one to edit (cp NAME DEST)",
             "rlkit recipes cp sandbox_edit my_recipe.yaml",
             [(["action"], dict(nargs="?", choices=["ls", "cp", "keys"], default="ls",
                                help="keys: every recipe key with its default, range and help (markdown)")),
              (["name"], dict(nargs="?", help="cp: the packaged recipe")),
              (["dest"], dict(nargs="?", help="cp: a new file, or a folder"))])
    _command(sub, "prepare", cmd_prepare, "run a recipe's preparation alone (e.g. build the sandbox world); it may "
             "replace a preparation made with other settings", "rlkit prepare sandbox_edit sandbox.seed=1",
             recipe=True)
    _command(sub, "bench", cmd_bench, "time a recipe's GRPO iterations by stage, against the pure compute of its "
             "models", "rlkit bench bench_kontext --iterations 2 --json bench.json", recipe=True,
             args=[(["--iterations"], dict(type=_positive_int, default=2)),
                   (["--warmup"], dict(type=_non_negative_int, default=1)),
                   (["--json"], dict(default=None, help="also write the figures to this file"))])
    _command(sub, "eval", cmd_eval, "judge runs and base editors on GEdit-Bench or ImgEdit-Bench with any "
             "OpenAI-compatible judge, side by side", "rlkit eval runs/kontext flux_edit --benchmark gedit --data "
             "stepfun-ai/GEdit-Bench --judge-url http://127.0.0.1:8000/v1 --output evals/gedit",
             [(["targets"], dict(nargs="+", metavar="TARGET", help="a run directory, an export (final/), a "
                                 "checkpoint folder, or a recipe (its base editor)")),
              (["--benchmark"], dict(required=True, choices=["gedit", "imgedit"])),
              (["--data"], dict(required=True, help="GEdit: its parquet folder or stepfun-ai/GEdit-Bench in the "
                                                    "hub cache; ImgEdit: basic_edit.json or its folder")),
              (["--image-root"], dict(default=None, help="ImgEdit: the folder its image ids are under (default: "
                                                         "basic_edit.json's)")),
              (["--judge-url"], dict(required=True, help="the judge's OpenAI-compatible /v1 address")),
              (["--judge-model"], dict(default=None, help="default: the server's first model")),
              (["--judge-api-key"], dict(default=None, help="default: $OPENAI_API_KEY (never written)")),
              (["--output"], dict(required=True, help="folder for scores.json, judgements.jsonl, images, "
                                                      "page.html (a rerun goes on where it stopped)")),
              (["--prompts"], dict(default=None, help="a rubric YAML of yours instead of rlkit's wording")),
              (["--max-items"], dict(type=_positive_int, default=None, help="the first N items only")),
              (["--seed"], dict(type=_non_negative_int, default=0, help="the edits' noise")),
              (["--temperature"], dict(type=_seconds(2.0, "a temperature"), default=0.0,
                                                 help="the judge's sampling temperature")),
              (["--max-tokens"], dict(type=_positive_int, default=512)),
              (["--concurrency"], dict(type=_positive_int, default=8)),
              (["--score-mode"], dict(choices=["parse", "logprobs"], default="parse",
                                      help="logprobs: expected scores from the digits' logprobs (vLLM, SGLang; "
                                           "ImgEdit's single-digit scale)")),
              (["--retry-missing"], dict(action="store_true", help="ask again the questions whose answers gave "
                                                                   "no scores"))])
    _command(sub, "report", cmd_report, "write a run's plots and offline HTML report (RUN_DIR/report.html)",
             "rlkit report runs/sandbox_edit", [(["run_dir"], {})])
    _command(sub, "push", cmd_push, "upload a run's final/ (LoRA, adapter_config.json, model card) to the Hugging "
             "Face Hub", "rlkit push runs/sandbox_edit me/kontext-red-lora --private",
             [(["run_dir"], {}), (["repo_id"], dict(help="user/name on the Hub")),
              (["--private"], dict(action="store_true")),
              (["--weights"], dict(choices=["final", "final_last"], default="final",
                                   help="final (default: the best evaluation's weights, or the last) or final_last"))])
    _command(sub, "rewards", cmd_plugins, "list installed reward plugins (entry points rlkit.rewards)",
             "rlkit rewards", group="rlkit.rewards")
    _command(sub, "preparations", cmd_plugins, "list installed preparation plugins (entry points "
             "rlkit.preparations)", "rlkit preparations", group="rlkit.preparations")
    _command(sub, "serve-reward", cmd_serve_reward, "serve a reward plugin over HTTP for the remote reward",
             "rlkit serve-reward jrm path=runs/jrm/final --port 8765",
             [(["name"], dict(help="reward plugin name (rlkit rewards)")),
              (["kwargs"], dict(nargs="*", default=[], metavar="KEY=VALUE", help="the plugin's kwargs")),
              (["--host"], dict(default="127.0.0.1", help="bind address (default: loopback only)")),
              (["--port"], dict(type=_port, default=8765)),
              (["--token"], dict(default=None, help="bearer token the clients must send (required beyond "
                                                    "loopback; default: $RLKIT_REWARD_TOKEN)")),
              (["--max-batch"], dict(type=_positive_int, default=64, help="most images in one reward call "
                                                                          "(requests are batched together)")),
              (["--max-wait"], dict(type=_seconds(10.0), default=0.01, help="seconds a request waits for "
                                                                            "others to batch with (at most 10)"))])
    _command(sub, "train-reward", cmd_train_reward, "train a JRM reward model from a reward recipe",
             "rlkit train-reward jrm_tiny train.epochs=2", recipe=True)
    _command(sub, "distill-reward", cmd_train_reward, "RISD: distil a reasoning teacher's score distribution into "
             "a one-prefill student", "rlkit distill-reward jrm_tiny distill.teacher=runs/teacher/final",
             recipe=True)
    _command(sub, "annotate-pairs", cmd_annotate_pairs, "a teacher VLM (any OpenAI-compatible server) writes JRM "
             "rationales for preference pairs, dropping those that contradict the human label",
             "rlkit annotate-pairs train.json pairs_rationales.jsonl --base-url http://127.0.0.1:8000/v1",
             [(["pairs"], dict(help="pairs JSONL or EditReward-Data JSON (or hf:OWNER/NAME/PATH from the hub cache)")),
              (["out"], dict(help="output JSONL (appended; run again to go on where it stopped)")),
              (["--base-url"], dict(required=True, help="the teacher's OpenAI-compatible /v1 address")),
              (["--model"], dict(default=None, help="model name (default: the server's first)")),
              (["--api-key"], dict(default=None, help="default: $OPENAI_API_KEY")),
              (["--image-root"], dict(default=None, help="folder the image paths are relative to (default: the "
                                                         "pairs file's)")),
              (["--concurrency"], dict(type=_positive_int, default=8)),
              (["--timeout"], dict(type=_seconds(3600.0), default=120.0, help="seconds per try")),
              (["--retries"], dict(type=_non_negative_int, default=3)),
              (["--max-tokens"], dict(type=_positive_int, default=1024)),
              (["--seed"], dict(type=int, default=0, help="draws which edit is shown first")),
              (["--request"], dict(default=None, help="JSON object of extra request fields"))])
    _command(sub, "eval-reward", cmd_eval_reward, "pairwise accuracy of a JRM reward on a benchmark file",
             "rlkit eval-reward runs/jrm_tiny/final pairs.jsonl --format mmrb2",
             [(["reward_dir"], {}), (["data"], {}),
              (["--format"], dict(choices=["pairs", "mmrb2", "editreward-bench", "genai-bench"], default="pairs")),
              (["--batch-size"], dict(type=_positive_int, default=16)),
              (["--output"], dict(default=None, help="JSON report path (default REWARD_DIR/eval_FORMAT.json)"))])
    _command(sub, "explain", cmd_explain, "score one edit with a JRM reward and generate its critique",
             'rlkit explain runs/jrm_tiny/final source.png edited.png "make the square blue"',
             [(["reward_dir"], {}), (["source"], {}), (["edited"], {}), (["instruction"], {}),
              (["--max-new-tokens"], dict(type=_positive_int, default=256))])
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlkit.console import ConsoleLog, quiet_libraries

    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`validate R --print k=v`): argparse leaves them over
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    quiet_libraries()
    # a run's console, error lines included, goes to its run.log too
    with ConsoleLog() if args.command in ("run", "resume") else contextlib.nullcontext() as log:
        code = _dispatch(args, log)
        if argv is None and code == 130 and log is not None:  # the process exits now: a later signal must
            log.ignore_signals_after = True                     # not interrupt its shutdown
    if argv is None and code == 130:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _dispatch(args, log) -> int:
    """Every command's one error path: rlkit's errors and the environment's (a full disk, a closed pipe) as
    one `error:` line with their exit status; an interrupt says what it left and what to do next."""
    from rlkit.core.errors import write_failure
    from rlkit.secrets import scrub

    try:
        return args.func(args)
    except (UserError, RewardError, RolloutError, CheckpointError, OutputError, GuardStop) as err:
        if os.environ.get("RLKIT_DEBUG"):
            raise
        for line in str(err).splitlines() or [type(err).__name__]:
            print(scrub(f"error: {line}"), file=sys.stderr)
        if isinstance(err, RewardError):
            print("the step was not applied; the last checkpoint is intact", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # `rlkit ... | head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python flushes stdout at exit)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # a second stop signal: the step in flight is dropped, saved checkpoints are whole
        print(f"error: interrupted; {_interrupted(args, log)}", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # non-finite gradients: nothing was saved from this step
        print(f"error: {err}; the last checkpoint is intact (try a lower optim.lr or optim.max_grad_norm)",
              file=sys.stderr)
        return 1
    except OSError as err:  # the machine's, not rlkit's: a full disk, a lost mount, permissions
        if os.environ.get("RLKIT_DEBUG"):
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(scrub(f"error: {where}{write_failure(err)}"), file=sys.stderr)
        return 1


def _interrupted(args, log) -> str:
    """What an interrupted command leaves, and what to do next."""
    from rlkit import checkpoint as ckpt

    if args.command in ("run", "resume"):
        run_dir = getattr(log, "run_dir", None)
        if run_dir is not None and ckpt.find_checkpoints(Path(run_dir)):
            return f"every checkpoint already written is complete (resume with: rlkit resume {run_dir})"
        return "no checkpoint was written; run the same command again"
    if args.command == "annotate-pairs":
        return f"the pairs annotated so far are in {args.out}; run the same command again to go on"
    if args.command in ("train-reward", "distill-reward"):
        return "the reward model was not finished; run the same command again"
    if args.command == "serve-reward":
        return "the server stopped"
    return f"`rlkit {args.command}` did not finish; run it again"


if __name__ == "__main__":
    sys.exit(main())
