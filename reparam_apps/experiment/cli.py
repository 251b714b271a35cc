"""Entry-point plumbing: one-line errors with their exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .errors import CheckpointError, DivergenceError, UserError

__all__ = ["run_cli", "EXIT_USER_ERROR", "EXIT_DIVERGED", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2  # bad input: flags, files, data
EXIT_DIVERGED = 3  # training produced NaN/inf; the last good checkpoint is kept
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its code; a user-facing error becomes one ``error: ...`` line on stderr.

    ``ValueError`` is included because the configs' and the core's validation errors name the bad
    argument. ``REPARAM_DEBUG=1`` re-raises instead, for a traceback.
    """
    try:
        code = main()
    except (UserError, CheckpointError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as err:
        if os.environ.get("REPARAM_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except DivergenceError as err:
        if os.environ.get("REPARAM_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)
