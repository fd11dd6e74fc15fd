"""rlkit: online RL fine-tuning for instruction-following image editors."""

from importlib.metadata import version as _version

__version__ = _version("rlkit")  # pyproject.toml's, the one place it is written


def __getattr__(name):  # rlkit.train / rlkit.resume without importing torch on `import rlkit`
    if name in ("train", "resume"):
        from rlkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
