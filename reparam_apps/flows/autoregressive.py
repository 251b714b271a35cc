"""Inverse autoregressive flow with a MADE network (Kingma et al. 2016, "Improved Variational Inference
with Inverse Autoregressive Flow"; MADE: Germain et al. 2015).

    [m, s] = MADE(z, c),   sigma = sigmoid(s)                                              (eq. 13)
    z' = sigma * z + (1 - sigma) * m                                                         (eq. 14)
    log |det dz'/dz| = sum_i log sigma_i                                                     (eq. 15)

m_i and s_i depend on z_{<i} only (MADE's masks), so the Jacobian is triangular. Sampling and its
log-density take one network pass per step; the inverse takes D passes (one coordinate per pass).
The context c (the VAE encoder's hidden state h) enters every hidden unit, unmasked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FlowTransform, check_context

__all__ = ["MADE", "IAFTransform"]


class MaskedLinear(nn.Linear):
    """x W^T + b with a fixed 0/1 mask on W (the autoregressive connectivity)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder: outputs ``n_params`` values per coordinate i, each a function of x_{<i} (and c).

    Args:
        dim: D.
        hidden: hidden widths.
        context_dim: C (0: none).
        n_params: outputs per coordinate (2 for IAF's m and s).
        reverse: use the order D, ..., 1 instead of 1, ..., D.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64,), context_dim: int = 0, n_params: int = 2,
                 reverse: bool = False):
        super().__init__()
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer")
        self.dim, self.n_params = dim, n_params
        order = torch.arange(1, dim + 1)
        degrees_in = order.flip(0) if reverse else order  # degree of input i: its position in the order
        layers, prev = [], degrees_in
        low = min(1, dim - 1)  # D = 1: hidden units see no input, only the context
        for width in hidden:
            deg = torch.arange(width) % max(1, dim - 1) + low  # degrees in [1, D-1] (0 when D = 1)
            layers.append(MaskedLinear(prev.numel(), width, (deg[:, None] >= prev[None, :])))
            prev = deg
        out_deg = degrees_in.repeat(n_params)  # output (p, i) has the degree of input i
        self.hidden = nn.ModuleList(layers)
        self.out = MaskedLinear(prev.numel(), n_params * dim, (out_deg[:, None] > prev[None, :]))
        self.context = nn.Linear(context_dim, hidden[0], bias=False) if context_dim > 0 else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(..., D) -> (..., n_params, D)."""
        h = self.hidden[0](x)
        if self.context is not None:
            h = h + self.context(context)
        h = F.elu(h)
        for layer in self.hidden[1:]:
            h = F.elu(layer(h))
        return self.out(h).unflatten(-1, (self.n_params, self.dim))


class IAFTransform(FlowTransform):
    """One IAF step (eq. 13-15) in the numerically stable sigmoid form.

    Args:
        dim: D.
        hidden: MADE hidden widths.
        context_dim: C.
        reverse: autoregressive order D..1 (alternate it between steps).
        forget_bias: added to s so sigma starts near sigmoid(bias) (the paper's 1 or 2): each step starts
            close to the identity.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64,), context_dim: int = 0, reverse: bool = False,
                 forget_bias: float = 2.0):
        super().__init__(dim, context_dim)
        self.made = MADE(dim, hidden, context_dim, n_params=2, reverse=reverse)
        self.forget_bias = forget_bias
        self.order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)

    def _m_s(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        m, s = self.made(z, context).unbind(-2)
        # sigma >= sigmoid(-15): a smooth floor that keeps the inverse's division finite at huge inputs
        return m, F.softplus(s + self.forget_bias + 15.0) - 15.0

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_context(context, self.context_dim, "IAFTransform")
        m, s = self._m_s(z, context)
        sigma = torch.sigmoid(s)
        y = sigma * z + (1.0 - sigma) * m  # eq. 14
        return y, F.logsigmoid(s).sum(-1)  # eq. 15

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_context(context, self.context_dim, "IAFTransform")
        z = torch.zeros_like(y)
        for i in self.order.tolist():  # coordinate i needs z_{<i} only: D passes
            m, s = self._m_s(z, context)
            sigma = torch.sigmoid(s[..., i])
            z = z.clone()
            z[..., i] = (y[..., i] - (1.0 - sigma) * m[..., i]) / sigma
        m, s = self._m_s(z, context)
        return z, F.logsigmoid(s).sum(-1)
