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
