"""The stability guard: every alarm kind on constructed metric streams, then its actions in real tiny runs."""

import json

import pytest
import torch
from helpers import tiny_config
from omegaconf import OmegaConf
from safetensors.torch import load_file

from rlkit.core.errors import GuardStop
from rlkit.logs import read_rows
from rlkit.recipe import StabilityConfig
from rlkit.stability import StabilityGuard
from rlkit.stability.alarms import diversity_collapse, gold_divergence, kl_blowup, ratio_blowup
from rlkit.trainer import Trainer


def guard(**overrides) -> StabilityGuard:
    cfg = OmegaConf.merge(OmegaConf.structured(StabilityConfig), OmegaConf.from_dotlist(
        [f"{k}={v}" for k, v in overrides.items()]))
    return StabilityGuard(cfg)


# ---------------------------------------------------------------------- the tests on constructed streams
def test_gold_divergence_needs_gold_falling_and_proxy_rising():
    gold_falls = [0.40, 0.45, 0.44, 0.41]
    assert gold_divergence([1.0, 1.1, 1.2, 1.3], gold_falls, window=2, gold_drop=0.03, proxy_rise=0.0) == \
        pytest.approx({"gold": 0.41, "gold_best": 0.45, "gold_drop": 0.04, "proxy": 1.3, "proxy_rise": 0.2})
    # proxy falling too: the policy got worse, but that is not the proxy being gamed
    assert gold_divergence([1.3, 1.2, 1.1, 1.0], gold_falls, 2, 0.03, 0.0) is None
    assert gold_divergence([1.3, 1.2, 1.1, 1.0], gold_falls, 2, 0.03, -1e9) is not None  # any fall of the gold
    # gold only slightly below its best: within noise
    assert gold_divergence([1.0, 1.1, 1.2, 1.3], [0.40, 0.45, 0.44, 0.43], 2, 0.03, 0.0) is None
    # both rising: learning
    assert gold_divergence([1.0, 1.1, 1.2], [0.40, 0.45, 0.50], 2, 0.03, 0.0) is None
    assert gold_divergence([1.0], [0.4], 2, 0.03, 0.0) is None


def test_kl_and_ratio_blowups():
    assert kl_blowup(0.02, 0.001, max_kl_ref=0.5, max_approx_kl=0.1) is None
    assert kl_blowup(0.9, 0.001, 0.5, 0.1)["kl_ref"] == 0.9
    assert kl_blowup(0.02, 0.5, 0.5, 0.1) is not None
    assert kl_blowup(float("nan"), None, 0.5, 0.1) is not None  # non-finite counts as blown up
    assert kl_blowup(None, None, 0.5, 0.1) is None  # DPO logs no ratio/KL: nothing to judge
    assert ratio_blowup(0.9999, 0.08, max_ratio_dev=0.05, max_clipfrac=0.5) is None
    assert ratio_blowup(1.2, 0.08, 0.05, 0.5) is not None
    assert ratio_blowup(1.0, 0.9, 0.05, 0.5) is not None


def test_diversity_collapse_against_its_baseline():
    assert diversity_collapse(0.05, 0.06, min_fraction=0.25) is None
    assert diversity_collapse(0.01, 0.06, 0.25)["fraction"] == pytest.approx(1 / 6)
    assert diversity_collapse(0.01, None, 0.25) is None  # baseline not established yet
    g = guard(**{"diversity_collapse.baseline_steps": 3})
    stream = [0.06, 0.05, 0.07] + [0.06 * 0.5**k for k in range(1, 30)]
    fired = [step for step, d in enumerate(stream, 1) if g.check_step(step, {"group_diversity": d})]
    assert len(fired) == 1 and 8 <= fired[0] <= 20  # once, after the slow average has fallen below 1/4


def test_guard_fires_once_per_episode_and_again_after_it_clears():
    g = guard()
    kls = [0.01, 0.9, 0.9, 0.9, 0.01, 0.8]
    fired = [s for s, kl in enumerate(kls, 1) for a in g.check_step(s, {"kl_ref": kl}) if a.kind == "kl_blowup"]
    assert fired == [2, 6]


