"""Coupling flows: half of the coordinates, unchanged, condition an invertible map of the other half.

Affine coupling (RealNVP, Dinh et al. 2017, eq. 7-8), with x = (x_a, x_b):

    y_a = x_a,  y_b = x_b * exp(s(x_a, c)) + t(x_a, c),  log |det| = sum s(x_a, c)

Rational-quadratic spline coupling (Durkan et al. 2019): y_b = RQS(x_b; theta(x_a, c)), per coordinate,
with the spline of ``spline.py``. Both invert in closed form, in one network pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FlowTransform, check_context
from .spline import rational_quadratic_spline, spline_parameters

__all__ = ["AffineCoupling", "SplineCoupling"]


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    last = nn.Linear(n_in, n_out)
    nn.init.zeros_(last.weight)  # each step starts as the identity
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class _Coupling(FlowTransform):
    """Splits the D coordinates into the conditioning half (kept) and the transformed half."""

    def __init__(self, dim: int, context_dim: int, n_params: int, hidden: tuple[int, ...], swap: bool):
        super().__init__(dim, context_dim)
        if dim < 2:
            raise ValueError(f"{type(self).__name__} needs dim >= 2 (it transforms one half given the other), "
                             f"got dim={dim}: use PlanarTransform or IAFTransform for a 1-d flow")
        n_a = dim // 2
        idx = torch.arange(dim)
        keep, change = (idx[n_a:], idx[:n_a]) if swap else (idx[:n_a], idx[n_a:])
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("change", change, persistent=False)
        self.n_params = n_params
        self.net = _mlp(keep.numel() + context_dim, hidden, n_params * change.numel())

    def _theta(self, x: Tensor, context: Tensor | None) -> Tensor:
        check_context(context, self.context_dim, type(self).__name__)
        inp = x[..., self.keep]
        if context is not None:
            inp = torch.cat([inp, context], -1)
        return self.net(inp).unflatten(-1, (self.change.numel(), self.n_params))  # (..., D_b, P)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        theta = self._theta(x, context)
        yb, log_det = self._map(x[..., self.change], theta, inverse)
        y = x.clone()
        y[..., self.change] = yb
        return y, log_det.sum(-1)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, context, inverse=True)

    def _map(self, xb: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class AffineCoupling(_Coupling):
    """RealNVP affine coupling; s is soft-clamped to (-clamp, clamp) so exp(s) cannot overflow.

    Args:
        dim: D (>= 2).
        hidden: widths of the conditioner MLP.
        context_dim: C.
        swap: transform the first half instead of the second (alternate between steps).
        clamp: bound on |s|.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64), context_dim: int = 0, swap: bool = False,
                 clamp: float = 3.0):
        super().__init__(dim, context_dim, 2, hidden, swap)
        self.clamp = clamp

    def _map(self, xb: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        s = self.clamp * torch.tanh(theta[..., 0] / self.clamp)
        t = theta[..., 1]
        if inverse:
            return (xb - t) * torch.exp(-s), s
        return xb * torch.exp(s) + t, s


class SplineCoupling(_Coupling):
    """Rational-quadratic spline coupling (Neural Spline Flows).

    Args:
        dim: D (>= 2).
        hidden: widths of the conditioner MLP.
        context_dim: C.
        swap: transform the first half instead of the second.
        bins: K.
        bound: B, the spline acts on [-B, B] (identity outside).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64), context_dim: int = 0, swap: bool = False,
                 bins: int = 8, bound: float = 5.0):
        if bins < 2:
            raise ValueError(f"SplineCoupling needs bins >= 2, got {bins}")
        super().__init__(dim, context_dim, 3 * bins - 1, hidden, swap)
        self.bins, self.bound = bins, bound

    def _map(self, xb: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.bins
        knots = spline_parameters(theta[..., :k], theta[..., k:2 * k], theta[..., 2 * k:], self.bound)
        return rational_quadratic_spline(xb, *knots, inverse=inverse)
