"""What a sandbox editor's samples are made of: per edit kind, the ground truth of P held-out prompts x K samples.

GRPO can only re-weight what the editor already samples, so these figures bound what RL can gain: the skipped
edits it can undo, and how good the attempted edits are. `--train key=value ...` first trains another editor
with the cache's VAE and those `sandbox.*` settings (the cache is not changed; `--save DIR` keeps the editor).
The first line is the VAE's own ceiling: every target encoded and decoded, scored like an edit.

    python sandbox/experiments/sandbox_editor.py ~/.cache/rlkit/sandbox/seed_0
    python sandbox/experiments/sandbox_editor.py CACHE --checkpoint RUN/checkpoints/step_000060   # what RL made of it
    python sandbox/experiments/sandbox_editor.py CACHE --train seed=2 skip_edit=0.0        # about 6 minutes on 2 cores
    python sandbox/experiments/sandbox_editor.py CACHE --new-vae --train vae_blocks=[16,32] latent_channels=4
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from omegaconf import OmegaConf

from rlkit.sandbox.data import sample_prompts
from rlkit.sandbox.editor import SIZE, build_pipeline, pretrain_editor, train_vae
from rlkit.sandbox.judge import editor_samples
from rlkit.sandbox.schema import SandboxConfig
from rlkit.sandbox.world import gt_scores, render, to_tensor

SKIP_DRIFT = 0.04  # a sample this close to its source (mean |difference|) that follows nothing is a skipped edit
FADED = 0.2  # a sample whose best fit is its target faded by at least this much (washout) counts as faded


def fade(image: torch.Tensor, target: torch.Tensor) -> float:
    """The washout strength w that best explains `image` as its target faded: least squares of
    (1 - w) target + w / 2 against the image (0 = full contrast, 1 = flat grey)."""
    d = target - 0.5
    return float((d * (target - image)).sum() / (d * d).sum().clamp(min=1e-6))


def kind(instruction: str) -> str:
    if " and " in instruction:
        return "composed"
    if instruction.endswith(("bigger", "smaller")):
        return "resize"
    return {"make": "recolour"}.get(instruction.split()[0], instruction.split()[0])


@torch.no_grad()
def vae_ceiling(vae: AutoencoderKL, prompts) -> float:
    src = torch.stack([to_tensor(render(p[0], SIZE)) for p in prompts])
    tgt = torch.stack([to_tensor(render(p[2], SIZE)) for p in prompts])
    rec = ((vae.decode(vae.encode(tgt * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
    return sum(gt_scores(r, s, t)["overall"] for r, s, t in zip(rec, src, tgt)) / len(prompts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="a prepared sandbox (sandbox.path)")
    ap.add_argument("--train", nargs="*", metavar="KEY=VALUE", help="train an editor with these sandbox settings")
    ap.add_argument("--new-vae", action="store_true", help="--train also trains a VAE (with its vae_* settings)")
    ap.add_argument("--save", type=Path, help="where to keep the trained editor (a FluxKontextPipeline folder)")
    ap.add_argument("--checkpoint", type=Path, help="a run's checkpoint (checkpoints/step_N): its LoRA on the editor")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=777, help="prompts")
    args = ap.parse_args()
    if args.checkpoint and args.train is not None:
        ap.error("--checkpoint applies to the cache's editor, not to one trained with --train")
    cache = args.cache.expanduser()
    prompts = sample_prompts(args.prompts, args.seed)
    vae = AutoencoderKL.from_pretrained(cache / "editor", subfolder="vae").eval()
    if args.train is None:
        from rlkit.config import load_recipe
        from rlkit.policies import build_policy

        cfg = load_recipe("sandbox_edit", [f"sandbox.path={cache}"])
        policy = build_policy(cfg.policy, cfg.sampler, "cpu", 8)
        if args.checkpoint:
            from rlkit import checkpoint as ckpt

            policy.load_adapter_state_dict(ckpt.load_checkpoint(args.checkpoint)["adapter"])
    else:
        cfg = OmegaConf.merge(OmegaConf.structured(SandboxConfig), OmegaConf.from_dotlist(args.train))
        if args.new_vae:
            vae = train_vae(cfg, log=lambda _: None)
        pipe = build_pipeline(vae, cfg.seed, cfg.editor_heads)
        t0 = time.time()
        policy = pretrain_editor(pipe, cfg, log=lambda _: None)
        print(f"editor trained in {time.time() - t0:.0f} s with {' '.join(args.train)}")
        if args.save:
            pipe.save_pretrained(args.save)
    print(f"VAE ceiling (targets encoded and decoded): overall {vae_ceiling(vae, prompts):.3f}")

    rows = defaultdict(list)  # kind -> one (scores, skipped) list per prompt
    g = torch.Generator().manual_seed(0)
    fades = []
    for _, instruction, src, tgt, images, scores in editor_samples(policy, prompts, args.samples, g):
        skipped = [float((im - src).abs().mean()) < SKIP_DRIFT and s["follow"] < 0.1 for im, s in zip(images, scores)]
        fades += [(fade(im, tgt), s["overall"]) for im, s in zip(images, scores)]
        for key in (kind(instruction), "all"):
            rows[key].append(list(zip(scores, skipped)))
    print(f"{args.prompts} held-out prompts x {args.samples} samples: mean ground truth per sample, best of "
          f"{args.samples} per prompt, share of samples that skip the edit, mean overall of the others")
    print(f"{'kind':10s} {'prompts':>7s} {'overall':>8s} {'best':>6s} {'follow':>7s} {'preserve':>9s} {'skipped':>8s} "
          f"{'attempts':>9s}")
    for key, groups in sorted(rows.items(), key=lambda kv: kv[0] != "all"):
        flat = [x for grp in groups for x in grp]
        mean = {m: sum(s[m] for s, _ in flat) / len(flat) for m in ("overall", "follow", "preserve")}
        attempts = [s["overall"] for s, skipped in flat if not skipped]
        best = sum(max(s["overall"] for s, _ in grp) for grp in groups) / len(groups)
        print(f"{key:10s} {len(groups):7d} {mean['overall']:8.3f} {best:6.3f} {mean['follow']:7.3f} "
              f"{mean['preserve']:9.3f} {sum(k for _, k in flat) / len(flat):8.2f} "
              f"{sum(attempts) / max(1, len(attempts)):9.3f}")
    faded = [o for w, o in fades if w >= FADED]
    clear = [o for w, o in fades if w < FADED]
    print(f"washout fitted per sample: mean {sum(w for w, _ in fades) / len(fades):.3f}; {len(faded) / len(fades):.2f} "
          f"of samples faded by >= {FADED} (overall {sum(faded) / max(1, len(faded)):.3f}, the others "
          f"{sum(clear) / max(1, len(clear)):.3f})")


if __name__ == "__main__":
    main()
