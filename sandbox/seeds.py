"""The random streams of a sandbox preparation, by name.

Every stream's seed is derived from `sandbox.seed` here and nowhere else: `stream_seed(seed, "heldout")`. The
offsets are the ones the shipped preparation (sandbox/shipped/seed_0) was made with, so that code and shipped
files stay one thing; a new stream takes an offset no other stream of its kind uses (tests/sandbox/test_sandbox.py
checks the prompt draws never collide).
"""

from __future__ import annotations

# name -> (offset, stride): stream_seed(seed, name, i) = seed + offset + stride * i (i: a refresh round or a
# judge attempt)
STREAMS = {
    "vae": (0, 0),  # the VAE's initial weights and its training images
    "editor_init": (0, 0),  # the editor's initial weights
    "editor_noise": (0, 0),  # the editor's pre-training batches, noise and timesteps
    # the editor's pre-training examples; the first `train_prompts` of them are RL's training prompts: RL
    # improves the edits the editor was taught, not unseen ones
    "prompts": (1, 0),
    "heldout": (2, 0),  # gt_heldout's prompts (never trained on)
    "synthetic_pairs": (3, 0),  # the judge's synthetic corruption pairs
    "eval_pairs": (4, 0),  # the judge's held-out pairs
    "editor_pairs": (5, 0),  # pairs among the editor's own samples (its prompts and sampling noise)
    "judge_check": (6, 0),  # held-out prompts and noise on which every judge is checked
    "refresh_run": (7, 10),  # the GRPO run of refresh round i
    "refresh_pairs": (8, 10),  # pairs among that run's samples
    "judge": (0, 1000),  # the judge's training run of attempt i
}


def stream_seed(seed: int, name: str, index: int = 0) -> int:
    offset, stride = STREAMS[name]
    return seed + offset + stride * index
