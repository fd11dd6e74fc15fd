"""rlkit: online RL fine-tuning for instruction-following image editors."""

__version__ = "0.1.0"


def __getattr__(name):  # rlkit.train / rlkit.resume without importing torch on `import rlkit`
    if name in ("train", "resume"):
        from rlkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
