"""The single controller: builds each role from the recipe and runs the loop (`fit`), one stage per line."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from rlkit import console
from rlkit.checkpointer import Checkpointer
from rlkit.core.devices import resolve_device
from rlkit.core.errors import GuardStop, RolloutError, write_failure
from rlkit.data import PromptStream, read_items
from rlkit.distributed import Distributed
from rlkit.evaluation import HeldoutEvaluator
from rlkit.logs import REQUIRED_KEYS, RunLogger, json_safe, save_grid
from rlkit.preflight import preflight, raise_problems
from rlkit.preparation import check_prepared
from rlkit.report import write_report
from rlkit.roles import build_roles
from rlkit.run_dir import RunDirectory
from rlkit.secrets import redacted
from rlkit.stability import Alarm, StabilityGuard, StabilityTracker
from rlkit.timing import ForwardCounter, StageTimer
from rlkit.trackers import Trackers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: DictConfig, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.dist = Distributed()
        self.dist.check_recipe(cfg)
        self.directory = RunDirectory(cfg, self.dist)
        self.directory.claim()
        try:
            self._build()
        except BaseException:
            self.directory.abandon(steps_done=0)
            self.directory.release()
            raise
        self.progress = progress
        self._stop_requested = 0  # the signal number once a stop is requested
        self._shielded = False  # trackers and the progress bar start or stop: a second signal waits
        self.stopped_by_signal = 0  # set when fit() returned early because of one

    def _build(self) -> None:
        cfg = self.cfg
        if self.dist.is_main and console.current() is not None:  # what was said so far, then the rest
            console.current().attach(self.run_dir)
        resume_from = self.directory.resume_checkpoint()
        seed_everything(cfg.seed)  # the same on every rank: generators stay in lockstep
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.policy.device)
        check_prepared(cfg)
        raise_problems(preflight(cfg))  # what `rlkit validate` checks, before any model is built
        items = read_items(cfg.data)
        self._reward_models: dict = {}  # shared with the evaluator's gold rewards
        sharded = self.dist.enabled and cfg.policy.finetune == "full"  # FSDP2 (else the LoRA is replicated)
        self.roles = build_roles(cfg, self.device, self._reward_models, self.dist.fsdp if sharded else None)
        self.policy, self.algorithm, self.rewards = self.roles.policy, self.roles.algorithm, self.roles.rewards
        self.optimizer, self.lr_scheduler = self.roles.optimizer, self.roles.lr_scheduler
        self.algorithm.grad_sync = None if sharded else self.dist.average_gradients
        self.prompts = PromptStream(items, self.policy.layout, cfg.seed, cfg.data.shuffle)
        self.generators = {"rollout": torch.Generator().manual_seed(cfg.seed),
                           "train": torch.Generator().manual_seed(cfg.seed + 1)}
        self.stability = StabilityTracker()
        self.guard = StabilityGuard(cfg.stability)
        self.evaluator = (HeldoutEvaluator(cfg, self.rewards, self._reward_models, self.policy.layout)
                          if cfg.eval.every > 0 else None)
        self.checkpointer = Checkpointer(cfg, self.dist, self.roles, self.generators,
                                         {"data": self.prompts, "stability": self.stability, "guard": self.guard},
                                         sharded)
        if resume_from is not None:
            self.step = self.checkpointer.restore(resume_from)

    @property
    def step(self) -> int:
        """RL steps done (the learning-rate schedule's decay follows it)."""
        return self.roles.schedule.rl_step

    @step.setter
    def step(self, value: int) -> None:
        self.roles.schedule.rl_step = value

    @property
    def stop_requested(self) -> int:
        """The signal that asked this run to stop (0: none), also when it came after the last step."""
        return self._stop_requested

    # ----------------------------------------------------------------- the loop
    def fit(self, max_steps: int | None = None) -> Path:
        """Train to `train.steps`. ``max_steps``: stop after this many steps of this call, checkpointed and
        resumable, as a stop signal would (tests and benchmarks). The run directory stays locked until it
        returns."""
        self.directory.lock()
        try:
            return self._fit(max_steps)
        except BaseException:
            self.directory.abandon(steps_done=self.step)
            raise
        finally:
            self.directory.release()

    def _fit(self, max_steps: int | None) -> Path:
        cfg, train = self.cfg, self.cfg.train
        first = self.step
        if self.step >= train.steps:  # (a checkpoint beyond train.steps was refused before anything was written)
            print(f"run in {self.run_dir} already finished at step {self.step} (train.steps={train.steps})")
            if self.checkpointer.exported_step() != self.step:  # none yet, or one of a shorter run
                self.checkpointer.save_final(self.step)
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
            self.checkpointer.save_final(self.step)
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
        if self.algorithm.per_reward:  # one more gather per reward: only when it is used
            names = self.rewards.names
            per_reward = (names, self.rewards.weights,
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
            self._keep_going(save_grid, self.run_dir / "samples" / f"step_{self.step:06d}.png", rollout.sources,
                             rollout.images, self.cfg.algorithm.group_size, 32, rollout.references)

    def _keep_going(self, write, path: Path, *args):
        """A sample grid is for looking at: a full disk costs it (said), not the run; the next checkpoint
        write then stops the run with the last checkpoint intact. What ``write`` returns, or None."""
        try:
            return write(path, *args)
        except Exception as err:
            failure = write_failure(err)
            if failure is None:
                raise
            print(f"warning: could not write {path}: {failure}")

    def _evaluate(self) -> dict:
        # every rank evaluates the same prompts with the same noise: identical figures, so the guard takes
        # the same decision everywhere without any messages
        with self.algorithm.export_context(self.policy):  # the weights a user would get
            figures, rollouts, per_sample = self.evaluator(self.policy)
        figures.update(self.stability.observe_probe(figures["eval/reward"]))
        if self.dist.is_main:
            grid = self.run_dir / "samples" / f"eval_step_{self.step:06d}.png"
            several = any(r.references is not None for r in rollouts)
            tiles = self._keep_going(save_grid, grid, [s for r in rollouts for s in r.sources],
                                     [im for r in rollouts for im in r.images], self.cfg.eval.samples_per_prompt, 32,
                                     [x for r in rollouts for x in r.as_reward_input().all_references]
                                     if several else None)
            # each sample's scores beside the grid, and where each image is in it, for the report's rows
            scores = json.dumps(json_safe({**per_sample, "samples_per_prompt": self.cfg.eval.samples_per_prompt,
                                           "tiles": tiles}))
            self._keep_going(Path.write_text, grid.with_suffix(".json"), scores)
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
                    self.checkpointer.save_final(self.step)
                    exported = "; final/ holds the best gold evaluation's weights"
                raise GuardStop(f"stability guard stopped the run at step {self.step}: {alarm.kind}: "
                                f"{alarm.message} (see {self.run_dir / 'alarms.jsonl'}; checkpoint saved{exported})")
        evaluated_now = self.guard.eval_steps and self.guard.eval_steps[-1] == self.step
        if evaluated_now and self.guard.gold and self.guard.is_good():  # the best gold so far
            if self.guard.wants_rollback or self.cfg.train.final_weights == "best_gold":
                self.checkpointer.save(self.step, self.run_dir / "best", keep_last=1)
        elif evaluated_now and self.guard.wants_rollback and not self.guard.gold and self.guard.is_good():
            self.checkpointer.save(self.step, self.run_dir / "guard", keep_last=1)

    def _rollback(self, alarm: Alarm) -> None:
        """Back to the best weights (Checkpointer.rollback). The step counter and data position go on, so
        metrics.jsonl stays one row per step."""
        done = self.checkpointer.rollback(self.step)
        if done is None:
            alarm.action = "stop"
            alarm.message += "; no good checkpoint to roll back to"
            return
        good_step, kl = done
        self.guard.rolled_back()
        lr = self.lr_scheduler.base_lrs[0]
        alarm.figures.update({"rollback_to_step": good_step, "new_lr": lr, "new_kl_coef": kl})
        alarm.message += f"; rolled back to step {good_step}, lr now {lr:.3g}, kl_coef {kl:.3g}"

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

    def save_checkpoint(self) -> Path | None:
        return self.checkpointer.save(self.step)
