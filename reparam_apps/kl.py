"""KL divergences: closed forms registered in ``torch.distributions``' KL registry, Monte Carlo for the rest.

Importing ``reparam_apps`` registers, for KL(p || q) = E_p[log p - log q] (torch's argument order):

    Normal-Normal, LogNormal-LogNormal  log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2           (1)
    Laplace-Laplace                     log(b_q / b_p) + |d| / b_q + (b_p / b_q) e^(-|d| / b_p) - 1,  d = m_p - m_q (2)
    Gumbel-Gumbel                       log(b_q / b_p) + gamma (b_p / b_q - 1) + d / b_q
                                        + exp(-d / b_q + lgamma(1 + b_p / b_q)) - 1                       (3)
    TanhNormal-TanhNormal (same box)    (1): KL is invariant under the shared bijection

each between our families, ours and torch's same family (both ways), and ``Independent`` wrappers with
the same number of event dims, summed over the event dims. Any other pair with one of our families
goes through ``to_torch()`` to torch's registry (e.g. Normal-Laplace, Normal-Uniform); pairs without a
closed form (Logistic-Logistic, GumbelSoftmax-GumbelSoftmax, different boxes) raise NotImplementedError.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, register_kl

from .distributions import Gumbel, Laplace, LogNormal, Normal, ReparamDistribution, TanhNormal
from .distributions.base import EULER_GAMMA, sum_rightmost

__all__ = ["kl_normal_normal", "kl_normal_std_normal", "kl_laplace_laplace", "kl_gumbel_gumbel", "mc_kl",
           "kl_divergence"]

td = torch.distributions


def kl_normal_normal(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor | float, scale_p: Tensor | float) -> Tensor:
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) elementwise:
    log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2."""
    var_ratio = (scale_q / scale_p) ** 2
    return 0.5 * (var_ratio + ((loc_q - loc_p) / scale_p) ** 2 - 1.0 - var_ratio.log())


