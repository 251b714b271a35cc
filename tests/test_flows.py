"""Normalizing flows: every log-determinant against the autograd Jacobian, the noise-side log-density
against the inverse, round trips, samples against the density (KS in 1-D, importance-sampled moments in
2-D), large inputs, and bad configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.func import jacrev, vmap

from reparam_apps.flows import (
    FLOW_KINDS,
    AffineCoupling,
    Flow,
    IAFTransform,
    PlanarTransform,
    Reverse,
    SplineCoupling,
    make_flow,
    rational_quadratic_spline,
    spline_parameters,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(module: torch.nn.Module, std: float, seed: int) -> None:
    """Random parameters (the default init makes coupling steps the identity, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _step(kind: str, dim: int, context_dim: int, seed: int = 0, reverse: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "planar":
        t = PlanarTransform(dim, context_dim)
    elif kind == "iaf":
        t = IAFTransform(dim, (16, 16), context_dim, reverse=reverse)
    elif kind == "affine":
        t = AffineCoupling(dim, (16,), context_dim, swap=reverse)
    else:
        t = SplineCoupling(dim, (16,), context_dim, swap=reverse, bins=5, bound=3.0)
    t = t.double()
    _randomize(t, 0.4, seed)
    return t


CASES = [(k, c, r) for k in FLOW_KINDS for c in (0, 3) for r in (False, True)]


@pytest.mark.parametrize("kind, context_dim, reverse", CASES)
def test_log_det_matches_the_autograd_jacobian(kind, context_dim, reverse):
    dim = 4
    t = _step(kind, dim, context_dim, reverse=reverse)
    torch.manual_seed(1)
    z = torch.randn(6, dim, dtype=torch.float64) * 1.5
    c = torch.randn(6, context_dim, dtype=torch.float64) if context_dim else None
    y, log_det = t(z, c)

    def f(zi, ci):
        return t(zi.unsqueeze(0), None if ci is None else ci.unsqueeze(0))[0].squeeze(0)

    jac = vmap(jacrev(f), in_dims=(0, 0 if c is not None else None))(z, c)  # (6, D, D)
    ref = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(log_det, ref, rtol=1e-9, atol=1e-9)
    if kind in ("iaf", "affine", "spline"):  # triangular (up to the order): a structure check too
        assert torch.linalg.slogdet(jac).sign.gt(0).all()


@pytest.mark.parametrize("kind, context_dim, reverse", CASES)
def test_inverse_round_trip_and_its_log_det(kind, context_dim, reverse):
    t = _step(kind, 3, context_dim, seed=2, reverse=reverse)
    torch.manual_seed(3)
    z = torch.randn(50, 3, dtype=torch.float64) * 2
    c = torch.randn(50, context_dim, dtype=torch.float64) if context_dim else None
    y, log_det = t(z, c)
    z_back, log_det_back = t.inverse(y, c)
    torch.testing.assert_close(z_back, z, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(log_det_back, log_det, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_noise_side_log_density_equals_the_inverse_one(kind):
    torch.manual_seed(4)
    flow = make_flow(kind, 3, steps=3, context_dim=2, hidden=(16,)).double()
    _randomize(flow, 0.3, 5)
    loc, scale = torch.randn(7, 3, dtype=torch.float64), torch.rand(7, 3, dtype=torch.float64) + 0.5
    q = flow(loc, scale, context=torch.randn(7, 2, dtype=torch.float64))
    z, log_q = q.rsample_and_log_prob((11,))
    assert z.shape == (11, 7, 3) and log_q.shape == (11, 7)
    torch.testing.assert_close(q.log_prob(z), log_q, rtol=1e-8, atol=1e-8)
    # the noise and transform steps, visible as in every family
    torch.manual_seed(6)
    eps = q.sample_noise((2,))
    torch.manual_seed(6)
    torch.testing.assert_close(q.transform(eps), q.rsample((2,)))


def _grid_cdf(log_density, lo: float, hi: float, n: int = 20001):
    grid = torch.linspace(lo, hi, n, dtype=torch.float64)
    dens = log_density(grid).exp().numpy()
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid.numpy()))])
    return grid.numpy(), cdf


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_one_dim_samples_follow_the_density(kind):
    """KS test of 20k samples against the CDF integrated (trapezoid) from the flow's own log-density: a wrong
    log-det gives a density that does not integrate to the samples' law (or not to 1)."""
    torch.manual_seed(7)
    steps = [PlanarTransform.from_parameters(torch.tensor([2.0]), torch.tensor([1.5]), 0.3),
             PlanarTransform.from_parameters(torch.tensor([-1.5]), torch.tensor([-0.6]), -0.5)]
    if kind == "iaf":  # D = 1: each step is affine in z with (m, s) from the context only
        steps = [IAFTransform(1, (8,), context_dim=2), Reverse(1), IAFTransform(1, (8,), context_dim=2)]
        for s in steps:
            _randomize(s, 0.8, 8)
    flow = Flow(steps).double()
    c = torch.randn(2, dtype=torch.float64) if kind == "iaf" else None
    q = flow(torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64), context=c)
    with torch.no_grad():
        z = q.sample((20_000,)).squeeze(-1).numpy()
        grid, cdf = _grid_cdf(lambda x: q.log_prob(x.unsqueeze(-1)), z.min() - 3, z.max() + 3)
    assert cdf[-1] == pytest.approx(1.0, abs=1e-4)  # the density integrates to 1
    result = stats.kstest(z, lambda x: np.interp(x, grid, cdf))
    assert result.pvalue > 1e-3, result  # fixed seed; a wrong log-det moves the law by far more


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_two_dim_moments_of_samples_match_the_density(kind):
    """E_q[z] and E_q[z z^T] from 40k samples against importance sampling of the density (40k draws from a
    wide Gaussian p: E_q[g] = E_p[g q / p]); also E_p[q / p] = 1. Tolerance: 5 combined standard errors."""
    torch.manual_seed(9)
    flow = make_flow(kind, 2, steps=2, hidden=(16,)).double()
    _randomize(flow, 0.5, 10)
    q = flow(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    n = 40_000
    with torch.no_grad():
        z = q.sample((n,))
        feats = lambda x: torch.stack([x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1]], 1)  # noqa: E731
        fz = feats(z)
        mean_q, se_q = fz.mean(0), fz.std(0) / math.sqrt(n)
        spread = float(z.std(0).max()) * 2.5 + float(z.mean(0).abs().max())
        p = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), spread)
        x = p.sample((n,))
        w = (q.log_prob(x) - p.log_prob(x).sum(-1)).exp()
        assert w.mean().item() == pytest.approx(1.0, abs=5 * w.std().item() / math.sqrt(n))
        wf = w[:, None] * feats(x)
        mean_is, se_is = wf.mean(0), wf.std(0) / math.sqrt(n)
    assert ((mean_q - mean_is).abs() <= 5 * (se_q.square() + se_is.square()).sqrt()).all(), (mean_q, mean_is)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_large_inputs_stay_finite(kind):
    t = _step(kind, 4, 0, seed=11).float()
    z = torch.tensor([[1e4, -1e4, 3e3, -7e2], [1e6, 0.0, -1e6, 1.0]])
    y, log_det = t(z)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    z_back, _ = t.inverse(y)
    assert torch.isfinite(z_back).all()
    flow = make_flow(kind, 4, steps=2)
    z2, log_q = flow(torch.full((3, 4), 1e3), torch.full((3, 4), 1e2)).rsample_and_log_prob()
    assert torch.isfinite(z2).all() and torch.isfinite(log_q).all()


