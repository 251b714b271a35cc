"""The contract every core family implements, and the helpers they share.

    eps = d.sample_noise(sample_shape)      # parameter-free noise from a fixed base distribution
    z   = d.transform(eps)                  # deterministic, differentiable g_phi(eps)
    z, log_q = d.rsample_and_log_prob(...)  # log-density computed from eps: nothing is inverted

On top of it, ``ReparamDistribution`` is a full ``torch.distributions.Distribution``: ``support``,
``arg_constraints``, ``expand``, ``cdf``/``icdf`` (where a closed form exists) and ``to_torch()`` (the same
law built from ``torch.distributions``), so the families work inside ``Independent``,
``MixtureSameFamily``, ``TransformedDistribution`` and ``torch.distributions.kl_divergence``.

Validation (``validate_args=True``) is stricter than the declared ``arg_constraints``: parameters must also
be finite (a NaN or infinite loc, scale or temperature raises a ``ValueError`` that names it), and
``log_prob`` of a value outside the support is -inf (a NaN value raises). Every check syncs the device, so
the hot paths pass ``validate_args=False``, which runs none of them.
"""

from __future__ import annotations

import math
from numbers import Number

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["ReparamDistribution", "set_default_validate_args"]

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
EULER_GAMMA = 0.5772156649015329
LOG2 = math.log(2.0)
_DEFAULT_VALIDATE = True


def set_default_validate_args(value: bool) -> None:
    """Default for ``validate_args=None`` in every family of the core (initially True)."""
    global _DEFAULT_VALIDATE
    _DEFAULT_VALIDATE = bool(value)


def resolve_validate(validate_args: bool | None) -> bool:
    return _DEFAULT_VALIDATE if validate_args is None else bool(validate_args)


def as_tensor(x: Tensor | Number, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def uniform_open(shape: torch.Size, like: Tensor) -> Tensor:
    """U(0, 1) strictly inside the open interval, so log(u) and log(1 - u) stay finite."""
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp_(min=tiny, max=1.0 - torch.finfo(like.dtype).eps)


def sum_rightmost(x: Tensor, n: int) -> Tensor:
    return x.sum(dim=tuple(range(-n, 0))) if n > 0 else x


def _first_bad(x: Tensor, ok: Tensor) -> float:
    return x.detach()[~ok.expand(x.shape)].flatten()[0].item()


def check_params(finite: dict[str, Tensor], positive: dict[str, Tensor] | None = None) -> None:
    """Raise ``ValueError`` naming the first argument that is not finite (``finite``) or not finite and
    > 0 (``positive``). One device sync (min and max of each, NaN-propagating) when everything is fine."""
    named = [(name, x, False) for name, x in finite.items()] + [(name, x, True) for name, x in (positive or {}).items()]
    named = [item for item in named if item[1].numel()]
    if not named:
        return
    bounds = torch.stack([v for _, x, _ in named for v in torch.aminmax(x.detach())]).tolist()  # promotes dtypes
    for i, (name, x, pos) in enumerate(named):
        lo, hi = bounds[2 * i], bounds[2 * i + 1]
        if math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or not pos):
            continue
        ok = torch.isfinite(x) & (x > 0) if pos else torch.isfinite(x)
        what = "positive and finite" if pos else "finite"
        raise ValueError(f"{name} must be {what} everywhere (got {_first_bad(x, ok):.4g})")


def check_not_nan(name: str, value: Tensor) -> None:
    if bool(torch.isnan(value).any()):
        raise ValueError(f"{name} contains NaN")


