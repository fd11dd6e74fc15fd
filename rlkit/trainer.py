"""The single controller: builds each role from the recipe and runs the loop (`fit`), one stage per line."""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from policies import build_policy
from policies.flow_policy import resolve_device
from rlkit import checkpoint as ckpt
from rlkit import console
from rlkit.algorithms import build_algorithm
from rlkit.data import PromptStream, read_items
from rlkit.distributed import Distributed
from rlkit.errors import CheckpointError, GuardStop, RolloutError, UserError
from rlkit.evaluation import HeldoutEvaluator
from rlkit.export import write_model_card
from rlkit.logs import REQUIRED_KEYS, RunLogger, json_safe, save_grid
from rlkit.plugins import build_rewards
from rlkit.preflight import preflight, raise_problems
from rlkit.preparation import recipe_preparation
from rlkit.report import write_report
from rlkit.run_dir import RunDirectory
from rlkit.secrets import redacted
from rlkit.stability import Alarm, StabilityGuard, StabilityTracker
from rlkit.timing import ForwardCounter, StageTimer
from rlkit.trackers import Trackers


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scale_learning_rate(optimizer, scheduler, factor: float) -> None:
    """Multiply the learning rate by `factor` from now on: the schedule's base rates and the rates in use now
    (the schedule's own position and warm-up go on unchanged). The loop logs the optimizer's rate, so the
    scheduler's cached last rate is not needed."""
    scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:  # what a scheduler built on this optimizer again would start from
            group["initial_lr"] *= factor


