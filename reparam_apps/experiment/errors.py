"""The errors a user sees as one line (``run_cli`` turns them into ``error: ...`` and an exit code)."""

from __future__ import annotations

__all__ = ["UserError", "CheckpointError", "DivergenceError"]


class UserError(Exception):
    """Bad input from the user: reported as one line (the problem and the fix), exit code 2."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or belongs to something else."""


class DivergenceError(RuntimeError):
    """Training produced a NaN or inf: reported as one line naming the step and likely cause, exit code 3."""
