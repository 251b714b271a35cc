"""Toy objectives under x ~ N(mu, sigma^2) with closed-form gradient-estimator variances
(Mohamed, Rosca, Figurnov & Mnih 2020, "Monte Carlo Gradient Estimation in Machine Learning", Sec. 3).

For each objective f we give, w.r.t. the mean mu and for ONE sample (divide by n for n samples):
  the true gradient  d/dmu E[f(x)],
  the pathwise estimator's variance        Var[f'(x)],
  the score-function estimator's variance  Var[f(x) (x - mu) / sigma^2]  (no baseline).
Derivations use Gaussian identities only (completing the square for exp(-k x^2), the characteristic
function E[e^{i t eps} eps^2] = (1 - t^2) e^{-t^2/2} for cos(k x)); the tests check them against
quadrature and against the estimators themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ToyObjective", "TOY_OBJECTIVES"]


@dataclass(frozen=True)
class ToyObjective:
    name: str
    f: Callable[[Tensor, float], Tensor]  # f(x, k)
    true_grad_mu: Callable[[float, float, float], float]  # (mu, sigma, k) -> d/dmu E f
    pathwise_var_mu: Callable[[float, float, float], float]
    score_var_mu: Callable[[float, float, float], float]


def _quad_true(mu, s, k):
    return 2 * (mu - k)


def _quad_path_var(mu, s, k):
    return 4 * s**2  # f'(x) = 2 (x - k): Var = 4 sigma^2


def _quad_score_var(mu, s, k):
    d = mu - k  # E[(d + s eps)^4 eps^2] / s^2 = (d^4 + 18 d^2 s^2 + 15 s^4) / s^2
    return (d**4 + 18 * d**2 * s**2 + 15 * s**4) / s**2 - _quad_true(mu, s, k) ** 2


def _gauss_times_exp(mu, s, b):
    """exp(-b x^2) N(x; mu, s^2) = Z N(x; m, v): returns (Z, m, v) (completing the square)."""
    c = 1 + 2 * b * s**2
    return math.exp(-b * mu**2 / c) / math.sqrt(c), mu / c, s**2 / c


def _exp_true(mu, s, k):
    z, m, _ = _gauss_times_exp(mu, s, k)
    return -2 * k * z * m  # E[-2 k x exp(-k x^2)]


def _exp_path_var(mu, s, k):
    z, m, v = _gauss_times_exp(mu, s, 2 * k)  # E[4 k^2 x^2 exp(-2 k x^2)] = 4 k^2 Z (v + m^2)
    return 4 * k**2 * z * (v + m**2) - _exp_true(mu, s, k) ** 2


def _exp_score_var(mu, s, k):
    z, m, v = _gauss_times_exp(mu, s, 2 * k)  # E[exp(-2 k x^2) (x - mu)^2] / s^4
    return z * (v + (m - mu) ** 2) / s**4 - _exp_true(mu, s, k) ** 2


def _cos_true(mu, s, k):
    return -k * math.sin(k * mu) * math.exp(-(k**2) * s**2 / 2)  # d/dmu cos(k mu) e^{-k^2 s^2 / 2}


def _cos_path_var(mu, s, k):
    # E[k^2 sin^2(k x)] = k^2 (1 - E cos(2 k x)) / 2,  E cos(2 k x) = cos(2 k mu) e^{-2 k^2 s^2}
    return k**2 * (1 - math.cos(2 * k * mu) * math.exp(-2 * k**2 * s**2)) / 2 - _cos_true(mu, s, k) ** 2


def _cos_score_var(mu, s, k):
    # E[cos^2(k x) eps^2] / s^2 = (1 + E[cos(2 k x) eps^2]) / (2 s^2),
    # E[cos(2 k x) eps^2] = cos(2 k mu) (1 - 4 k^2 s^2) e^{-2 k^2 s^2}
    t2 = 4 * k**2 * s**2
    second = (1 + math.cos(2 * k * mu) * (1 - t2) * math.exp(-t2 / 2)) / (2 * s**2)
    return second - _cos_true(mu, s, k) ** 2


TOY_OBJECTIVES: dict[str, ToyObjective] = {
    "quadratic": ToyObjective("(x-k)^2", lambda x, k: (x - k) ** 2, _quad_true, _quad_path_var, _quad_score_var),
    "exp": ToyObjective("exp(-k x^2)", lambda x, k: torch.exp(-k * x**2), _exp_true, _exp_path_var, _exp_score_var),
    "cos": ToyObjective("cos(k x)", lambda x, k: torch.cos(k * x), _cos_true, _cos_path_var, _cos_score_var),
}
