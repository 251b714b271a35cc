"""Deprecated location: entry-point plumbing lives in ``reparam_apps.experiment``."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .experiment.cli import run_cli
from .experiment.errors import UserError

__all__ = ["UserError", "run_cli", "progress"]


def progress(total: int, desc: str, disable: bool = False, unit: str = "it", initial: int = 0) -> tqdm:
    """A tqdm bar that hides itself when stderr is not a terminal (kept until every entry point uses
    ``experiment.Progress``)."""
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty(), smoothing=0.1)
