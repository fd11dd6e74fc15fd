"""Everything a run checks before it loads a model, in one place: `rlkit validate` and `Trainer` both call
`preflight`, so validate accepts exactly what run accepts. Each check returns problems (one line each) instead
of stopping at the first, so a user fixes a recipe in one pass.

What it checks beyond the schema (config.py): the data (manifest, images), each reward's kwargs against its
constructor and the reward's own `check` (e.g. a JRM path holds a trained reward), and the policy's weights
(a local folder or the local hub cache) and LoRA target modules, against the transformer's architecture built
on the meta device from its config (no weights read).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlkit.core.errors import UserError


def preflight(cfg: DictConfig, made_later=(), live: bool = False) -> list[str]:
    """The problems of an RL recipe that the schema cannot see. ``made_later``: folders the recipe's preparation
    fills on the first run (rlkit/preparation.py); files under them are not looked for yet, only kwargs.
    ``live``: also each reward's `live_check` (a server answers), which a run does when it builds the reward."""
    later = [Path(p).expanduser().resolve() for p in made_later]

    def ready(path) -> bool:
        resolved_path = Path(str(path or "")).expanduser().resolve()
        return not any(resolved_path == p or p in resolved_path.parents for p in later)

    from rlkit.secrets import unsaved_secrets

    problems = [f"'{key}' is a secret the recipe gave as a literal, which rlkit never saves: give it again, e.g. "
                f"'{key}=${{oc.env:NAME}}' with NAME set in the environment" for key in unsaved_secrets(cfg)]
    if ready(cfg.data.path):
        problems += data_problems(cfg.data, "data", cfg.policy.name)
    if cfg.eval.every > 0 and cfg.eval.data is not None and ready(cfg.eval.data.path):
        problems += data_problems(cfg.eval.data, "eval.data", cfg.policy.name)
    for where, specs in (("rewards", cfg.rewards), ("eval.rewards", cfg.eval.rewards)):
        for i, spec in enumerate(specs):
            kwargs = OmegaConf.to_container(spec.kwargs, resolve=True)
            problems += reward_problems(spec.name, kwargs, f"{where}[{i}]", files_ready=not later, live=live)
    if cfg.eval.every > 0 and cfg.eval.benchmark.name:
        problems += benchmark_problems(cfg.eval.benchmark, live)
    if ready(cfg.policy.pretrained):
        problems += policy_problems(cfg.policy)
    from rlkit.trackers import tracker_problems

    return problems + tracker_problems(cfg.logging.report_to)


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise UserError(*problems)


def data_problems(data_cfg, where: str, policy: str) -> list[str]:
    """The data reads, its images decode, and the editor takes as many reference images as a prompt has."""
    from rlkit.data import check_images, check_references, read_items
    from rlkit.policies import POLICIES

    try:
        items = read_items(data_cfg)
        check_references(items, POLICIES[policy].editor.max_references, policy)
        check_images(items, data_cfg.path)
    except UserError as err:
        return [f"{where}: {p}" if not p.startswith("data") else p for p in err.problems]
    return []


def benchmark_problems(bench, live: bool) -> list[str]:
    """eval.benchmark's data reads as the benchmark, and (live) its judge answers."""
    from rlkit.benchmarks.evaluate import read_items
    from rlkit.benchmarks.judging import BenchJudge, JudgeSettings
    from rlkit.benchmarks.rubrics import Rubric

    try:
        items = read_items(bench.name, bench.data, bench.image_root, bench.max_items)
        rubric = Rubric(bench.name, bench.prompts)
        judge = BenchJudge(JudgeSettings(bench.judge_url, bench.judge_model, score_mode=bench.score_mode))
        judge.check([q for it in items for q in rubric.questions(it.task, it.instruction)])
        if live:
            judge.connect()
    except UserError as err:
        return [f"eval.benchmark: {p}" for p in err.problems]
    return []


def reward_problems(name: str, kwargs: dict, where: str, files_ready: bool = True, live: bool = False) -> list[str]:
    """The reward exists, takes these kwargs, and its own `check(**kwargs)` (if it has one) accepts them; with
    ``live``, its `live_check(**kwargs)` too (a served reward's server answers). Nothing heavy is built: a judge's
    weights are loaded only by the run."""
    from rlkit.plugins import load_reward_class

    try:
        cls = load_reward_class(name)
    except UserError as err:
        return [f"{where}: {p}" for p in err.problems]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        return [f"{where}: reward '{name}' {err} (it takes: {', '.join(params) or 'no kwargs'})"]
    check = getattr(cls, "check", None)
    if check is None or not files_ready:
        return []
    try:
        check(**kwargs)
        if live and getattr(cls, "live_check", None) is not None:
            cls.live_check(**kwargs)
    except (ValueError, TypeError, UserError, RuntimeError) as err:
        return [f"{where}: reward '{name}': {line}" for line in str(err).splitlines()]
    return []


def policy_problems(policy_cfg) -> list[str]:
    """The weights are where the run will look, and every LoRA target module names a layer."""
    from rlkit.policies import lora_targets, transformer_skeleton

    try:
        transformer = transformer_skeleton(policy_cfg)
    except UserError as err:
        return err.problems
    if policy_cfg.finetune != "lora":
        return []
    unmatched = lora_targets(transformer, list(policy_cfg.lora.target_modules))[1]
    if unmatched:
        return [f"policy.lora.target_modules: {', '.join(repr(t) for t in unmatched)} match(es) no layer of "
                f"{type(transformer).__name__} (e.g. {', '.join(_linear_leaves(transformer)[:6])})"]
    return []


def _linear_leaves(module) -> list[str]:
    import torch

    leaves = [n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    return list(dict.fromkeys(leaves))
