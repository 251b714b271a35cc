"""Likelihoods p(y | f(x, w)) for the ELBO and for prediction.

Each likelihood turns the network's raw output into a per-example negative log-likelihood
(``nll(output, target) -> (B,)``). Regression likelihoods also give the predictive mean and the
aleatoric variance of one network sample (``mean_and_variance``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam_apps import Normal

from .layers import inverse_softplus

__all__ = ["Likelihood", "CategoricalLikelihood", "GaussianLikelihood", "HeteroscedasticGaussianLikelihood"]


class Likelihood(nn.Module):
    """Base class. ``task`` is 'classification' or 'regression'."""

    task = "regression"

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        """-log p(target | output) per example, shape (B,)."""
        raise NotImplementedError


class CategoricalLikelihood(Likelihood):
    """p(y | logits) = softmax(logits)_y; output (B, K) logits, target (B,) class indices."""

    task = "classification"

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target, reduction="none")  # -log softmax(logits)_y

    def probs(self, output: Tensor) -> Tensor:
        return output.softmax(-1)


class GaussianLikelihood(Likelihood):
    """Homoscedastic y ~ N(f(x), s^2) with a learned noise s = softplus(noise_rho) (one value, or one per
    output dim). Output (B, D) or (B,), target the same shape."""

    def __init__(self, init_std: float = 1.0, n_outputs: int = 1, learn: bool = True):
        super().__init__()
        if not (init_std > 0 and math.isfinite(init_std)):
            raise ValueError(f"the likelihood's init_std must be positive, got {init_std}")
        rho = inverse_softplus(torch.full((n_outputs,), float(init_std)))
        self.noise_rho = nn.Parameter(rho, requires_grad=learn)

    @property
    def noise_std(self) -> Tensor:
        return F.softplus(self.noise_rho)  # s = log(1 + exp(rho)) > 0

    def mean_and_variance(self, output: Tensor) -> tuple[Tensor, Tensor]:
        return output, self.noise_std.square().expand_as(output)

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        # -log N(y; f, s^2), summed over output dims
        log_p = Normal(output, self.noise_std.expand_as(output), validate_args=False).log_prob(target)
        return -log_p.reshape(log_p.shape[0], -1).sum(-1)


class HeteroscedasticGaussianLikelihood(Likelihood):
    """y ~ N(m(x), s(x)^2) with the network predicting both: output (B, 2 D) = [m, s_raw],
    s = softplus(s_raw) + min_std (the floor keeps the NLL bounded on a point the net fits exactly)."""

    def __init__(self, min_std: float = 1e-3):
        super().__init__()
        if not (min_std >= 0 and math.isfinite(min_std)):
            raise ValueError(f"min_std must be >= 0, got {min_std}")
        self.min_std = float(min_std)

    def mean_and_variance(self, output: Tensor) -> tuple[Tensor, Tensor]:
        if output.shape[-1] % 2:
            raise ValueError(f"heteroscedastic output needs 2 D columns (mean, raw std), got {output.shape[-1]}")
        mean, raw = output.chunk(2, dim=-1)
        std = F.softplus(raw) + self.min_std
        return mean, std.square()

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        mean, var = self.mean_and_variance(output)
        target = target.reshape(mean.shape)
        log_p = Normal(mean, var.sqrt(), validate_args=False).log_prob(target)
        return -log_p.reshape(log_p.shape[0], -1).sum(-1)
