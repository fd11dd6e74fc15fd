"""`rlkit bench RECIPE [key=value ...]`: where one training iteration's time goes, against the floor.

Runs warm-up + timed GRPO iterations of the recipe (rollout, reward, update with its reference forwards) and
then times, alone, the pure model compute the iteration needs: the rollout's transformer forwards, the
trained timesteps' forward+backward, the reference forwards and the reward model's prefill. Prints each
stage, the ratios (rollout / its pure forwards; iteration / the sum of pure compute; reward / rollout) and
peak memory. Nothing is written to a run directory.
"""

from __future__ import annotations

import resource

import torch

from rlkit.core.devices import resolve_device
from rlkit.core.errors import UserError
from rlkit.data import PromptStream, check_references, read_items
from rlkit.policies import POLICIES
from rlkit.preparation import prepare_recipe
from rlkit.roles import build_roles
from rlkit.timing import StageTimer


def bench(cfg, iterations: int = 2, warmup: int = 1) -> dict:
    if cfg.algorithm.name != "grpo":
        raise UserError("rlkit bench measures GRPO iterations; set algorithm.name=grpo")
    device = resolve_device(cfg.policy.device)
    prepare_recipe(cfg)
    torch.manual_seed(cfg.seed)
    roles = build_roles(cfg, device)
    policy, algorithm, rewards = roles.policy, roles.algorithm, roles.rewards
    optimizer, scheduler = roles.optimizer, roles.lr_scheduler
    for p in policy.trainable_parameters():  # a trained-looking adapter: LoRA and reference differ
        torch.nn.init.normal_(p, std=0.01)
    items = read_items(cfg.data)
    check_references(items, POLICIES[cfg.policy.name].editor.max_references, cfg.policy.name)
    prompts = PromptStream(items, policy.layout, cfg.seed, cfg.data.shuffle)
    gen = torch.Generator().manual_seed(cfg.seed)

    def iteration(clock: StageTimer):
        batch = prompts.next_batch(cfg.train.prompts_per_step)
        with clock("rollout"):
            rollout = policy.sample(batch, cfg.algorithm.group_size, gen)
        with clock("reward"):
            reward = rewards(rollout.as_reward_input())
        adv, _ = algorithm.advantages(reward.total, rollout.group_ids, reward.uncertainty)
        with clock("update"):
            algorithm.update(policy, rollout, adv, optimizer, scheduler, gen)
        return rollout

    for _ in range(warmup):
        iteration(StageTimer(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StageTimer(device)
    for _ in range(iterations):
        rollout = iteration(clock)
    pure = pure_compute(policy, algorithm, rollout, rewards, cfg, device, iterations)
    staged = {k: v / iterations for k, v in clock.totals.items()}
    return summarise(staged, pure, rollout, cfg, device)


def pure_compute(policy, algorithm, rollout, rewards, cfg, device, iterations: int) -> dict:
    """Each model's own compute for one iteration, timed alone on the last rollout's tensors."""
    clock = StageTimer(device)
    n, steps = len(rollout), rollout.num_steps
    chunk = cfg.sampler.batch_size or cfg.algorithm.micro_batch or n
    mb = cfg.algorithm.micro_batch
    sde_steps = torch.nonzero(rollout.sde_mask).flatten()
    k = algorithm.timesteps_per_sample(len(sde_steps)) * cfg.algorithm.inner_epochs

    def forward(idx, step):
        x = rollout.latents[idx, step].to(device)
        return policy.predict_velocity(x, rollout.timesteps[step] / 1000, rollout.cond, rollout.prompt_index[idx])

    def trained_batches():  # the update's (micro-batch, timestep) calls, k timesteps per sample
        for j in range(k):
            for i in range(0, n, mb):
                yield torch.arange(i, min(i + mb, n)), int(sde_steps[j % len(sde_steps)])

    for _ in range(iterations):
        with torch.no_grad(), clock("rollout_forward"):
            for step in range(steps):
                for i in range(0, n, chunk):
                    forward(torch.arange(i, min(i + chunk, n)), step)
        with clock("train_forward_backward"):
            for idx, step in trained_batches():
                forward(idx, step).square().mean().backward()
        for p in policy.trainable_parameters():
            p.grad = None
        if cfg.algorithm.kl_coef > 0:
            with torch.no_grad(), policy.reference(), clock("reference_forward"):
                for idx, step in trained_batches():
                    forward(idx, step)
        prefill = reward_prefill_fn(rewards, rollout)
        if prefill is not None:
            with torch.no_grad(), clock("reward_prefill"):
                prefill()
    out = {key: v / iterations for key, v in clock.totals.items()}
    out["trained_timesteps"] = n * k
    return out


def reward_prefill_fn(rewards, rollout):
    """The rewards' model forwards alone, inputs encoded beforehand, for the rewards that offer them
    (`prepared_forward`, e.g. JRM); None when none does."""
    batch = rollout.as_reward_input()
    calls = [reward.prepared_forward(batch) for reward in rewards.functions if hasattr(reward, "prepared_forward")]
    if not calls:
        return None
    return lambda: [call() for call in calls]


def summarise(staged: dict, pure: dict, rollout, cfg, device) -> dict:
    iteration = sum(staged.values())
    pure_reward = pure.get("reward_prefill", staged["reward"])  # no model to isolate: the reward call itself
    pure_sum = (pure["rollout_forward"] + pure["train_forward_backward"] + pure.get("reference_forward", 0.0)
                + pure_reward)
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "samples": len(rollout), "sampling_steps": rollout.num_steps, "trained_timesteps": pure["trained_timesteps"],
        "rollout_s": staged["rollout"], "rollout_pure_forward_s": pure["rollout_forward"],
        "rollout_over_pure": staged["rollout"] / pure["rollout_forward"],
        "reward_s": staged["reward"], "reward_prefill_s": pure.get("reward_prefill"),
        "reward_over_rollout": staged["reward"] / staged["rollout"],
        "update_s": staged["update"], "train_s_per_trained_timestep": staged["update"] / pure["trained_timesteps"],
        "pure_train_forward_backward_s": pure["train_forward_backward"],
        "pure_reference_forward_s": pure.get("reference_forward", 0.0),
        "iteration_s": iteration, "pure_compute_sum_s": pure_sum, "iteration_over_pure": iteration / pure_sum,
    }
    if device.type == "cuda":
        figures["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        figures["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return figures
