"""Policy-update algorithms, selected by `algorithm.name`. Each declares its own recipe section
(`algorithm.<name>`, its class's `settings`); a new objective is one file and one entry in ALGORITHMS."""

from rlkit.algorithms.advantages import group_advantages
from rlkit.algorithms.awm import AWM
from rlkit.algorithms.dgpo import DGPO
from rlkit.algorithms.dpo import OnlineDPO, best_worst_pairs
from rlkit.algorithms.grpo import GRPO
from rlkit.algorithms.nft import NFT

ALGORITHMS = {"grpo": GRPO, "dpo": OnlineDPO, "nft": NFT, "awm": AWM, "dgpo": DGPO}


def build_algorithm(cfg, max_grad_norm: float):
    return ALGORITHMS[cfg.name](cfg, max_grad_norm)


__all__ = ["ALGORITHMS", "AWM", "DGPO", "GRPO", "NFT", "OnlineDPO", "best_worst_pairs", "build_algorithm",
           "group_advantages"]
