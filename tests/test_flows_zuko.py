"""Our flows against zuko (an independent implementation), where the two can be made the same function:

* the rational-quadratic spline: our knots handed to zuko's ``MonotonicRQSTransform`` (its raw parameters
  solved from them) give the same y, log-det and inverse;
* whole coupling flows with identical conditioner weights: our ``AffineCoupling`` / ``SplineCoupling``
  chain vs zuko's ``GeneralCouplingTransform`` chain (same halves, same context input, our scale / knot
  parameterization as zuko's univariate map), composed so that zuko samples in our direction. The sample,
  our noise-side log-density (eq. 1 of base.py, nothing inverted) and zuko's ``log_prob`` (which inverts)
  agree.

Skipped when zuko is not installed (``pip install -e ".[flows]"``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import AffineTransform

from reparam_apps.flows import AffineCoupling, Flow, SplineCoupling, rational_quadratic_spline, spline_parameters

zuko = pytest.importorskip("zuko")
from zuko.flows import MAF, GeneralCouplingTransform  # noqa: E402
from zuko.flows import Flow as ZukoFlow  # noqa: E402
from zuko.transforms import MonotonicRQSTransform  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SLOPE = 1e-12  # zuko's soft bound on its raw parameters is |raw| < -log(SLOPE) / 2 = 13.8: ours stay inside
BOUND, BINS = 3.0, 5


def _unclamp(y: torch.Tensor, limit: float) -> torch.Tensor:
    """Solve x / (1 + |x| / limit) = y for x (zuko's soft clamp of its raw spline parameters)."""
    assert (y.abs() < limit).all()
    return y / (1 - y.abs() / limit)


def _zuko_raw(x_knots, y_knots, derivatives):
    """zuko's raw (widths, heights, derivatives) whose knots are ours: softmax(w) = our bin fractions, so
    w = log(fraction) centred; exp(d) = our inner derivatives."""
    lim = -math.log(SLOPE)
    w = torch.diff(x_knots, dim=-1).log()
    h = torch.diff(y_knots, dim=-1).log()
    w, h = w - w.mean(-1, keepdim=True), h - h.mean(-1, keepdim=True)
    d = derivatives[..., 1:-1].log()
    return _unclamp(w, lim / 2), _unclamp(h, lim / 2), _unclamp(d, lim)


def _ours_as_zuko_spline(raw_w, raw_h, raw_d):
    return MonotonicRQSTransform(*_zuko_raw(*spline_parameters(raw_w, raw_h, raw_d, BOUND)), bound=BOUND,
                                 slope=SLOPE)


def test_the_spline_matches_zukos_on_the_same_knots():
    g = torch.Generator().manual_seed(0)
    n = 400
    raw = [torch.randn(n, k, generator=g, dtype=torch.float64) * 1.5 for k in (BINS, BINS, BINS - 1)]
    x = torch.randn(n, generator=g, dtype=torch.float64) * 2.5  # some outside [-B, B]: the identity there
    y, log_det = rational_quadratic_spline(x, *spline_parameters(*raw, BOUND))
    theirs = _ours_as_zuko_spline(*raw)
    y_z, log_det_z = theirs.call_and_ladj(x)
    torch.testing.assert_close(y, y_z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_det, log_det_z, rtol=1e-8, atol=1e-10)
    x_back, _ = rational_quadratic_spline(y, *spline_parameters(*raw, BOUND), inverse=True)
    torch.testing.assert_close(x_back, theirs.inv(y), rtol=1e-9, atol=1e-9)
    assert (x.abs() > BOUND).any() and (x.abs() < BOUND).sum() > n // 2


def _our_affine(s_raw, t, clamp=3.0):
    # our AffineCoupling's map as a torch Transform: y = x exp(clamp tanh(s / clamp)) + t
    return AffineTransform(t, torch.exp(clamp * torch.tanh(s_raw / clamp)))


def _pair(kind: str, dim: int, context_dim: int, steps: int, seed: int):
    """Our coupling flow with random weights, and zuko's flow with the same weights and maps."""
    torch.manual_seed(seed)
    hidden = (16, 16)
    if kind == "affine":
        ours = [AffineCoupling(dim, hidden, context_dim, swap=k % 2 == 1) for k in range(steps)]
        univariate, shapes = _our_affine, ((), ())
    else:
        ours = [SplineCoupling(dim, hidden, context_dim, swap=k % 2 == 1, bins=BINS, bound=BOUND)
                for k in range(steps)]
        univariate, shapes = _ours_as_zuko_spline, ((BINS,), (BINS,), (BINS - 1,))
    flow = Flow(ours).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.4)
    theirs = []
    for step in ours:
        mask = torch.zeros(dim, dtype=torch.bool)
        mask[step.keep] = True  # zuko: True = the half that is kept (conditions the other)
        t = GeneralCouplingTransform(dim, context_dim, mask=mask, univariate=univariate, shapes=shapes,
                                     hidden_features=hidden).double()
        with torch.no_grad():
            for p_z, p_o in zip(t.hyper.parameters(), step.net.parameters(), strict=True):
                p_z.copy_(p_o)  # both MLPs: Linear, ReLU, ..., Linear with (out, in) weights
        theirs.append(t)
    # zuko samples x = T^{-1}(eps); ours z = f_K(...f_1(eps)): so T = f_1^{-1} o ... o f_K^{-1}
    base = MAF(dim, context_dim, transforms=1).base.double()  # zuko's own N(0, I) base
    return flow, ZukoFlow([t.inv for t in reversed(theirs)], base)


@pytest.mark.parametrize("kind", ["affine", "spline"])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_coupling_flows_match_zuko_with_identical_weights(kind, context_dim):
    dim, n = 5, 64
    ours, theirs = _pair(kind, dim, context_dim, steps=3, seed=7)
    g = torch.Generator().manual_seed(3)
    c = torch.randn(n, context_dim, generator=g, dtype=torch.float64) if context_dim else None
    eps = torch.randn(n, dim, generator=g, dtype=torch.float64) * 1.3
    q = ours(torch.zeros(n, dim, dtype=torch.float64), context=c)
    q.sample_noise = lambda sample_shape=(): eps  # the same noise on both sides
    z, log_q = q.rsample_and_log_prob()  # eq. (1): from the noise, nothing inverted
    p = theirs(c) if c is not None else theirs()
    z_zuko, ladj = p.transform.inv.call_and_ladj(eps)  # zuko's rsample_and_log_prob, with our noise
    torch.testing.assert_close(z, z_zuko, rtol=1e-10, atol=1e-10)
    assert (z - eps).abs().max() > 0.5  # the flows are far from the identity
    torch.testing.assert_close(log_q, p.base.log_prob(eps) - ladj, rtol=1e-10, atol=1e-10)
    # Both log_probs invert z back to the noise; a steep spline bin amplifies float64 roundoff there
    # (up to ~1e-7 in the recovered noise for these random weights), hence the looser tolerance.
    log_p = p.log_prob(z)
    torch.testing.assert_close(log_q, log_p, rtol=0, atol=1e-6)
    torch.testing.assert_close(q.log_prob(z), log_p, rtol=0, atol=1e-6)
