"""`rlkit bench`: per-stage figures and ratios on the tiny recipe (the real figures come from the GPU)."""

import json

import pytest

from rlkit.cli import main


def test_bench_prints_stages_and_ratios(tmp_path, capsys):
    from rlkit.rewards.jrm.backbone import tiny_backbone
    from rlkit.rewards.jrm.model import JRMConfig, JRMModel

    judge = tmp_path / "judge"
    JRMModel(tiny_backbone(0), JRMConfig(image_size=32)).save(judge)  # untrained: only its cost matters here
    out = tmp_path / "bench.json"
    code = main(["bench", "tiny_edit", "sampler.num_steps=4", "algorithm.group_size=4", "algorithm.micro_batch=4",
                 "algorithm.grpo.timestep_fraction=0.5", f"rewards=[{{name: jrm, kwargs: {{path: '{judge}'}}}}]",
                 "--iterations", "1", "--warmup", "0", "--json", str(out)])
    assert code == 0
    f = json.loads(out.read_text())
    assert "rollout_over_pure" in capsys.readouterr().out
    assert f["samples"] == 8 and f["sampling_steps"] == 4 and f["trained_timesteps"] == 8 * 2
    assert f["iteration_s"] == pytest.approx(f["rollout_s"] + f["reward_s"] + f["update_s"])
    assert f["rollout_over_pure"] == pytest.approx(f["rollout_s"] / f["rollout_pure_forward_s"])
    assert f["reward_prefill_s"] > 0 and f["pure_reference_forward_s"] > 0
    assert f["pure_compute_sum_s"] == pytest.approx(f["rollout_pure_forward_s"] + f["pure_train_forward_backward_s"]
                                                    + f["pure_reference_forward_s"] + f["reward_prefill_s"])


def test_bench_refuses_dpo(capsys):
    assert main(["bench", "tiny_edit", "algorithm.name=dpo"]) == 2
    assert "grpo" in capsys.readouterr().err


def test_bench_recipe_for_the_gpu_validates_and_random_judge_scores(tmp_path):
    """bench_kontext.yaml is what the GPU benchmark runs; its judge kwargs build (tiny here, 8b there)."""
    import torch

    from rlkit.rewards import RewardInput
    from rlkit.rewards.jrm.reward import JRMReward

    assert main(["validate", "bench_kontext"]) == 0
    judge = JRMReward(random_size="tiny", image_size=32, device="cpu")
    out = judge(RewardInput(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), ["a", "b"], torch.zeros(2).long()))
    assert out.scores.shape == (2,) and torch.isfinite(out.scores).all()
    with pytest.raises(ValueError, match="random_size"):
        JRMReward(random_size="70b")
