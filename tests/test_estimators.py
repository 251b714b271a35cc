"""Pathwise and score-function estimators: unbiasedness and variance against closed forms,
checked independently with Gauss-Hermite quadrature; KL helpers against torch.distributions."""

import math

import numpy as np
import pytest
import torch

import reparam_apps as ra

MU, SIGMA, K = 0.5, 1.3, 2.0
f_quadratic = lambda x: (x - K) ** 2  # noqa: E731  E[f] = (mu-k)^2 + sigma^2


def factory(mu, sigma):
    return ra.Normal(mu, sigma, validate_args=False)


def params():
    return (torch.tensor([MU], dtype=torch.float64, requires_grad=True),
            torch.tensor([SIGMA], dtype=torch.float64, requires_grad=True))


def gauss_hermite_moments(g, deg=80):
    """E[g(eps)], E[g(eps)^2], E[g(eps)^4] for eps ~ N(0, 1) by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(deg)
    w = w / w.sum()
    v = g(x)
    return (w * v).sum(), (w * v**2).sum(), (w * v**4).sum()


# Per-sample gradient estimators of d/dmu E[(x-k)^2], x = mu + sigma eps:
#   pathwise:        2 (mu + sigma eps - k)                  variance 4 sigma^2
#   score function:  (mu + sigma eps - k)^2 * eps / sigma    variance (d^4 + 18 d^2 s^2 + 15 s^4)/s^2 - 4 d^2
D = MU - K
PATHWISE_VAR_MU = 4 * SIGMA**2
SCORE_VAR_MU = (D**4 + 18 * D**2 * SIGMA**2 + 15 * SIGMA**4) / SIGMA**2 - 4 * D**2


def test_closed_form_variances_agree_with_quadrature():
    _, m2, _ = gauss_hermite_moments(lambda e: 2 * (MU + SIGMA * e - K))
    assert math.isclose(m2 - (2 * D) ** 2, PATHWISE_VAR_MU, rel_tol=1e-10)
    m1, m2, _ = gauss_hermite_moments(lambda e: (MU + SIGMA * e - K) ** 2 * e / SIGMA)
    assert math.isclose(m1, 2 * D, rel_tol=1e-10)
    assert math.isclose(m2 - m1**2, SCORE_VAR_MU, rel_tol=1e-10)


def _variance_tolerance(per_sample, n_samples, repeats):
    """4 standard errors of a sample variance over ``repeats`` draws of a mean of n_samples
    per-sample estimates, from the estimator's exact moments (quadrature)."""
    m1, m2, _ = gauss_hermite_moments(per_sample)
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    c = per_sample(x) - m1
    mu2, mu4 = (w * c**2).sum(), (w * c**4).sum()
    # Central moments of the mean of n iid draws: mu2/n and (mu4 + 3(n-1) mu2^2)/n^3.
    v, m4 = mu2 / n_samples, (mu4 + 3 * (n_samples - 1) * mu2**2) / n_samples**3
    return 4 * math.sqrt((m4 - v**2) / repeats)


@pytest.mark.parametrize("n_samples", [1, 8])
def test_pathwise_unbiased_with_closed_form_variance(n_samples):
    torch.manual_seed(0)
    R = 4000
    s = ra.estimator_stats(lambda: ra.pathwise_gradient(f_quadratic, factory, params(), n_samples), R)
    truth = torch.tensor([2 * D, 2 * SIGMA], dtype=torch.float64)
    assert bool(((s.mean - truth).abs() < 5 * s.mean_standard_error()).all())
    tol = _variance_tolerance(lambda e: 2 * (MU + SIGMA * e - K), n_samples, R)
    assert abs(s.variance[0].item() - PATHWISE_VAR_MU / n_samples) < tol


@pytest.mark.parametrize("n_samples", [1, 8])
def test_score_function_unbiased_with_closed_form_variance(n_samples):
    torch.manual_seed(1)
    R = 6000
    s = ra.estimator_stats(lambda: ra.score_function_gradient(f_quadratic, factory, params(), n_samples), R)
    truth = torch.tensor([2 * D, 2 * SIGMA], dtype=torch.float64)
    assert bool(((s.mean - truth).abs() < 5 * s.mean_standard_error()).all())
    tol = _variance_tolerance(lambda e: (MU + SIGMA * e - K) ** 2 * e / SIGMA, n_samples, R)
    assert abs(s.variance[0].item() - SCORE_VAR_MU / n_samples) < tol
    # The pathwise estimator wins on this smooth objective by a wide margin.
    assert SCORE_VAR_MU > 5 * PATHWISE_VAR_MU


