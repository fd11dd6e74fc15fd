"""`rlkit sandbox prepare`: the sandbox's small editor and its in-world JRM, seeded and reproducible.

1. a small AutoencoderKL trained to reconstruct world images (32 px -> 8 x 8 x 16 latents by default);
2. a small FLUX.1 Kontext transformer pre-trained by flow matching on (source, instruction) -> target, stopped
   early, with a flaw RL can remove: `washout` fades the targets towards grey (the recipe's 0.4: a global,
   faded look the truth penalises everywhere), `skip_edit` replaces that share of the targets by the source
   (an editor that often ignores the instruction; it also spoils the edits it attempts, BENCHMARKS.md,
   session 11);
3. a tiny JRM trained with `rlkit train-reward` on in-world preference pairs with rationales.
A preparation whose editor settings match an existing editor (shipped, or the cache it replaces) reuses it and
trains only the judge.
The editor is saved as a diffusers FluxKontextPipeline folder, so the sandbox recipe loads it like a real model
(`policy.name: flux_kontext`, `policy.pretrained: <cache>/editor`). rlkit ships what this made for the
sandbox_edit recipe (`shipped/seed_0`); `prepare` copies it instead when the settings match exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from policies.tiny import tiny_clip_tokenizer
from rlkit.config import SandboxConfig as PrepareConfig  # the recipe's `sandbox` section
from rlkit.errors import UserError
from rlkit.sandbox.data import sample_prompts, write_preference_pairs, write_prompts
from rlkit.sandbox.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    PLACES,
    SHAPES,
    TRUTH_VERSION,
    WORLD_VERSION,
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


def train_vae(cfg: PrepareConfig, log=print) -> AutoencoderKL:
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    blocks = tuple(cfg.vae_blocks)  # n blocks downsample 2^(n-1) times
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                        block_out_channels=blocks, down_block_types=["DownEncoderBlock2D"] * len(blocks),
                        up_block_types=["UpDecoderBlock2D"] * len(blocks), layers_per_block=1, norm_num_groups=8,
                        sample_size=SIZE, mid_block_add_attention=False).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=cfg.vae_steps, pct_start=0.1)
    rng = random.Random(cfg.seed)
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
    torch.manual_seed(seed)
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

    from policies.flux_kontext import FluxKontextPolicy
    from rlkit.config import PolicyConfig, SamplerConfig

    pcfg = OmegaConf.structured(PolicyConfig(name="flux_kontext", dtype="float32", device=device,
                                             resolution=SIZE, max_sequence_length=24))
    return FluxKontextPolicy(pipe, pcfg, OmegaConf.structured(SamplerConfig(num_steps=8)), device,
                             with_adapter=False)


def pretrain_editor(pipe: FluxKontextPipeline, cfg: PrepareConfig, log=print):
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
    prompts = sample_prompts(cfg.editor_prompts, cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed)
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
        conds.append(policy.encode(src, [p[1] for p in part]))
        for fade, out in zip(fades, targets):
            lat = pipe._encode_vae_image((washout(tgt, fade) if fade else tgt).to(pipe.vae.device) * 2 - 1,
                                         generator=None)
            out.append(pipe._pack_latents(lat, *lat.shape))
    cond = dataclasses.replace(conds[0], **{k: torch.cat([getattr(c, k) for c in conds])
                                            for k in ("prompt_embeds", "pooled", "image_latents")})
    return cond, [torch.cat(t) for t in targets]


@torch.no_grad()
def editor_samples(policy, prompts, samples: int, generator: torch.Generator):
    """The editor's `samples` edits of each (scene, instruction, target) prompt, 8 prompts per batch. Yields
    (index, instruction, source, target, images [samples, 3, H, W], ground-truth scores per image)."""
    from policies.base import PromptBatch
    from rlkit.sandbox.world import gt_scores

    for start in range(0, len(prompts), 8):
        chunk = prompts[start : start + 8]
        src = torch.stack([to_tensor(render(p[0], SIZE)) for p in chunk])
        tgt = torch.stack([to_tensor(render(p[2], SIZE)) for p in chunk])
        batch = PromptBatch(src, [p[1] for p in chunk], [str(start + i) for i in range(len(chunk))])
        images = policy.sample(batch, samples, generator).images.view(len(chunk), samples, 3, SIZE, SIZE)
        for i, (_, instruction, _) in enumerate(chunk):
            scores = [gt_scores(images[i, k], src[i], tgt[i]) for k in range(samples)]
            yield start + i, instruction, src[i], tgt[i], images[i], scores


@torch.no_grad()
def judge_agreement(policy, judge, prompts, samples: int, generator: torch.Generator,
                    gaps: tuple[float, ...] = (0.1, 0.2, 0.3)) -> dict:
    """How often the judge orders two of the editor's samples of one prompt as the truth does: the only ranking
    GRPO uses (a judge's accuracy on synthetic pairs predicts a run's success only loosely). Pairs are split by
    how far apart the truth puts them."""
    return agreement_on(editor_samples(policy, prompts, samples, generator), judge, gaps)


def agreement_on(samples, judge, gaps: tuple[float, ...] = (0.1, 0.2, 0.3)) -> dict:
    """judge_agreement on editor_samples already drawn (prepare checks several judges on the same samples)."""
    from itertools import combinations

    pairs, truth = [], []  # (truth gap, judge agrees)
    for _, instruction, src, _, images, scores in samples:
        k = len(images)
        gt = [x["overall"] for x in scores]
        mu, _ = judge.score([src] * k, list(images), [instruction] * k, k)
        truth += gt
        for a, b in combinations(range(k), 2):
            pairs.append((abs(gt[a] - gt[b]), bool((mu[a] - mu[b]) * (gt[a] - gt[b]) > 0)))
    out = {"mean_truth": sum(truth) / len(truth), "pairs": len(pairs)}
    for gap in gaps:
        kept = [agree for d, agree in pairs if d >= gap]
        out[f"gap>={gap}"] = {"pairs": len(kept), "agreement": sum(kept) / len(kept) if kept else float("nan")}
    return out


def write_editor_pairs(policy, out_dir: Path, n_prompts: int, seed: int, samples: int = 4,
                       min_gap: float = 0.1, prefix: str = "ed", contrast: tuple[float, ...] = ()) -> list[dict]:
    """Preference pairs between the pre-trained editor's own samples, ranked by the ground truth: the
    reward model then learns on the kind of images RL will show it, not only on synthetic corruptions.
    Every pair of a prompt's samples whose truth differs by at least `min_gap` is kept (up to 6 from 4).

    `contrast` (factors about mid-grey, e.g. 0.7, 1.4): each sample is also paired with itself at one of them,
    drawn at random. A faded editor's samples of one prompt are about equally faded, so their pairs never show
    the judge the one direction RL has to find; these pairs do (kept, too, only when the truth separates them)."""
    from itertools import combinations

    from rlkit.sandbox.data import rationale, region_box
    from rlkit.sandbox.world import gt_scores, washout

    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pick = torch.Generator().manual_seed(seed + 1)
    rows = []

    def save(img, name):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(out_dir / name)

    def pair(instruction, src_name, box, a, b):  # a, b: (file name, scores)
        if a[1]["overall"] < b[1]["overall"]:
            a, b = b, a
        if a[1]["overall"] - b[1]["overall"] < min_gap:
            return
        rows.append({"prompt": instruction, "path_src": src_name, "path1": a[0], "path2": b[0],
                     "rationale1": rationale(instruction, box, a[1]), "rationale2": rationale(instruction, box, b[1]),
                     "gt1": a[1]["overall"], "gt2": b[1]["overall"], "kinds": ["editor"] * 2,
                     "score1": 1 + 4 * a[1]["overall"], "score2": 1 + 4 * b[1]["overall"]})

    for j, instruction, src, tgt, images, scores in editor_samples(policy, sample_prompts(n_prompts, seed),
                                                                   samples, g):
        names = [f"{prefix}{j:05d}_src.png"] + [f"{prefix}{j:05d}_{k}.png" for k in range(samples)]
        for img, name in zip((src, *images), names):
            save(img, name)
        box = region_box(src, tgt)
        for a, b in combinations(range(samples), 2):
            pair(instruction, names[0], box, (names[1 + a], scores[a]), (names[1 + b], scores[b]))
        for k in range(samples if contrast else 0):
            c = contrast[int(torch.randint(len(contrast), (1,), generator=pick))]
            moved, name = washout(images[k], 1 - c).clamp(0, 1), f"{prefix}{j:05d}_{k}_c{c:g}.png"
            save(moved, name)
            pair(instruction, names[0], box, (names[1 + k], scores[k]), (name, gt_scores(moved, src, tgt)))
    return rows


SHIPPED = Path(__file__).parent / "shipped"  # preparations rlkit ships: seed_<N>/{editor, jrm, prepared.json}


def _settings(cfg) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.create(cfg))  # the recipe section or a SandboxConfig alike
    # the truth ranks the judge's pairs (and checks the judge), so a judge made under another one is rebuilt;
    # the editor never sees the truth, so "truth" is not one of EDITOR_SETTINGS
    return {"world": WORLD_VERSION, "truth": TRUTH_VERSION} | {k: v for k, v in d.items() if k not in WHERE}


WHERE = ("enabled", "path", "device", "use_shipped")  # how and where a preparation is made, not what


# The settings that make the editor (with its VAE): a preparation that changes only the others (the judge's,
# the prompt counts) reuses an editor made with these, shipped or in the cache it replaces.
EDITOR_SETTINGS = ("world", "seed", "vae_steps", "vae_blocks", "latent_channels", "editor_heads", "editor_steps",
                   "editor_batch", "editor_lr", "editor_prompts", "washout", "washout_share", "skip_edit",
                   "editor_schedule")


def _recorded(folder: Path) -> dict | None:
    """The settings a preparation in `folder` was made with. A setting added to SandboxConfig after it was made
    takes its default, which is how rlkit behaved before the setting existed, so caches stay valid."""
    from rlkit.config import SandboxConfig

    done = folder / "prepared.json"
    made = json.loads(done.read_text()).get("config") if done.is_file() else None
    if made is None:
        return None
    # world and truth versions are not settings: a cache without them predates them and is not the current one
    defaults = {k: v for k, v in dataclasses.asdict(SandboxConfig()).items() if k not in WHERE}
    return defaults | made


def reusable_editor(out: Path, cfg) -> Path | None:
    """An editor folder made with exactly these editor settings: the shipped one (unless use_shipped is off) or
    the one in the cache at `out`."""
    settings = _settings(cfg)
    want = {k: settings.get(k) for k in EDITOR_SETTINGS}
    places = ([SHIPPED / f"seed_{cfg.seed}"] if cfg.use_shipped else []) + [out]
    for folder in places:
        made = _recorded(folder)
        if made is not None and (folder / "editor" / "model_index.json").is_file():
            if {k: made.get(k) for k in EDITOR_SETTINGS} == want:
                return folder / "editor"
    return None


def shipped_preparation(cfg) -> Path | None:
    """The preparation rlkit ships for these exact settings (made by `rlkit sandbox prepare` with them), if any."""
    folder = SHIPPED / f"seed_{cfg.seed}"
    return folder if cfg.use_shipped and _recorded(folder) == _settings(cfg) else None


def is_prepared(out: Path, cfg) -> bool:
    return _recorded(out) == _settings(cfg)


def check_replaceable(out: Path, cfg) -> None:
    """A run may replace a cache only when nothing is lost: one copied from a shipped preparation (copied again
    in seconds; also one an older rlkit shipped, marked `shipped_copy`) or one of an older world or truth (no
    recipe can use it). A preparation made here with other
    settings took minutes to tens of minutes; a run that forgot the overrides it was made with must not delete it."""
    made = _recorded(out)
    if made is None or made == _settings(cfg):
        return
    current = {"world": WORLD_VERSION, "truth": TRUTH_VERSION}
    if {k: made.get(k) for k in current} != current:
        return
    if any(_recorded(folder) == made for folder in SHIPPED.glob("seed_*")):
        return
    if json.loads((out / "prepared.json").read_text()).get("shipped_copy"):  # of an older rlkit's shipped one
        return
    want = _settings(cfg)
    diffs = ", ".join(f"{k}: {made.get(k)!r} there, {want.get(k)!r} here" for k in sorted(want | made)
                      if made.get(k) != want.get(k))
    raise UserError(f"sandbox.path {out} holds a preparation made with other settings ({diffs}); a run does not "
                    f"replace it. Pass the same sandbox.* overrides it was made with, choose another sandbox.path, "
                    f"or replace it on purpose with `rlkit sandbox prepare RECIPE sandbox.path={out} ...`")


def prepare(out: Path, cfg, log=print, replace: bool = True) -> Path:
    """Build everything into `out` (data/, editor/, jrm/final); returns `out`. Skips it when already done with
    the same settings. `cfg` is the recipe's `sandbox` section (rlkit.config.SandboxConfig). `replace=False`
    (a run, a benchmark) refuses to replace a preparation made here with other settings (check_replaceable);
    `rlkit sandbox prepare` replaces it, which is what that command is asked to do.

    Built in a sibling folder and swapped in only when complete: an interrupted preparation (Ctrl-C, a crash)
    leaves the previous cache as it was. A folder that is neither empty nor a sandbox cache is never touched."""
    out = out.expanduser()
    done = out / "prepared.json"
    if is_prepared(out, cfg):
        log(f"sandbox already prepared in {out}")
        return out
    if not replace:
        check_replaceable(out, cfg)
    if out.exists() and any(out.iterdir()) and not done.exists():
        raise UserError(f"sandbox.path {out} exists and is not a sandbox cache (no prepared.json); "
                        f"choose an empty or new folder")
    work = out.parent / f".{out.name}.preparing"
    shutil.rmtree(work, ignore_errors=True)  # a previous interrupted attempt
    t0 = time.time()
    shipped = shipped_preparation(cfg)
    if shipped is not None:  # the editor and judge as `rlkit sandbox prepare` made them; the prompts are cheap
        shutil.copytree(shipped, work)
        record = json.loads((work / "prepared.json").read_text())  # marked: after an upgrade that re-ships it,
        (work / "prepared.json").write_text(json.dumps(record | {"shipped_copy": True}, indent=1))  # still a copy
        _write_data(work, cfg)
        log(f"using the sandbox preparation shipped with rlkit ({shipped}); sandbox.use_shipped=false "
            f"prepares it here instead")
    else:
        report = _build(work, cfg, log, reusable_editor(out, cfg))
        (work / "prepared.json").write_text(json.dumps({"config": _settings(cfg), "seconds": time.time() - t0,
                                                        **report}, indent=1))
    if out.exists():  # an older preparation with other settings
        shutil.rmtree(out)
    work.rename(out)
    log(f"sandbox prepared in {out} ({time.time() - t0:.0f} s)")
    return out


def _write_data(out: Path, cfg) -> None:
    """RL's training prompts and the held-out prompts of gt_heldout (seeded: the same on every machine)."""
    write_prompts(out / "data" / "train", cfg.train_prompts, cfg.seed + 1)
    write_prompts(out / "data" / "heldout", cfg.heldout_prompts, cfg.seed + 2)


