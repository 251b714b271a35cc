"""Command-line plumbing shared by the scripts: one-line errors with exit code 2, progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from tqdm.auto import tqdm

from .runs import CheckpointError

__all__ = ["UserError", "run_cli", "progress"]


class UserError(Exception):
    """Bad input from the user: reported as one line (problem and fix), exit code 2."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; turn user-facing errors into ``error: ...`` on stderr and exit code 2."""
    # ValueError: the core's validation errors name the bad argument. REPARAM_DEBUG=1 re-raises.
    try:
        code = main()
    except (UserError, CheckpointError, FileNotFoundError, ValueError) as err:
        if os.environ.get("REPARAM_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def progress(total: int, desc: str, disable: bool = False, unit: str = "it", initial: int = 0) -> tqdm:
    """A tqdm bar that hides itself when stderr is not a terminal (CI logs stay clean)."""
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty(), smoothing=0.1)