@pytest.mark.parametrize("baseline", [3.0, torch.tensor(2.0), "mean", "optimal"])
def test_baselines_keep_score_function_unbiased_and_reduce_variance(baseline):
    torch.manual_seed(2)
    R, n = 3000, 8
    s = ra.estimator_stats(lambda: ra.score_function_gradient(f_quadratic, factory, params(), n, baseline), R)
    truth = torch.tensor([2 * D, 2 * SIGMA], dtype=torch.float64)
    assert bool(((s.mean - truth).abs() < 5 * s.mean_standard_error()).all())
    if baseline == "mean":
        # With b = E[f] the per-sample variance on mu is 8 d^2 + 10 s^2 (vs SCORE_VAR_MU without a
        # baseline: 34.9 vs 59.8 here); leave-one-out adds Var(f) E[s_mu^2] / (n - 1) = 1.8 per sample.
        centred = 8 * D**2 + 10 * SIGMA**2 + (4 * D**2 * SIGMA**2 + 2 * SIGMA**4) / SIGMA**2 / (n - 1)
        assert abs(s.variance[0].item() - centred / n) < 0.15 * centred / n
        assert s.variance[0].item() < 0.75 * SCORE_VAR_MU / n


def test_optimal_baseline_beats_mean_baseline_where_theory_says():
    # For d/dmu of E[x^2] under N(0, 1) the optimal scalar baseline E[f s^2]/E[s^2] = 3 differs from
    # E[f] = 1; per-sample variance with baseline b is E[(x^2 - b)^2 x^2] = 15 - 6b + b^2 -> 6 vs 10.
    f = lambda x: x**2  # noqa: E731
    mk = lambda: torch.tensor([0.0], dtype=torch.float64, requires_grad=True)  # noqa: E731
    fac = lambda m: ra.Normal(m, torch.ones(1, dtype=torch.float64), validate_args=False)  # noqa: E731
    torch.manual_seed(3)
    opt = ra.estimator_stats(lambda: ra.score_function_gradient(f, fac, mk(), 32, "optimal"), 3000)
    mean = ra.estimator_stats(lambda: ra.score_function_gradient(f, fac, mk(), 32, "mean"), 3000)
    assert opt.variance.item() < 0.8 * mean.variance.item()
    assert abs(opt.variance.item() - 6 / 32) < 0.25 * 6 / 32


def test_score_function_on_discrete_matches_exact_gradient():
    # E_{z ~ Cat(softmax(l))}[w . z] has gradient p * (w - p.w); the core's GumbelSoftmax exposes the
    # categorical it relaxes, so the score-function estimator applies to the discrete latent.
    logits = torch.tensor([0.2, -0.5, 1.0, 0.1], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=torch.float64)
    p = torch.softmax(logits.detach(), -1)
    exact = p * (w - (p * w).sum())
    fac = lambda lg: ra.GumbelSoftmax(lg, 1.0, validate_args=False).categorical()  # noqa: E731
    torch.manual_seed(4)
    s = ra.estimator_stats(lambda: ra.score_function_gradient(lambda z: z @ w, fac, logits, 16, "mean"), 3000)
    assert bool(((s.mean - exact).abs() < 5 * s.mean_standard_error()).all())


def test_pathwise_requires_rsample_and_bad_baseline_is_named():
    fac = lambda lg: torch.distributions.Categorical(logits=lg)  # noqa: E731
    with pytest.raises(ValueError, match="rsample"):
        ra.pathwise_gradient(lambda z: z.float(), fac, torch.zeros(3, requires_grad=True))
    with pytest.raises(ValueError, match="unknown baseline"):
        ra.score_function_gradient(f_quadratic, factory, params(), 4, baseline="median")
    with pytest.raises(ValueError, match="n_samples >= 2"):
        ra.score_function_gradient(f_quadratic, factory, params(), 1, baseline="mean")
    with pytest.raises(ValueError, match="one value per sample"):
        ra.pathwise_gradient(lambda x: x.sum(), factory, params(), 4)