def _build(out: Path, cfg, log, editor: Path | None = None) -> dict:
    out.mkdir(parents=True)
    _write_data(out, cfg)
    if editor is not None:  # made with these very editor settings: only the judge changes
        shutil.copytree(editor, out / "editor")
        policy = editor_policy(FluxKontextPipeline.from_pretrained(out / "editor"), cfg.device)
        log(f"reusing the editor of {editor.parent} (same editor settings); training the judge")
    else:
        vae = train_vae(cfg, log)
        pipe = build_pipeline(vae, cfg.seed, cfg.editor_heads)
        policy = pretrain_editor(pipe, cfg, log)
        pipe.save_pretrained(out / "editor")
    pairs_train = write_preference_pairs(out / "data" / "pairs_train", cfg.jrm_pairs, cfg.seed + 3, SIZE)
    editor_rows = write_editor_pairs(policy, out / "data" / "pairs_train", cfg.jrm_editor_prompts, cfg.seed + 5,
                                     contrast=tuple(cfg.jrm_editor_contrast))
    with open(pairs_train, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in editor_rows)
    log(f"reward pairs: {cfg.jrm_pairs} synthetic + {len(editor_rows)} from the editor's own samples")
    pairs_eval = write_preference_pairs(out / "data" / "pairs_eval", 128, cfg.seed + 4, SIZE)
    prompts = sample_prompts(cfg.judge_check_prompts, cfg.seed + 6)  # held-out: where the judges are checked
    held = check_samples(policy, prompts, cfg)
    report = train_judges(out, cfg, pairs_train, pairs_eval, held, log)
    for round_ in range(cfg.judge_refresh_rounds if cfg.judge_refresh_steps else 0):
        report = refresh_judges(out, cfg, pairs_train, pairs_eval, held, prompts, report, log, round_)
    return report | {"editor_reused": editor is not None}


