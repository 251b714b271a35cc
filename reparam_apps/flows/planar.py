"""Planar flow (Rezende and Mohamed 2015, "Variational Inference with Normalizing Flows", sec. 4.1).

    f(z) = z + u_hat h(w^T z + b),  h = tanh                                               (10)
    log |det df/dz| = log |1 + u_hat^T psi(z)|,  psi(z) = h'(w^T z + b) w                  (11-12)
    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2,  m(x) = -1 + softplus(x)  (so w^T u_hat > -1)  (appendix A)

w^T u_hat > -1 makes f invertible. The inverse has no closed form but is a monotone scalar equation:
with a = w^T z, w^T y = a + (w^T u_hat) h(a + b); solve for a by bisection, then z = y - u_hat h(a + b).
With a context, (w, u, b) are offsets computed from it by a linear map (amortized, as in Sylvester flows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FlowTransform, check_context

__all__ = ["PlanarTransform"]


class PlanarTransform(FlowTransform):
    """One planar step (eq. 10), invertible by construction (u_hat).

    Args:
        dim: D.
        context_dim: C; with C > 0, (w, u, b) get context-dependent offsets.
        init_scale: std of the initial w and u.
    """

    def __init__(self, dim: int, context_dim: int = 0, init_scale: float = 0.1):
        super().__init__(dim, context_dim)
        self.w = nn.Parameter(torch.randn(dim) * init_scale)
        self.u = nn.Parameter(torch.randn(dim) * init_scale)
        self.b = nn.Parameter(torch.zeros(()))
        self.hyper = nn.Linear(context_dim, 2 * dim + 1) if context_dim > 0 else None
        if self.hyper is not None:
            nn.init.zeros_(self.hyper.weight)
            nn.init.zeros_(self.hyper.bias)

    @classmethod
    def from_parameters(cls, w: Tensor, u: Tensor, b: float | Tensor = 0.0) -> PlanarTransform:
        """A planar step with these exact (w, u, b), applied as given (no u_hat correction): refused unless
        w^T u >= -1, the condition for an invertible f."""
        w, u = torch.as_tensor(w, dtype=torch.get_default_dtype()), torch.as_tensor(u, dtype=torch.get_default_dtype())
        if w.shape != u.shape or w.ndim != 1:
            raise ValueError(f"w and u must be vectors of one size, got {tuple(w.shape)} and {tuple(u.shape)}")
        if float(w @ u) < -1:
            raise ValueError(f"planar flow with w^T u = {float(w @ u):.4g} < -1 is not invertible: use u with "
                             "w^T u >= -1 (or the default construction, which enforces it)")
        step = cls(int(w.shape[0]))
        step.exact = True
        with torch.no_grad():
            step.w.copy_(w)
            step.u.copy_(u)
            step.b.fill_(float(b))
        return step

    exact = False  # True: use u as given (checked invertible at construction)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        check_context(context, self.context_dim, "PlanarTransform")
        w, u, b = self.w, self.u, self.b
        if self.hyper is not None:
            dw, du, db = self.hyper(context).split([self.dim, self.dim, 1], dim=-1)
            w, u, b = w + dw, u + du, b + db.squeeze(-1)
        if not self.exact:
            wu = (w * u).sum(-1, keepdim=True)
            u = u + (F.softplus(wu) - 1.0 - wu) * w / w.square().sum(-1, keepdim=True).clamp_min(1e-12)  # u_hat
        return w, u, b

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w, u, b = self._params(context)
        a = (z * w).sum(-1) + b  # (...,)
        h = torch.tanh(a)
        y = z + u * h.unsqueeze(-1)
        wu = (w * u).sum(-1)
        log_det = torch.log1p((1.0 - h.square()) * wu)  # eq. 11-12: 1 + u^T psi = 1 + h'(a) w^T u
        return y, log_det

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w, u, b = self._params(context)
        wu = (w * u).sum(-1)
        target = (y * w).sum(-1)  # w^T y = a + wu tanh(a + b), increasing in a
        spread = wu.abs() + 1.0
        lo, hi = target - spread, target + spread  # |wu tanh| <= |wu| brackets the root
        for _ in range(60):  # bisection: monotone, so 60 halvings reach float64 precision
            mid = 0.5 * (lo + hi)
            above = mid + wu * torch.tanh(mid + b) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        a = 0.5 * (lo + hi)
        h = torch.tanh(a + b)
        z = y - u * h.unsqueeze(-1)
        return z, torch.log1p((1.0 - h.square()) * wu)
