"""Data-parallel training over processes (`accelerate launch -m rlkit run ...` or torchrun), LoRA replicated.

accelerate's `PartialState` sets up the process group (gloo on CPU, nccl on GPU) from the launcher's
environment; one process without a launcher is the plain single-process case. The scheme:
  - every rank draws the same global batch of prompts and the same noise for all of it (identical generators),
    then samples only its share of the samples (a group may span ranks): the union of the ranks' rollouts is
    the single-process rollout;
  - rewards are gathered, so advantages (and group/global std) see the whole batch;
  - each rank back-propagates its own micro-batches and gradients are averaged before each optimizer step, so
    `algorithm.micro_batch` is per process: W processes with micro-batch m make the same update as one
    process with micro-batch W x m on the same global batch (up to float summation order);
  - rank 0 writes logs, grids and checkpoints; generators stay in lockstep across ranks, so rank 0's
    checkpoint restores every rank;
  - full fine-tuning (`policy.finetune=full`): the transformer is sharded with FSDP2 instead (`fsdp`), which
    averages gradients itself; weights and optimizer state are gathered to full tensors for checkpoints.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class Distributed:
    def __init__(self):
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.state.process_index, self.state.num_processes

    def check_recipe(self, cfg) -> None:
        """What a multi-process run needs of its recipe."""
        if not self.enabled:
            return
        from rlkit.core.errors import UserError

        if cfg.algorithm.name != "grpo":
            raise UserError("multi-process runs support algorithm.name=grpo (online DPO's pair count differs "
                            "per rank)")
        samples = cfg.train.prompts_per_step * cfg.algorithm.group_size
        if samples % self.world:
            raise UserError(f"train.prompts_per_step x algorithm.group_size = {samples} samples must be a "
                            f"multiple of the {self.world} processes")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.state.device

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (n must divide evenly)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-length [n, ...] tensors from all ranks in rank order."""
        if not self.enabled:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce the gradients to their mean: each rank's loss is the mean over its micro-batch, so the
        mean over ranks is the mean over the W micro-batches together."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, figures: dict) -> dict:
        """Average numeric figures over ranks (None stays None)."""
        if not self.enabled:
            return figures
        keys = [k for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        values = torch.tensor([float(figures[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {**figures, **{k: float(v) / self.world for k, v in zip(keys, values)}}

    def fsdp(self, policy) -> None:
        """Full fine-tuning: shard the transformer (and its frozen reference copy) with FSDP2, block by block.
        Gradients are then reduce-scattered (averaged) by FSDP itself in backward."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # fp32 master shards; bf16 (policy.dtype) gathered for compute, gradients reduced in fp32
        mp = MixedPrecisionPolicy(param_dtype=policy.dtype, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if policy.mixed_precision else {}
        for model in (policy.transformer, policy.reference_transformer):
            for name in ("transformer_blocks", "single_transformer_blocks"):
                for block in getattr(model, name, None) or []:
                    fully_shard(block, **kw)
            # the root resharded after forward too: otherwise its parameters stay swapped for unsharded views
            # between a no-grad rollout and the update, and a parameter list taken then would miss gradients
            fully_shard(model, reshard_after_forward=True, **kw)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (a stop signal reaches the ranks at different moments)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0])
        dist.all_reduce(t)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
