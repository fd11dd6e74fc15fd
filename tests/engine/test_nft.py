"""DiffusionNFT on the tiny policy: the loss and its gradient against the formulas, learning in the right
direction, any sampler (the plain ODE), and the EMA old policy inside an exact resume."""

import json

import torch
from helpers import make_policy, prompt_batch, tiny_config
from safetensors.torch import load_file

from rlkit.algorithms.nft import NFT, nft_loss
from rlkit.cli import main
from rlkit.logs import read_rows
from rlkit.trainer import Trainer

NFT_RUN = ("algorithm.name=nft", "sampler.noise_level=0", "optim.lr=0.01")


def _x0_error(u, x_t, t, x0, adaptive):
    err = (x_t - t.view(-1, 1, 1) * u) - x0
    weight = err.detach().abs().mean(dim=(1, 2)).clamp(min=1e-5) if adaptive else torch.ones(len(x0))
    return (err**2).mean(dim=(1, 2)) / weight


def test_with_the_old_policy_equal_to_the_current_the_gradient_is_2r_minus_1_times_flow_matching():
    """v+ = v- = v when v_old = v: the loss is L(v) / beta and its gradient (2r - 1) dL(v)/dv: a sample above its
    group's mean pulls the prediction towards its x0, one below pushes it away, one at the mean does nothing."""
    g = torch.Generator().manual_seed(0)
    x0, x_t, v0 = (torch.randn(3, 5, 4, generator=g) for _ in range(3))
    t, r = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([1.0, 0.25, 0.5])
    for adaptive in (False, True):
        for beta in (1.0, 0.3):
            v = v0.clone().requires_grad_(True)
            losses = nft_loss(v, v0.clone(), x_t, t, x0, r, beta, adaptive)
            plain = v0.clone().requires_grad_(True)
            reference = _x0_error(plain, x_t, t, x0, adaptive)
            torch.testing.assert_close(losses, reference.detach() / beta)
            losses.sum().backward()
            reference.sum().backward()
            torch.testing.assert_close(v.grad, (2 * r - 1).view(-1, 1, 1) * plain.grad)
    assert v.grad[2].abs().max() < 1e-6 < v.grad[0].abs().max()  # r = 0.5: no push either way


def test_an_update_lowers_the_flow_matching_error_of_the_rewarded_sample():
    policy, cfg = make_policy(*NFT_RUN, "algorithm.micro_batch=2", "algorithm.inner_epochs=4")
    algo = NFT(cfg.algorithm, max_grad_norm=1.0)
    rollout = policy.sample(prompt_batch(1), 2, torch.Generator().manual_seed(0))
    x0 = rollout.latents[:, -1]
    probe = torch.Generator().manual_seed(7)
    t = torch.rand(8, generator=probe) * 0.9 + 0.05
    eps = torch.randn((8, *x0.shape[1:]), generator=probe)

    def error(i: int) -> float:  # the x0-prediction error of sample i at fixed times and noise
        with torch.no_grad():
            x_t = (1 - t.view(-1, 1, 1)) * x0[i] + t.view(-1, 1, 1) * eps
            v = policy.predict_velocity(x_t, t, rollout.cond, rollout.prompt_index[[i] * 8])
            return float(((x_t - t.view(-1, 1, 1) * v - x0[i]) ** 2).mean())

    before = (error(0), error(1))
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    stats = algo.update(policy, rollout, torch.tensor([5.0, -5.0]), opt, sched, torch.Generator().manual_seed(1))
    assert stats["nft_r_mean"] == 0.5 and algo.old.updates == 4
    assert error(0) < before[0] and error(1) > before[1]  # the rewarded sample is learnt, the other unlearnt


def test_nft_trains_from_the_plain_ode_and_exports(tmp_path):
    run = Trainer(tiny_config(tmp_path, *NFT_RUN), progress=False).fit()
    rows = read_rows(run / "metrics.jsonl")
    assert len(rows) == 2 and all(r["loss"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert 0 < rows[-1]["ema_decay"] <= 0.9
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_the_ema_makes_rollouts_and_resumes_exactly(tmp_path):
    """Rollouts sample with the old (EMA) policy, and the EMA is in the checkpoint: stopping after step 2 and
    resuming gives the straight run's weights and EMA bit for bit."""
    straight = Trainer(tiny_config(tmp_path / "a", *NFT_RUN, "train.steps=4", "train.save_every=2"),
                       progress=False).fit()
    cut = tiny_config(tmp_path / "b", *NFT_RUN, "train.steps=2", "train.save_every=2")
    Trainer(cut, progress=False).fit()
    assert main(["resume", str(cut.output_dir), "train.steps=4"]) == 0
    step4 = [root / "checkpoints" / "step_000004" for root in (straight, tmp_path / "b" / "run")]
    a, b = (load_file(s / "adapter.safetensors") for s in step4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (torch.load(s / "optimizer.pt", weights_only=True)["algorithm"] for s in step4)
    assert ema_a["ema_updates"] == ema_b["ema_updates"] > 0
    assert all(torch.equal(x, y) for x, y in zip(ema_a["ema"], ema_b["ema"]))
    assert not all(torch.equal(x, a[k]) for x, k in zip(ema_a["ema"], a))  # the old policy lags the trained one


def _sums(tensors) -> list[float]:
    """The tensors as a sorted list of sums: equal lists mean the same weights under any naming."""
    return sorted(round(float(t.detach().double().sum()), 6) for t in tensors)


def test_export_ema_hands_over_the_old_policy(tmp_path):
    """nft.export=ema: final/ holds the EMA (old policy) weights, not the trained ones, and says so; a
    checkpoint's EMA is read out the same way (what final/ gets when the best evaluation is not the last)."""
    trainer = Trainer(tiny_config(tmp_path, *NFT_RUN, "algorithm.nft.export=ema", "train.final_weights=last"),
                      progress=False)
    run = trainer.fit()
    final = load_file(run / "final" / "pytorch_lora_weights.safetensors")
    trained = _sums(trainer.policy.trainable_parameters())
    assert _sums(final.values()) == _sums(trainer.algorithm.old.weights) != trained
    info = json.loads((run / "final" / "rlkit_final.json").read_text())
    assert info["export"] == "ema" and "EMA of the trained weights" in (run / "final" / "README.md").read_text()
    step1 = torch.load(run / "checkpoints" / "step_000001" / "optimizer.pt", weights_only=True)["algorithm"]
    with trainer.algorithm.export_context(trainer.policy, step1):
        at_step1 = trainer.policy.adapter_state_dict()
    assert _sums(at_step1.values()) == _sums(step1["ema"])
    assert _sums(trainer.policy.trainable_parameters()) == trained  # the trained weights are back
