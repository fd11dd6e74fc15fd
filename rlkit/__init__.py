"""rlkit: online RL fine-tuning for instruction-following image editors."""

__version__ = "0.1.0"
