"""The linear layer of SAC's fused step (``agents.update``): relu?(x W + b) with an explicit backward, on oneDNN
or ATen, optionally over a stack of rows of which only a leading part carries gradient.

Why not ``F.linear``: (1) float32 matrix products on this project's AMD (Zen 5) benchmark machine run twice as
fast on oneDNN (AVX-512) as on MKL's sgemm (its AVX2 path on non-Intel CPUs), and inductor lowers oneDNN's
linear op only for frozen weights; (2) two passes through the same weights can be ONE product of twice the rows
when their gradients differ by rows only: the actor on [s; s'] (only the s rows carry gradient: the target's
next actions are constants) and the critic on [(s, a); (s, a~)] (the weights learn from the (s, a) rows only:
the actor loss sees them as constants, while its gradient reaches a~ through the input).

    forward:   y = relu?(x W' + b),   W' = w^T for w (N, I) (nn.Linear) or w for w (I, N) (CriticEnsemble)
    backward:  g <- g * [y > 0] (relu),  dx = g W'^T (first x_rows rows; zeros below),
               dW' = x^T g and db = sum_rows g over the first w_rows rows, dW in w's own layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["linear", "onednn_available", "ONEDNN_MIN_MACS"]

ONEDNN_MIN_MACS = 1 << 21  # smaller products stay with ATen: a oneDNN call costs ~25 us more to set up
THIN = 8  # a product with an inner or outer dim up to this is written as multiply-and-sum (see ``linear``)


def onednn_available(device: torch.device) -> bool:
    """oneDNN's float32 inner product can run the linear layers (CPU builds with MKL-DNN)."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


# An operator of our own for inductor, whose lowering of ``mkldnn._linear_pointwise`` wants constant (frozen)
# weights: with only a CPU and a Meta kernel it stays an opaque call. Its gradient is _Linear's.
_LIB = torch.library.Library("reparam_sac", "DEF")
_LIB.define("inner_product(Tensor x, Tensor w, Tensor? b, bool relu, bool stored_t) -> Tensor")


def _inner_product_cpu(x: Tensor, w: Tensor, b: Tensor | None, relu: bool, stored_t: bool) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w.t() if stored_t else w, b, "relu" if relu else "none", [], "")


def _inner_product_meta(x: Tensor, w: Tensor, b: Tensor | None, relu: bool, stored_t: bool) -> Tensor:
    return x.new_empty((x.shape[0], w.shape[1] if stored_t else w.shape[0]))


_LIB.impl("inner_product", _inner_product_cpu, "CPU")
_LIB.impl("inner_product", _inner_product_meta, "Meta")


def _product(x: Tensor, w: Tensor, stored_t: bool, onednn: bool) -> Tensor:
    """x W' (no bias): W' = w (stored_t) or w^T."""
    if onednn:
        return torch.ops.reparam_sac.inner_product(x, w, None, False, stored_t)
    return x @ (w if stored_t else w.t())


class _Linear(torch.autograd.Function):
    """The layer of the module docstring, its products on oneDNN or ATen."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor, relu: bool, stored_t: bool, onednn: bool, w_rows: int | None,
                x_rows: int | None) -> Tensor:
        if onednn:
            return torch.ops.reparam_sac.inner_product(x, w, b, relu, stored_t)
        y = torch.addmm(b, x, w if stored_t else w.t())
        return y.relu() if relu else y

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, w, _, relu, stored_t, onednn, w_rows, x_rows = inputs
        ctx.relu, ctx.stored_t, ctx.onednn, ctx.w_rows, ctx.x_rows = relu, stored_t, onednn, w_rows, x_rows
        ctx.save_for_backward(x, w, output if relu else None)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w, y = ctx.saved_tensors
        if ctx.relu:
            g = torch.where(y > 0, g, 0.0)  # relu'(u) from its output: y > 0 <=> u > 0
        m = x.shape[0]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            xr = m if ctx.x_rows is None else ctx.x_rows
            gx = _product(g[:xr], w, not ctx.stored_t, ctx.onednn)  # (xr, I)
            if xr < m:  # rows without gradient
                gx = torch.cat([gx, gx.new_zeros(m - xr, gx.shape[1])])
        wr = m if ctx.w_rows is None else ctx.w_rows
        gs, xs = g[:wr], x[:wr]
        if ctx.needs_input_grad[1]:  # in w's layout, so that no transpose follows
            gw = _product(xs.t(), gs.t(), False, ctx.onednn) if ctx.stored_t else \
                _product(gs.t(), xs.t(), False, ctx.onednn)
        if ctx.needs_input_grad[2]:
            gb = gs.sum(0)
        return gx, gw, gb, None, None, None, None, None


def _thin(x: Tensor, w: Tensor, b: Tensor, relu: bool, stored_t: bool) -> Tensor:
    """relu?(x W' + b) as a broadcast multiply and a sum over I: inductor fuses it (and its gradient) with the
    elementwise work around it instead of calling a matrix-product kernel for a few thousand multiply-adds."""
    wi = w if stored_t else w.t()  # (I, N)
    y = (x.unsqueeze(-1) * wi).sum(-2) + b  # (M, I, 1) * (I, N) -> (M, N)
    return y.relu() if relu else y


def linear(x: Tensor, w: Tensor, b: Tensor, relu: bool, onednn_min_macs: int | None, stored_t: bool = False,
           w_rows: int | None = None, x_rows: int | None = None, thin: int = 0) -> Tensor:
    """relu?(x W^T + b) for w (N, I), or relu?(x W + b) for w (I, N) with ``stored_t``: x (M, I), b (N,) -> (M, N).

    Args:
        onednn_min_macs: products with at least this many multiply-adds run on oneDNN (None: never).
        w_rows: only the first w_rows rows teach W and b (None: all).
        x_rows: only the first x_rows rows carry gradient back to x (None: all; else it must equal w_rows).
        thin: a layer with I or N <= thin is a multiply-and-sum (0: never), its row ranges by detaching.
    """
    n_in, n_out = (w.shape[0], w.shape[1]) if stored_t else (w.shape[1], w.shape[0])
    if min(n_in, n_out) <= thin:
        if w_rows is None:
            return _thin(x, w, b, relu, stored_t)
        top = _thin(x[:w_rows], w, b, relu, stored_t)
        rest = x[w_rows:] if x_rows is None else x[w_rows:].detach()
        return torch.cat([top, _thin(rest, w.detach(), b.detach(), relu, stored_t)])
    onednn = onednn_min_macs is not None and x.shape[0] * n_in * n_out >= onednn_min_macs
    if not onednn and w_rows is None and x_rows is None:  # plain autograd
        y = torch.addmm(b, x, w if stored_t else w.t())
        return y.relu() if relu else y
    return _Linear.apply(x, w, b, relu, stored_t, onednn, w_rows, x_rows)
