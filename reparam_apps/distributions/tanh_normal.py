"""Tanh-squashed diagonal Gaussian (the SAC policy), optionally rescaled to a box [low, high].

    u = loc + scale * eps,   a = tanh(u),   action = mid + half * a                           (1)
    log q(action) = log N(u) - sum log(1 - tanh(u)^2) - sum log half                          (2)
    log(1 - tanh(u)^2) = 2 (log 2 - |u| - softplus(-2|u|))   (exact and finite for any u)  (3)
    F(action) = Phi((atanh((action - mid) / half) - loc) / scale)   per coordinate            (4)

with mid = (high + low) / 2 and half = (high - low) / 2.
"""

from __future__ import annotations

from numbers import Number

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, constraints

from .base import (
    HALF_LOG_2PI,
    LOG2,
    ReparamDistribution,
    as_tensor,
    check_params,
    resolve_validate,
    sum_rightmost,
)
from .loc_scale import Normal, broadcast_loc_scale

__all__ = ["TanhNormal", "SquashBox", "tanh_squash"]

td = torch.distributions


def _box_constants(low, high, like: Tensor, validate: bool) -> tuple[Tensor, ...]:
    """low, high, mid = (high + low) / 2, half = (high - low) / 2 and log(half), in like's dtype/device."""
    low = as_tensor(low, like).to(like)
    high = as_tensor(high, like).to(like)
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
    """Tanh-squashed diagonal Gaussian (1)-(2), optionally rescaled to the box [low, high].

    One event dim by default (the action vector), so ``log_prob`` returns one value per action.
    ``support`` is the box (``constraints.interval(low, high)``, or [-1, 1] without bounds); under
    validation ``log_prob`` is -inf outside it, while an action on the boundary (|tanh| = 1 in float)
    gets the finite density of the nearest interior point, on every path.

    Args:
        loc, scale: the Gaussian N(loc, scale^2) before the squash (broadcast together).
        low, high: the box's bounds (both or neither; finite, low < high).
        event_dims: trailing dims that form one action (summed in ``log_prob``).
        validate_args: check loc finite, scale positive and finite, and the bounds (a device sync).
        box: a ``SquashBox`` with the bounds' constants precomputed (instead of low and high).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc, scale, low=None, high=None, event_dims: int = 1,
                 validate_args: bool | None = None, box: SquashBox | None = None):
        self.loc, self.scale = broadcast_loc_scale(loc, scale)
        self._base = None
        if (low is None) != (high is None):
            raise ValueError("give both low and high action bounds, or neither")
        if box is not None and low is not None:
            raise ValueError("give the bounds either as low and high or as box, not both")
        validate = resolve_validate(validate_args)
        if low is not None:
            low, high, mid, half, log_half = _box_constants(low, high, self.loc, validate)
        elif box is not None:  # constants computed once by the box: no per-call work
            low, high, mid, half, log_half = box.low, box.high, box.mid, box.half_range, box.log_half_range
        else:
            low = high = mid = half = log_half = None
        self.low, self.high, self._mid, self._half_range, self._log_half_range = low, high, mid, half, log_half
        super().__init__(self.loc.shape, event_dims, validate)
        if validate:
            check_params({"loc": self.loc}, {"scale": self.scale})
        log_volume = 0.0  # sum over the event of log((high - low) / 2)
        if box is not None and event_dims == 1 and box.log_half_range.shape == self.loc.shape[-1:]:
            log_volume = box.log_volume
        elif log_half is not None:
            log_volume = sum_rightmost(log_half.expand(self.loc.shape), event_dims)
        # Constant part of log q per event: -(log sqrt(2 pi) + 2 log 2) per dim - log volume.
        self._log_q_const = -(HALF_LOG_2PI + 2 * LOG2) * self.event_shape.numel() - log_volume

    @property
    def base(self) -> Normal:
        """The Gaussian before the squash, N(loc, scale^2) elementwise."""
        if self._base is None:
            self._base = Normal(self.loc, self.scale, validate_args=False)
        return self._base

    @property
    def _param(self) -> Tensor:
        return self.loc

    @property
    def _elementwise_support(self) -> constraints.Constraint:
        return constraints.interval(-1.0, 1.0) if self.low is None else constraints.interval(self.low, self.high)

    def _inside_point(self) -> Tensor | float:
        return 0.0 if self.low is None else self._mid

    def _expand_params(self, new: ReparamDistribution, shape: torch.Size) -> None:
        new.loc, new.scale, new._base = self.loc.expand(shape), self.scale.expand(shape), None
        new.low, new.high, new._mid, new._half_range = self.low, self.high, self._mid, self._half_range
        new._log_half_range = self._log_half_range
        const = self._log_q_const  # a float, or a tensor of the batch shape (or one that broadcasts to it)
        if isinstance(const, Tensor) and const.dim():
            const = const.expand(shape[: len(shape) - self.event_dims])
        new._log_q_const = const

    def sample_noise(self, sample_shape=()) -> Tensor:
        return self.base.sample_noise(sample_shape)

    def _squash(self, u: Tensor) -> Tensor:
        a = torch.tanh(u)
        return a if self.low is None else torch.addcmul(self._mid, self._half_range, a)

    def transform(self, eps: Tensor) -> Tensor:
        return self._squash(self.base.transform(eps))

    @staticmethod
    def log_abs_det_jacobian(u: Tensor) -> Tensor:
        """log(1 - tanh(u)^2) = 2 (log 2 - |u| - softplus(-2|u|)), elementwise (3) (even in u). With |u|,
        softplus only sees arguments <= 0, below torch's linear cut-off at 20 that drops log1p(e^-2|u|)."""
        abs_u = u.abs()
        return 2.0 * (LOG2 - abs_u - F.softplus(-2.0 * abs_u))

    def _log_det(self, u: Tensor) -> Tensor:
        ld = self.log_abs_det_jacobian(u)
        return ld if self._log_half_range is None else ld + self._log_half_range

    def _log_prob_from_noise(self, eps: Tensor, z: Tensor) -> Tensor:
        u = self.base.transform(eps)
        return self.base._log_prob_from_noise(eps, u) - self._log_det(u)

    def _unsquash(self, value: Tensor) -> Tensor:
        return value if self.low is None else (value - self._mid) / self._half_range

    def _log_prob_elementwise(self, value: Tensor) -> Tensor:
        # (2) through the distances to the bounds, 1 -+ a = (high - action) / half, (action - low) / half:
        # exact differences near a bound, where (action - mid) / half would round 1 - a away in float32.
        # u = atanh(a) = (log(1 + a) - log(1 - a)) / 2 and log(1 - a^2) = log(1 - a) + log(1 + a).
        # Boundary actions (|a| = 1) are clamped to |a| = 1 - eps: a finite density.
        eps = torch.finfo(value.dtype).eps
        if self.low is None:
            one_minus, one_plus = 1.0 - value, 1.0 + value
        else:
            one_minus, one_plus = (self.high - value) / self._half_range, (value - self.low) / self._half_range
        log_minus, log_plus = one_minus.clamp(eps, 2.0 - eps).log(), one_plus.clamp(eps, 2.0 - eps).log()
        u = 0.5 * (log_plus - log_minus)
        log_det = log_minus + log_plus
        if self._log_half_range is not None:
            log_det = log_det + self._log_half_range
        return self.base._log_prob_elementwise(u) - log_det

    def _cdf_elementwise(self, value: Tensor) -> Tensor:
        u = torch.atanh(self._unsquash(value).clamp(-1.0, 1.0))  # +-inf at and beyond the bounds: F = 0 or 1
        return self.base._cdf_elementwise(u)  # (4)

    def _icdf_elementwise(self, value: Tensor) -> Tensor:
        return self._squash(self.base._icdf_elementwise(value))

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        # The SAC hot path: eps -> u -> action with the log-density from eps (nothing inverted), as
        # one autograd node whose backward is the closed form below (half the time of ~10 ops).
        eps = torch.randn(self._noise_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        mid, half = (None, None) if self.low is None else (self._mid, self._half_range)
        return fused_tanh_gaussian(self.loc, self.scale, eps, mid, half, self.event_dims, self._log_q_const)

    def to_torch(self) -> Distribution:
        v = self._validate_args
        steps = [td.TanhTransform()]
        if self.low is not None:
            steps.append(td.AffineTransform(self._mid, self._half_range))
        return self._wrap_event(td.TransformedDistribution(td.Normal(self.loc, self.scale, validate_args=v), steps,
                                                           validate_args=v))

    @property
    def mode(self) -> Tensor:
        """The deterministic action squash(loc), used for evaluation. It is the density's mode only for
        small scales: for scale > ~1 the squashed density peaks elsewhere (even at both ends)."""
        return self._squash(self.loc)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError("TanhNormal has no closed-form mean; use .mode or a sample average")


def tanh_squash(u: Tensor, box: SquashBox | None = None) -> tuple[Tensor, Tensor]:
    """The squash of (1) applied to any pre-squash sample u (a flow's, say), with its exact log-det (3):

        action = mid + half tanh(u),   log |det d action / du| = sum_i [log(1 - tanh(u_i)^2) + log half_i]

    so log q(action) = log q(u) - log_det, as in (2). Shapes: u (..., A) -> action (..., A), log_det (...).
    Without a box the action is tanh(u) in [-1, 1]."""
    log_det = TanhNormal.log_abs_det_jacobian(u)  # (..., A), elementwise (3)
    if box is None:
        return torch.tanh(u), log_det.sum(-1)
    # log_half_range broadcasts: scalar bounds count once per coordinate
    return torch.addcmul(box.mid, box.half_range, torch.tanh(u)), (log_det + box.log_half_range).sum(-1)


def _fused_forward(loc, scale, eps, mid, half, event_dims: int, const) -> tuple[Tensor, Tensor, Tensor]:
    """The fused node's forward: (action, log q, a = tanh(u)). See ``_TanhGaussianSample``."""
    u = torch.addcmul(loc, scale, eps)
    a = torch.tanh(u)
    neg_log_q = torch.sub(torch.addcmul(scale.log(), eps, eps, value=0.5), torch.logaddexp(u, -u), alpha=2.0)
    log_q = torch.rsub(sum_rightmost(neg_log_q, event_dims), const)
    return (a if half is None else torch.addcmul(mid, half, a)), log_q, a


def _fused_backward(ctx, g_action: Tensor, g_log_q: Tensor) -> tuple[Tensor | None, ...]:
    """The fused node's closed-form backward from the saved (a, eps, scale, half). See ``_TanhGaussianSample``."""
    a, eps, scale, half = ctx.saved_tensors
    g_lq = g_log_q.reshape(g_log_q.shape + (1,) * ctx.event_dims)  # broadcast over the event dims
    g_u = torch.ops.aten.tanh_backward.default(g_action, a)  # g_action (1 - a^2) in one op
    if half is not None:
        g_u = g_u * half
    g_u = torch.addcmul(g_u, a, g_lq, value=2.0)
    g_scale = torch.addcdiv(g_u * eps, g_lq, scale, value=-1.0)
    n_lead = g_u.dim() - len(ctx.loc_shape)  # sample dims in front of the parameters' shape
    if n_lead:
        g_u, g_scale = g_u.sum(tuple(range(n_lead))), g_scale.sum(tuple(range(n_lead)))
    return g_u, g_scale, None, None, None, None, None


def fused_tanh_gaussian(loc, scale, eps, mid, half, event_dims: int, const) -> tuple[Tensor, Tensor]:
    """(action, log q) as one autograd node: the eager Function, or under torch.func transforms and
    torch.compile the one with a separate setup_context (which those need)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        out = _TanhGaussianSampleTransformable.apply(loc, scale, eps, mid, half, event_dims, const)
        return out[0], out[1]
    return _TanhGaussianSample.apply(loc, scale, eps, mid, half, event_dims, const)


class _TanhGaussianSample(torch.autograd.Function):
    """Fused tanh-Gaussian reparameterized sample and log-density (few ops: each costs ~10 us here).

    forward:  u = mu + sigma eps,  a = tanh(u),  action = mid + half a,
              log q = const - sum_event [log sigma + eps^2 / 2 - 2 (u + softplus(-2u))],
              where u + softplus(-2u) = log(e^u + e^-u) = logaddexp(u, -u): the same exact, stable
              quantity as ``log_abs_det_jacobian``'s softplus form (-log(1 - tanh^2 u) = 2 that - 2 log 2).
    backward: d action / du = half (1 - a^2),  d log q / du = 2 tanh(u) = 2a,  d log q / d sigma |_u = -1/sigma
              so g_u = g_action half (1 - a^2) + 2 a g_logq,  g_mu = g_u,  g_sigma = g_u eps - g_logq / sigma.
    The eager node: forward(ctx, ...) style, whose apply costs a third of the setup_context style's (that one
    binds its arguments through inspect.signature on every call: ~80 us per SAC step here).
    """

    @staticmethod
    def forward(ctx, loc, scale, eps, mid, half, event_dims, const):
        action, log_q, a = _fused_forward(loc, scale, eps, mid, half, event_dims, const)
        ctx.save_for_backward(a, eps, scale, half)
        ctx.event_dims, ctx.loc_shape = event_dims, loc.shape
        return action, log_q

    @staticmethod
    @once_differentiable
    def backward(ctx, g_action, g_log_q):
        return _fused_backward(ctx, g_action, g_log_q)


class _TanhGaussianSampleTransformable(torch.autograd.Function):
    """The same node for torch.func.vmap/grad and torch.compile: forward and setup_context separate, and with
    bounds a = tanh(u) returned as a third, non-differentiable output so that setup_context can save it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(loc, scale, eps, mid, half, event_dims, const):
        action, log_q, a = _fused_forward(loc, scale, eps, mid, half, event_dims, const)
        return (action, log_q) if half is None else (action, log_q, a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        loc, scale, eps, _, half, event_dims, _ = inputs
        if half is None:
            a = output[0]
        else:
            a = output[2]
            ctx.mark_non_differentiable(a)
        ctx.save_for_backward(a, eps, scale, half)
        ctx.event_dims, ctx.loc_shape = event_dims, loc.shape

    @staticmethod
    @once_differentiable
    def backward(ctx, g_action, g_log_q, *_):
        return _fused_backward(ctx, g_action, g_log_q)
