"""Summaries of a gradient estimator against a reference: mean, bias z-statistic, variance, SNR, cost.

For an estimator g of a gradient with reference r (exact, or the mean of R_ref independent pathwise
estimates), over R independent estimates g_1..g_R:

    total variance = tr Cov[g],   SNR = |E g| / sqrt(tr Cov[g])                                (1)
    z_j = (u_j . (mean_r g_r - r)) / sqrt(Var[u_j . g] / R + Var[u_j . r] / R_ref)              (2)

on N_PROJECTIONS fixed random unit directions u_j: each z_j is ~N(0, 1) for an unbiased estimator, so
max_j |z_j| over 8 directions exceeds 4 with probability ~5e-4 and 4.5 with ~5e-5.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

import reparam_apps as ra

__all__ = ["Row", "Reference", "StopRequested", "N_PROJECTIONS", "directions", "measure", "reference",
           "exact_reference", "never"]

N_PROJECTIONS = 8


class StopRequested(Exception):
    """Ctrl-C was pressed: the current domain is abandoned (it is measured again, identically, on --resume)."""


def never() -> bool:
    """The default ``stop`` poll: never stop."""
    return False


@dataclass
class Row:
    """One estimator in one case of one domain (a row of measurements.csv)."""

    domain: str
    case: str
    estimator: str
    dim: int
    n_samples: int
    repeats: int
    mean_norm: float
    reference_norm: float
    bias: float  # |E g - reference|
    bias_z: float  # max |z_j| of (2)
    total_variance: float
    variance_ratio: float  # total variance / the pathwise estimator's in the same case
    snr: float
    us_per_estimate: float  # wall-clock: differs between runs
    closed_form_variance: float = float("nan")  # toy only: tr Var of the estimate, from the closed form
    note: str = ""


@dataclass
class Reference:
    mean: Tensor  # flattened reference gradient
    proj_mean: Tensor  # its projections on the test directions, (N_PROJECTIONS,)
    proj_var: Tensor  # variance of one reference draw's projections (zeros when exact)
    repeats: int


def directions(dim: int, seed: int) -> Tensor:
    """N_PROJECTIONS fixed random unit directions in gradient space (seeded, float64), (N_PROJECTIONS, dim)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N_PROJECTIONS, dim, generator=g, dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


def _stats_with_projections(estimate: Callable[[], object], repeats: int, dirs: Tensor | None, seed: int,
                            stop: Callable[[], bool]) -> tuple[ra.EstimatorStats, Tensor, Tensor]:
    """``ra.estimator_stats`` plus the mean and variance of the estimates' projections on ``dirs``."""
    projections: list[Tensor] = []

    def wrapped() -> object:
        nonlocal dirs
        if stop():
            raise StopRequested
        g = estimate()
        flat = ra.flatten_gradient(g).double()
        if dirs is None:
            dirs = directions(flat.numel(), seed)
        projections.append(dirs @ flat)
        return g

    s = ra.estimator_stats(wrapped, repeats)
    p = torch.stack(projections)  # (repeats, N_PROJECTIONS)
    return s, p.mean(0), p.var(0)


def _bias_z(proj_mean: Tensor, proj_var: Tensor, repeats: int, ref: Reference) -> float:
    """max_j |z_j| of (2)."""
    se = (proj_var / repeats + ref.proj_var / ref.repeats).sqrt().clamp_min(1e-300)
    return float(((proj_mean - ref.proj_mean) / se).abs().max())


def reference(estimate: Callable[[], object], repeats: int, seed: int, stop: Callable[[], bool] = never) -> Reference:
    """The mean of ``repeats`` estimates (an unbiased estimator's) as the reference, with its projections' variance."""
    s, pm, pv = _stats_with_projections(estimate, repeats, None, seed, stop)
    return Reference(s.mean, pm, pv, repeats)


def exact_reference(grad: Tensor, seed: int) -> Reference:
    """A known gradient as the reference (no sampling variance)."""
    flat = grad.reshape(-1).double()
    zeros = torch.zeros(N_PROJECTIONS, dtype=torch.float64)
    return Reference(flat, directions(flat.numel(), seed) @ flat, zeros, 1)


def measure(domain: str, case: str, estimators: Mapping[str, Callable[[], object]], ref: Reference, repeats: int,
            n_samples: int, seed: int, closed_forms: Mapping[str, float] | None = None,
            notes: Mapping[str, str] | None = None, stop: Callable[[], bool] = never) -> list[Row]:
    """Run every estimator ``repeats`` times and summarise it against ``ref``; the variance ratio is to the
    "pathwise" estimator's when there is one.

    Args:
        estimators: {name: a function returning one gradient estimate (a tensor or a tuple of tensors)}.
        closed_forms: {name: the exact total variance of one estimate}, where known.
        stop: polled before every estimate; True raises ``StopRequested``.
    """
    results = {}
    for name, est in estimators.items():
        results[name] = _stats_with_projections(est, repeats, directions(ref.mean.numel(), seed), seed, stop)
    base = results["pathwise"][0].total_variance if "pathwise" in results else float("nan")
    rows = []
    for name, (s, pm, pv) in results.items():
        rows.append(Row(domain, case, name, s.mean.numel(), n_samples, repeats, float(s.mean.norm()),
                        float(ref.mean.norm()), s.bias_to(ref.mean), _bias_z(pm, pv, repeats, ref),
                        s.total_variance, s.total_variance / base, s.snr, s.seconds_per_estimate * 1e6,
                        (closed_forms or {}).get(name, float("nan")), (notes or {}).get(name, "")))
    return rows