def test_guard_gold_stream_and_good_points():
    g = guard(**{"gold_divergence.action": "rollback"})
    assert g.wants_rollback
    assert g.check_eval(0, proxy=1.0, gold=0.40) == [] and g.is_good()
    assert g.check_eval(5, 1.1, 0.45) == [] and g.is_good()
    assert g.check_eval(10, 1.2, 0.44) == [] and not g.is_good()
    (alarm,) = g.check_eval(15, 1.3, 0.41)
    assert alarm.kind == "gold_divergence" and alarm.action == "rollback" and alarm.step == 15
    assert "reward hacking" in alarm.message
    state = json.loads(json.dumps(g.state_dict()))  # checkpointable as JSON
    g2 = guard(**{"gold_divergence.action": "rollback"})
    g2.load_state_dict(state)
    assert g2.gold == g.gold and g2.active == ["gold_divergence"]


def test_rollback_turns_into_stop_after_max_rollbacks():
    g = guard(**{"kl_blowup.action": "rollback", "max_rollbacks": 2})
    actions = []
    for step in range(1, 5):
        (alarm,) = g.check_step(step, {"kl_ref": 5.0})
        actions.append(alarm.action)
        g.rolled_back()
    assert actions == ["rollback", "rollback", "stop", "stop"]


def test_guard_action_ignore_silences_a_kind():
    g = guard(**{"kl_blowup.action": "ignore"})
    assert g.check_step(1, {"kl_ref": 5.0}) == []


# ---------------------------------------------------------------------- actions in tiny runs
def always_fires(cfg, key: str):
    """Set an alarm threshold below any value (the schema refuses negatives: set after validation), so the
    alarm fires at every check: these tests are about what the guard does, not when."""
    OmegaConf.update(cfg, f"stability.{key}", -1.0)
    return cfg


def test_warn_writes_alarms_jsonl_and_the_run_finishes(tmp_path):
    cfg = always_fires(tiny_config(tmp_path, "train.steps=3"), "kl_blowup.max_kl_ref")
    run = Trainer(cfg, progress=False).fit()
    alarms = read_rows(run / "alarms.jsonl")
    assert [(a["step"], a["kind"], a["action"]) for a in alarms] == [(1, "kl_blowup", "warn")]
    assert set(alarms[0]) >= {"step", "kind", "figures", "action", "message"} and "kl_ref" in alarms[0]["figures"]
    assert (run / "final").is_dir()


def test_stop_saves_a_checkpoint_and_exits_3(tmp_path):
    out = tmp_path / "run"
    cfg = always_fires(tiny_config(tmp_path, "train.steps=5", "train.save_every=0", "sampler.num_steps=3",
                                   "algorithm.group_size=3", "stability.ratio_blowup.action=stop"),
                       "ratio_blowup.max_clipfrac")
    with pytest.raises(GuardStop) as stop:
        Trainer(cfg, progress=False).fit()
    assert stop.value.exit_code == 3
    assert (out / "checkpoints" / "step_000001").is_dir()
    assert [a["action"] for a in read_rows(out / "alarms.jsonl")] == ["stop"]
    assert not (out / "final").exists()


def test_rollback_restores_the_good_weights_and_lowers_the_lr(tmp_path):
    # the alarm fires every step: each time the guard rolls back to the step-0 weights, halving the lr, until
    # max_rollbacks is used up and it stops
    cfg = always_fires(tiny_config(tmp_path, "train.steps=6", "train.save_every=0", "optim.lr=0.01",
                                   "eval.every=100", "eval.max_prompts=2", "eval.samples_per_prompt=2",
                                   "stability.ratio_blowup.action=rollback", "stability.max_rollbacks=2"),
                       "ratio_blowup.max_clipfrac")
    trainer = Trainer(cfg, progress=False)
    start = {k: v.clone() for k, v in trainer.policy.adapter_state_dict().items()}
    with pytest.raises(GuardStop):
        trainer.fit()
    run = trainer.run_dir
    alarms = read_rows(run / "alarms.jsonl")
    assert [a["action"] for a in alarms] == ["rollback", "rollback", "stop"]
    assert [a["figures"]["rollback_to_step"] for a in alarms[:2]] == [0, 0]
    assert [a["figures"]["new_lr"] for a in alarms[:2]] == pytest.approx([0.005, 0.0025])
    rows = read_rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # one row per step, the counter goes on
    assert rows[2]["lr"] == pytest.approx(0.005)
    good = load_file(run / "guard" / "checkpoints" / "step_000000" / "adapter.safetensors")
    assert all(torch.equal(good[k], start[k]) for k in start)
    # the run stopped at step 3 after an update from the rolled-back weights with lr 0.0025: the saved
    # checkpoint differs from the start, but only by that one small step
    last = load_file(run / "checkpoints" / "step_000003" / "adapter.safetensors")
    assert any(not torch.equal(last[k], start[k]) for k in start)