def train_judges(out: Path, cfg, pairs_train: Path, pairs_eval: Path, held: list, log) -> dict:
    """Judges trained with `rlkit train-reward` on the pairs, checked on `held` (check_samples of the editor); the
    best `judge_ensemble` of them are kept as jrm/, jrm_1/, ...

    The judge is checked where RL needs it, on the editor's own samples of held-out prompts; a judge below
    `judge_min_agreement` is retrained from another initialisation (seeded: still reproducible), up to
    `judge_tries` times, and the best one is kept. With `judge_ensemble: K` the best K are kept and the jrm
    reward averages them."""
    from rewards.jrm.config import RewardRecipe, check_reward_recipe
    from rewards.jrm.model import JRMModel
    from rewards.jrm.train import train_reward
    from rlkit.config import load_recipe

    tried = []  # (agreement, folder, check)
    for attempt in range(max(cfg.judge_tries, cfg.judge_ensemble)):
        folder = out / f"jrm_try{attempt}"
        overrides = [f"output_dir={folder}", f"data.train={pairs_train}", f"data.eval={pairs_eval}",
                     f"train.epochs={cfg.jrm_epochs}", f"seed={cfg.seed + 1000 * attempt}",
                     f"backbone.tiny_patch={cfg.jrm_patch}", f"backbone.tiny_hidden={cfg.jrm_hidden}",
                     f"backbone.tiny_layers={cfg.jrm_layers}", f"train.lr={cfg.jrm_lr}", f"train.device={cfg.device}"]
        train_reward(load_recipe("jrm_tiny", overrides, schema_cls=RewardRecipe, check=check_reward_recipe))
        judge = JRMModel.load(str(folder / "final"), dtype=torch.float32, device=cfg.device)
        check = agreement_on(held, judge)
        agreement = check["gap>=0.1"]["agreement"]
        log(f"judge {attempt}: agrees with the truth on {agreement:.3f} of {check['gap>=0.1']['pairs']} pairs of "
            f"the editor's samples (held-out prompts, >= 0.1 apart)")
        tried.append((agreement, folder, check))
        if len(tried) >= cfg.judge_ensemble and max(t[0] for t in tried) >= cfg.judge_min_agreement:
            break
    kept = sorted(tried, key=lambda t: -t[0])[: cfg.judge_ensemble]
    for i, (_, folder, _) in enumerate(kept):
        folder.rename(out / judge_folder(i))
    for other in out.glob("jrm_try*"):
        shutil.rmtree(other)
    check = kept[0][2]
    if len(kept) > 1:
        check = agreement_on(held, kept_judges(out, cfg))
        log(f"the {len(kept)} judges together agree with the truth on {check['gap>=0.1']['agreement']:.3f}")
    return {"editor_mean_truth": check["mean_truth"], "judge_agreement": check,
            "judge_kept": [int(f.name.removeprefix("jrm_try")) for _, f, _ in kept],
            "member_agreement": [a for a, _, _ in kept]}


