"""The sandbox's judge: pairs of the editor's own samples ranked by the truth, judges trained on them with
`rlkit train-reward`, and each judge checked where RL needs it, on the editor's samples of held-out prompts."""

from __future__ import annotations

import shutil
from itertools import combinations
from pathlib import Path

import torch
from PIL import Image

from rlkit.sandbox.data import rationale, region_box, sample_prompts
from rlkit.sandbox.editor import SIZE
from rlkit.sandbox.seeds import stream_seed
from rlkit.sandbox.world import gt_scores, render, to_tensor, washout


@torch.no_grad()
def editor_samples(policy, prompts, samples: int, generator: torch.Generator):
    """The editor's `samples` edits of each (scene, instruction, target) prompt, 8 prompts per batch. Yields
    (index, instruction, source, target, images [samples, 3, H, W], ground-truth scores per image)."""
    from rlkit.policies.base import PromptBatch

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
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pick = torch.Generator().manual_seed(seed + 1)  # which contrast each sample gets
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


def train_judges(out: Path, cfg, pairs_train: Path, pairs_eval: Path, held: list, log) -> dict:
    """Judges trained with `rlkit train-reward` on the pairs, checked on `held` (check_samples of the editor); the
    best `judge_ensemble` of them are kept as jrm/, jrm_1/, ...

    The judge is checked where RL needs it, on the editor's own samples of held-out prompts; a judge below
    `judge_min_agreement` is retrained from another initialisation (seeded: still reproducible), up to
    `judge_tries` times, and the best one is kept. With `judge_ensemble: K` the best K are kept and the jrm
    reward averages them."""
    from rlkit.config import load_recipe
    from rlkit.rewards.jrm.config import RewardRecipe, check_reward_recipe
    from rlkit.rewards.jrm.model import JRMModel
    from rlkit.rewards.jrm.train import train_reward

    tried = []  # (agreement, folder, check)
    for attempt in range(max(cfg.judge_tries, cfg.judge_ensemble)):
        folder = out / f"jrm_try{attempt}"
        overrides = [f"output_dir={folder}", f"data.train={pairs_train}", f"data.eval={pairs_eval}",
                     f"train.epochs={cfg.jrm_epochs}", f"seed={stream_seed(cfg.seed, 'judge', attempt)}",
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
    return list(editor_samples(policy, prompts, 8, torch.Generator().manual_seed(stream_seed(cfg.seed, "judge_check"))))


def kept_judges(out: Path, cfg):
    """The kept judges as the reward RL gets (one judge, or the ensemble's mean)."""
    from rlkit.rewards.jrm.reward import JRMReward

    return JRMReward([str(out / judge_folder(i) / "final") for i in range(cfg.judge_ensemble)], device=cfg.device)


def judge_folder(i: int) -> str:
    """Where a preparation keeps judge i of its ensemble (jrm/ alone when there is one judge)."""
    return "jrm" if i == 0 else f"jrm_{i}"

