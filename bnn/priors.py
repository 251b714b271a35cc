"""Weight priors for Bayes-by-Backprop (Blundell et al. 2015, section 3.3).

A prior is an object with ``log_prob(w)`` (elementwise log-density) and, when it is a single
Gaussian, ``gaussian()`` returning its (loc, scale) so the layer can use the closed-form KL.
Users can pass their own prior: subclass :class:`Prior` and implement ``log_prob``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reparam_apps import Normal

__all__ = ["Prior", "GaussianPrior", "ScaleMixturePrior"]


class Prior:
    """Base class: an elementwise log-density over weights."""

    def log_prob(self, w: Tensor) -> Tensor:
        """log p(w) for every element of ``w`` (same shape)."""
        raise NotImplementedError

    def gaussian(self) -> tuple[float, float] | None:
        """(loc, scale) if this prior is a single Gaussian (closed-form KL available), else None."""
        return None

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


def _check_scale(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"prior {name} must be a positive finite number, got {value}")
    return value


class GaussianPrior(Prior):
    """p(w) = N(w; loc, scale^2) per weight."""

    def __init__(self, scale: float = 1.0, loc: float = 0.0):
        self.scale = _check_scale("scale", scale)
        self.loc = float(loc)
        self._log_scale = math.log(self.scale)

    def log_prob(self, w: Tensor) -> Tensor:
        # log N(w; m, s^2) = -(w - m)^2 / (2 s^2) - log s - log(2 pi) / 2
        return Normal(torch.as_tensor(self.loc, dtype=w.dtype, device=w.device),
                      torch.as_tensor(self.scale, dtype=w.dtype, device=w.device),
                      validate_args=False).log_prob(w)

    def gaussian(self) -> tuple[float, float]:
        return self.loc, self.scale

    def __repr__(self) -> str:
        return f"GaussianPrior(scale={self.scale:g}, loc={self.loc:g})"


class ScaleMixturePrior(Prior):
    """p(w) = pi N(w; 0, sigma1^2) + (1 - pi) N(w; 0, sigma2^2) (Blundell et al. 2015, eq. 7).

    The log-density is a logsumexp of the two weighted component log-densities, so it stays finite
    (and exact) for weights far out in either tail: no ``log(p + 1e-6)``.
    Blundell's best MNIST setting: pi = 1/2, sigma1 = exp(0), sigma2 = exp(-6).
    """

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = math.exp(-6.0)):
        pi = float(pi)
        if not 0.0 < pi < 1.0:
            raise ValueError(f"prior mixture weight pi must be in (0, 1), got {pi}")
        self.pi = pi
        self.sigma1 = _check_scale("sigma1", sigma1)
        self.sigma2 = _check_scale("sigma2", sigma2)
        self._log_pi = math.log(pi)
        self._log_1m_pi = math.log1p(-pi)

    def log_prob(self, w: Tensor) -> Tensor:
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        log_n1 = Normal(zero, zero + self.sigma1, validate_args=False).log_prob(w)
        log_n2 = Normal(zero, zero + self.sigma2, validate_args=False).log_prob(w)
        # log(pi N1 + (1 - pi) N2) = logsumexp(log pi + log N1, log(1 - pi) + log N2)   (eq. 7)
        return torch.logaddexp(log_n1 + self._log_pi, log_n2 + self._log_1m_pi)

    def __repr__(self) -> str:
        return f"ScaleMixturePrior(pi={self.pi:g}, sigma1={self.sigma1:g}, sigma2={self.sigma2:g})"
