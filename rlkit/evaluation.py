"""Held-out evaluation with fixed noise: the same prompts and the same initial noise every time, so the
curve over steps shows the policy changing, not the sampling noise.

Each evaluation scores one rollout twice: with the training rewards (the proxy, logged `eval/reward` and
`eval/NAME`: the stability guard's probe) and, when `eval.rewards` names any, with those gold rewards
(`gold/reward`, `gold/NAME`, and each `log_as` key such as `gt_heldout`), never trained on. A gold reward's
per-sample details are logged too (`gold/NAME/KEY`: sandbox_gt's follow and preserve), so a run shows which
part of the truth moved.
"""

from __future__ import annotations

import torch

from rlkit.data import PromptStream, check_images, read_items
from rlkit.plugins import build_rewards
from rlkit.rewards import concat


class HeldoutEvaluator:
    def __init__(self, cfg, train_rewards, built_rewards: dict | None = None, layout=None):
        e = cfg.eval
        data_cfg = e.data if e.data is not None else cfg.data
        items = read_items(data_cfg)[: e.max_prompts]
        check_images(items, data_cfg.path)
        # one batch per edit size (a transformer batch has one shape), the same every evaluation
        stream = PromptStream(items, layout or cfg.policy.resolution, seed=0, shuffle=False)
        self.batches = stream.buckets(len(items))
        self.proxy = train_rewards
        self.gold = build_rewards(e.rewards, built_rewards) if len(e.rewards) else None
        self.log_as = {s.name: s.log_as for s in e.rewards if s.log_as}
        self.samples, self.seed, self.noise_level = e.samples_per_prompt, e.seed, e.noise_level
        self.benchmark = None
        if e.benchmark.name:
            from rlkit.benchmarks.probe import BenchmarkProbe

            self.benchmark = BenchmarkProbe(e.benchmark, cfg.policy.resolution, e.seed)

    @torch.no_grad()
    def __call__(self, policy) -> tuple[dict, list, dict]:
        """(figures to log, the rollouts (one per edit size), each sample's scores: the report shows them beside
        the images)."""
        generator = torch.Generator().manual_seed(self.seed)
        rollouts = [policy.sample(b, self.samples, generator, noise_level=self.noise_level) for b in self.batches]
        inputs = [r.as_reward_input() for r in rollouts]
        proxy = concat([self.proxy(b) for b in inputs])
        figures = {"eval/reward": float(proxy.total.mean())}
        per_sample = {"instructions": [t for b in self.batches for t in b.instructions],
                      "proxy": proxy.total.tolist(), "gold": None}
        figures.update({f"eval/{name}": float(s.mean()) for name, s in proxy.per_reward.items()})
        # what each reward said about each sample, beside its scores (the report shows it under the image)
        per_sample["rationales"] = {name: list(out.rationales) for name, out in proxy.outputs.items()
                                    if out.rationales}
        if self.gold is not None:
            gold = concat([self.gold(b) for b in inputs])
            figures["gold/reward"] = float(gold.total.mean())
            per_sample["gold"] = gold.total.tolist()
            per_sample["rationales"].update({f"gold/{name}": list(out.rationales)
                                             for name, out in gold.outputs.items() if out.rationales})
            for name, scores in gold.per_reward.items():
                figures[f"gold/{name}"] = float(scores.mean())
                for key, values in (gold.outputs[name].details or {}).items():
                    if torch.is_tensor(values) and values.shape == scores.shape:  # one figure per sample
                        figures[f"gold/{name}/{key}"] = float(values.float().mean())
                if name in self.log_as:
                    figures[self.log_as[name]] = float(scores.mean())
        if self.benchmark is not None:
            figures.update(self.benchmark(policy))
        return figures, rollouts, per_sample
