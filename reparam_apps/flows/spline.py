"""Monotone rational-quadratic spline (Durkan et al. 2019, "Neural Spline Flows", sec. 3.1 and app. A).

On [-B, B] the spline has K bins with knots (x^k, y^k) and derivatives delta^k > 0 at the knots; outside
it is the identity (derivatives 1 at the boundary knots make the joins smooth). Within bin k, with
xi = (x - x^k) / w^k, s^k = h^k / w^k:

    y = y^k + h^k [s^k xi^2 + delta^k xi (1 - xi)] / [s^k + (delta^{k+1} + delta^k - 2 s^k) xi (1 - xi)]     (4)
    dy/dx = (s^k)^2 [delta^{k+1} xi^2 + 2 s^k xi (1 - xi) + delta^k (1 - xi)^2] / [denominator of (4)]^2        (5)

and the inverse solves a quadratic a xi^2 + b xi + c = 0 for xi in [0, 1] (eq. 6-8), taking the root
2c / (-b - sqrt(b^2 - 4ac)), stable where a is near 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["spline_parameters", "rational_quadratic_spline"]


def spline_parameters(raw_widths: Tensor, raw_heights: Tensor, raw_derivatives: Tensor, bound: float,
                      min_bin: float = 1e-3, min_derivative: float = 1e-3) -> tuple[Tensor, ...]:
    """Unconstrained network outputs (..., K), (..., K), (..., K-1) -> knots and derivatives.

    Returns:
        x_knots, y_knots: (..., K+1) from -B to B, increasing; derivatives: (..., K+1), 1 at both ends.
    """
    k = raw_widths.shape[-1]
    widths = min_bin + (1 - min_bin * k) * F.softmax(raw_widths, dim=-1)
    heights = min_bin + (1 - min_bin * k) * F.softmax(raw_heights, dim=-1)
    x_knots = F.pad(torch.cumsum(widths, -1), (1, 0)) * (2 * bound) - bound
    y_knots = F.pad(torch.cumsum(heights, -1), (1, 0)) * (2 * bound) - bound
    x_knots = torch.cat([x_knots[..., :-1], x_knots.new_full(x_knots[..., -1:].shape, bound)], -1)
    y_knots = torch.cat([y_knots[..., :-1], y_knots.new_full(y_knots[..., -1:].shape, bound)], -1)
    inner = min_derivative + F.softplus(raw_derivatives)
    ones = inner.new_ones(inner.shape[:-1] + (1,))
    derivatives = torch.cat([ones, inner, ones], -1)
    return x_knots, y_knots, derivatives


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return t.gather(-1, idx).squeeze(-1)


def rational_quadratic_spline(x: Tensor, x_knots: Tensor, y_knots: Tensor, derivatives: Tensor,
                              inverse: bool = False) -> tuple[Tensor, Tensor]:
    """Apply the spline (or its inverse) elementwise; identity outside [x_0, x_K].

    Args:
        x: (...,) inputs (outputs of the forward when ``inverse``).
        x_knots, y_knots, derivatives: (..., K+1) from ``spline_parameters``.
        inverse: invert instead.
    Returns:
        (y, log|dy/dx|) of the forward map, each (...,); for the inverse, (x, log|dy/dx| at that x).
    """
    lo, hi = x_knots[..., 0], x_knots[..., -1]
    inside = (x > lo) & (x < hi)
    knots_in = y_knots if inverse else x_knots
    xc = x.clamp(lo, hi).unsqueeze(-1)  # outside values are placed in a valid bin and replaced below
    idx = (torch.searchsorted(knots_in[..., 1:-1].contiguous(), xc.contiguous(), right=True)).clamp(
        0, x_knots.shape[-1] - 2)
    x_k, x_k1 = _gather(x_knots, idx), _gather(x_knots, idx + 1)
    y_k, y_k1 = _gather(y_knots, idx), _gather(y_knots, idx + 1)
    d_k, d_k1 = _gather(derivatives, idx), _gather(derivatives, idx + 1)
    w, h = x_k1 - x_k, y_k1 - y_k
    s = h / w
    xv = xc.squeeze(-1)
    if not inverse:
        xi = (xv - x_k) / w
        out = None
    else:
        dy = xv - y_k
        c_mix = d_k1 + d_k - 2 * s
        a = h * (s - d_k) + dy * c_mix
        b = h * d_k - dy * c_mix
        c = -s * dy
        disc = (b.square() - 4 * a * c).clamp_min(0)
        xi = (2 * c) / (-b - disc.sqrt())
        xi = xi.clamp(0, 1)
        out = x_k + xi * w
    one_m = xi * (1 - xi)
    denom = s + (d_k1 + d_k - 2 * s) * one_m
    if out is None:
        out = y_k + h * (s * xi.square() + d_k * one_m) / denom  # eq. 4
    deriv = s.square() * (d_k1 * xi.square() + 2 * s * one_m + d_k * (1 - xi).square()) / denom.square()  # eq. 5
    log_det = torch.where(inside, deriv.log(), torch.zeros_like(deriv))
    return torch.where(inside, out, x), log_det
