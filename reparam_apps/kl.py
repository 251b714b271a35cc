"""KL divergences: closed form between diagonal Gaussians, Monte Carlo for anything with log_prob."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from .distributions import Normal

__all__ = ["kl_normal_normal", "kl_normal_std_normal", "mc_kl", "kl_divergence"]


def kl_normal_normal(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor | float, scale_p: Tensor | float) -> Tensor:
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) elementwise:
    log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2."""
    var_ratio = (scale_q / scale_p) ** 2
    return 0.5 * (var_ratio + ((loc_q - loc_p) / scale_p) ** 2 - 1.0 - var_ratio.log())


def kl_normal_std_normal(loc: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(loc, exp(log_var)) || N(0, 1)) elementwise, from a log-variance (the VAE form)."""
    return 0.5 * (log_var.exp() + loc.square() - 1.0 - log_var)


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
    """Closed-form KL where we know it (Normal || Normal, summed over event dims), else an error
    that says to use ``mc_kl``."""
    if isinstance(q, Normal) and isinstance(p, Normal) and type(q) is Normal and type(p) is Normal:
        kl = kl_normal_normal(q.loc, q.scale, p.loc, p.scale)
        n = q.event_dims
        return kl.sum(dim=tuple(range(-n, 0))) if n > 0 else kl
    raise NotImplementedError(
        f"no closed-form KL for {type(q).__name__} || {type(p).__name__}; use mc_kl(q, p, n_samples)"
    )
