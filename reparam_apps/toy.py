"""Toy objectives under x ~ N(mu, sigma^2) with closed-form gradient-estimator variances
(Mohamed, Rosca, Figurnov & Mnih 2020, "Monte Carlo Gradient Estimation in Machine Learning", Sec. 3).

For each objective f we give, w.r.t. the mean mu and for ONE sample (divide by n for n samples):
  the true gradient  g = d/dmu E[f(x)],
  the pathwise estimator's variance        Var[f'(x)],
  the score-function estimator's variance  Var[f(x) s],  s = (x - mu) / sigma^2  (no baseline),
and, for n >= 2 samples, the variance of the score-function estimator with the leave-one-out baseline
b_i = mean_{j != i} f(x_j) (``score_loo_var_mu(mu, sigma, k, n)``, already divided by n):

  Var[g_loo] = ( Var[(f - E f) s] + (Var[f] E[s^2] + g^2) / (n - 1) ) / n.                    (L)

(L): write a_i = f(x_i) - E f, so g_loo = 1/n sum_i a_i s_i - 1/(n (n-1)) sum_{i != j} a_j s_i. The
first sum is a mean of n iid terms: Var[a s] / n. In the second, E[s_i a_j s_k a_l] (i != j, k != l)
vanishes unless {k, l} = {i, j} (E[s] = E[a] = 0): (k, l) = (i, j) gives E[s^2] Var[f] and
(k, l) = (j, i) gives E[a s]^2 = g^2, so its variance is (E[s^2] Var[f] + g^2) / (n (n-1)); the two
sums are uncorrelated (every term of their product has an index that appears once). The n terms
(f_i - b_i) s_i are exchangeable but correlated through the shared samples: leaving out the g^2
covariance term understates the variance (36.7 instead of 37.95 for n = 8 on the quadratic below with
mu - k = -1.5, sigma = 1.3). For the quadratic, Var[(f - E f) s] = 8 d^2 + 10 sigma^2 and
Var[f] E[s^2] + g^2 = 8 d^2 + 2 sigma^2 (d = mu - k).

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
    """One toy objective f(x; k) under x ~ N(mu, sigma^2) and its closed forms (functions of mu, sigma, k)."""

    name: str
    f: Callable[[Tensor, float], Tensor]  # f(x, k)
    true_grad_mu: Callable[[float, float, float], float]  # (mu, sigma, k) -> d/dmu E f
    pathwise_var_mu: Callable[[float, float, float], float]
    score_var_mu: Callable[[float, float, float], float]
    moments: Callable[[float, float, float], tuple[float, float, float, float]]  # E f, E f^2, E[f s^2], E[f^2 s^2]

    def score_loo_var_mu(self, mu: float, sigma: float, k: float, n: int) -> float:
        """Variance of the n-sample score-function estimate of d/dmu E f with the leave-one-out
        baseline, eq. (L) (divided by n already). Needs n >= 2."""
        if n < 2:
            raise ValueError(f"the leave-one-out baseline needs n >= 2, got {n}")
        ef, ef2, efs2, ef2s2 = self.moments(mu, sigma, k)
        g, es2 = self.true_grad_mu(mu, sigma, k), 1.0 / sigma**2
        var_centred = ef2s2 - 2 * ef * efs2 + ef**2 * es2 - g**2  # Var[(f - E f) s]
        return (var_centred + ((ef2 - ef**2) * es2 + g**2) / (n - 1)) / n


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


def _quad_moments(mu, s, k):
    d = mu - k  # E f, E f^2, E[f s^2], E[f^2 s^2] with f = (d + s eps)^2, s_mu = eps / s
    return (d**2 + s**2, d**4 + 6 * d**2 * s**2 + 3 * s**4, (d**2 + 3 * s**2) / s**2,
            (d**4 + 18 * d**2 * s**2 + 15 * s**4) / s**2)


def _exp_true(mu, s, k):
    z, m, _ = _gauss_times_exp(mu, s, k)
    return -2 * k * z * m  # E[-2 k x exp(-k x^2)]


def _exp_path_var(mu, s, k):
    z, m, v = _gauss_times_exp(mu, s, 2 * k)  # E[4 k^2 x^2 exp(-2 k x^2)] = 4 k^2 Z (v + m^2)
    return 4 * k**2 * z * (v + m**2) - _exp_true(mu, s, k) ** 2


def _exp_score_var(mu, s, k):
    z, m, v = _gauss_times_exp(mu, s, 2 * k)  # E[exp(-2 k x^2) (x - mu)^2] / s^4
    return z * (v + (m - mu) ** 2) / s**4 - _exp_true(mu, s, k) ** 2


def _exp_moments(mu, s, k):
    z1, m1, v1 = _gauss_times_exp(mu, s, k)  # E[exp(-k x^2) g(x)] = Z E_{N(m, v)}[g]
    z2, m2, v2 = _gauss_times_exp(mu, s, 2 * k)
    return z1, z2, z1 * (v1 + (m1 - mu) ** 2) / s**4, z2 * (v2 + (m2 - mu) ** 2) / s**4


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


def _cos_moments(mu, s, k):
    t2 = k**2 * s**2
    ef = math.cos(k * mu) * math.exp(-t2 / 2)
    ef2 = (1 + math.cos(2 * k * mu) * math.exp(-2 * t2)) / 2  # cos^2 = (1 + cos 2kx) / 2
    efs2 = math.cos(k * mu) * (1 - t2) * math.exp(-t2 / 2) / s**2  # E[cos(k x) eps^2] / s^2
    return ef, ef2, efs2, _cos_score_var(mu, s, k) + _cos_true(mu, s, k) ** 2


TOY_OBJECTIVES: dict[str, ToyObjective] = {
    "quadratic": ToyObjective("(x-k)^2", lambda x, k: (x - k) ** 2, _quad_true, _quad_path_var, _quad_score_var,
                              _quad_moments),
    "exp": ToyObjective("exp(-k x^2)", lambda x, k: torch.exp(-k * x**2), _exp_true, _exp_path_var, _exp_score_var,
                        _exp_moments),
    "cos": ToyObjective("cos(k x)", lambda x, k: torch.cos(k * x), _cos_true, _cos_path_var, _cos_score_var,
                        _cos_moments),
}
