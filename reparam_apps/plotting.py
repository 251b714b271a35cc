"""Deprecated location: plotting helpers live in ``reparam_apps.experiment.plotting``."""

from __future__ import annotations

from typing import Any

from .experiment.plotting import plot_curves, save_figure, subplots

__all__ = ["save_figure", "plot_curves", "subplots"]


def __getattr__(name: str) -> Any:
    if name == "plt":  # pyplot on demand only: importing this module picks no backend
        import matplotlib.pyplot as plt

        return plt
    raise AttributeError(name)
