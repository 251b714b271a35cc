"""Divergence guard: a NaN or inf stops training with one clear line instead of finishing with NaN.

Checked where it costs nothing on the hot path: on the logged values of each ``--log-every`` window
and on the parameters right before a checkpoint is written, so the last good checkpoint is never
replaced by a diverged one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import DivergenceError

__all__ = ["check_finite_values", "check_finite_parameters"]

LIKELY_CAUSE = ("likely cause: a learning rate too high for this problem, or an input or hyperparameter "
                "that is NaN or inf")


def _where(step: int, unit: str, checkpoint: Any) -> str:
    kept = f"; the last good checkpoint {checkpoint} is kept" if checkpoint else ""
    return f"training diverged at {unit} {step}", kept


def check_finite_values(values: Mapping[str, Any], step: int, unit: str = "step", checkpoint: Any = None,
                        hint: str = LIKELY_CAUSE) -> None:
    """Raise ``DivergenceError`` if any of the logged ``values`` (losses, returns) is NaN or inf.
    A NaN that only means 'nothing to report yet' (e.g. no episode finished) must be left out by the caller."""
    for name, value in values.items():
        v = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not math.isfinite(v):
            head, kept = _where(step, unit, checkpoint)
            raise DivergenceError(f"{head}: {name} is {v} ({hint}){kept}")


def check_finite_parameters(modules: Iterable[nn.Module | torch.Tensor], step: int, unit: str = "step",
                            checkpoint: Any = None, hint: str = LIKELY_CAUSE) -> None:
    """Raise ``DivergenceError`` if any parameter or tensor is NaN or inf (one fused check per tensor)."""
    for m in modules:
        named = m.named_parameters() if isinstance(m, nn.Module) else [("tensor", m)]
        for name, p in named:
            if not bool(torch.isfinite(p).all()):
                head, kept = _where(step, unit, checkpoint)
                raise DivergenceError(f"{head}: parameter {name} holds NaN or inf ({hint}){kept}")
