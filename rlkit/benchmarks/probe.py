"""`eval.benchmark`: the same evaluation as `rlkit eval`, on the benchmark's first `max_items` items, at every
evaluation of a run, with the policy as it is. Its figures join the row (bench/gedit_SC, bench/gedit_PQ,
bench/gedit_O, or bench/imgedit_average; bench/..._missing), and with `gold: true` the overall figure is the
guard's gold: a judge that is not the training reward, on prompts the run never trains on."""

from __future__ import annotations

from rlkit.benchmarks.evaluate import figures, headline, read_items
from rlkit.benchmarks.judging import BenchJudge, JudgeSettings, Request
from rlkit.benchmarks.rubrics import Rubric
from rlkit.benchmarks.targets import edit


class BenchmarkProbe:
    def __init__(self, cfg, resolution: int, seed: int):
        self.name, self.resolution, self.seed, self.gold = cfg.name, resolution, seed, cfg.gold
        self.items = read_items(cfg.name, cfg.data, cfg.image_root, cfg.max_items)
        self.rubric = Rubric(cfg.name, cfg.prompts)
        self.judge = BenchJudge(JudgeSettings(cfg.judge_url, cfg.judge_model, concurrency=cfg.concurrency,
                                              score_mode=cfg.score_mode))
        self.judge.check([q for it in self.items for q in self.rubric.questions(it.task, it.instruction)])
        self.judge.connect()  # at start-up, not at the first evaluation

    def __call__(self, policy) -> dict[str, float | None]:
        requests = []
        for it in self.items:
            source, edited = edit(policy, it, self.seed)
            requests += [Request((it.key, q.name), q, {"source": source, "edited": edited})
                         for q in self.rubric.questions(it.task, it.instruction)]
        scores = {}

        def settle(request, answer, got, tries):
            if got is not None:
                scores[request.id] = got

        self.judge.ask(requests, settle, progress=False)
        result = figures(self.name, self.items, scores, self.rubric)
        out = {**headline(self.name, result), f"bench/{self.name}_missing": result["missing"]}
        if self.gold:
            out["gold/reward"] = out["bench/gedit_O" if self.name == "gedit" else "bench/imgedit_average"]
        return out
