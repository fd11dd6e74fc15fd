"""The local Hugging Face hub cache, read without downloading: rlkit never fetches weights at run time."""

from __future__ import annotations

import re
from pathlib import Path

from rlkit.core.errors import UserError


def is_hub_id(name: str | None) -> bool:
    """OWNER/NAME that is not a local path."""
    return bool(name) and name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def hub_id_of_cache_folder(path: str | Path) -> str | None:
    """The id a hub-cache folder is named after (models--OWNER--NAME/snapshots/...), else None."""
    found = re.search(r"models--([^/]+)--([^/]+)/snapshots/", str(Path(path).expanduser().resolve()))
    return f"{found.group(1)}/{found.group(2)}" if found else None


def has_local_model(name: str) -> bool:
    """A transformers checkpoint folder, or a repo id present in the local hub cache."""
    if (Path(name).expanduser() / "config.json").is_file():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id
        return False


def local_pretrained(pretrained: str) -> Path:
    """The folder of a local diffusers pipeline or its copy in the local hub cache; never downloads."""
    folder = Path(pretrained).expanduser()
    if (folder / "model_index.json").is_file():
        return folder
    if is_hub_id(pretrained):
        from huggingface_hub import snapshot_download

        try:
            cached = Path(snapshot_download(pretrained, local_files_only=True))
            if (cached / "model_index.json").is_file():
                return cached
        except Exception:  # not in the cache (LocalEntryNotFoundError), or an invalid repo id
            pass
    if not is_hub_id(pretrained):
        raise UserError(f"policy.pretrained '{pretrained}' is not a local diffusers folder (no model_index.json); "
                        f"point it at a folder saved by a diffusers pipeline's save_pretrained, or at a hub id")
    raise UserError(f"policy.pretrained '{pretrained}' is not in the local hub cache and rlkit never downloads; "
                    f"download it first (`hf download {pretrained}`) or point policy.pretrained at a local folder")
