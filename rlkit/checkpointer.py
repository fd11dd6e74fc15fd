"""What a run keeps on disk beside its logs: checkpoints written and restored (weights, optimizer, schedule,
generators, data position, the guard's and the algorithm's state), rollback to the best weights, and the
exports a user takes away (final/, final_last/). The file layout and its checks are rlkit.checkpoint's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from rlkit import checkpoint as ckpt
from rlkit.core.errors import CheckpointError, OutputError, UserError, write_failure
from rlkit.export import write_model_card
from rlkit.roles import Roles, scale_learning_rate
from rlkit.secrets import redacted
from rlkit.state_check import field_problems, generator_problems, rng_problems, tensor_problems


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


class Checkpointer:
    """Saves and restores the roles and the loop's ``parts`` (name -> an object with state_dict and
    load_state_dict: the data stream, the stability tracker, the guard). ``sharded``: the policy is split over
    processes (every rank then joins the gathers; rank 0 writes)."""

    def __init__(self, cfg: DictConfig, dist, roles: Roles, generators: dict, parts: dict, sharded: bool):
        self.cfg, self.dist, self.roles, self.generators, self.parts = cfg, dist, roles, generators, parts
        self.run_dir, self.sharded = Path(cfg.output_dir), sharded
        self.guard = parts["guard"]

    # ----------------------------------------------------------------- checkpoints
    def save(self, step: int, root: Path | None = None, keep_last: int | None = None) -> Path | None:
        """A checkpoint of `step` in root/checkpoints (default: the run's, keeping train.keep_last). Every rank
        gathers the weights and optimizer state (a collective when sharded); rank 0 writes; all wait."""
        root = self.run_dir if root is None else root
        keep_last = self.cfg.train.keep_last if keep_last is None else keep_last
        adapter, optim = self.roles.policy.adapter_state_dict(), self._optimizer_state()
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        try:
            state = {**{name: part.state_dict() for name, part in self.parts.items()}, "config": redacted(self.cfg)}
            return ckpt.save_checkpoint(root, step, adapter, optim, self.generators, state, keep_last)
        except Exception as err:
            failure = write_failure(err)  # (torch.save says a full disk with a RuntimeError)
            if failure is None:
                raise
            previous = ckpt.newest_valid(self.run_dir, warn=lambda m: None)
            kept = f"{previous.path.name} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointError(f"could not write the checkpoint for step {step} in {self.run_dir}: "
                                  f"{failure}; {kept}") from None
        finally:
            self.dist.barrier()

    def restore(self, path: Path) -> int:
        """Everything back as it was at the checkpoint, with the recipe's optimizer settings; the step."""
        parts = self._load(path)
        state = parts["state"]
        self._load_weights_and_optimizer(parts)
        self.roles.lr_scheduler.load_state_dict(parts["optimizer"]["lr_scheduler"])
        self._apply_optim_settings(state.get("config", {}).get("optim"))
        ckpt.restore_rng(parts["rng"], state["rng"], self.generators)
        for name, part in self.parts.items():
            if name in state:  # (checkpoints from before the guard kept state have none)
                part.load_state_dict(state[name])
        print(f"resumed from {path} at step {int(state['step'])}")
        return int(state["step"])

    def rollback(self, step: int) -> tuple[int, float] | None:
        """Back to the best weights saved so far (optimizer and algorithm state too), learning rate x
        stability.rollback_lr_factor and KL coefficient x rollback_kl_factor from now on: (the step rolled
        back to, the new KL coefficient), or None when there is no good checkpoint at or before `step`."""
        saved = (ckpt.newest_valid(self.run_dir / d, warn=lambda m: None) for d in ("best", "guard", "."))
        good = next((c for c in saved if c is not None), None)
        if good is None or good.step > step:
            return None
        algorithm, s = self.roles.algorithm, self.cfg.stability
        kl_scale = algorithm.kl_scale  # tightened by earlier rollbacks: it goes on from here, not the checkpoint's
        self._load_weights_and_optimizer(self._load(good.path))
        scale_learning_rate(self.roles.optimizer, self.roles.lr_scheduler, s.rollback_lr_factor)
        algorithm.kl_scale = kl_scale * s.rollback_kl_factor
        return good.step, self.cfg.algorithm.kl_coef * algorithm.kl_scale

    def _load(self, path: Path) -> dict:
        """A checkpoint's parts, refused in one error naming each problem unless all of it fits this run."""
        parts = ckpt.load_checkpoint(path)
        state, problems = parts["state"], []
        if not isinstance(state, dict):
            raise UserError(f"checkpoint {path}: state.json is not an object")
        problems += field_problems(state, {"step": "whole"}, "state.json")
        problems += rng_problems(state.get("rng"))
        for name, part in self.parts.items():
            if name in state and hasattr(part, "STATE"):
                problems += field_problems(state[name], part.STATE, f"state.json '{name}'",
                                           getattr(part, "STATE_OPTIONAL", ()))
        expected = self.roles.policy.adapter_state_dict()  # (a collective when sharded: every rank restores)
        problems += tensor_problems(parts["adapter"], expected, "adapter.safetensors")
        problems += generator_problems(parts["rng"], self.generators)
        optimizer = parts["optimizer"]
        if not isinstance(optimizer, dict) or not all(isinstance(optimizer.get(k), dict)
                                                      for k in ("optimizer", "lr_scheduler")):
            problems.append("optimizer.pt lacks the optimizer's or the learning-rate schedule's state")
        if problems:
            raise UserError(*(f"checkpoint {path} does not fit this run: {p}" for p in problems))
        return parts

    def _load_weights_and_optimizer(self, parts: dict) -> None:
        self.roles.policy.load_adapter_state_dict(parts["adapter"])
        self._load_optimizer_state(parts["optimizer"]["optimizer"])
        # kl_scale was kept beside the checkpoint's state before the algorithms' own state held it
        legacy = {"kl_scale": parts["state"]["kl_scale"]} if "kl_scale" in parts["state"] else {}
        self.roles.algorithm.load_state_dict({**legacy, **parts["optimizer"].get("algorithm", {})})

    def _optimizer_state(self) -> dict:
        r = self.roles
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt = get_optimizer_state_dict(r.policy.transformer, r.optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            opt = r.optimizer.state_dict()
        return {"optimizer": opt, "lr_scheduler": r.lr_scheduler.state_dict(), "algorithm": r.algorithm.state_dict()}

    def _load_optimizer_state(self, state: dict) -> None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.roles.policy.transformer, self.roles.optimizer, optim_state_dict=state,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.roles.optimizer.load_state_dict(state)

    def _apply_optim_settings(self, old: dict | None) -> None:
        """The restored optimizer and scheduler carry the old run's hyperparameters: set the recipe's instead,
        keeping their moments and step counts. A new learning rate rescales the current one, so the schedule
        (and any rollback reductions) go on from where they were."""
        o, optimizer = self.cfg.optim, self.roles.optimizer
        scale_learning_rate(optimizer, self.roles.lr_scheduler, o.lr / old["lr"] if old and old.get("lr") else 1.0)
        for group in optimizer.param_groups:
            group.update(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    # ----------------------------------------------------------------- exports
    def save_final(self, step: int) -> None:
        """final/: the weights of the best gold evaluation when the run has gold evaluations and
        train.final_weights is best_gold (the last weights then go to final_last/), else the last weights.
        final/rlkit_final.json says which (step, gold)."""
        policy, algorithm = self.roles.policy, self.roles.algorithm
        exported = algorithm.export_weights  # "trained", or "ema" (NFT's old policy)
        with algorithm.export_context(policy):
            state = policy.adapter_state_dict()  # every rank: a collective when sharded
        best = self._best_gold() if self.cfg.train.final_weights == "best_gold" else None  # same on every rank
        best_state = None
        if best is not None and best[0].step != step and exported != "trained":
            # the checkpoint's EMA, read out by name through the policy: a collective when sharded
            algorithm_state = ckpt.load_checkpoint(best[0].path)["optimizer"].get("algorithm")
            with algorithm.export_context(policy, algorithm_state):
                best_state = policy.adapter_state_dict()
        if self.dist.is_main:
            last = {"weights": "last", "step": step, "gold": self._gold_at(step), "export": exported}
            if best is None or best[0].step == step:
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
                      f"{_fmt(gold)}); the last weights (step {step}, gold {_fmt(last['gold'])}) are in "
                      f"final_last/")
        self.dist.barrier()

    def exported_step(self) -> int | None:
        """The step whose last weights final/ (or final_last/, beside best-gold weights) holds; None if none."""
        for name in ("final_last", "final"):
            try:
                info = json.loads((self.run_dir / name / "rlkit_final.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict):  # (no final_last/: final/ holds the last weights, best or not)
                return info.get("step")
        return None

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
        try:
            self.roles.policy.save_lora(str(tmp), state)
            (tmp / "rlkit_final.json").write_text(json.dumps(info, indent=1))
            write_model_card(tmp, self.cfg, info, self.run_dir, name)
            ckpt.usual_permissions(tmp)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            failure = write_failure(err)
            if failure is None:
                raise
            raise OutputError(f"could not write {final}: {failure}; the checkpoints are intact (rlkit resume "
                              f"{self.run_dir} exports again)") from None
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