def test_report_plots_and_offline_html(tmp_path, capsys):
    from rlkit.cli import main

    cfg = always_fires(tiny_config(tmp_path, "train.steps=3", "eval.every=2", "eval.max_prompts=2",
                                   "eval.samples_per_prompt=2", "train.report=true"), "kl_blowup.max_kl_ref")
    run = Trainer(cfg, progress=False).fit()
    assert (run / "report.html").is_file()  # written by the run itself
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert {p.name for p in (run / "plots").iterdir()} >= {"reward.png", "kl.png", "diversity.png"}
    # embedded, nothing fetched: reads offline
    assert page.count("data:image/png;base64,") >= 4 and 'src="http' not in page and "<link" not in page
    assert "kl_blowup" in page and "step 2 (latest)" in page
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not an rlkit run directory" in capsys.readouterr().err


# ---------------------------------------------------------------------- the best gold weights are exported
GOLD = {0: 0.30, 1: 0.50, 2: 0.20, 3: 0.40, 4: 0.10}  # a constructed stream: best at step 1, worst at the end


@pytest.fixture
def scripted_gold(monkeypatch):
    """Each evaluation's gold is GOLD[step], whatever the policy does: the export must follow the stream."""
    evaluate = Trainer._evaluate

    def scripted(self):
        figures = evaluate(self)
        figures["gold/reward"] = GOLD[self.step]
        return figures

    monkeypatch.setattr(Trainer, "_evaluate", scripted)


def _gold_cfg(tmp_path, *extra):
    return tiny_config(tmp_path, "train.steps=4", "train.save_every=1", "train.keep_last=0", "eval.every=1",
                       "eval.max_prompts=1", "eval.samples_per_prompt=2", "eval.rewards=[{name: source_consistency}]",
                       *extra)


def _lora(folder) -> dict:
    """An exported LoRA keyed like the policy's adapter state (diffusers adds the 'transformer.' prefix)."""
    exported = load_file(folder / "pytorch_lora_weights.safetensors")
    return {k.removeprefix("transformer."): v for k, v in exported.items()}


def _same_weights(exported: dict, adapter: dict) -> bool:
    return exported.keys() == adapter.keys() and all(torch.equal(exported[k], adapter[k]) for k in adapter)


def test_final_holds_the_best_gold_evaluations_weights(tmp_path, scripted_gold, capsys):
    run = Trainer(_gold_cfg(tmp_path), progress=False).fit()
    adapter = {s: load_file(run / "checkpoints" / f"step_{s:06d}" / "adapter.safetensors") for s in (1, 4)}
    assert _same_weights(_lora(run / "final"), adapter[1])
    assert _same_weights(_lora(run / "final_last"), adapter[4])
    assert json.loads((run / "final" / "rlkit_final.json").read_text()) == {"weights": "best_gold", "step": 1,
                                                                            "gold": 0.5, "export": "trained"}
    assert json.loads((run / "final_last" / "rlkit_final.json").read_text())["step"] == 4
    assert "final/ holds the weights of step 1, the best gold evaluation (gold 0.5000)" in capsys.readouterr().out
    from rlkit.report import write_report

    page = write_report(run).read_text()
    assert ("<code>final/</code> holds the best gold evaluation's weights (step 1, gold 0.5000); "
            "<code>final_last/</code> holds the last weights (step 4, gold 0.1000)") in page


