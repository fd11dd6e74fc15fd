"""Policy throughput and log-prob fidelity at FLUX.1-Kontext size with random weights (or tiny, on a CPU).

    python benchmarks/policy_bench.py --size kontext --group 16 --steps 10      # one H100
    python benchmarks/policy_bench.py --size tiny --group 4 --steps 4           # CPU smoke

Prints: the pure transformer forward time per denoising step for the whole group; the rollout time and its
ratio to 10 pure forwards; how far the recomputed importance ratio is from 1 when the training pass uses
another batch size than the rollout (bf16 vs fp32 transformer); one GRPO update's time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf

from rlkit.algorithms import GRPO
from rlkit.policies.base import PromptBatch
from rlkit.policies.flux_kontext import FluxKontextPolicy
from rlkit.policies.tiny import kontext_size_pipeline
from rlkit.recipe import Recipe


def timed(fn, device, repeat=1):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "kontext"], default="tiny")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--rollout-batch", type=int, default=0, help="sampler.batch_size (0 = whole group)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--skip-update", action="store_true")
    ap.add_argument("--attention", choices=["auto", "default", "flash", "efficient", "cudnn", "math"],
                    default="auto", help="policy.attention_backend")
    ap.add_argument("--json", default=None, help="also write the figures here")
    run(ap.parse_args())


def run(args) -> None:

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = OmegaConf.structured(Recipe)
    cfg.policy.dtype = args.dtype
    cfg.policy.lora.rank, cfg.policy.lora.alpha = args.rank, float(2 * args.rank)
    cfg.policy.gradient_checkpointing = args.gradient_checkpointing
    cfg.policy.attention_backend = args.attention
    cfg.sampler.num_steps = args.steps
    cfg.algorithm.micro_batch = args.micro_batch
    cfg.sampler.batch_size = args.rollout_batch
    if args.size == "kontext":
        pipe, res, seq = kontext_size_pipeline(device), 512, 512
    else:
        from rlkit.policies.tiny import tiny_kontext_pipeline

        pipe, res, seq = tiny_kontext_pipeline(0), 32, 32
    cfg.policy.resolution, cfg.policy.max_sequence_length = res, seq
    torch.manual_seed(0)
    G = args.group
    policy = FluxKontextPolicy(pipe, cfg.policy, cfg.sampler, device, train_micro_batch=args.rollout_batch or G)
    for p in policy.trainable_parameters():  # a trained-looking adapter, so LoRA and reference differ
        torch.nn.init.normal_(p, std=0.02)
    figures: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "size": args.size,
        "attention": args.attention, "group": G, "steps": args.steps, "dtype": args.dtype, "lora_rank": args.rank,
        "rollout_batch": args.rollout_batch or G, "micro_batch": args.micro_batch,
        "trainable_params": sum(p.numel() for p in policy.trainable_parameters()),
    }
    batch = PromptBatch(torch.rand(1, 3, res, res), ["make the sky purple and keep the house"], ["k"])
    cond = policy.encode(batch)
    x = policy.pack(torch.randn(G, *policy.noise_shape(cond))).to(device)
    idx = torch.zeros(G, dtype=torch.long)
    t = torch.full((G,), 0.7)
    figures["tokens"] = {"target": x.shape[1], "source": cond.image_latents.shape[1], "text": seq}

    with torch.no_grad():
        timed(lambda: policy.predict_velocity(x, t, cond, idx), device)  # warm-up
        _, t_fwd = timed(lambda: policy.predict_velocity(x, t, cond, idx), device, repeat=3)
        figures["forward_group_s"] = t_fwd
        figures["forward_per_image_step_ms"] = 1000 * t_fwd / G
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rollout, t_roll = timed(lambda: policy.sample(batch, G, torch.Generator().manual_seed(0)), device)
        figures["rollout_s"] = t_roll
        figures["rollout_over_pure_forward"] = t_roll / (args.steps * t_fwd)
        if device.type == "cuda":
            figures["rollout_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        # importance ratio fidelity: recompute with the rollout's batch and with the training micro-batch
        devs = {}
        for mb in sorted({G, args.micro_batch}):
            worst = 0.0
            for step in range(rollout.num_steps):
                for i in range(0, G, mb):
                    sel = torch.arange(i, min(i + mb, G))
                    lp = policy.step_logprob(rollout, sel, step).log_prob.cpu()
                    worst = max(worst, (torch.exp(lp - rollout.log_probs[sel, step]) - 1).abs().max().item())
            devs[f"batch_{mb}"] = worst
        figures["ratio_max_abs_dev"] = devs
    print(json.dumps(figures), flush=True)  # the rollout figures survive a crash in the update

    if not args.skip_update:
        algo = GRPO(cfg.algorithm, 1.0)
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        adv, _ = algo.advantages(torch.randn(G), rollout.group_ids)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        metrics, t_upd = timed(lambda: algo.update(policy, rollout, adv, opt, sched, torch.Generator().manual_seed(0)),
                               device)
        k = algo.train_steps(rollout, torch.Generator().manual_seed(0)).shape[1]
        figures["update_s"] = t_upd
        figures["trained_timesteps_per_sample"] = k
        figures["update_per_sample_timestep_s"] = t_upd / (G * k)
        figures["update_ratio_mean"] = metrics["ratio_mean"]
        if device.type == "cuda":
            figures["update_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
