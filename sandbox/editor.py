"""The sandbox's editor: a small VAE and a small FLUX.1 Kontext transformer, pre-trained on the world's edits.

1. an AutoencoderKL trained to reconstruct world images (32 px -> 8 x 8 x 16 latents by default);
2. a FLUX.1 Kontext transformer pre-trained by flow matching on (source, instruction) -> target, with a flaw RL
   can remove: `washout` fades the targets towards grey (on `washout_share` of the examples), `skip_edit`
   replaces that share of the targets by the source.
It is saved as a diffusers FluxKontextPipeline folder, so a recipe loads it like a real model
(`policy.name: flux_kontext`, `policy.pretrained: ${sandbox.path}/editor`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from rlkit.core.tiny_tokenizers import tiny_clip_tokenizer
from rlkit.core.types import PromptBatch
from rlkit.sandbox.data import sample_prompts
from rlkit.sandbox.schema import SandboxConfig
from rlkit.sandbox.seeds import stream_seed
from rlkit.sandbox.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    PLACES,
    SHAPES,
    random_scene,
    render,
    to_tensor,
    washout,
)

SIZE = 32

def world_t5_tokenizer() -> T5TokenizerFast:
    """Word-level unigram vocabulary of the world's instructions (plus characters as a fallback)."""
    words = {"make", "the", "remove", "move", "add", "a", "at", "bigger", "smaller", "and", "to"}
    words |= set(COLOURS) | set(SHAPES) | set(DIRECTIONS) | set(BACKGROUNDS)
    words |= {w for place in PLACES.values() for w in place.split()}
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -5.0)]
    pieces += [("\u2581" + w, -1.0) for w in sorted(words)] + [(c, -6.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=64)


def _images(n: int, rng: random.Random) -> torch.Tensor:
    return torch.stack([to_tensor(render(random_scene(rng), SIZE)) for _ in range(n)])


def train_vae(cfg: SandboxConfig, log=print) -> AutoencoderKL:
    torch.manual_seed(stream_seed(cfg.seed, "vae"))
    device = torch.device(cfg.device)
    blocks = tuple(cfg.vae_blocks)  # n blocks downsample 2^(n-1) times
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                        block_out_channels=blocks, down_block_types=["DownEncoderBlock2D"] * len(blocks),
                        up_block_types=["UpDecoderBlock2D"] * len(blocks), layers_per_block=1, norm_num_groups=8,
                        sample_size=SIZE, mid_block_add_attention=False).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=cfg.vae_steps, pct_start=0.1)
    rng = random.Random(stream_seed(cfg.seed, "vae"))
    for step in range(cfg.vae_steps):
        x = _images(16, rng).to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: mse {F.mse_loss(rec, x).item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # latent normalisation, as the real VAE's shift_factor / scaling_factor
        lat = vae.encode(_images(128, rng).to(device) * 2 - 1).latent_dist.mode()
    vae.register_to_config(shift_factor=float(lat.mean()), scaling_factor=float(1 / lat.std()))
    return vae.cpu()


def build_pipeline(vae: AutoencoderKL, seed: int, heads: int = 4) -> FluxKontextPipeline:
    """The sandbox editor: FLUX.1 Kontext's architecture, 2 double + 2 single blocks, `heads` x 32 wide."""
    torch.manual_seed(stream_seed(seed, "editor_init"))
    clip_tok, t5_tok = tiny_clip_tokenizer(), world_t5_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1,
        projection_dim=32, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(  # a token packs 2 x 2 latents, as in FLUX
        patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=2, num_single_layers=2,
        attention_head_dim=32, num_attention_heads=heads,
        joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[8, 12, 12])
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxKontextPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
                               text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)


def editor_policy(pipe: FluxKontextPipeline, device: str):
    """The editor as rlkit's Kontext policy without an adapter: what pre-training trains and the judge checks."""
    from omegaconf import OmegaConf

    from rlkit.policies.flux_kontext import FluxKontextPolicy
    from rlkit.recipe import PolicyConfig, SamplerConfig

    pcfg = OmegaConf.structured(PolicyConfig(name="flux_kontext", dtype="float32", device=device,
                                             resolution=SIZE, max_sequence_length=24))
    return FluxKontextPolicy(pipe, pcfg, OmegaConf.structured(SamplerConfig(num_steps=8)), device,
                             with_adapter=False)


