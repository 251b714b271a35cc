"""Concrete / relaxed one-hot categorical (Maddison et al. 2017; Jang et al. 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, OneHotCategorical, constraints

from .base import ReparamDistribution, as_tensor, check_not_nan, check_params, uniform_open

__all__ = ["GumbelSoftmax"]


class GumbelSoftmax(ReparamDistribution):
    """Concrete / relaxed one-hot categorical over the last dim (K categories).

    eps = Gumbel(0, 1) noise of shape (..., K); y = softmax((logits + eps) / temperature).
    Everything is computed in log-space (log_softmax), so temperatures down to 0.01 stay finite.
    ``hard=True`` is the straight-through estimator: the sample is exactly one-hot in the forward
    pass, and its gradient is the relaxed sample's gradient.

    Args:
        logits: (..., K) unnormalised log-probabilities; under validation they must be finite (a category
            that should almost never win gets a large negative logit, not -inf).
        temperature: tau > 0, one value (a float or a one-element tensor).
        hard: straight-through one-hot samples (no density: ``rsample_and_log_prob`` refuses them).
        validate_args: check logits and temperature (a device sync).
    """

    arg_constraints = {"logits": constraints.real_vector, "temperature": constraints.positive}
    support = constraints.simplex

    def __init__(self, logits: Tensor, temperature: float | Tensor = 1.0, hard: bool = False,
                 validate_args: bool | None = None):
        logits = as_tensor(logits)
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the K categories, last)")
        self.temperature = as_tensor(temperature, logits)
        if self.temperature.dim():  # (..., K) / tau and (K - 1) log tau need one tau
            if self.temperature.numel() != 1:
                raise ValueError(f"temperature must be one value (got shape {tuple(self.temperature.shape)})")
            self.temperature = self.temperature.reshape(())
        super().__init__(logits.shape, 1, validate_args)
        if self._validate_args:
            check_params({"logits": logits}, {"temperature": self.temperature})
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalised log-probabilities
        self.hard = hard

    @property
    def _param(self) -> Tensor:
        return self.logits

    @property
    def probs(self) -> Tensor:
        return self.logits.exp()

    def _expand_params(self, new: ReparamDistribution, shape: torch.Size) -> None:
        new.logits, new.temperature, new.hard = self.logits.expand(shape), self.temperature, self.hard

    def sample_noise(self, sample_shape=()) -> Tensor:
        u = uniform_open(self._noise_shape(sample_shape), self.logits)
        return -torch.log(-torch.log(u))

    def log_transform(self, eps: Tensor) -> Tensor:
        """log y = log_softmax((logits + eps) / temperature): the stable form of the transform."""
        return torch.log_softmax((self.logits + eps) / self.temperature, dim=-1)

    def transform(self, eps: Tensor) -> Tensor:
        y_soft = self.log_transform(eps).exp()
        if not self.hard:
            return y_soft
        y_hard = F.one_hot(y_soft.argmax(-1), y_soft.shape[-1]).to(y_soft.dtype)
        return y_hard - y_soft.detach() + y_soft  # forward: one-hot; backward: d y_soft

    def _exp_concrete_log_prob(self, log_y: Tensor) -> Tensor:
        # Maddison et al. 2017, ExpConcrete density of x = log y:
        # log (K-1)! + (K-1) log tau + sum_k (a_k - tau x_k) - K logsumexp_k (a_k - tau x_k)
        k = self.logits.shape[-1]
        score = self.logits - self.temperature * log_y
        return (math.lgamma(k) + (k - 1) * self.temperature.log()
                + score.sum(-1) - k * score.logsumexp(-1))

    def log_prob(self, value: Tensor) -> Tensor:
        """Concrete log-density of a relaxed sample y (the density of log y minus sum log y); under
        validation -inf off the simplex (a tolerance of K float eps on the sum)."""
        value = as_tensor(value, self.logits)
        log_y = value.clamp_min(torch.finfo(value.dtype).tiny).log()
        lp = self._exp_concrete_log_prob(log_y) - log_y.sum(-1)
        if not self._validate_args:
            return lp
        check_not_nan("value", value)
        tol = max(1e-6, value.shape[-1] * torch.finfo(value.dtype).eps)
        inside = (value >= 0).all(-1) & ((value.sum(-1) - 1.0).abs() <= tol)
        return torch.where(inside, lp, -math.inf)

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        if self.hard:
            raise ValueError("a hard (straight-through) sample has no density; use hard=False")
        eps = self.sample_noise(sample_shape)
        log_y = self.log_transform(eps)  # log-space all the way: finite at low temperature
        return log_y.exp(), self._exp_concrete_log_prob(log_y) - log_y.sum(-1)

    def categorical(self) -> OneHotCategorical:
        """The discrete distribution being relaxed (for score-function estimators)."""
        return OneHotCategorical(logits=self.logits, validate_args=False)

    def to_torch(self) -> Distribution:
        if self.hard:
            raise ValueError("a hard (straight-through) sample has no density; use hard=False")
        return torch.distributions.RelaxedOneHotCategorical(self.temperature, logits=self.logits,
                                                            validate_args=self._validate_args)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError("the Concrete distribution has no closed-form mean")
