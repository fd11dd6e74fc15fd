"""The authors' conventions, selectable beside rlkit's: NFT's old-policy blend and its timesteps per sample,
GRPO-Guard's 1/|dt| weight, and where an SDE window may sit and how often it slides."""

import json

import pytest
import torch
from helpers import make_policy, prompt_batch, tiny_config

from rlkit.algorithms.nft import blend_decay
from rlkit.policies.sde import sde_window, window_starts
from rlkit.trainer import Trainer


def test_nfts_blend_decays_are_the_authors():
    assert [blend_decay(s, "none") for s in (0, 100)] == [0.0, 0.0]
    assert [blend_decay(s, "linear") for s in (0, 100, 499, 5000)] == pytest.approx([0, 0.1, 0.499, 0.5])
    assert [blend_decay(s, "delayed") for s in (74, 75, 175, 10**6)] == pytest.approx([0, 0, 0.75, 0.999])


@pytest.mark.parametrize("where,starts", [("all", 9), ("first_half", 4), ("not_last_two", 7)])
def test_where_a_window_may_sit(where, starts):
    assert window_starts(10, 2, where) == starts
    for start in range(30):  # every position it takes is allowed, and only those
        on = [i for i, m in enumerate(sde_window(10, 2, start, where)) if m]
        assert len(on) == 2 and on[0] < starts
        if where == "first_half":
            assert on[-1] < 5
        if where == "not_last_two":
            assert on[-1] < 8


def test_a_window_slides_one_step_every_n_rl_steps(tmp_path):
    policy, _ = make_policy("sampler.sde_window=1", "sampler.num_steps=4", "sampler.sde_window_slide_every=3")
    g = torch.Generator().manual_seed(0)
    masks = [policy.sample(prompt_batch(1), 2, g, sde_window_start=step).sde_mask.tolist() for step in range(7)]
    starts = [m.index(True) for m in masks]
    assert starts == [0, 0, 0, 1, 1, 1, 2]


def test_grpo_guards_dt_weight_divides_each_steps_policy_loss_by_its_dt(tmp_path):
    """One SDE step trained (a window of 1): with the weight on, the first update's loss is the plain one / dt
    (a learning rate too small to move the weights between its micro-batches)."""
    losses = {}
    for on in (False, True):
        cfg = tiny_config(tmp_path / str(on), "train.steps=1", "eval.every=0", "sampler.sde_window=1",
                          "algorithm.micro_batch=2", "algorithm.kl_coef=0", "optim.lr=1e-12",
                          "train.prompts_per_step=1", f"algorithm.grpo.dt_weight={on}")
        trainer = Trainer(cfg, progress=False)
        sigmas = trainer.policy.sample(prompt_batch(1), 2, torch.Generator().manual_seed(0)).sigmas
        trainer.fit()
        losses[on] = json.loads((tmp_path / str(on) / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    dt = float(sigmas[0] - sigmas[1])  # the window sits at step 0 on the first RL step
    assert losses[True] == pytest.approx(losses[False] / dt, rel=1e-5) and losses[False] != 0
