"""Location-scale families: z = g(loc + scale * eps) with eps from a fixed standard base distribution.

Each family gives its standard base density, CDF and quantile; the location-scale bookkeeping is shared:

    log q(z) = log f((z - loc) / scale) - log scale                          (1)
    F(z)     = F_0((z - loc) / scale),     F^-1(p) = loc + scale F_0^-1(p)   (2)

``LogNormal`` composes (1)-(2) with exp (z = exp(loc + scale * eps)); it is not a subclass of ``Normal``,
so that ``isinstance``-based dispatch (the KL registry) never confuses the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

from .base import EULER_GAMMA, HALF_LOG_2PI, LOG2, ReparamDistribution, as_tensor, check_params, uniform_open

__all__ = ["Normal", "Laplace", "Logistic", "LogNormal", "Gumbel"]

_SQRT2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)
td = torch.distributions


def broadcast_loc_scale(loc, scale) -> tuple[Tensor, Tensor]:
    loc_t = as_tensor(loc, scale if isinstance(scale, Tensor) else None)
    scale_t = as_tensor(scale, loc_t)
    if loc_t.shape == scale_t.shape:  # the common case: skip the broadcast call
        return loc_t, scale_t
    try:
        return torch.broadcast_tensors(loc_t, scale_t)
    except RuntimeError as err:
        raise ValueError(f"loc {tuple(loc_t.shape)} and scale {tuple(scale_t.shape)} do not broadcast: {err}") from None


class _LocScale(ReparamDistribution):
    """z = loc + scale * eps, eps from a fixed standard base distribution.

    Args:
        loc: location, any shape broadcastable with ``scale``.
        scale: scale > 0.
        event_dims: trailing parameter dims that form one event (summed in ``log_prob``/``entropy``).
        validate_args: check that loc is finite and scale positive and finite (a device sync).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc, scale, event_dims: int = 0, validate_args: bool | None = None):
        self.loc, self.scale = broadcast_loc_scale(loc, scale)
        super().__init__(self.loc.shape, event_dims, validate_args)
        if self._validate_args:
            check_params({"loc": self.loc}, {"scale": self.scale})

    @property
    def _param(self) -> Tensor:
        return self.loc

    def _expand_params(self, new: ReparamDistribution, shape: torch.Size) -> None:
        new.loc, new.scale = self.loc.expand(shape), self.scale.expand(shape)

    def transform(self, eps: Tensor) -> Tensor:
        return torch.addcmul(self.loc, self.scale, eps)  # g_phi(eps) = mu + sigma * eps

    def _standardize(self, value: Tensor) -> Tensor:
        return (value - self.loc) / self.scale

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        return self._base_log_prob(self._standardize(value)) - self.scale.log()  # (1)

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        return self._base_log_prob(eps) - self.scale.log()  # change of variables, no division

    def _cdf_elementwise(self, value: Tensor) -> Tensor:
        return self._base_cdf(self._standardize(value))  # (2)

    def _icdf_elementwise(self, value: Tensor) -> Tensor:
        return self.transform(self._base_icdf(value))  # (2)

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def _base_cdf(self, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def _base_icdf(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def _torch_base(self) -> Distribution:
        raise NotImplementedError

    def to_torch(self) -> Distribution:
        return self._wrap_event(self._torch_base())

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc


class _Gaussian(_LocScale):
    """Standard-normal noise: shared by ``Normal`` and ``LogNormal``."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        return torch.randn(self._noise_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -0.5 * eps.square() - HALF_LOG_2PI

    def _base_cdf(self, eps: Tensor) -> Tensor:
        return 0.5 * torch.erfc(eps * -_SQRT_HALF)  # accurate in the left tail, unlike 0.5 (1 + erf) or ndtr

    def _base_icdf(self, p: Tensor) -> Tensor:
        return torch.special.ndtri(p)


class Normal(_Gaussian):
    """N(loc, scale^2) per element (diagonal Gaussian; ``event_dims=1`` for a vector density)."""

    def _entropy_elementwise(self) -> Tensor:
        return 0.5 + HALF_LOG_2PI + self.scale.log()

    def _torch_base(self) -> Distribution:
        return td.Normal(self.loc, self.scale, validate_args=self._validate_args)

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return self.scale.square()


class Laplace(_LocScale):
    """Laplace(loc, scale): eps = -sign(u) log(1 - |u|), u ~ U(-1, 1)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        u = 2.0 * uniform_open(self._noise_shape(sample_shape), self.loc) - 1.0
        return -u.sign() * torch.log1p(-u.abs())

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -eps.abs() - LOG2

    def _base_cdf(self, eps: Tensor) -> Tensor:
        tail = 0.5 * torch.exp(-eps.abs())  # F_0 = e^eps / 2 below 0, 1 - e^-eps / 2 above: no cancellation
        return torch.where(eps < 0, tail, 1.0 - tail)

    def _base_icdf(self, p: Tensor) -> Tensor:
        return torch.where(p < 0.5, torch.log(2.0 * p), -torch.log(2.0 - 2.0 * p))

    def _entropy_elementwise(self) -> Tensor:
        return 1.0 + LOG2 + self.scale.log()

    def _torch_base(self) -> Distribution:
        return td.Laplace(self.loc, self.scale, validate_args=self._validate_args)

    @property
    def stddev(self) -> Tensor:
        return _SQRT2 * self.scale

    @property
    def variance(self) -> Tensor:
        return 2.0 * self.scale.square()


class Logistic(_LocScale):
    """Logistic(loc, scale): eps = log u - log(1 - u), u ~ U(0, 1)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        u = uniform_open(self._noise_shape(sample_shape), self.loc)
        return u.log() - torch.log1p(-u)

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -eps - 2.0 * F.softplus(-eps)  # log sigmoid(eps) + log sigmoid(-eps)

    def _base_cdf(self, eps: Tensor) -> Tensor:
        return torch.sigmoid(eps)

    def _base_icdf(self, p: Tensor) -> Tensor:
        return torch.log(p) - torch.log1p(-p)

    def _entropy_elementwise(self) -> Tensor:
        return 2.0 + self.scale.log()

    def _torch_base(self) -> Distribution:
        # torch has no Logistic: the quantile transform of U(0, 1), as in torch's own docs.
        v = self._validate_args
        base = td.Uniform(torch.zeros_like(self.loc), torch.ones_like(self.loc), validate_args=v)
        steps = [td.SigmoidTransform().inv, td.AffineTransform(self.loc, self.scale)]
        return td.TransformedDistribution(base, steps, validate_args=v)

    @property
    def variance(self) -> Tensor:
        return self.scale.square() * (math.pi**2 / 3.0)


class Gumbel(_LocScale):
    """Gumbel(loc, scale) (max-stable): eps = -log(-log u), u ~ U(0, 1)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        return -torch.log(-torch.log(uniform_open(self._noise_shape(sample_shape), self.loc)))

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -(eps + torch.exp(-eps))

    def _base_cdf(self, eps: Tensor) -> Tensor:
        return torch.exp(-torch.exp(-eps))

    def _base_icdf(self, p: Tensor) -> Tensor:
        return -torch.log(-torch.log(p))

    def _entropy_elementwise(self) -> Tensor:
        return self.scale.log() + 1.0 + EULER_GAMMA

    def _torch_base(self) -> Distribution:
        return td.Gumbel(self.loc, self.scale, validate_args=self._validate_args)

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * EULER_GAMMA

    @property
    def variance(self) -> Tensor:
        return self.scale.square() * (math.pi**2 / 6.0)


class LogNormal(_Gaussian):
    """exp(N(loc, scale^2)): z = exp(loc + scale * eps); support z > 0."""

    _elementwise_support = constraints.positive

    def transform(self, eps: Tensor) -> Tensor:
        return torch.exp(self.loc + self.scale * eps)

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        log_x = value.log()
        return self._base_log_prob((log_x - self.loc) / self.scale) - self.scale.log() - log_x

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        # log|dz/deps| = log(scale) + (loc + scale * eps): no log of the (possibly overflowing) sample
        return self._base_log_prob(eps) - self.scale.log() - (self.loc + self.scale * eps)

    def _cdf_elementwise(self, value: Tensor) -> Tensor:
        return self._base_cdf((value.clamp_min(0.0).log() - self.loc) / self.scale)  # F = 0 for value <= 0

    def _inside_point(self) -> float:
        return 1.0

    def _entropy_elementwise(self) -> Tensor:
        return self.loc + 0.5 + HALF_LOG_2PI + self.scale.log()

    def _torch_base(self) -> Distribution:
        return td.LogNormal(self.loc, self.scale, validate_args=self._validate_args)

    @property
    def mean(self) -> Tensor:
        return torch.exp(self.loc + 0.5 * self.scale.square())

    @property
    def mode(self) -> Tensor:
        return torch.exp(self.loc - self.scale.square())

    @property
    def variance(self) -> Tensor:
        s2 = self.scale.square()
        return torch.expm1(s2) * torch.exp(2.0 * self.loc + s2)
