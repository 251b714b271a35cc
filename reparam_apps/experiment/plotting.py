"""Small matplotlib helpers: figures made without pyplot, so importing this never picks a backend."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from .checkpoint import atomic_write_bytes

__all__ = ["subplots", "save_figure", "plot_curves"]


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a Figure that needs no GUI backend, and its axes."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a figure as PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, title: str = "", logy: bool = False,
                bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> None:
    """One line per entry of ``curves`` ({label: (x, y)}), optional shaded ``bands`` ({label: (lo, hi)})."""
    fig, ax = subplots(figsize=(6.4, 4.0))
    for label, (x, y) in curves.items():
        (line,) = ax.plot(x, y, label=label)
        if bands and label in bands:
            lo, hi = bands[label]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