def kl_normal_std_normal(loc: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(loc, exp(log_var)) || N(0, 1)) elementwise, from a log-variance (the VAE form)."""
    return 0.5 * (log_var.exp() + loc.square() - 1.0 - log_var)


def kl_laplace_laplace(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor | float, scale_p: Tensor | float) -> Tensor:
    """KL(Laplace(loc_q, scale_q) || Laplace(loc_p, scale_p)) elementwise, (2) with p -> q, q -> p."""
    ratio = scale_q / scale_p
    d = (loc_q - loc_p).abs()
    return -ratio.log() + d / scale_p + ratio * torch.exp(-d / scale_q) - 1.0


def kl_gumbel_gumbel(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor | float, scale_p: Tensor | float) -> Tensor:
    """KL(Gumbel(loc_q, scale_q) || Gumbel(loc_p, scale_p)) elementwise, (3) with p -> q, q -> p:
    E[exp(-t Z)] = Gamma(1 + t) for a standard Gumbel Z gives the exponential term."""
    ratio = scale_q / scale_p
    d = (loc_q - loc_p) / scale_p
    return -ratio.log() + EULER_GAMMA * (ratio - 1.0) + d + torch.exp(torch.lgamma(1.0 + ratio) - d) - 1.0


def mc_kl(q: Distribution, p: Distribution, n_samples: int = 1, z: Tensor | None = None,
          log_q: Tensor | None = None) -> Tensor:
    """Monte Carlo KL(q || p) = E_q[log q(z) - log p(z)], averaged over n_samples draws.

    With ``z`` given (samples drawn from q, leading sample dim), uses them instead of drawing, so
    the KL is estimated on the sample actually used elsewhere (Blundell et al. 2015); pass ``log_q``
    too when it is already known (e.g. from ``rsample_and_log_prob``, exact where log_prob(z) would
    have to invert the transform). Reparameterized draws keep it differentiable w.r.t. q's parameters.
    """
    if z is None:
        if log_q is not None:
            raise ValueError("log_q without z: pass the samples it belongs to")
        if hasattr(q, "rsample_and_log_prob"):
            z, log_q = q.rsample_and_log_prob((n_samples,))
        else:
            z = q.rsample((n_samples,)) if q.has_rsample else q.sample((n_samples,))
            log_q = q.log_prob(z)
    elif log_q is None:
        log_q = q.log_prob(z)
    return (log_q - p.log_prob(z)).mean(0)


def kl_divergence(q: Distribution, p: Distribution) -> Tensor:
    """KL(q || p) in closed form from ``torch.distributions.kl_divergence`` (with the pairs registered
    here), summed over event dims; where none is known, an error that says to use ``mc_kl``."""
    try:
        return td.kl_divergence(q, p)
    except NotImplementedError as err:
        raise NotImplementedError(
            f"no closed-form KL for {type(q).__name__} || {type(p).__name__} ({err}); use mc_kl(q, p, n_samples)"
        ) from None


# ---------------------------------------------------------------------------- registrations

def _loc_scale_view(d: Distribution, ours: type, theirs: type) -> tuple[Tensor, Tensor, int] | None:
    """(loc, scale, event dims) of ``d`` if it is the family (ours or torch's, in any Independent), else None."""
    n = 0
    while isinstance(d, Independent):
        n, d = n + d.reinterpreted_batch_ndims, d.base_dist
    if isinstance(d, ours):
        return d.loc, d.scale, n + d.event_dims
    if isinstance(d, theirs):
        return d.loc, d.scale, n
    return None


def _kl_via_torch(p: Distribution, q: Distribution) -> Tensor:
    """Any pair with one of our families that has no closed form here: torch's registry on the
    ``to_torch()`` equivalents (which raises NotImplementedError where it knows none either)."""
    p2 = p.to_torch() if isinstance(p, ReparamDistribution) else p
    q2 = q.to_torch() if isinstance(q, ReparamDistribution) else q
    if p2 is p and q2 is q:
        raise NotImplementedError(f"no closed-form KL for {type(p).__name__} || {type(q).__name__}")
    try:
        return td.kl_divergence(p2, q2)
    except NotImplementedError as err:
        raise NotImplementedError(f"no closed-form KL for {type(p).__name__} || {type(q).__name__} {err}") from None


def _closed_form(ours: type, theirs: type, elementwise):
    def kl(p: Distribution, q: Distribution) -> Tensor:
        vp, vq = _loc_scale_view(p, ours, theirs), _loc_scale_view(q, ours, theirs)
        if vp is None or vq is None:
            return _kl_via_torch(p, q)
        if vp[2] != vq[2]:
            raise NotImplementedError(f"KL between {vp[2]} and {vq[2]} event dims is not defined")
        return sum_rightmost(elementwise(vp[0], vp[1], vq[0], vq[1]), vp[2])  # KL(p || q): p's parameters first
    return kl


for _ours, _theirs, _elementwise in ((Normal, td.Normal, kl_normal_normal), (LogNormal, td.LogNormal, kl_normal_normal),
                                     (Laplace, td.Laplace, kl_laplace_laplace), (Gumbel, td.Gumbel, kl_gumbel_gumbel)):
    _fn = _closed_form(_ours, _theirs, _elementwise)
    for _pair in ((_ours, _ours), (_ours, _theirs), (_theirs, _ours), (_ours, Independent), (Independent, _ours)):
        register_kl(*_pair)(_fn)


def _tanh_box(d: TanhNormal) -> tuple[Tensor | float, Tensor | float]:
    return (0.0, 1.0) if d.low is None else (d._mid, d._half_range)


@register_kl(TanhNormal, TanhNormal)
def _kl_tanh_tanh(p: TanhNormal, q: TanhNormal) -> Tensor:
    if p.event_dims != q.event_dims:
        raise NotImplementedError(f"KL between {p.event_dims} and {q.event_dims} event dims is not defined")
    (mid_p, half_p), (mid_q, half_q) = _tanh_box(p), _tanh_box(q)
    t = torch.as_tensor
    same = (mid_p is mid_q and half_p is half_q) or bool(((t(mid_p) == t(mid_q)) & (t(half_p) == t(half_q))).all())
    if not same:
        raise NotImplementedError("TanhNormal KL in closed form needs the same bounds on both sides")
    return sum_rightmost(kl_normal_normal(p.loc, p.scale, q.loc, q.scale), p.event_dims)


# The catch-alls: the most specific registration wins, so these only see pairs without one above.
for _pair in ((ReparamDistribution, ReparamDistribution), (ReparamDistribution, Distribution),
              (Distribution, ReparamDistribution)):
    register_kl(*_pair)(_kl_via_torch)
