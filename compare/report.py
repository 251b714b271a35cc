"""The comparison's outputs: table.md, the figures, and reading a finished run's CSVs back.

Figures are made without pyplot (``reparam_apps.experiment.subplots``), so no GUI backend is ever chosen.
"""

from __future__ import annotations

import csv
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from reparam_apps.experiment import atomic_write_text, save_figure, subplots
from reparam_apps.toy import TOY_OBJECTIVES

from .config import DOMAINS
from .curves import CURVE_LABELS
from .domains import TOY_KS, TOY_MU, TOY_SIGMA
from .stats import Row

__all__ = ["format_table", "write_table", "plot_variance_bars", "plot_toy", "plot_learning_curves", "read_rows",
           "read_curves"]

Curves = Mapping[str, Mapping[str, Sequence[tuple[int, float]]]]


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table of every estimator (the toy sweep only at k = 1, 2, 10: the rest is in the CSV)."""
    lines = ["| domain | case | estimator | total variance | ratio to pathwise | SNR | bias max abs z "
             "| us / estimate |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.domain == "toy" and not r.case.endswith(("k=1", "k=10", "k=2")):
            continue
        ratio_label = f"{r.variance_ratio:.3g}" + (" (vs score)" if r.domain == "discrete" else "")
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.domain} | {r.case} | {r.estimator}{note} | {r.total_variance:.3g} | {ratio_label} | "
                     f"{r.snr:.3g} | {r.bias_z:.2f} | {r.us_per_estimate:.0f} |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Row], path: str | os.PathLike) -> str:
    """Write ``format_table(rows)`` to ``path`` (atomically) and return it."""
    text = format_table(rows)
    atomic_write_text(path, text)
    return text


def plot_variance_bars(rows: Sequence[Row], path: str | os.PathLike) -> None:
    """One panel per case of each non-toy domain: each estimator's total variance (log scale)."""
    cases = list(dict.fromkeys((r.domain, r.case) for d in DOMAINS if d != "toy" for r in rows if r.domain == d))
    if not cases:
        return
    fig, axes = subplots(1, len(cases), figsize=(3.6 * len(cases), 3.6), squeeze=False)
    for ax, (d, case) in zip(axes[0], cases, strict=True):
        rs = [r for r in rows if (r.domain, r.case) == (d, case)]
        colors = ["tab:blue" if not r.estimator.startswith("score") else "tab:red" for r in rs]
        ax.bar(range(len(rs)), [r.total_variance for r in rs], color=colors)
        ax.set_xticks(range(len(rs)), [r.estimator for r in rs], rotation=45, ha="right")
        ax.set_yscale("log")
        several = sum(c[0] == d for c in cases) > 1
        ax.set_title(f"{d}: {case}" if several else d, fontsize=9 if several else None)
    axes[0][0].set_ylabel("total gradient variance (log)")
    fig.suptitle("Gradient variance per estimator (blue: pathwise family, red: score function)")
    save_figure(fig, path)


def plot_toy(rows: Sequence[Row], path: str | os.PathLike) -> None:
    """The toy sweep: measured variances over k against the closed forms, one panel per objective."""
    fig, axes = subplots(1, 3, figsize=(12, 3.6))
    n = next((r.n_samples for r in rows if r.domain == "toy"), 4)
    for ax, (key, obj) in zip(axes, TOY_OBJECTIVES.items(), strict=True):
        ks = np.linspace(min(TOY_KS[key]), max(TOY_KS[key]), 100)
        ax.plot(ks, [obj.pathwise_var_mu(TOY_MU, TOY_SIGMA, k) / n for k in ks], "b-", label="pathwise (closed form)")
        ax.plot(ks, [obj.score_var_mu(TOY_MU, TOY_SIGMA, k) / n for k in ks], "r-", label="score (closed form)")
        for est, style in (("pathwise", "bo"), ("score", "rs"), ("score+loo", "m^")):
            pts = [(float(r.case.split("k=")[1]), r.total_variance) for r in rows
                   if r.domain == "toy" and r.case.startswith(obj.name) and r.estimator == est]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{est} (measured)", alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("k")
        ax.set_title(f"d/dmu E[{obj.name}], mu=sigma=1")
    axes[0].set_ylabel(f"variance of the estimate (n={n})")
    axes[-1].legend(fontsize=7)
    save_figure(fig, path)


def plot_learning_curves(curves: Curves, path: str | os.PathLike) -> None:
    """One panel per domain with learning curves, one line per estimator."""
    if not curves:
        return
    fig, axes = subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (name, per_est) in zip(axes[0], curves.items(), strict=True):
        for est, pts in per_est.items():
            ax.plot(*zip(*pts, strict=True), label=est)
        xl, yl, logy = CURVE_LABELS[name]
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if logy:
            ax.set_yscale("log")
        ax.set_title(f"{name}: same steps and samples per estimator")
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, path)


# -- reading a run back ---------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_rows(folder: str | os.PathLike) -> list[Row]:
    """The ``Row``s of a run's measurements.csv (numbers as written: 6 significant digits)."""
    kinds = typing.get_type_hints(Row)  # {field: int, float or str}
    return [Row(**{k: kinds[k](v) for k, v in r.items() if k in kinds})
            for r in _read_csv(Path(folder) / "measurements.csv")]


def read_curves(folder: str | os.PathLike) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """A run's learning_curves.csv as {domain: {estimator: [(step, value)]}} ({} when it has none)."""
    path = Path(folder) / "learning_curves.csv"
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if path.is_file():
        for r in _read_csv(path):
            out.setdefault(r["domain"], {}).setdefault(r["estimator"], []).append((int(r["step"]), float(r["value"])))
    return out
