"""Learning curves on the same budget: each estimator optimises the same objective for the same steps.

Each function is ``(cfg, stop) -> {estimator: [(step, value)]}`` and re-seeds itself, like the domains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import reparam_apps as ra

from .config import CompareConfig
from .digits_vae import vae_curves
from .stats import StopRequested, never

__all__ = ["CURVE_FUNCTIONS", "CURVE_LABELS", "toy_curves", "vae_curves"]

Curves = dict[str, list[tuple[int, float]]]


def toy_curves(cfg: CompareConfig, stop: Callable[[], bool] = never, steps: int = 300) -> Curves:
    """Minimise E[(x - 2)^2] = (mu - 2)^2 + sigma^2, x ~ N(mu, sigma^2), over (mu, log sigma) from (0, 0) with
    Adam, n samples per step for every estimator; the curve is the exact objective."""
    k, n = 2.0, cfg.n_samples
    f = lambda x: (x - k) ** 2  # noqa: E731
    fac = lambda m, ls: ra.Normal(m, ls.exp(), validate_args=False)  # noqa: E731
    out = {}
    for name, est in {"pathwise": lambda p: ra.pathwise_gradient(f, fac, p, n),
                      "score": lambda p: ra.score_function_gradient(f, fac, p, n),
                      "score+loo": lambda p: ra.score_function_gradient(f, fac, p, n, "loo")}.items():
        torch.manual_seed(cfg.seed)
        mu, log_s = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([mu, log_s], lr=0.05)
        curve = []
        for step in range(steps + 1):
            if stop():
                raise StopRequested
            with torch.no_grad():
                curve.append((step, float((mu - k) ** 2 + (2 * log_s).exp())))
            g_mu, g_ls = est([mu, log_s])
            opt.zero_grad()
            mu.grad, log_s.grad = g_mu, g_ls
            opt.step()
        out[name] = curve
    return out


CURVE_FUNCTIONS: dict[str, Callable[[CompareConfig, Callable[[], bool]], Curves]] = {
    "toy": toy_curves, "vae": vae_curves}
# (x label, y label, log scale) of each domain's curves
CURVE_LABELS = {"toy": ("step", "E[(x-2)^2] (exact)", True), "vae": ("step", "test ELBO (nats)", False)}