def pretrain_editor(pipe: FluxKontextPipeline, cfg: SandboxConfig, log=print):
    """Flow matching on exact (source, instruction) -> target pairs, with the Kontext conditioning."""
    policy = editor_policy(pipe, cfg.device)
    tr = pipe.transformer
    base = list(tr.parameters())
    for p in base:
        p.requires_grad_(True)
    tr.train()
    opt = torch.optim.AdamW(base, lr=cfg.editor_lr, weight_decay=0.0)
    warm = 100

    def lr_factor(i: int) -> float:
        if cfg.editor_schedule == "cosine" and i >= warm:
            return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, cfg.editor_steps - warm)))
        return min(1.0, (i + 1) / warm)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    # The world is procedural, so the editor can have its own pool of examples (the first `train_prompts` of it
    # are RL's training prompts). At 1000 steps 512 and 8192 examples make equal editors; the shipped 9000-step
    # editor uses 8192, so that it does not see each example 560 times.
    prompts = sample_prompts(cfg.editor_prompts, stream_seed(cfg.seed, "prompts"))
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "editor_noise"))
    mixed = cfg.washout and cfg.washout_share < 1  # both looks of every example; each draw picks one
    cond, looks = _encode_examples(policy, prompts, (cfg.washout, 0.0) if mixed else (cfg.washout,))
    targets, clean = looks[0], (looks[1] if mixed else None)
    sources = cond.image_latents  # the packed source latents (Kontext's extra tokens): what a skipped edit returns
    n = len(prompts)
    t0 = time.time()
    for step in range(cfg.editor_steps):
        idx = torch.randint(n, (cfg.editor_batch,), generator=g)
        x0 = mixed_targets(targets, clean, idx, cfg.washout_share, g) if mixed else targets[idx]
        b = len(idx)
        if cfg.skip_edit:  # some examples teach "return the source": the editor learns to sometimes ignore the
            # instruction, the commonest failure of real editors trained on noisy edit data; RL removes it
            skip = torch.rand(b, generator=g) < cfg.skip_edit
            x0 = torch.where(skip.view(-1, 1, 1).to(x0.device), sources[idx], x0)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)  # drawn on the CPU: same noise on any device
        s = torch.sigmoid(torch.randn(b, generator=g)).view(-1, 1, 1).to(x0.device)  # logit-normal timesteps
        x_s = (1 - s) * x0 + s * noise
        v = policy.predict_velocity(x_s, s.flatten(), cond, idx)
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(base, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.editor_steps - 1:
            log(f"editor step {step}: flow-matching loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    tr.eval()
    for p in tr.parameters():
        p.requires_grad_(False)
    return policy


def mixed_targets(faded: torch.Tensor, clean: torch.Tensor, idx: torch.Tensor, share: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Each example's faded target with probability `share`, else its clean one, drawn afresh at every step: the
    editor sees both looks of every example, so it learns both, and which one a sample gets is left to the noise."""
    pick = torch.rand(len(idx), generator=generator) < share
    return torch.where(pick.view(-1, 1, 1).to(faded.device), faded[idx], clean[idx])


@torch.no_grad()
def _encode_examples(policy, prompts, fades: tuple[float, ...], chunk: int = 512):
    """Conditioning and packed target latents of every example, once (in chunks: bounded memory); each training
    step then only indexes them. One target tensor per entry of `fades` (the targets faded by that much: the editor
    learns a global flaw that RL can remove), all sharing one encoding of the conditioning. Targets are encoded as
    the pipeline encodes sources (posterior mode, shifted and scaled)."""
    pipe = policy.pipe
    conds, targets = [], [[] for _ in fades]
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        src = torch.stack([to_tensor(render(p[0], SIZE)) for p in part])
        tgt = torch.stack([to_tensor(render(p[2], SIZE)) for p in part])
        conds.append(policy.encode(PromptBatch(src, [p[1] for p in part], [str(i) for i in range(len(part))])))
        for fade, out in zip(fades, targets):
            lat = pipe._encode_vae_image((washout(tgt, fade) if fade else tgt).to(pipe.vae.device) * 2 - 1,
                                         generator=None)
            out.append(pipe._pack_latents(lat, *lat.shape))
    cond = dataclasses.replace(conds[0], **{k: torch.cat([getattr(c, k) for c in conds])
                                            for k in ("prompt_embeds", "pooled", "image_latents")})
    return cond, [torch.cat(t) for t in targets]