def test_the_best_gold_export_survives_a_resume(tmp_path, scripted_gold):
    straight = Trainer(_gold_cfg(tmp_path / "a"), progress=False).fit()
    Trainer(_gold_cfg(tmp_path / "b"), progress=False).fit(max_steps=2)  # stopped after step 2, best at 1
    resumed = Trainer(_gold_cfg(tmp_path / "b"), progress=False).fit()
    for name in ("final", "final_last"):
        a, b = _lora(straight / name), _lora(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_final_weights_last_and_runs_without_gold_export_the_last_weights(tmp_path, scripted_gold):
    run = Trainer(_gold_cfg(tmp_path / "a", "train.final_weights=last"), progress=False).fit()
    last = load_file(run / "checkpoints" / "step_000004" / "adapter.safetensors")
    assert _same_weights(_lora(run / "final"), last) and not (run / "final_last").exists()
    run = Trainer(tiny_config(tmp_path / "b"), progress=False).fit()  # no evaluation at all
    assert json.loads((run / "final" / "rlkit_final.json").read_text()) == {"weights": "last", "step": 2,
                                                                            "gold": None, "export": "trained"}


def test_a_rollback_tightens_the_kl_anchor_and_resume_keeps_it(tmp_path):
    cfg = always_fires(tiny_config(tmp_path, "train.steps=6", "train.save_every=0", "optim.lr=0.01",
                                   "eval.every=100", "eval.max_prompts=2", "eval.samples_per_prompt=2",
                                   "stability.ratio_blowup.action=rollback", "stability.max_rollbacks=2",
                                   "stability.rollback_kl_factor=4"),
                       "ratio_blowup.max_clipfrac")
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(GuardStop):
        trainer.fit()
    alarms = read_rows(trainer.run_dir / "alarms.jsonl")
    assert [a["figures"]["new_kl_coef"] for a in alarms[:2]] == pytest.approx([0.04, 0.16])
    assert trainer.algorithm.kl_scale == 16
    resumed = Trainer(cfg, progress=False)  # from the checkpoint the stop saved
    assert resumed.step == 3 and resumed.algorithm.kl_scale == 16


def test_a_guard_stop_hands_over_the_best_gold_weights(tmp_path, scripted_gold):
    """After max_rollbacks a rollback alarm stops the run: with gold it ends on the best weights it saw."""
    cfg = _gold_cfg(tmp_path, "stability.gold_divergence.action=stop")
    OmegaConf.update(cfg, "stability.gold_divergence.proxy_rise", -1e9)  # any fall of the gold (README)
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(GuardStop, match="final/ holds the best gold evaluation's weights"):
        trainer.fit()
    run = trainer.run_dir
    assert read_rows(run / "alarms.jsonl")[0]["step"] == 2  # gold 0.2, 0.3 below its best
    best = load_file(run / "checkpoints" / "step_000001" / "adapter.safetensors")
    assert _same_weights(_lora(run / "final"), best)
    assert json.loads((run / "final_last" / "rlkit_final.json").read_text())["step"] == 2


def test_resume_across_a_rollback_is_exact(tmp_path):
    """Stopped right after a rollback and resumed, the run goes on with the rolled-back weights, the lowered
    learning rate and the tightened KL exactly as the run that was never stopped."""
    def cfg(where):
        return always_fires(tiny_config(where, "train.steps=6", "train.save_every=0", "optim.lr=0.01",
                                        "eval.every=100", "eval.max_prompts=2", "eval.samples_per_prompt=2",
                                        "stability.ratio_blowup.action=rollback", "stability.max_rollbacks=2"),
                            "ratio_blowup.max_clipfrac")

    with pytest.raises(GuardStop):
        Trainer(cfg(tmp_path / "a"), progress=False).fit()  # rollbacks at steps 1 and 2, the stop at 3
    Trainer(cfg(tmp_path / "b"), progress=False).fit(max_steps=1)  # ends right after the first rollback
    resumed = Trainer(cfg(tmp_path / "b"), progress=False)
    assert resumed.algorithm.kl_scale == 4 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    with pytest.raises(GuardStop):
        resumed.fit()
    a, b = (load_file(p / "run" / "checkpoints" / "step_000003" / "adapter.safetensors") for p in
            (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [read_rows(p / "run" / "metrics.jsonl") for p in (tmp_path / "a", tmp_path / "b")]
    assert [r.get("lr") for r in rows[0]] == [r.get("lr") for r in rows[1]]
