"""CUDA checks (skipped without a GPU): bf16 transformer with fp32 step math, and a whole run on the GPU."""

import json

import pytest
import torch
from helpers import make_policy, prompt_batch, tiny_config

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def test_bf16_ratio_is_exact_when_rollout_and_training_batches_match():
    from rlkit.policies import build_policy

    _, cfg = make_policy("policy.dtype=bfloat16", "policy.device=cuda")
    policy = build_policy(cfg.policy, cfg.sampler, torch.device("cuda"), train_micro_batch=3)
    rollout = policy.sample(prompt_batch(2), 3, torch.Generator().manual_seed(0))
    assert rollout.latents.dtype == torch.float32 and rollout.log_probs.dtype == torch.float32
    with torch.no_grad():
        for step in range(rollout.num_steps):
            for start in (0, 3):
                idx = torch.arange(start, start + 3)
                lp = policy.step_logprob(rollout, idx, step).log_prob.cpu()
                assert torch.equal(lp, rollout.log_probs[idx, step])


def test_tiny_run_on_cuda(tmp_path):
    from rlkit.trainer import Trainer

    cfg = tiny_config(tmp_path, "policy.device=cuda", "policy.dtype=bfloat16", "train.steps=2")
    run = Trainer(cfg, progress=False).fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and abs(rows[0]["ratio_mean"] - 1) < 1e-6
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_full_finetuning_on_cuda_resumes_exactly(tmp_path):
    """policy.finetune=full in bf16 on the GPU (fp32 masters): first ratio 1, and a resumed run equals the
    straight one bit for bit."""
    from safetensors.torch import load_file

    from rlkit.trainer import Trainer

    args = ["policy.device=cuda", "policy.dtype=bfloat16", "policy.finetune=full", "optim.lr=1e-3"]
    straight = Trainer(tiny_config(tmp_path / "a", "train.steps=2", *args), progress=False).fit()
    Trainer(tiny_config(tmp_path / "b", "train.steps=1", *args), progress=False).fit()
    resumed = Trainer(tiny_config(tmp_path / "b", "train.steps=2", *args), progress=False).fit()
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["ratio_mean"] - 1) < 1e-6 and rows[1]["kl_ref"] > 0
    a = load_file(straight / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 for v in a.values())  # fp32 master weights, bf16 compute
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst == 0.0, f"resumed weights differ from the straight run by up to {worst}"


@pytest.mark.parametrize("name", ["flux_kontext_tiny", "qwen_image_edit_plus_tiny"])
def test_offload_moves_the_encoders_only_while_they_work(name):
    """policy.offload on a GPU: after a rollout the text encoders and the VAE are back on the CPU, the
    transformer stays on the GPU, and the samples equal those without offload."""
    from rlkit.policies import build_policy

    _, cfg = make_policy(f"policy.name={name}", "policy.device=cuda")
    plain = build_policy(cfg.policy, cfg.sampler, torch.device("cuda"))
    cfg.policy.offload = True
    offloaded = build_policy(cfg.policy, cfg.sampler, torch.device("cuda"))
    a = plain.sample(prompt_batch(2), 2, torch.Generator().manual_seed(0))
    b = offloaded.sample(prompt_batch(2), 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-5)
    for n in offloaded.offloaded:
        assert next(getattr(offloaded.pipe, n).parameters()).device.type == "cpu"
    assert next(offloaded.transformer.parameters()).device.type == "cuda"
