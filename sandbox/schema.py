"""The recipe's `sandbox` section: what a sandbox preparation builds (its world, editor, judge and prompts).

A recipe with `prepare: sandbox` owns this section; the engine validates it with these declarations as it does
its own keys (type, default and range beside each key). Why a value is set is in `docs/experiments.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlkit.core.schema import SEED, UNIT, Range, setting


@dataclass
class SandboxConfig:
    """Built into `path` before the run (once; later runs reuse it). Recipes refer to what is built there as
    ${sandbox.path}/editor, ${sandbox.path}/jrm/final and ${sandbox.path}/data/..."""

    path: str = setting("~/.cache/rlkit/sandbox/seed_0", pattern=r".*\S.*", hint="a folder")
    seed: int = setting(0, **SEED)  # every random stream of the preparation derives from it (sandbox/seeds.py)
    vae_steps: int = setting(600, ge=1)
    # 32 px -> (32 / 2^(len(vae_blocks) - 1))^2 latents of latent_channels, 2 x 2 of them per editor token (FLUX
    # packing). 8 x 8 x 16 gives 16 tokens per image and steps 3x faster than 16 x 16 x 4 for the same
    # reconstruction
    vae_blocks: list[int] = setting(factory=lambda: [16, 32, 64], min_len=2, each=Range(ge=4, multiple_of=4))
    latent_channels: int = setting(16, ge=1)
    editor_heads: int = setting(4, ge=1)  # the editor transformer is editor_heads x 32 wide
    editor_steps: int = setting(1000, ge=1)
    editor_batch: int = setting(32, ge=1)
    editor_lr: float = setting(1e-3, gt=0, le=1)
    editor_prompts: int = setting(512, ge=1)  # distinct (source, instruction, target) examples the editor learns
    washout: float = setting(0.0, ge=0, lt=1)  # targets faded towards grey by this much: a flaw RL can remove
    # the share of pre-training examples that are faded, drawn afresh at every step. Below 1 the editor learns both
    # looks of a prompt, so a group holds both for RL to rank
    washout_share: float = setting(1.0, gt=0, le=1)
    # share of pre-training targets replaced by the unedited source (an editor that sometimes ignores the
    # instruction); off: at 0.65 the editor also half-does the edits it attempts
    skip_edit: float = setting(0.0, ge=0, lt=1)
    jrm_pairs: int = setting(256, ge=0)  # synthetic corruption pairs
    jrm_editor_prompts: int = setting(384, ge=0)  # + pairs among the editor's own samples (4 per prompt)
    # + each of those samples against itself at one of these contrasts about mid-grey (< 1 fades, > 1 undoes
    # fading): the washout flaw's axis, which one prompt's samples barely span
    jrm_editor_contrast: list[float] = setting(factory=list, each=Range(gt=0, le=10))
    jrm_epochs: int = setting(4, ge=1)
    # the judge's vision patch (x2 merge, which must tile the 32 px world images): 4 -> 16 tokens, 8 -> only 4
    jrm_patch: int = setting(4, choices=(2, 4, 8, 16))
    jrm_hidden: int = setting(64, ge=32, multiple_of=32)  # the judge's width: 16-wide heads, half as many KV heads
    jrm_layers: int = setting(2, ge=1)
    jrm_lr: float = setting(1e-3, gt=0, le=1)
    train_prompts: int = setting(512, ge=1)
    heldout_prompts: int = setting(128, ge=1)  # gt_heldout's prompts; with 32 the draw alone moved a gain by 0.03
    editor_schedule: str = setting("cosine", choices=("constant", "cosine"))  # the editor's lr after warm-up
    # judges trained (other init seeds) until one agrees with the truth on the editor's samples at least
    # judge_min_agreement of the time (chance: 0.5); the best is kept
    judge_tries: int = setting(2, ge=1)
    judge_min_agreement: float = setting(0.58, **UNIT)
    judge_check_prompts: int = setting(48, ge=1)  # held-out prompts (x 8 samples) on which each judge is checked
    judge_ensemble: int = setting(1, ge=1)  # the best K judges are kept (jrm/, jrm_1/, ...): the jrm reward's paths
    # > 0: GRPO runs this many steps against the judge; pairs of that policy's samples join the judge's pairs and
    # the judge is trained again on all of them, so it knows where RL takes the editor
    judge_refresh_steps: int = setting(0, ge=0)
    judge_refresh_rounds: int = setting(1, ge=1)  # refresh stages, each against the previous stage's judge
    device: str = setting("cpu", choices=("cpu", "cuda"))  # where preparation trains (seeded either way)
    use_shipped: bool = True  # copy the preparation shipped in sandbox/shipped when one matches these settings
