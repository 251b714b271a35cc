"""Small matplotlib helpers (Agg backend, PNG, written atomically)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .runs import atomic_write_bytes  # noqa: E402

__all__ = ["save_figure", "plot_curves", "plt"]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a figure as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, title: str = "", logy: bool = False,
                bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> None:
    """One line per entry of ``curves`` ({label: (x, y)}), optional shaded ``bands`` ({label: (lo, hi)})."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
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
