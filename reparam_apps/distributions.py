"""Reparameterized distributions: noise and transform as two separate, visible steps.

Every family implements one small contract on top of ``torch.distributions.Distribution``::

    eps = d.sample_noise(sample_shape)      # parameter-free noise from a fixed base distribution
    z   = d.transform(eps)                  # deterministic, differentiable g_phi(eps)
    z   = d.rsample(sample_shape)           # == d.transform(d.sample_noise(sample_shape))
    z, log_q = d.rsample_and_log_prob(...)  # log-density computed from eps: nothing is inverted

so gradients w.r.t. the parameters phi flow through the samples (the pathwise estimator).
``event_dims`` sums ``log_prob``/``entropy`` over that many trailing dimensions (like
``torch.distributions.Independent``); ``TanhNormal`` and ``GumbelSoftmax`` default to one event dim.

Validation (``validate_args=True``) raises ``ValueError`` naming the bad argument; it costs a
device sync, so hot paths (SAC actor, BNN layers) pass ``validate_args=False``.
"""

from __future__ import annotations

import math
from numbers import Number

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, OneHotCategorical

__all__ = [
    "ReparamDistribution",
    "Normal",
    "Laplace",
    "Logistic",
    "LogNormal",
    "Gumbel",
    "GumbelSoftmax",
    "TanhNormal",
    "SquashBox",
    "set_default_validate_args",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_EULER_GAMMA = 0.5772156649015329
_LOG2 = math.log(2.0)
_DEFAULT_VALIDATE = True


def set_default_validate_args(value: bool) -> None:
    """Default for ``validate_args=None`` in every family of this module (initially True)."""
    global _DEFAULT_VALIDATE
    _DEFAULT_VALIDATE = bool(value)


def _as_tensor(x: Tensor | Number, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def _uniform_open(shape: torch.Size, like: Tensor) -> Tensor:
    """U(0, 1) strictly inside the open interval, so log(u) and log(1 - u) stay finite."""
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp_(min=tiny, max=1.0 - torch.finfo(like.dtype).eps)


def _sum_rightmost(x: Tensor, n: int) -> Tensor:
    return x.sum(dim=tuple(range(-n, 0))) if n > 0 else x


class ReparamDistribution(Distribution):
    """Base class of the contract. Subclasses define ``sample_noise``, ``transform``,
    ``_log_prob_elementwise`` (log-density of a value) and ``_log_prob_from_noise``."""

    has_rsample = True
    arg_constraints: dict = {}  # validation is ours (ValueError naming the argument), not torch's

    def __init__(self, batch_shape: torch.Size, event_dims: int, validate_args: bool | None):
        if event_dims < 0 or event_dims > len(batch_shape):
            raise ValueError(
                f"event_dims={event_dims} must be between 0 and the number of parameter dims "
                f"({len(batch_shape)})"
            )
        self.event_dims = event_dims
        self._validate = _DEFAULT_VALIDATE if validate_args is None else bool(validate_args)
        split = len(batch_shape) - event_dims
        super().__init__(batch_shape[:split], batch_shape[split:], validate_args=False)

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
        return z, _sum_rightmost(self._log_prob_from_noise(eps, z), self.event_dims)

    def log_prob(self, value: Tensor) -> Tensor:
        return _sum_rightmost(self._log_prob_elementwise(_as_tensor(value, self._param)), self.event_dims)

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        return self._log_prob_elementwise(z)

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def _entropy_elementwise(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form entropy")

    def entropy(self) -> Tensor:
        return _sum_rightmost(self._entropy_elementwise(), self.event_dims)

    @property
    def _param(self) -> Tensor:
        raise NotImplementedError

    def _noise_shape(self, sample_shape: torch.Size | tuple) -> torch.Size:
        return torch.Size(sample_shape) + self.batch_shape + self.event_shape

    def _check_positive(self, name: str, value: Tensor) -> None:
        if self._validate and not bool((value > 0).all()):
            raise ValueError(f"{name} must be positive everywhere (got min {value.min().item():.4g})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"


def _broadcast_loc_scale(loc, scale) -> tuple[Tensor, Tensor]:
    loc_t = _as_tensor(loc, scale if isinstance(scale, Tensor) else None)
    scale_t = _as_tensor(scale, loc_t)
    if loc_t.shape == scale_t.shape:  # the common case: skip the broadcast call
        return loc_t, scale_t
    try:
        return torch.broadcast_tensors(loc_t, scale_t)
    except RuntimeError as err:
        raise ValueError(f"loc {tuple(loc_t.shape)} and scale {tuple(scale_t.shape)} do not broadcast: {err}") from None


class _LocScale(ReparamDistribution):
    """z = loc + scale * eps, eps from a fixed standard base distribution."""

    def __init__(self, loc, scale, event_dims: int = 0, validate_args: bool | None = None):
        self.loc, self.scale = _broadcast_loc_scale(loc, scale)
        super().__init__(self.loc.shape, event_dims, validate_args)
        self._check_positive("scale", self.scale)

    @property
    def _param(self) -> Tensor:
        return self.loc

    def transform(self, eps: Tensor) -> Tensor:
        return torch.addcmul(self.loc, self.scale, eps)  # g_phi(eps) = mu + sigma * eps

    def _standardize(self, value: Tensor) -> Tensor:
        return (value - self.loc) / self.scale

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        return self._base_log_prob(self._standardize(value)) - self.scale.log()

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        return self._base_log_prob(eps) - self.scale.log()  # change of variables, no division

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def mean(self) -> Tensor:
        return self.loc


class Normal(_LocScale):
    """N(loc, scale^2) per element (diagonal Gaussian; ``event_dims=1`` for a vector density)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        return torch.randn(self._noise_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -0.5 * eps.square() - _HALF_LOG_2PI

    def _entropy_elementwise(self) -> Tensor:
        return 0.5 + _HALF_LOG_2PI + self.scale.log()

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return self.scale.square()


class Laplace(_LocScale):
    """Laplace(loc, scale): eps = -sign(u) log(1 - |u|), u ~ U(-1, 1)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        u = 2.0 * _uniform_open(self._noise_shape(sample_shape), self.loc) - 1.0
        return -u.sign() * torch.log1p(-u.abs())

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -eps.abs() - _LOG2

    def _entropy_elementwise(self) -> Tensor:
        return 1.0 + _LOG2 + self.scale.log()

    @property
    def variance(self) -> Tensor:
        return 2.0 * self.scale.square()


class Logistic(_LocScale):
    """Logistic(loc, scale): eps = log u - log(1 - u), u ~ U(0, 1)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        u = _uniform_open(self._noise_shape(sample_shape), self.loc)
        return u.log() - torch.log1p(-u)

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -eps - 2.0 * F.softplus(-eps)  # log sigmoid(eps) + log sigmoid(-eps)

    def _entropy_elementwise(self) -> Tensor:
        return 2.0 + self.scale.log()

    @property
    def variance(self) -> Tensor:
        return self.scale.square() * (math.pi**2 / 3.0)


class Gumbel(_LocScale):
    """Gumbel(loc, scale) (max-stable): eps = -log(-log u), u ~ U(0, 1)."""

    def sample_noise(self, sample_shape=()) -> Tensor:
        return -torch.log(-torch.log(_uniform_open(self._noise_shape(sample_shape), self.loc)))

    def _base_log_prob(self, eps: Tensor) -> Tensor:
        return -(eps + torch.exp(-eps))

    def _entropy_elementwise(self) -> Tensor:
        return self.scale.log() + 1.0 + _EULER_GAMMA

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * _EULER_GAMMA

    @property
    def variance(self) -> Tensor:
        return self.scale.square() * (math.pi**2 / 6.0)


class LogNormal(Normal):
    """exp(N(loc, scale^2)): z = exp(loc + scale * eps)."""

    def transform(self, eps: Tensor) -> Tensor:
        return torch.exp(self.loc + self.scale * eps)

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        log_x = value.log()
        return self._base_log_prob((log_x - self.loc) / self.scale) - self.scale.log() - log_x

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        # log|dz/deps| = log(scale) + (loc + scale * eps): no log of the (possibly overflowing) sample
        return self._base_log_prob(eps) - self.scale.log() - (self.loc + self.scale * eps)

    def _entropy_elementwise(self) -> Tensor:
        return self.loc + 0.5 + _HALF_LOG_2PI + self.scale.log()

    @property
    def mean(self) -> Tensor:
        return torch.exp(self.loc + 0.5 * self.scale.square())

    @property
    def stddev(self) -> Tensor:
        return self.variance.sqrt()

    @property
    def variance(self) -> Tensor:
        s2 = self.scale.square()
        return torch.expm1(s2) * torch.exp(2.0 * self.loc + s2)


class GumbelSoftmax(ReparamDistribution):
    """Concrete / relaxed one-hot categorical (Maddison et al. 2017; Jang et al. 2017).

    eps = Gumbel(0, 1) noise of shape (..., K); y = softmax((logits + eps) / temperature).
    Everything is computed in log-space (log_softmax), so temperatures down to 0.01 stay finite.
    ``hard=True`` is the straight-through estimator: the sample is exactly one-hot in the forward
    pass, and its gradient is the relaxed sample's gradient.
    """

    def __init__(self, logits: Tensor, temperature: float | Tensor = 1.0, hard: bool = False,
                 validate_args: bool | None = None):
        logits = _as_tensor(logits)
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the K categories, last)")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalised log-probabilities
        self.temperature = _as_tensor(temperature, logits)
        self.hard = hard
        super().__init__(logits.shape, 1, validate_args)
        self._check_positive("temperature", self.temperature)

    @property
    def _param(self) -> Tensor:
        return self.logits

    @property
    def probs(self) -> Tensor:
        return self.logits.exp()

    def sample_noise(self, sample_shape=()) -> Tensor:
        u = _uniform_open(self._noise_shape(sample_shape), self.logits)
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
        """Concrete log-density of a relaxed sample y (the density of log y minus sum log y)."""
        log_y = value.clamp_min(torch.finfo(value.dtype).tiny).log()
        return self._exp_concrete_log_prob(log_y) - log_y.sum(-1)

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        if self.hard:
            raise ValueError("a hard (straight-through) sample has no density; use hard=False")
        eps = self.sample_noise(sample_shape)
        log_y = self.log_transform(eps)  # log-space all the way: finite at low temperature
        return log_y.exp(), self._exp_concrete_log_prob(log_y) - log_y.sum(-1)

    def categorical(self) -> OneHotCategorical:
        """The discrete distribution being relaxed (for score-function estimators)."""
        return OneHotCategorical(logits=self.logits, validate_args=False)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError("the Concrete distribution has no closed-form mean")


def _box_constants(low, high, like: Tensor, validate: bool) -> tuple[Tensor, ...]:
    """low, high, mid = (high + low) / 2, half = (high - low) / 2 and log(half), in like's dtype/device."""
    low = _as_tensor(low, like).to(like)
    high = _as_tensor(high, like).to(like)
    if validate:  # these checks sync the device: off on the hot path
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("low and high must be finite: a tanh policy cannot cover an unbounded box")
        if not bool((high > low).all()):
            raise ValueError("low must be < high in every dimension")
    half = 0.5 * (high - low)
    return low, high, 0.5 * (high + low), half, half.log()


class SquashBox(nn.Module):
    """The box [low, high] that a ``TanhNormal`` squashes into, with its constants computed once.

    ``TanhNormal(loc, scale, box=box)`` is ``TanhNormal(loc, scale, low, high)`` without the per-call
    work on the bounds (a policy builds one distribution per step). A module, so that it follows its
    owner's ``.to(device)``. Buffers: low, high, mid = (high + low) / 2, half_range = (high - low) / 2,
    log_half_range = log(half_range), and log_volume = sum(log_half_range), the log-det of the rescaling.
    """

    def __init__(self, low: Tensor | Number, high: Tensor | Number):
        super().__init__()
        like = high if isinstance(high, Tensor) else low if isinstance(low, Tensor) else None
        if like is None or not like.is_floating_point():
            like = torch.empty((), dtype=torch.get_default_dtype(), device=None if like is None else like.device)
        low, high, mid, half, log_half = _box_constants(low, high, like, validate=True)
        for name, value in (("low", low), ("high", high), ("mid", mid), ("half_range", half),
                            ("log_half_range", log_half), ("log_volume", log_half.sum())):
            self.register_buffer(name, value.clone())

    def extra_repr(self) -> str:
        return f"low={self.low.tolist()}, high={self.high.tolist()}"


class TanhNormal(ReparamDistribution):
    """Tanh-squashed diagonal Gaussian, optionally rescaled to the box [low, high].

    u = loc + scale * eps, a = tanh(u), action = low + (a + 1) (high - low) / 2.
    log q(action) = log N(u) - sum log(1 - tanh(u)^2) - sum log((high - low) / 2), with
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): exact and finite for any |u|.
    One event dim by default (the action vector), so ``log_prob`` returns one value per action.
    Bounds: ``low`` and ``high``, or a ``SquashBox`` (``box=``) that holds their constants precomputed.
    """

    def __init__(self, loc, scale, low=None, high=None, event_dims: int = 1,
                 validate_args: bool | None = None, box: SquashBox | None = None):
        self.loc, self.scale = _broadcast_loc_scale(loc, scale)
        self._base = None
        if (low is None) != (high is None):
            raise ValueError("give both low and high action bounds, or neither")
        if box is not None and low is not None:
            raise ValueError("give the bounds either as low and high or as box, not both")
        self._validate = _DEFAULT_VALIDATE if validate_args is None else bool(validate_args)
        if low is not None:
            low, high, mid, half, log_half = _box_constants(low, high, self.loc, self._validate)
        elif box is not None:  # constants computed once by the box: no per-call work
            low, high, mid, half, log_half = box.low, box.high, box.mid, box.half_range, box.log_half_range
        else:
            low = high = mid = half = log_half = None
        self.low, self.high, self._mid, self._half_range, self._log_half_range = low, high, mid, half, log_half
        log_volume = 0.0  # sum over the event of log((high - low) / 2)
        if box is not None and event_dims == 1 and box.log_half_range.shape == self.loc.shape[-1:]:
            log_volume = box.log_volume
        elif log_half is not None:
            log_volume = _sum_rightmost(log_half.expand(self.loc.shape), event_dims)
        super().__init__(self.loc.shape, event_dims, validate_args)
        self._check_positive("scale", self.scale)
        # Constant part of log q per event: -(log sqrt(2 pi) + 2 log 2) per dim - log volume.
        self._log_q_const = -(_HALF_LOG_2PI + 2 * _LOG2) * self.event_shape.numel() - log_volume

    @property
    def base(self) -> Normal:
        """The Gaussian before the squash, N(loc, scale^2) elementwise."""
        if self._base is None:
            self._base = Normal(self.loc, self.scale, validate_args=False)
        return self._base

    @property
    def _param(self) -> Tensor:
        return self.loc

    def sample_noise(self, sample_shape=()) -> Tensor:
        return self.base.sample_noise(sample_shape)

    def _squash(self, u: Tensor) -> Tensor:
        a = torch.tanh(u)
        return a if self.low is None else torch.addcmul(self._mid, self._half_range, a)

    def transform(self, eps: Tensor) -> Tensor:
        return self._squash(self.base.transform(eps))

    @staticmethod
    def log_abs_det_jacobian(u: Tensor) -> Tensor:
        """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), elementwise."""
        return 2.0 * (_LOG2 - u - F.softplus(-2.0 * u))

    def _log_det(self, u: Tensor) -> Tensor:
        ld = self.log_abs_det_jacobian(u)
        return ld if self._log_half_range is None else ld + self._log_half_range

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        u = self.base.transform(eps)
        return self.base._log_prob_from_noise(eps, u) - self._log_det(u)

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        a = value if self.low is None else (value - self._mid) / self._half_range
        bound = 1.0 - torch.finfo(a.dtype).eps  # boundary actions (|a| = 1) get a finite density
        u = torch.atanh(a.clamp(-bound, bound))
        return self.base._log_prob_elementwise(u) - self._log_det(u)

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        # The SAC hot path: eps -> u -> action with the log-density from eps (nothing inverted), as
        # one autograd node whose backward is the closed form below (half the time of ~10 ops).
        eps = torch.randn(self._noise_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        half = self._half_range if self.low is not None else None
        mid = self._mid if self.low is not None else None
        return _TanhGaussianSample.apply(self.loc, self.scale, eps, mid, half, self.event_dims, self._log_q_const)

    @property
    def mode(self) -> Tensor:
        """The deterministic action squash(loc), used for evaluation."""
        return self._squash(self.loc)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError("TanhNormal has no closed-form mean; use .mode or a sample average")


_ONES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _one_like(x: Tensor) -> Tensor:
    """A cached 0-dim tensor 1 of x's dtype and device (creating one per call costs a dispatch)."""
    key = (x.dtype, x.device)
    if key not in _ONES:
        _ONES[key] = torch.ones((), dtype=x.dtype, device=x.device)
    return _ONES[key]


class _TanhGaussianSample(torch.autograd.Function):
    """Fused tanh-Gaussian reparameterized sample and log-density (few ops: each costs ~10 us here).

    forward:  u = mu + sigma eps,  a = tanh(u),  action = mid + half a,
              log q = const - sum_event [log sigma + eps^2 / 2 - 2 (u + softplus(-2u))],
              where u + softplus(-2u) = log(e^u + e^-u) = logaddexp(u, -u): the same exact, stable
              quantity as ``log_abs_det_jacobian``'s softplus form (-log(1 - tanh^2 u) = 2 that - 2 log 2).
    backward: d action / du = half (1 - a^2),  d log q / du = 2 tanh(u) = 2a,  d log q / d sigma |_u = -1/sigma
              so g_u = g_action half (1 - a^2) + 2 a g_logq,  g_mu = g_u,  g_sigma = g_u eps - g_logq / sigma.
    """

    @staticmethod
    def forward(ctx, loc, scale, eps, mid, half, event_dims, const):
        u = torch.addcmul(loc, scale, eps)
        a = torch.tanh(u)
        neg_log_q = torch.sub(torch.addcmul(scale.log(), eps, eps, value=0.5), torch.logaddexp(u, -u), alpha=2.0)
        log_q = torch.rsub(_sum_rightmost(neg_log_q, event_dims), const)
        action = a if half is None else torch.addcmul(mid, half, a)
        ctx.save_for_backward(a, eps, scale, half)
        ctx.event_dims = event_dims
        ctx.loc_shape = loc.shape
        return action, log_q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_action, g_log_q):
        a, eps, scale, half = ctx.saved_tensors
        g_lq = g_log_q.reshape(g_log_q.shape + (1,) * ctx.event_dims)  # broadcast over the event dims
        dadu = torch.addcmul(_one_like(a), a, a, value=-1.0)  # 1 - a^2 in one op
        if half is not None:
            dadu = dadu.mul_(half)
        g_u = torch.addcmul(g_action * dadu, a, g_lq, value=2.0)
        g_scale = torch.addcdiv(g_u * eps, g_lq, scale, value=-1.0)
        n_lead = g_u.dim() - len(ctx.loc_shape)  # sample dims in front of the parameters' shape
        if n_lead:
            g_u, g_scale = g_u.sum(tuple(range(n_lead))), g_scale.sum(tuple(range(n_lead)))
        return g_u, g_scale, None, None, None, None, None
