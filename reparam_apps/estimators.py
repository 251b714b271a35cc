"""Gradient estimators for d/dphi E_{q_phi}[f(z)]: pathwise vs score function (REINFORCE).

pathwise:        g = 1/n sum_i d/dphi f(g_phi(eps_i))                 (needs rsample, f differentiable)
score function:  g = 1/n sum_i (f(z_i) - b_i) d/dphi log q_phi(z_i)   (needs log_prob only)

``f`` maps a batch of samples with a leading sample dim n to per-sample values; any trailing dims
of its output are summed, so ``f`` may return shape (n,) or (n, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = [
    "pathwise_gradient",
    "score_function_gradient",
    "EstimatorStats",
    "estimator_stats",
    "BASELINES",
    "flatten_gradient",
]

BASELINES = (None, "loo", "optimal")  # plus any float or tensor constant


def _as_param_list(params: Tensor | Sequence[Tensor]) -> tuple[list[Tensor], bool]:
    if isinstance(params, Tensor):
        return [params], True
    return list(params), False


def _per_sample(values: Tensor, n: int) -> Tensor:
    if values.dim() == 0 or values.shape[0] != n:
        raise ValueError(f"f must return one value per sample with leading dim {n}, got {tuple(values.shape)}")
    return values.reshape(n, -1).sum(1)


def _finish(grads: Sequence[Tensor], single: bool):
    return grads[0] if single else tuple(grads)


def pathwise_gradient(f: Callable[[Tensor], Tensor], dist_factory: Callable[..., Distribution],
                      params: Tensor | Sequence[Tensor], n_samples: int = 1):
    """Reparameterization-gradient estimate of d/dparams E_{q}[f(z)], q = dist_factory(*params)."""
    plist, single = _as_param_list(params)
    dist = dist_factory(*plist)
    if not dist.has_rsample:
        raise ValueError(f"{type(dist).__name__} has no rsample: the pathwise estimator needs one")
    z = dist.rsample((n_samples,))
    loss = _per_sample(f(z), n_samples).mean()
    return _finish(torch.autograd.grad(loss, plist, allow_unused=True, materialize_grads=True), single)


def _check_baseline(baseline: object, n: int) -> None:
    """ValueError for an unknown baseline, the old name "mean", or a leave-one-out one with n < 2."""
    if isinstance(baseline, str):
        if baseline == "mean":  # the old name of "loo": one meaning per word ("mean" is a running mean elsewhere)
            raise ValueError("baseline='mean' is now called 'loo' (the leave-one-out batch mean): use baseline='loo'")
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}: use None, a number, 'loo' or 'optimal'")
        if n < 2:
            raise ValueError(f"baseline={baseline!r} (leave-one-out) needs n_samples >= 2")
    elif baseline is not None and (isinstance(baseline, bool) or not isinstance(baseline, (int, float, Tensor))):
        raise ValueError(f"unknown baseline {baseline!r}: use None, a number, 'loo' or 'optimal'")


def score_function_gradient(f: Callable[[Tensor], Tensor], dist_factory: Callable[..., Distribution],
                            params: Tensor | Sequence[Tensor], n_samples: int = 2,
                            baseline: None | str | float | Tensor = None):
    """REINFORCE estimate of d/dparams E_q[f(z)]: g = mean_i (f(z_i) - b_i) s_i,  s_i = d log q(z_i) / dparams.

    baseline:
      None        b = 0;
      float/Tensor a constant b (unbiased: it does not depend on the samples);
      "loo"       leave-one-out batch mean b_i = mean_{j != i} f(z_j) (unbiased, needs n >= 2);
      "optimal"   the variance-optimal scalar b* = E[f |s|^2] / E[|s|^2], estimated leave-one-out
                  b_i = sum_{j != i} f_j |s_j|^2 / sum_{j != i} |s_j|^2 so it stays unbiased (needs n >= 2).

    A baseline is unbiased when b_i does not depend on z_i: E[b_i s_i] = E[b_i] E[s_i] = 0. One that
    includes its own sample is not: b_i = mean_j f_j gives E[g] = (1 - 1/n) grad. With "loo" each
    coordinate's variance is (exact; derivation in ``reparam_apps.toy``, eq. (L))

        Var[g_loo] = ( Var[(f - E f) s] + (Var[f] E[s^2] + grad^2) / (n - 1) ) / n:

    the n terms are exchangeable but correlated through the shared samples, hence the grad^2 term.

    When ``f`` returns per-element values with the same shape as ``log_prob`` (n, *batch) — a sum
    of independent terms, one per data point, the usual case for a batch of data — each term is
    paired with its own log q and "loo" baselines each element by the other samples of that element
    (still unbiased, and lower variance than baselining the sum). "optimal" uses the total.
    """
    n = n_samples
    _check_baseline(baseline, n)
    plist, single = _as_param_list(params)
    dist = dist_factory(*plist)
    with torch.no_grad():
        z = dist.sample((n,))
        fz = f(z)
    log_q = dist.log_prob(z)
    if fz.dim() > 1 and fz.shape == log_q.shape and baseline != "optimal":
        # f is a sum of independent per-element terms: pair each term with its own log q (the cross
        # terms have zero mean) and baseline each element on its own. Shapes (n, M).
        fz, log_q = fz.reshape(n, -1), log_q.reshape(n, -1)
    else:
        fz, log_q = _per_sample(fz, n)[:, None], _per_sample(log_q, n)[:, None]  # (n, 1)
    if baseline is None:
        b = torch.zeros_like(fz)
    elif not isinstance(baseline, str):
        b = torch.as_tensor(baseline, dtype=fz.dtype, device=fz.device).expand_as(fz)
    elif baseline == "loo":
        b = (fz.sum(0, keepdim=True) - fz) / (n - 1)  # (n, M): mean of the other n - 1 samples
    elif baseline == "optimal":
        # Per-sample scores s_i = d log q(z_i) / dphi in one batched backward pass.
        eye = torch.eye(n, dtype=log_q.dtype, device=log_q.device)
        scores = torch.autograd.grad(log_q[:, 0], plist, grad_outputs=eye, is_grads_batched=True,
                                     retain_graph=True, allow_unused=True, materialize_grads=True)
        s2 = sum(s.reshape(n, -1).square().sum(1) for s in scores)[:, None]  # |s_i|^2, (n, 1)
        b = ((fz * s2).sum(0) - fz * s2) / (s2.sum(0) - s2).clamp_min(torch.finfo(s2.dtype).tiny)
    # d/dparams of the surrogate is mean_i (f_i - b_i) s_i: the weights are constants, only log q is differentiated
    surrogate = ((fz - b).detach() * log_q).sum(1).mean(0)
    return _finish(torch.autograd.grad(surrogate, plist, allow_unused=True, materialize_grads=True), single)


@dataclass
class EstimatorStats:
    """Mean and spread of a gradient estimator over independent repeats (flattened gradient)."""

    mean: Tensor  # E[g], shape (D,)
    variance: Tensor  # per-coordinate Var[g], shape (D,)
    n_repeats: int
    seconds_per_estimate: float

    @property
    def total_variance(self) -> float:
        """tr Cov[g]: the sum of per-coordinate variances."""
        return float(self.variance.sum())

    @property
    def snr(self) -> float:
        """Signal-to-noise ratio |E g| / sqrt(tr Cov g)."""
        return float(self.mean.norm() / self.variance.sum().sqrt().clamp_min(1e-300))

    def bias_to(self, reference: Tensor) -> float:
        """|E g - reference|: distance of the estimated mean to a reference gradient."""
        return float((self.mean - reference.reshape(-1).to(self.mean)).norm())

    def mean_standard_error(self) -> Tensor:
        """Per-coordinate standard error of ``mean``."""
        return (self.variance / self.n_repeats).sqrt()


def flatten_gradient(g: Tensor | Sequence[Tensor]) -> Tensor:
    """Concatenate a gradient (a tensor or a tuple of tensors) into one flat vector."""
    if isinstance(g, Tensor):
        return g.detach().reshape(-1)
    return torch.cat([t.detach().reshape(-1) for t in g])


def estimator_stats(estimate: Callable[[], Tensor | Sequence[Tensor]], n_repeats: int) -> EstimatorStats:
    """Call ``estimate()`` n_repeats times (independent draws) and summarise the gradients.

    Uses Welford's update so memory stays O(D) for large models.
    """
    if n_repeats < 2:
        raise ValueError("n_repeats must be >= 2 to estimate a variance")
    mean = m2 = None
    start = time.perf_counter()
    for i in range(1, n_repeats + 1):
        g = flatten_gradient(estimate()).double()
        if mean is None:
            mean, m2 = g.clone(), torch.zeros_like(g)
        else:
            delta = g - mean
            mean += delta / i
            m2 += delta * (g - mean)
    elapsed = time.perf_counter() - start
    return EstimatorStats(mean=mean, variance=m2 / (n_repeats - 1), n_repeats=n_repeats,
                          seconds_per_estimate=elapsed / n_repeats)