class ReparamDistribution(Distribution):
    """Base class of the contract. Subclasses define ``sample_noise``, ``transform``, ``_param`` (a
    parameter tensor: dtype and device), ``_elementwise_support``, ``_expand_params`` (for ``expand``),
    ``_log_prob_elementwise`` (log-density of a value) and optionally ``_log_prob_from_noise``,
    ``_entropy_elementwise``, ``_cdf_elementwise``, ``_icdf_elementwise`` and ``to_torch``.

    Args:
        batch_shape: shape of the parameters; its last ``event_dims`` dims become the event shape.
        event_dims: trailing dims summed in ``log_prob``/``entropy`` (like ``torch.distributions.Independent``).
        validate_args: run the (device-syncing) checks; None means ``set_default_validate_args``'s value.
    """

    has_rsample = True
    arg_constraints: dict[str, constraints.Constraint] = {}  # declared; checked by us (see module docstring)
    _elementwise_support: constraints.Constraint = constraints.real

    def __init__(self, batch_shape: torch.Size, event_dims: int, validate_args: bool | None):
        if event_dims < 0 or event_dims > len(batch_shape):
            raise ValueError(
                f"event_dims={event_dims} must be between 0 and the number of parameter dims "
                f"({len(batch_shape)})"
            )
        self.event_dims = event_dims
        split = len(batch_shape) - event_dims
        super().__init__(batch_shape[:split], batch_shape[split:], validate_args=False)  # torch checks nothing
        self._validate_args = resolve_validate(validate_args)

    @property
    def _validate(self) -> bool:
        return self._validate_args

    # -- the two visible steps -------------------------------------------------------------
    def sample_noise(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        raise NotImplementedError

    def transform(self, eps: Tensor) -> Tensor:
        raise NotImplementedError

    # -- derived API -----------------------------------------------------------------------
    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.transform(self.sample_noise(sample_shape))

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """A reparameterized sample and its log-density, computed from the noise."""
        eps = self.sample_noise(sample_shape)
        z = self.transform(eps)
        return z, sum_rightmost(self._log_prob_from_noise(eps, z), self.event_dims)

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(value), summed over the event dims; under validation -inf outside the support."""
        value = as_tensor(value, self._param)
        if not self._validate_args:
            return sum_rightmost(self._log_prob_elementwise(value), self.event_dims)
        check_not_nan("value", value)
        inside = self._elementwise_support.check(value) & ~torch.isinf(value)  # the density is 0 at +-inf
        # Outside points are evaluated at a point inside, so that no NaN reaches the parameters' gradients.
        lp = self._log_prob_elementwise(torch.where(inside, value, self._inside_point()))
        return sum_rightmost(torch.where(inside, lp, -math.inf), self.event_dims)

    def _inside_point(self) -> Tensor | float:
        return 0.0

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        return self._log_prob_elementwise(z)

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def _entropy_elementwise(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form entropy")

    def entropy(self) -> Tensor:
        return sum_rightmost(self._entropy_elementwise(), self.event_dims)

    def cdf(self, value: Tensor) -> Tensor:
        """P(Z <= value), coordinatewise over the event: with ``event_dims > 0`` the joint CDF, the product
        of the coordinates' CDFs (independent coordinates), one value per batch element."""
        value = as_tensor(value, self._param)
        if self._validate_args:
            check_not_nan("value", value)
        c = self._cdf_elementwise(value)
        return c.flatten(-self.event_dims).prod(-1) if self.event_dims else c

    def icdf(self, value: Tensor) -> Tensor:
        """The quantile F^-1(value) per element; only for ``event_dims=0`` (a joint CDF has no inverse)."""
        if self.event_dims:
            raise NotImplementedError(
                f"icdf of a {self.event_dims}-dim event is not defined (a joint CDF has no inverse); "
                f"build the distribution with event_dims=0 for per-coordinate quantiles")
        value = as_tensor(value, self._param)
        if self._validate_args and not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError("icdf value (a probability) must be in [0, 1] everywhere")
        return self._icdf_elementwise(value)

    def _cdf_elementwise(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form cdf")

    def _icdf_elementwise(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form icdf")

    @property
    def support(self) -> constraints.Constraint:
        s = self._elementwise_support
        return constraints.independent(s, self.event_dims) if self.event_dims else s

    def expand(self, batch_shape: torch.Size | tuple, _instance: ReparamDistribution | None = None):
        """The same family with its parameters expanded (not copied) to ``batch_shape + event_shape``."""
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_params(new, batch_shape + self.event_shape)
        new.event_dims = self.event_dims
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _expand_params(self, new: ReparamDistribution, shape: torch.Size) -> None:
        raise NotImplementedError

    def to_torch(self) -> Distribution:
        """The same law built from ``torch.distributions`` (``Independent`` over the event dims)."""
        raise NotImplementedError(f"{type(self).__name__} has no torch.distributions equivalent")

    def _wrap_event(self, d: Distribution) -> Distribution:
        if self.event_dims:
            return torch.distributions.Independent(d, self.event_dims, validate_args=self._validate_args)
        return d

    @property
    def _param(self) -> Tensor:
        raise NotImplementedError

    def _noise_shape(self, sample_shape: torch.Size | tuple) -> torch.Size:
        return torch.Size(sample_shape) + self.batch_shape + self.event_shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"