def test_spline_matches_its_derivative_and_is_identity_outside():
    torch.manual_seed(12)
    knots = spline_parameters(torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64),
                              torch.randn(8, 5, dtype=torch.float64), bound=2.0)
    x = torch.linspace(-3, 3, 8, dtype=torch.float64).requires_grad_()
    y, log_det = rational_quadratic_spline(x, *knots)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_det, grad.log(), rtol=1e-10, atol=1e-10)
    assert y[0] == x[0] and y[-1] == x[-1] and log_det[0] == 0 and log_det[-1] == 0
    assert (knots[0][:, 0] == -2).all() and (knots[1][:, -1] == 2).all()


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="needs dim >= 2"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="needs dim >= 2"):
        SplineCoupling(1)
    with pytest.raises(ValueError, match=r"w\^T u = -2 < -1 is not invertible"):
        PlanarTransform.from_parameters(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0]))
    with pytest.raises(ValueError, match="at least one step"):
        make_flow("iaf", 2, steps=0)
    with pytest.raises(ValueError, match="at least one transform"):
        Flow([])
    with pytest.raises(ValueError, match="unknown flow kind 'maf'"):
        make_flow("maf", 2, 1)
    flow = make_flow("iaf", 2, steps=1, context_dim=3)
    with pytest.raises(ValueError, match="expects a context of size 3"):
        flow(torch.zeros(4, 2), context=torch.zeros(4, 5))
    with pytest.raises(ValueError, match="needs a context of size 3"):
        flow(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="has dim 2 but the base has event size 3"):
        flow(torch.zeros(4, 3), context=torch.zeros(4, 3))


def test_default_planar_is_invertible_whatever_u():
    t = PlanarTransform(3)
    with torch.no_grad():
        t.w.copy_(torch.tensor([1.0, 0.0, 0.0]))
        t.u.copy_(torch.tensor([-5.0, 0.0, 0.0]))  # w^T u = -5: corrected to u_hat with w^T u_hat > -1
    z = torch.linspace(-3, 3, 101).unsqueeze(-1) * torch.tensor([1.0, 0.0, 0.0])
    y, log_det = t(z)
    assert (y[1:, 0] > y[:-1, 0]).all() and torch.isfinite(log_det).all()
    # at w^T z + b = 0, h' = 1: log det = log(1 + w^T u_hat) = log(softplus(w^T u)) (appendix A's m(x))
    _, at_zero = t(torch.zeros(1, 3))
    torch.testing.assert_close(at_zero, torch.log(torch.nn.functional.softplus(torch.tensor([-5.0]))))