def test_estimator_stats_matches_direct_computation():
    torch.manual_seed(5)
    draws = torch.randn(50, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]) + 7
    it = iter(draws)
    s = ra.estimator_stats(lambda: next(it), 50)
    torch.testing.assert_close(s.mean, draws.mean(0))
    torch.testing.assert_close(s.variance, draws.var(0))
    assert math.isclose(s.total_variance, draws.var(0).sum().item(), rel_tol=1e-12)
    assert math.isclose(s.snr, (draws.mean(0).norm() / draws.var(0).sum().sqrt()).item(), rel_tol=1e-12)
    assert math.isclose(s.bias_to(draws.mean(0)), 0.0, abs_tol=1e-12)


# ---------------------------------------------------------------------------- KL


def test_closed_form_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    sq, sp = torch.rand(5, 3, generator=g) + 0.1, torch.rand(5, 3, generator=g) + 0.1
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mq, sq), torch.distributions.Normal(mp, sp))
    torch.testing.assert_close(ra.kl_normal_normal(mq, sq, mp, sp), ref)
    ref_std = torch.distributions.kl_divergence(torch.distributions.Normal(mq, sq), torch.distributions.Normal(0, 1))
    torch.testing.assert_close(ra.kl_normal_std_normal(mq, 2 * sq.log()), ref_std)
    q, p = ra.Normal(mq, sq, event_dims=1), ra.Normal(mp, sp, event_dims=1)
    torch.testing.assert_close(ra.kl_divergence(q, p), ref.sum(-1))
    with pytest.raises(NotImplementedError, match="mc_kl"):
        ra.kl_divergence(ra.Laplace(mq, sq), p)


def test_monte_carlo_kl_is_unbiased_and_differentiable():
    torch.manual_seed(6)
    mq = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    sq = torch.tensor([0.5, 2.0], dtype=torch.float64)
    q = ra.Normal(mq, sq)
    p = ra.Normal(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    exact = ra.kl_normal_normal(mq, sq, 0.0, 1.0)
    n = 20_000
    z, log_q = q.rsample_and_log_prob((n,))
    terms = log_q - p.log_prob(z)
    se = terms.std(0) / math.sqrt(n)
    kl = ra.mc_kl(q, p, n_samples=n)
    assert bool(((kl - exact).abs() < 5 * se).all())
    kl.sum().backward()
    assert torch.isfinite(mq.grad).all() and mq.grad.abs().sum() > 0
    # With the sample given, it is exactly log q(z) - log p(z) on that sample.
    torch.testing.assert_close(ra.mc_kl(q, p, z=z[:3]), terms[:3].mean(0))
    torch.testing.assert_close(ra.mc_kl(q, p, z=z[:3], log_q=log_q[:3]), terms[:3].mean(0))


def test_per_element_objective_pairs_terms_and_stays_unbiased():
    # f(z) = sum_m (z_m - k_m)^2 over M independent coordinates, returned per element (n, M).
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    k = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    sigma = torch.ones(3, dtype=torch.float64)
    fac = lambda m: ra.Normal(m, sigma, validate_args=False)  # noqa: E731
    truth = 2 * (mu - k)
    torch.manual_seed(8)
    stats = {}
    for b in (None, "mean"):
        for per_element in (True, False):
            f = (lambda z: (z - k) ** 2) if per_element else (lambda z: ((z - k) ** 2).sum(-1))
            est = lambda f=f, b=b: ra.score_function_gradient(f, fac, mu.clone().requires_grad_(), 8, b)  # noqa: E731
            s = ra.estimator_stats(est, 3000)
            assert bool(((s.mean - truth).abs() < 5 * s.mean_standard_error()).all())
            stats[b, per_element] = s.total_variance
    # Pairing each term with its own score removes the cross terms' variance.
    assert stats[None, True] < 0.7 * stats[None, False] and stats["mean", True] < 0.7 * stats["mean", False]
