"""Errors a user can act on. The CLI prints them as one line each and exits with their code, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (recipe, data, paths). Exit status 2. Several problems found in one pass are
    given together (one line each)."""

    exit_code = 2

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class RewardError(Exception):
    """A reward plugin raised or returned unusable scores. The step is not applied. Exit status 1."""

    exit_code = 1

    def __init__(self, reward_name: str, message: str):
        super().__init__(f"reward '{reward_name}': {message}")
        self.reward_name = reward_name


class RolloutError(Exception):
    """Sampling produced non-finite latents (e.g. an SDE noise level the model cannot take). Nothing was scored
    or applied. Exit status 1."""

    exit_code = 1


class CheckpointError(Exception):
    """A checkpoint could not be written (disk full, permissions). The previous checkpoint is intact. Exit 1."""

    exit_code = 1


class GuardStop(Exception):
    """The stability guard stopped the run (an alarm with action stop). A checkpoint was saved. Exit status 3."""

    exit_code = 3


class OutputError(Exception):
    """An output (a report, a sample grid, an export) could not be written: a full disk, permissions. Nothing
    already saved was touched. Exit status 1."""

    exit_code = 1


# how a full disk or a failed write shows through libraries that do not raise OSError
_WRITE_FAILURES = ("write failed", "No space left", "StorageFull", "IoError", "Disk quota")


def write_failure(err: BaseException) -> str | None:
    """What went wrong, when ``err`` is a failed write (OSError, or torch.save's RuntimeError and safetensors'
    error carrying one); None for any other exception."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    if any(marker in text for marker in _WRITE_FAILURES):
        return "no space left on the device" if "space" in text.lower() or "StorageFull" in text else \
            text.splitlines()[0][:200]
    return None
