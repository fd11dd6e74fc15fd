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

    path: str = setting("~/.cache/rlkit/sandbox/seed_0", pattern=r".*\S.*", hint="a folder",
                        help="where the preparation is built (once; later runs reuse it)")
    seed: int = setting(0, **SEED, help="every random stream of the preparation derives from it (sandbox/seeds.py)")
    vae_steps: int = setting(600, ge=1, help="VAE training steps")
    # 8 x 8 x 16 gives 16 tokens per image and steps 3x faster than 16 x 16 x 4 for the same reconstruction
    vae_blocks: list[int] = setting(factory=lambda: [16, 32, 64], min_len=2, each=Range(ge=4, multiple_of=4),
                                    help="VAE widths; 32 px -> (32 / 2^(len - 1))^2 latents, 2 x 2 per token")
    latent_channels: int = setting(16, ge=1, help="VAE latent channels")
    editor_heads: int = setting(4, ge=1, help="the editor transformer is editor_heads x 32 wide")
    editor_steps: int = setting(1000, ge=1, help="editor pre-training steps")
    editor_batch: int = setting(32, ge=1, help="editor pre-training batch")
    editor_lr: float = setting(1e-3, gt=0, le=1, help="editor pre-training learning rate")
    editor_prompts: int = setting(512, ge=1, help="distinct (source, instruction, target) examples the editor learns")
    washout: float = setting(0.0, ge=0, lt=1, help="targets faded towards grey by this much: a flaw RL can remove")
    # below 1 the editor learns both looks of a prompt, so a group holds both for RL to rank
    washout_share: float = setting(1.0, gt=0, le=1, help="the share of pre-training examples that are faded, drawn "
                                                         "afresh at every step")
    # off: at 0.65 the editor also half-does the edits it attempts
    skip_edit: float = setting(0.0, ge=0, lt=1, help="share of pre-training targets replaced by the unedited source")
    jrm_pairs: int = setting(256, ge=0, help="the judge's synthetic corruption pairs")
    jrm_editor_prompts: int = setting(384, ge=0, help="+ pairs among the editor's own samples (4 per prompt)")
    # the washout flaw's axis, which one prompt's samples barely span
    jrm_editor_contrast: list[float] = setting(factory=list, each=Range(gt=0, le=10),
                                               help="+ each of those samples against itself at these contrasts "
                                                    "about mid-grey (< 1 fades, > 1 undoes fading)")
    jrm_epochs: int = setting(4, ge=1, help="judge training epochs")
    jrm_patch: int = setting(4, choices=(2, 4, 8, 16), help="the judge's vision patch (x2 merge must tile 32 px): "
                                                           "4 -> 16 tokens, 8 -> only 4")
    jrm_hidden: int = setting(64, ge=32, multiple_of=32, help="the judge's width (16-wide heads)")
    jrm_layers: int = setting(2, ge=1, help="the judge's text layers")
    jrm_lr: float = setting(1e-3, gt=0, le=1, help="judge learning rate")
    train_prompts: int = setting(512, ge=1, help="RL training prompts")
    heldout_prompts: int = setting(128, ge=1, help="gt_heldout's prompts (with 32 the draw alone moved a gain 0.03)")
    editor_schedule: str = setting("cosine", choices=("constant", "cosine"),
                                   help="the editor's learning rate after warm-up")
    judge_tries: int = setting(2, ge=1, help="judges trained (other seeds) until one agrees with the truth on the "
                                            "editor's samples at least judge_min_agreement of the time")
    judge_min_agreement: float = setting(0.58, **UNIT, help="the agreement a judge needs (chance: 0.5); the best "
                                                            "is kept")
    judge_check_prompts: int = setting(48, ge=1, help="held-out prompts (x 8 samples) each judge is checked on")
    judge_ensemble: int = setting(1, ge=1, help="the best K judges are kept (jrm/, jrm_1/, ...): the jrm reward's "
                                               "paths")
    judge_refresh_steps: int = setting(0, ge=0, help="> 0: GRPO runs this many steps against the judge, whose "
                                                    "samples' pairs join the judge's, and it is trained again")
    judge_refresh_rounds: int = setting(1, ge=1, help="refresh stages, each against the previous stage's judge")
    device: str = setting("cpu", choices=("cpu", "cuda"), help="where the preparation trains (seeded either way)")
    use_shipped: bool = setting(True, help="copy the preparation shipped with rlkit when one matches these settings")