def check_samples(policy, prompts, cfg) -> list:
    """What prepare checks judges on: 8 samples of each held-out prompt, the same noise every time. Drawn once
    per policy and kept: every judge tried is scored on the same samples, as drawing them again would give."""
    return list(editor_samples(policy, prompts, 8, torch.Generator().manual_seed(cfg.seed + 6)))


def kept_judges(out: Path, cfg):
    """The kept judges as the reward RL gets (one judge, or the ensemble's mean)."""
    from rewards.jrm.reward import JRMReward

    return JRMReward([str(out / judge_folder(i) / "final") for i in range(cfg.judge_ensemble)], device=cfg.device)


def refresh_judges(out: Path, cfg, pairs_train: Path, pairs_eval: Path, held: list, prompts, first: dict,
                   log, round_: int = 0) -> dict:
    """The second stage (`judge_refresh_steps`). RL against the first judge moves the editor to samples it never
    saw, where it ranks at chance within about 30 steps (BENCHMARKS.md, session 7). A short GRPO run of the
    sandbox_edit recipe against it makes such a policy; every pair of that policy's samples the truth separates
    joins the training pairs, and the judge is trained again, from scratch, on all of them: iterated reward
    modelling in miniature. It changes what the judge knows, which more copies of it did not (session 8).
    Returns train_judges' report for the new judge, with the previous stage's under `judge_refresh`
    ("first_judge"). With `judge_refresh_rounds` > 1 it runs again against the judge it made (`round_` 1, 2, ...:
    its own seeds and image names; the pairs of every round are kept)."""
    from rlkit.config import load_recipe
    from rlkit.trainer import Trainer

    t0 = time.time()
    run = out / "refresh_run"
    rcfg = load_recipe("sandbox_edit", [
        f"sandbox.path={out}", "sandbox.enabled=false", f"output_dir={run}", f"seed={cfg.seed + 7 + 10 * round_}",
        f"train.steps={cfg.judge_refresh_steps}", "train.save_every=0", "train.grid_every=0", "train.report=false",
        "eval.every=0", f"policy.device={cfg.device}"])
    # the recipe's one reward is the jrm judge: all of the kept judges
    rcfg.rewards[0].kwargs.path = [str(out / judge_folder(i) / "final") for i in range(cfg.judge_ensemble)]
    prev = "first judge" if round_ == 0 else f"judge of refresh round {round_}"
    log(f"judge refresh: {cfg.judge_refresh_steps} GRPO steps against the {prev}")
    trainer = Trainer(rcfg, progress=False)
    trainer.fit()
    refreshed = trainer.policy  # the editor with the refresh run's LoRA
    held_refreshed = check_samples(refreshed, prompts, cfg)
    before = agreement_on(held_refreshed, kept_judges(out, cfg))
    rows = write_editor_pairs(refreshed, out / "data" / "pairs_train", cfg.jrm_editor_prompts,
                              cfg.seed + 8 + 10 * round_, prefix="rl" if round_ == 0 else f"rl{round_ + 1}_",
                              contrast=tuple(cfg.jrm_editor_contrast))
    with open(pairs_train, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    log(f"judge refresh: {len(rows)} pairs of the refreshed policy's samples added; on that policy's held-out "
        f"samples the {prev} agrees with the truth on {before['gap>=0.1']['agreement']:.3f}")
    for i in range(cfg.judge_ensemble):
        shutil.rmtree(out / judge_folder(i))
    shutil.rmtree(run)
    report = train_judges(out, cfg, pairs_train, pairs_eval, held, log)
    after = agreement_on(held_refreshed, kept_judges(out, cfg))
    log(f"judge refresh: the new judge agrees on {after['gap>=0.1']['agreement']:.3f} of the refreshed policy's "
        f"pairs ({prev} {before['gap>=0.1']['agreement']:.3f}) and on "
        f"{report['judge_agreement']['gap>=0.1']['agreement']:.3f} of the starting editor's "
        f"({prev} {first['judge_agreement']['gap>=0.1']['agreement']:.3f})")
    return report | {"judge_refresh": {"round": round_ + 1, "steps": cfg.judge_refresh_steps, "pairs": len(rows),
                                       "seconds": time.time() - t0, "first_judge": first,
                                       "first_judge_on_refreshed_policy": before,
                                       "judge_on_refreshed_policy": after}}


def judge_folder(i: int) -> str:
    """Where a preparation keeps judge i of its ensemble (jrm/ alone when there is one judge)."""
    return "jrm" if i == 0 else f"jrm_{i}"