class Trainer:
    def __init__(self, cfg: DictConfig, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.dist = Distributed()
        self._check_distributed()
        self.directory = RunDirectory(cfg, self.dist)
        self.directory.claim()
        if self.dist.is_main and console.current() is not None:  # what was said so far, then the rest
            console.current().attach(self.run_dir)
        resume_from = self.directory.resume_checkpoint()
        seed_everything(cfg.seed)  # the same on every rank: generators stay in lockstep
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.policy.device)
        self._check_prepared()
        raise_problems(preflight(cfg))  # what `rlkit validate` checks, before any model is built
        items = read_items(cfg.data)
        self._reward_models: dict = {}  # shared with the evaluator's gold rewards
        self.rewards = build_rewards(cfg.rewards, self._reward_models)
        self.policy = build_policy(cfg.policy, cfg.sampler, self.device, cfg.algorithm.micro_batch)
        self.sharded = self.dist.enabled and self.policy.full
        if self.sharded:
            self.dist.fsdp(self.policy)
        self.algorithm = build_algorithm(cfg.algorithm, cfg.optim.max_grad_norm)
        self.algorithm.grad_sync = None if self.sharded else self.dist.average_gradients
        self.prompts = PromptStream(items, cfg.policy.resolution, cfg.seed, cfg.data.shuffle)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=o.lr, betas=tuple(o.betas),
                                           eps=o.eps, weight_decay=o.weight_decay)
        self.step = 0  # before the scheduler: _lr_factor reads it (and LambdaLR calls it at once)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.generators = {"rollout": torch.Generator().manual_seed(cfg.seed),
                           "train": torch.Generator().manual_seed(cfg.seed + 1)}
        self.stability = StabilityTracker()
        self.guard = StabilityGuard(cfg.stability)
        self.evaluator = (HeldoutEvaluator(cfg, self.rewards, self._reward_models) if cfg.eval.every > 0
                          else None)
        if resume_from is not None:
            self._restore(resume_from)
        self.progress = progress
        self._stop_requested = 0  # the signal number once a stop is requested
        self._shielded = False  # trackers and the progress bar start or stop: a second signal waits
        self.stopped_by_signal = 0  # set when fit() returned early because of one

    @property
    def stop_requested(self) -> int:
        """The signal that asked this run to stop (0: none), also when it came after the last step."""
        return self._stop_requested

    def _check_prepared(self) -> None:
        """The recipe's preparation runs before the trainer is built (`rlkit run` does it; in Python,
        rlkit.preparation.prepare_recipe): without it the files it makes are missing, which says why."""
        prep = recipe_preparation(self.cfg)
        pending = prep.pending(self.cfg[prep.section]) if prep else None
        if pending:
            raise UserError(f"the recipe's '{self.cfg.prepare}' preparation has not run ({pending}): run "
                            f"rlkit.preparation.prepare_recipe(cfg) before Trainer(cfg), or use `rlkit run`")

    def _lr_factor(self, optimizer_steps: int) -> float:
        # warm-up counts optimizer steps (several per RL step: one per micro-batch); the decay follows RL steps,
        # so it does not depend on the micro-batch or the number of processes
        o = self.cfg.optim
        warm = min(1.0, (optimizer_steps + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
        if o.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / self.cfg.train.steps)))
        return warm

    # ----------------------------------------------------------------- the loop
    def fit(self, max_steps: int | None = None) -> Path:
        """Train to `train.steps`. ``max_steps``: stop after this many steps of this call, checkpointed and
        resumable, as a stop signal would (tests and benchmarks). The run directory stays locked until it
        returns."""
        self.directory.lock()
        try:
            return self._fit(max_steps)
        finally:
            self.directory.release()

    def _fit(self, max_steps: int | None) -> Path:
        cfg, train = self.cfg, self.cfg.train
        first = self.step
        if self.step >= train.steps:
            print(f"run in {self.run_dir} already finished at step {self.step} (train.steps={train.steps})")
            if not (self.run_dir / "final").exists():
                self._save_final()
            return self.run_dir
        # the stop handlers first, so that a signal while the trackers start cannot interrupt them half started
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        self._stop_requested = self._stop_requested or getattr(console.current(), "stop_signal", 0)
        logger = forwards = None
        interrupted = False
        try:
            self._shielded = True
            logger = self._logger()
            self._shielded = False
            forwards = ForwardCounter(self.policy.transformer)  # rollout and update only, not evaluations
            if self.evaluator is not None and self.step == 0 and not self._stop_requested:  # before any update
                row = {"step": 0, **{k: None for k in REQUIRED_KEYS if k != "step"}}
                alarms = self._maybe_evaluate(row)
                logger.log(row)
                self._act(alarms, logger)
            if self._stop_requested:  # asked while the run was loading: nothing new to save
                self.stopped_by_signal = self._stop_requested
                print(f"stopped by signal before step {self.step + 1}; resume with: rlkit resume {self.run_dir}")
                return self.run_dir
            for step in range(self.step, train.steps):
                timer, forwards_before = StageTimer(self.device), forwards.count
                with timer("rollout"):
                    batch = self.prompts.next_batch(train.prompts_per_step)  # the global batch, on every rank
                    with self.algorithm.rollout_context(self.policy):
                        rollout = self.policy.sample(batch, cfg.algorithm.group_size, self.generators["rollout"],
                                                     sde_window_start=step, shard=(self.dist.rank, self.dist.world),
                                                     keep_means=self.algorithm.rollout_means)
                    self._check_rollout(rollout)
                with timer("reward"):
                    inputs = rollout.as_reward_input()
                    reward = self.rewards(inputs)  # raises RewardError before any update
                with timer("train"):
                    totals, adv, adv_info = self._advantages(reward, rollout)
                    metrics = self.algorithm.update(self.policy, rollout, adv, self.optimizer, self.lr_scheduler,
                                                    self.generators["train"])
                metrics = self.dist.mean({**metrics, **self.stability.observe(step, reward, rollout),
                                          "transformer_forwards": forwards.count - forwards_before})
                metrics["transformer_forwards"] *= self.dist.world  # every rank's, summed
                self.step = step + 1
                row = {"step": self.step, "reward_mean": float(totals.mean()),
                       "reward_std": float(totals.std(unbiased=False)), **adv_info, **metrics,
                       "lr": self.optimizer.param_groups[0]["lr"],
                       **{f"time_{name}_s": seconds for name, seconds in timer.totals.items()}}
                alarms = self.guard.check_step(self.step, row) + self._maybe_evaluate(row)
                logger.log(row)
                logger.rationales(self.step, inputs.instructions, reward)
                self._act(alarms, logger)
                self._maybe_grid(rollout)
                if max_steps is not None and self.step - first >= max_steps and self.step < train.steps:
                    self.save_checkpoint()
                    return self.run_dir
                if self.dist.any(self._stop_requested):  # every rank stops after the same step
                    self.save_checkpoint()
                    self.stopped_by_signal = self._stop_requested or signal.SIGTERM  # (another rank's)
                    print(f"stopped by signal after step {self.step}; resume with: rlkit resume {self.run_dir}")
                    return self.run_dir
                if train.save_every and self.step % train.save_every == 0:
                    self.save_checkpoint()
            if self.step % max(train.save_every, 1) != 0 or not train.save_every:
                self.save_checkpoint()
            self._save_final()
            return self.run_dir
        except KeyboardInterrupt:  # a second stop signal: out at once, without the report
            interrupted = True
            raise
        finally:
            # signals are ignored while the trackers' threads stop: one raised inside a join left the TensorBoard
            # writer waiting forever
            self._shielded = True
            if forwards is not None:
                forwards.remove()
            if logger is not None:
                logger.close()
            self._shielded = False
            # plots/ and report.html, also when the guard or a signal stopped the run: after the last checkpoint
            # and with the stop handlers still on, so a signal during the report cannot lose the run's end
            if train.report and self.dist.is_main and not interrupted and (self.run_dir / "metrics.jsonl").exists():
                try:
                    write_report(self.run_dir)
                except Exception as err:  # a plotting problem must not hide the run's own outcome
                    print(f"warning: could not write the report: {err}")
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _check_rollout(self, rollout) -> None:
        """Non-finite samples are the sampler's fault, not the reward's that would be first to see them."""
        if not torch.isfinite(rollout.latents[:, -1]).all():
            s = self.cfg.sampler
            raise RolloutError(f"step {self.step + 1}: sampling produced non-finite latents (sampler.kernel="
                               f"{s.kernel}, noise_level={s.noise_level}, num_steps={s.num_steps}); lower "
                               f"sampler.noise_level. The last checkpoint is intact")

    def _advantages(self, reward, rollout):
        """Advantages over the whole global batch (rewards gathered from every rank); this rank's share."""
        totals = self.dist.gather(reward.total)
        uncertainty = None if reward.uncertainty is None else self.dist.gather(reward.uncertainty)
        per_reward = None
        if self.cfg.algorithm.reward_norm == "per_reward":  # one more gather per reward: only when it is used
            names = [name for name, _, _ in self.rewards.rewards]
            per_reward = (names, [weight for _, weight, _ in self.rewards.rewards],
                          torch.stack([self.dist.gather(reward.per_reward[n]) for n in names], dim=1))
        adv, info = self.algorithm.advantages(totals, self.dist.gather(rollout.group_ids), uncertainty, per_reward)
        return totals, adv[self.dist.shard(len(adv))], info

    def _maybe_evaluate(self, row: dict) -> list[Alarm]:
        """Every eval.every steps: held-out figures into the row, and the guard's probe/gold test."""
        if self.evaluator is None or self.step % self.cfg.eval.every:
            return []
        row.update(self._evaluate())
        return self.guard.check_eval(self.step, row["eval/reward"], row.get("gold/reward"))

    def _maybe_grid(self, rollout) -> None:
        every = self.cfg.train.grid_every
        if every and (self.step % every == 0 or self.step == 1) and self.dist.is_main:
            save_grid(self.run_dir / "samples" / f"step_{self.step:06d}.png", rollout.sources, rollout.images,
                      self.cfg.algorithm.group_size)

    def _evaluate(self) -> dict:
        # every rank evaluates the same prompts with the same noise: identical figures, so the guard takes
        # the same decision everywhere without any messages
        with self.algorithm.export_context(self.policy):  # the weights a user would get
            figures, rollout, per_sample = self.evaluator(self.policy)
        figures.update(self.stability.observe_probe(figures["eval/reward"]))
        if self.dist.is_main:
            grid = self.run_dir / "samples" / f"eval_step_{self.step:06d}.png"
            save_grid(grid, rollout.sources, rollout.images, self.cfg.eval.samples_per_prompt)
            # each sample's scores beside the grid, for the report's side-by-side rows
            grid.with_suffix(".json").write_text(json.dumps(json_safe(
                {**per_sample, "samples_per_prompt": self.cfg.eval.samples_per_prompt})))
        return figures

    # ----------------------------------------------------------------- stability guard actions
    def _act(self, alarms: list[Alarm], logger: RunLogger) -> None:
        """Carry out each alarm's action; remember the weights as a rollback target while they are good."""
        for alarm in alarms:
            if alarm.action == "rollback":
                self._rollback(alarm)
            logger.alarm(alarm.to_json())
            if alarm.action == "stop":
                self.save_checkpoint()
                exported = ""
                if self.guard.gold and self.cfg.train.final_weights == "best_gold":  # hand over the best seen
                    self._save_final()
                    exported = "; final/ holds the best gold evaluation's weights"
                raise GuardStop(f"stability guard stopped the run at step {self.step}: {alarm.kind}: "
                                f"{alarm.message} (see {self.run_dir / 'alarms.jsonl'}; checkpoint saved{exported})")
        evaluated_now = self.guard.eval_steps and self.guard.eval_steps[-1] == self.step
        if evaluated_now and self.guard.gold and self.guard.is_good():  # the best gold so far
            if self.guard.wants_rollback or self.cfg.train.final_weights == "best_gold":
                self._save(self.run_dir / "best", keep_last=1)
        elif evaluated_now and self.guard.wants_rollback and not self.guard.gold and self.guard.is_good():
            self._save(self.run_dir / "guard", keep_last=1)

    def _rollback(self, alarm: Alarm) -> None:
        """Back to the best weights (optimizer too), learning rate x rollback_lr_factor and KL coefficient x
        rollback_kl_factor from now on. The step counter and data position go on, so metrics.jsonl stays one
        row per step."""
        saved = (ckpt.newest_valid(self.run_dir / d, warn=lambda m: None) for d in ("best", "guard", "."))
        good = next((c for c in saved if c is not None), None)
        if good is None or good.step > self.step:
            alarm.action = "stop"
            alarm.message += "; no good checkpoint to roll back to"
            return
        parts = ckpt.load_checkpoint(good.path)
        self.policy.load_adapter_state_dict(parts["adapter"])
        self._load_optimizer_state(parts["optimizer"]["optimizer"])
        self.algorithm.load_state_dict(parts["optimizer"].get("algorithm", {}))
        sched = self.lr_scheduler
        scale_learning_rate(self.optimizer, sched, self.cfg.stability.rollback_lr_factor)
        self.algorithm.kl_scale *= self.cfg.stability.rollback_kl_factor
        self.guard.rolled_back()
        kl = self.cfg.algorithm.kl_coef * self.algorithm.kl_scale
        alarm.figures.update({"rollback_to_step": good.step, "new_lr": sched.base_lrs[0], "new_kl_coef": kl})
        alarm.message += f"; rolled back to step {good.step}, lr now {sched.base_lrs[0]:.3g}, kl_coef {kl:.3g}"

    def _logger(self) -> RunLogger:
        cfg, trackers = self.cfg, None
        if self.dist.is_main and cfg.logging.report_to:
            log = cfg.logging
            trackers = Trackers(log.report_to, self.run_dir, redacted(cfg), self.step, log.project, log.run_name)
        return RunLogger(self.run_dir, cfg.train.steps, self.step, trackers, progress=self.progress,
                         enabled=self.dist.is_main, log_every=cfg.train.log_every)

    def _request_stop(self, signum, frame) -> None:
        # finish the current step, checkpoint, exit; a second signal exits at once, except while the trackers
        # and the progress bar start or stop (a join interrupted inside their threads can hang the process)
        if self._stop_requested:
            if not self._shielded:  # (the stop already requested comes right after the shielded part)
                console.interrupt(signum, frame)
            return
        self._stop_requested = signum
        print(f"\nsignal {signum}: finishing step {self.step + 1}, then saving a checkpoint")

    # ----------------------------------------------------------------- run directory and checkpoints
    def _check_distributed(self) -> None:
        if not self.dist.enabled:
            return
        c = self.cfg
        if c.algorithm.name != "grpo":
            raise UserError("multi-process runs support algorithm.name=grpo (online DPO's pair count differs "
                            "per rank)")
        samples = c.train.prompts_per_step * c.algorithm.group_size
        if samples % self.dist.world:
            raise UserError(f"train.prompts_per_step x algorithm.group_size = {samples} samples must be a "
                            f"multiple of the {self.dist.world} processes")

    def save_checkpoint(self) -> Path | None:
        return self._save(self.run_dir, self.cfg.train.keep_last)

    def _save(self, root: Path, keep_last: int) -> Path | None:
        """Every rank gathers the weights and optimizer state (a collective when sharded); rank 0 writes (the
        ranks hold identical states and generators); all wait."""
        adapter, optim = self.policy.adapter_state_dict(), self._optimizer_state()
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        try:
            return self._write_checkpoint(root, keep_last, adapter, optim)
        finally:
            self.dist.barrier()

    def _optimizer_state(self) -> dict:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt = get_optimizer_state_dict(self.policy.transformer, self.optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            opt = self.optimizer.state_dict()
        return {"optimizer": opt, "lr_scheduler": self.lr_scheduler.state_dict(),
                "algorithm": self.algorithm.state_dict()}

    def _load_optimizer_state(self, state: dict) -> None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.policy.transformer, self.optimizer, optim_state_dict=state,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state)

    def _write_checkpoint(self, root: Path, keep_last: int, adapter: dict, optim: dict) -> Path:
        state = {"data": self.prompts.state_dict(), "stability": self.stability.state_dict(),
                 "guard": self.guard.state_dict(), "kl_scale": self.algorithm.kl_scale,
                 "config": redacted(self.cfg)}
        try:
            return ckpt.save_checkpoint(root, self.step, adapter, optim, self.generators, state, keep_last)
        except OSError as err:
            previous = ckpt.newest_valid(self.run_dir, warn=lambda m: None)
            kept = f"{previous.path.name} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointError(f"could not write the checkpoint for step {self.step} in {self.run_dir}: "
                                  f"{err.strerror or err}; {kept}") from None

    def _restore(self, path: Path) -> None:
        parts = ckpt.load_checkpoint(path)
        self.policy.load_adapter_state_dict(parts["adapter"])
        self._load_optimizer_state(parts["optimizer"]["optimizer"])
        self.lr_scheduler.load_state_dict(parts["optimizer"]["lr_scheduler"])
        self.algorithm.load_state_dict(parts["optimizer"].get("algorithm", {}))
        self._apply_optim_settings(parts["state"].get("config", {}).get("optim"))
        state = parts["state"]
        ckpt.restore_rng(parts["rng"], state["rng"], self.generators)
        self.prompts.load_state_dict(state["data"])
        self.stability.load_state_dict(state["stability"])
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])
        self.algorithm.kl_scale = float(state.get("kl_scale", 1.0))
        self.step = int(state["step"])
        print(f"resumed from {path} at step {self.step}")

    def _apply_optim_settings(self, old: dict | None) -> None:
        """The restored optimizer and scheduler carry the old run's hyperparameters: set the recipe's instead,
        keeping their moments and step counts. A new learning rate rescales the current one, so the schedule
        (and any rollback reductions) go on from where they were."""
        o = self.cfg.optim
        scale_learning_rate(self.optimizer, self.lr_scheduler, o.lr / old["lr"] if old and old.get("lr") else 1.0)
        for group in self.optimizer.param_groups:
            group.update(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def _save_final(self) -> None:
        """final/: the weights of the best gold evaluation when the run has gold evaluations and
        train.final_weights is best_gold (the last weights then go to final_last/), else the last weights.
        final/rlkit_final.json says which (step, gold)."""
        exported = self.algorithm.export_weights  # "trained", or "ema" (NFT's old policy)
        with self.algorithm.export_context(self.policy):
            state = self.policy.adapter_state_dict()  # every rank: a collective when sharded
        best = self._best_gold() if self.cfg.train.final_weights == "best_gold" else None  # same on every rank
        best_state = None
        if best is not None and best[0].step != self.step and exported != "trained":
            # the checkpoint's EMA, read out by name through the policy: a collective when sharded
            algorithm_state = ckpt.load_checkpoint(best[0].path)["optimizer"].get("algorithm")
            with self.algorithm.export_context(self.policy, algorithm_state):
                best_state = self.policy.adapter_state_dict()
        if self.dist.is_main:
            last = {"weights": "last", "step": self.step, "gold": self._gold_at(self.step), "export": exported}
            if best is None or best[0].step == self.step:
                self._write_final("final", state, {**last, "weights": "best_gold" if best else "last"})
                shutil.rmtree(self.run_dir / "final_last", ignore_errors=True)
            else:
                checkpoint, gold = best
                self._write_final("final_last", state, last)
                if best_state is None:
                    best_state = ckpt.load_checkpoint(checkpoint.path)["adapter"]
                self._write_final("final", best_state,
                                  {"weights": "best_gold", "step": checkpoint.step, "gold": gold, "export": exported})
                print(f"final/ holds the weights of step {checkpoint.step}, the best gold evaluation (gold "
                      f"{_fmt(gold)}); the last weights (step {self.step}, gold {_fmt(last['gold'])}) are in "
                      f"final_last/")
        self.dist.barrier()

    def _best_gold(self) -> tuple[ckpt.Checkpoint, float | None] | None:
        """The best/ checkpoint and its gold, when the run evaluated gold rewards."""
        if not self.guard.gold:
            return None
        say = print if self.dist.is_main else (lambda *a: None)  # every rank looks, one speaks
        found = ckpt.newest_valid(self.run_dir / "best", warn=lambda m: say(f"warning: {m}"))
        if found is None:
            say("warning: no valid best/ checkpoint: final/ holds the last weights")
            return None
        return found, self._gold_at(found.step)

    def _gold_at(self, step: int) -> float | None:
        steps = self.guard.eval_steps[-len(self.guard.gold):] if self.guard.gold else []
        return self.guard.gold[steps.index(step)] if step in steps else None

    def _write_final(self, name: str, state: dict, info: dict) -> None:
        """A finished export, swapped in whole (a crash leaves the previous one or none, never half of one)."""
        final, tmp = self.run_dir / name, self.run_dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.policy.save_lora(str(tmp), state)
        (tmp / "rlkit_final.json").write_text(json.dumps(info, indent=1))
        write_model_card(tmp, self.cfg, info, self.run_dir, name)
        ckpt.usual_permissions(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
