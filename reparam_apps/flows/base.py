"""Normalizing flows as reparameterization: z = f_K o ... o f_1(mu + sigma eps; context).

A flow is the fourth use of the core's contract (after loc-scale families, Gumbel-Softmax and the squashed
Gaussian): the noise is a standard Gaussian, and all the expressivity sits in the transform. Along the
sampling path every step reports its log-determinant, so the density comes from the noise (eq. 1), with
no inversion:

    eps ~ N(0, I),   z_0 = mu + sigma * eps,   z_k = f_k(z_{k-1}; c)
    log q(z_K) = log N(eps; 0, I) - sum_i log sigma_i - sum_k log |det df_k/dz_{k-1}|        (1)

``log_prob(z)`` of a value from elsewhere inverts the chain, for transforms with a cheap inverse.
Shapes: ``...`` batch dims, D the event (latent/action) dim, C the context dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..distributions import Normal, ReparamDistribution

__all__ = ["FlowTransform", "FlowDistribution", "Flow", "Reverse", "check_context"]


def check_context(context: Tensor | None, context_dim: int, where: str) -> None:
    """A one-line error for a missing, unexpected or wrongly sized context."""
    if context_dim == 0:
        if context is not None:
            raise ValueError(f"{where} was built without a context (context_dim=0) but got one of shape "
                             f"{tuple(context.shape)}")
        return
    if context is None:
        raise ValueError(f"{where} needs a context of size {context_dim} (context_dim={context_dim}), got none")
    if context.shape[-1] != context_dim:
        raise ValueError(f"{where} expects a context of size {context_dim} in its last dim, got shape "
                         f"{tuple(context.shape)}")


def expand_context(context: Tensor | None, z: Tensor) -> Tensor | None:
    """Broadcast a (..., C) context over the sample dims of z (S..., ..., D)."""
    if context is None:
        return None
    return context.expand(*z.shape[:-1], context.shape[-1])


class FlowTransform(nn.Module):
    """One invertible step y = f(z; c). ``forward`` returns (y, log|det df/dz|) with the log-det of shape
    ``z.shape[:-1]``; ``inverse(y)`` returns (z, the same forward log-det at z). ``has_inverse`` says whether
    ``inverse`` is cheap (closed form or a few scalar iterations).

    Args:
        dim: D, the event size.
        context_dim: C, the size of the conditioning vector (0: unconditional).
    """

    has_inverse = True

    def __init__(self, dim: int, context_dim: int = 0):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be a positive integer, got {dim!r}")
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"{type(self).__name__}: context_dim must be a non-negative integer, got {context_dim!r}")
        self.dim, self.context_dim = dim, context_dim

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no cheap inverse")


class Reverse(FlowTransform):
    """Reverses the order of the D coordinates (log-det 0): alternates which half or which autoregressive
    order the next coupling or IAF step sees."""

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.flip(-1), z.new_zeros(z.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y.flip(-1), y.new_zeros(y.shape[:-1])


class FlowDistribution(ReparamDistribution):
    """q(z | c): a diagonal Gaussian base pushed through a chain of flow transforms (eq. 1).

    Args:
        loc, scale: the base Gaussian's mean and std, shape (..., D) (e.g. from an encoder).
        transforms: the flow steps, applied in order on the sampling path.
        context: (..., C) conditioning vector handed to every step (e.g. the encoder's hidden state).
        validate_args: check the base's parameters (default: the core's default).
    """

    def __init__(self, loc: Tensor, scale: Tensor, transforms: Sequence[FlowTransform],
                 context: Tensor | None = None, validate_args: bool | None = None):
        self.base = Normal(loc, scale, event_dims=1, validate_args=validate_args)
        self.transforms = list(transforms)
        self.context = context
        dim = self.base.event_shape[-1] if len(self.base.event_shape) else 1
        for t in self.transforms:
            if t.dim != dim:
                raise ValueError(f"{type(t).__name__} has dim {t.dim} but the base has event size {dim}")
            if t.context_dim:  # steps without a context (Reverse, ...) ignore it
                check_context(context, t.context_dim, type(t).__name__)
        if context is not None and not any(t.context_dim for t in self.transforms):
            check_context(context, 0, "this flow")
        super().__init__(self.base.loc.shape, 1, validate_args)

    @property
    def _param(self) -> Tensor:
        return self.base.loc

    def sample_noise(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.base.sample_noise(sample_shape)  # eps ~ N(0, I): parameter-free

    def _push(self, z: Tensor) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[:-1])
        context = expand_context(self.context, z)
        for t in self.transforms:
            z, log_det = t(z, context if t.context_dim else None)
            total = total + log_det
        return z, total

    def transform(self, eps: Tensor) -> Tensor:
        return self._push(self.base.transform(eps))[0]

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """z and log q(z) by eq. (1): from the noise and the log-dets on the sampling path, no inversion."""
        eps = self.sample_noise(sample_shape)
        z0 = self.base.transform(eps)
        log_q0 = self.base._log_prob_from_noise(eps, z0).sum(-1)  # log N(eps) - sum log sigma
        z, log_det = self._push(z0)
        return z, log_q0 - log_det

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(value): inverts the chain (each step must have a cheap inverse)."""
        z = value
        total = z.new_zeros(z.shape[:-1])
        context = expand_context(self.context, z)
        for t in reversed(self.transforms):
            if not t.has_inverse:
                raise NotImplementedError(f"{type(t).__name__} has no cheap inverse: use rsample_and_log_prob, "
                                          "which needs none")
            z, log_det = t.inverse(z, context if t.context_dim else None)
            total = total + log_det
        return self.base.log_prob(z) - total


class Flow(nn.Module):
    """A chain of flow transforms that makes ``FlowDistribution``s: ``flow(loc, scale, context)``.

    Args:
        transforms: the steps, in sampling order.
    """

    def __init__(self, transforms: Sequence[FlowTransform]):
        super().__init__()
        if len(transforms) == 0:
            raise ValueError("a flow needs at least one transform (zero flow steps is the plain Gaussian: use "
                             "reparam_apps.Normal)")
        dims = {t.dim for t in transforms}
        if len(dims) != 1:
            raise ValueError(f"every transform of a flow must have the same dim, got {sorted(dims)}")
        self.dim = dims.pop()
        self.context_dim = max(t.context_dim for t in transforms)
        self.transforms = nn.ModuleList(transforms)

    def forward(self, loc: Tensor | None = None, scale: Tensor | None = None, context: Tensor | None = None,
                validate_args: bool | None = None) -> FlowDistribution:
        """The flow distribution over a base N(loc, scale^2) (default N(0, I), batch shape from the context)."""
        if loc is None:
            batch = context.shape[:-1] if context is not None else ()
            ref = next(self.parameters(), None)
            dtype = ref.dtype if ref is not None else torch.get_default_dtype()
            device = ref.device if ref is not None else None
            loc = torch.zeros(*batch, self.dim, dtype=dtype, device=device)
        if scale is None:
            scale = torch.ones_like(loc)
        return FlowDistribution(loc, scale, list(self.transforms), context, validate_args)
