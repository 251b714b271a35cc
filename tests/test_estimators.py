"""Pathwise and score-function estimators: unbiasedness and variance against closed forms (checked
independently with Gauss-Hermite quadrature), each baseline's surrogate against the REINFORCE formula on
the very samples it drew; KL helpers against torch.distributions.

Vectorised: R independent estimates come from ONE call, with R replicas of the parameters (shape (R,))
and an ``f`` that returns one value per replica (n, R). The estimator pairs each replica's term with its
own log q (per-element path), so the gradient w.r.t. replica r is an independent n-sample estimate.
Statistical checks use k standard errors with k stated; SE of a mean = std / sqrt(R), SE of a sample
variance = sqrt((m4 - v^2) / R) (m4 the fourth central moment: the delta method).
"""

import math

import numpy as np
import pytest
import torch

import reparam_apps as ra
from reparam_apps.toy import TOY_OBJECTIVES

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread is faster

MU, SIGMA, K = 0.5, 1.3, 2.0
D = MU - K
QUAD = TOY_OBJECTIVES["quadratic"]
f_quadratic = lambda x: (x - K) ** 2  # noqa: E731  E[f] = (mu-k)^2 + sigma^2
PATHWISE_VAR_MU = QUAD.pathwise_var_mu(MU, SIGMA, K)  # 4 sigma^2
SCORE_VAR_MU = QUAD.score_var_mu(MU, SIGMA, K)  # (d^4 + 18 d^2 s^2 + 15 s^4) / s^2 - 4 d^2


def factory(mu, sigma):
    return ra.Normal(mu, sigma, validate_args=False)


def params():
    return (torch.tensor([MU], dtype=torch.float64, requires_grad=True),
            torch.tensor([SIGMA], dtype=torch.float64, requires_grad=True))


def replicas(r: int, mu: float = MU, sigma: float = SIGMA):
    """R copies of (mu, sigma): each gradient row is one independent estimate."""
    return (torch.full((r,), mu, dtype=torch.float64, requires_grad=True),
            torch.full((r,), sigma, dtype=torch.float64, requires_grad=True))


def quadrature(deg=120):
    x, w = np.polynomial.hermite_e.hermegauss(deg)
    return x, w / w.sum()


def mean_and_var_checks(g: torch.Tensor, mean: float, var: float, k_mean: float = 5.0, k_var: float = 5.0):
    """|mean(g) - mean| < k SE and |var(g) - var| < k SE(var) (the delta method, empirical m4)."""
    r = g.numel()
    c = g - g.mean()
    v, m4 = float(c.square().mean()), float(c.pow(4).mean())
    assert abs(float(g.mean()) - mean) < k_mean * math.sqrt(v / r), (float(g.mean()), mean)
    assert abs(v - var) < k_var * math.sqrt((m4 - v**2) / r), (v, var, math.sqrt((m4 - v**2) / r))


# ---------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("name", sorted(TOY_OBJECTIVES))
@pytest.mark.parametrize("mu,sigma,k", [(0.5, 1.3, 2.0), (-0.3, 0.7, 1.0)])
def test_toy_closed_forms_agree_with_quadrature(name, mu, sigma, k):
    """Every closed form of reparam_apps.toy against composite Gauss-Legendre quadrature of its defining
    integral on mu +- 14 sigma (400 panels of 20 nodes: exact to rounding for these smooth integrands;
    Gauss-Hermite is not enough for exp(-k x^2), which is narrow next to the Gaussian)."""
    obj = TOY_OBJECTIVES[name]
    t, wt = np.polynomial.legendre.leggauss(20)
    edges = np.linspace(mu - 14 * sigma, mu + 14 * sigma, 401)
    half = np.diff(edges)[:, None] / 2
    x = ((edges[:-1, None] + edges[1:, None]) / 2 + half * t).ravel()
    w = (half * wt).ravel() * np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ft = obj.f(xt, k)
    df = torch.autograd.grad(ft.sum(), xt)[0].numpy()
    f, s = ft.detach().numpy(), (x - mu) / sigma**2  # s = d log N(x; mu, sigma^2) / dmu

    def expect(v):
        return float((w * v).sum())

    assert math.isclose(expect(np.ones_like(x)), 1.0, rel_tol=1e-13)
    grad = expect(f * s)
    close = dict(rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(obj.true_grad_mu(mu, sigma, k), grad, **close)
    assert math.isclose(obj.true_grad_mu(mu, sigma, k), expect(df), **close)  # E f' = d/dmu E f as well
    assert math.isclose(obj.pathwise_var_mu(mu, sigma, k), expect(df**2) - grad**2, **close)
    assert math.isclose(obj.score_var_mu(mu, sigma, k), expect((f * s) ** 2) - grad**2, **close)
    ref = [expect(f), expect(f**2), expect(f * s**2), expect((f * s) ** 2)]
    np.testing.assert_allclose(obj.moments(mu, sigma, k), ref, rtol=1e-9, atol=1e-12)


def test_quadratic_loo_variance_has_the_closed_form_of_the_docs():
    # eq. (L) for f = (x - k)^2: (8 d^2 + 10 s^2 + (8 d^2 + 2 s^2) / (n - 1)) / n
    for n in (2, 8, 100):
        expect = (8 * D**2 + 10 * SIGMA**2 + (8 * D**2 + 2 * SIGMA**2) / (n - 1)) / n
        assert math.isclose(QUAD.score_loo_var_mu(MU, SIGMA, K, n), expect, rel_tol=1e-12)
    with pytest.raises(ValueError, match="n >= 2"):
        QUAD.score_loo_var_mu(MU, SIGMA, K, 1)


# ---------------------------------------------------------------------------- unbiasedness and variance
def _variance_tolerance(per_sample, n_samples, repeats, k=4.0):
    """k standard errors of a sample variance over ``repeats`` draws of a mean of n_samples iid
    per-sample estimates, from the estimator's exact moments (quadrature)."""
    e, w = quadrature()
    c = per_sample(e) - (w * per_sample(e)).sum()
    mu2, mu4 = (w * c**2).sum(), (w * c**4).sum()
    # Central moments of the mean of n iid draws: mu2/n and (mu4 + 3(n-1) mu2^2)/n^3.
    v, m4 = mu2 / n_samples, (mu4 + 3 * (n_samples - 1) * mu2**2) / n_samples**3
    return k * math.sqrt((m4 - v**2) / repeats)


R = 50_000


@pytest.mark.parametrize("n_samples", [1, 8])
def test_pathwise_unbiased_with_closed_form_variance(n_samples):
    torch.manual_seed(0)
    g_mu, g_sigma = ra.pathwise_gradient(f_quadratic, factory, replicas(R), n_samples)  # (R,) each
    assert abs(float(g_sigma.mean()) - 2 * SIGMA) < 5 * math.sqrt(float(g_sigma.var()) / R)
    assert abs(float(g_mu.mean()) - 2 * D) < 5 * math.sqrt(PATHWISE_VAR_MU / n_samples / R)
    tol = _variance_tolerance(lambda e: 2 * (MU + SIGMA * e - K), n_samples, R)
    assert abs(float(g_mu.var()) - PATHWISE_VAR_MU / n_samples) < tol


@pytest.mark.parametrize("n_samples", [1, 8])
def test_score_function_unbiased_with_closed_form_variance(n_samples):
    torch.manual_seed(1)
    g_mu, g_sigma = ra.score_function_gradient(f_quadratic, factory, replicas(R), n_samples)  # (R,) each
    assert abs(float(g_sigma.mean()) - 2 * SIGMA) < 5 * math.sqrt(float(g_sigma.var()) / R)
    assert abs(float(g_mu.mean()) - 2 * D) < 5 * math.sqrt(SCORE_VAR_MU / n_samples / R)
    tol = _variance_tolerance(lambda e: (MU + SIGMA * e - K) ** 2 * e / SIGMA, n_samples, R)
    assert abs(float(g_mu.var()) - SCORE_VAR_MU / n_samples) < tol
    assert SCORE_VAR_MU > 5 * PATHWISE_VAR_MU  # the pathwise estimator wins on this smooth objective


@pytest.mark.parametrize("baseline", [None, 3.0, torch.tensor(2.0), "loo"])
def test_baselines_keep_score_function_unbiased(baseline):
    # A baseline that depends on its own sample (b_i = mean_j f_j) shrinks the mean to (1 - 1/n) grad:
    # here 7/8 of -3 and of 2.6, a bias of ~60 standard errors.
    torch.manual_seed(2)
    n = 8
    g_mu, g_sigma = ra.score_function_gradient(f_quadratic, factory, replicas(R), n, baseline)
    for g, truth in ((g_mu, 2 * D), (g_sigma, 2 * SIGMA)):
        assert abs(float(g.mean()) - truth) < 5 * math.sqrt(float(g.var()) / R), (float(g.mean()), truth)
    if baseline == 3.0:  # constant b: n iid terms (f - b) s, variance E[(f - b)^2 s^2] - g^2 by quadrature
        e, w = quadrature()
        per_sample = lambda e: ((MU + SIGMA * e - K) ** 2 - 3.0) * e / SIGMA  # noqa: E731
        var = ((w * per_sample(e) ** 2).sum() - 4 * D**2) / n
        assert abs(float(g_mu.var()) - var) < _variance_tolerance(per_sample, n, R, k=5.0)


@pytest.mark.parametrize("name,mu,sigma,k,n", [
    ("quadratic", MU, SIGMA, K, 2), ("quadratic", MU, SIGMA, K, 8),
    ("quadratic", 0.5, 1.0, 2.0, 4),  # the README's example: (28 + 20 / (n - 1)) / n
    ("cos", 0.3, 0.8, 2.0, 3), ("exp", 0.5, 1.0, 1.0, 3),
])
def test_loo_baseline_variance_matches_derived_formula(name, mu, sigma, k, n):
    """Eq. (L) by simulation: 200k independent estimates, mean within 5 SE and variance within 5 SE of a
    sample variance. Without the covariance term g^2 / (n (n-1)) the quadratic's variance at n = 2 would be
    16% low (14 SE at this seed) and at n = 8 3.4% low (5.6 SE)."""
    obj = TOY_OBJECTIVES[name]
    torch.manual_seed(3)
    r = 200_000
    mu_r = torch.full((r,), mu, dtype=torch.float64, requires_grad=True)
    sig = torch.full((r,), sigma, dtype=torch.float64)
    g = ra.score_function_gradient(lambda x: obj.f(x, k), lambda m: ra.Normal(m, sig, validate_args=False), mu_r,
                                   n, "loo")
    mean_and_var_checks(g, obj.true_grad_mu(mu, sigma, k), obj.score_loo_var_mu(mu, sigma, k, n))


def test_optimal_baseline_is_unbiased_and_beats_loo_where_theory_says():
    # d/dmu E[x^2] under N(0, 1): the optimal scalar b* = E[f s^2] / E[s^2] = 3 differs from E[f] = 1;
    # per-sample variance E[(x^2 - b)^2 x^2] = 15 - 6b + b^2: 6 at b*, 10 at E f. "optimal" couples the
    # parameters through |s|^2, so it is not vectorised: 1000 calls.
    f = lambda x: x**2  # noqa: E731
    fac = lambda m: ra.Normal(m, torch.ones_like(m), validate_args=False)  # noqa: E731
    torch.manual_seed(3)
    n, reps = 32, 1000
    opt = ra.estimator_stats(lambda: ra.score_function_gradient(
        f, fac, torch.zeros(1, dtype=torch.float64, requires_grad=True), n, "optimal"), reps)
    assert abs(float(opt.mean)) < 5 * float(opt.mean_standard_error())  # true gradient 0
    loo_var = (10 + 2 / (n - 1)) / n  # eq. (L): Var[(f - E f) s] = 10, Var f E[s^2] = 2, g = 0
    # sample variance SE ~ v sqrt(2 / reps) for a near-Gaussian mean of 32 terms; 5 of them
    assert float(opt.variance) < loo_var - 5 * loo_var * math.sqrt(2 / reps)


def test_score_function_on_discrete_matches_exact_gradient():
    # E_{z ~ Cat(softmax(l))}[w . z] has gradient p * (w - p.w); the core's GumbelSoftmax exposes the
    # categorical it relaxes, so the score-function estimator applies to the discrete latent.
    r, n = 20_000, 16
    base = torch.tensor([0.2, -0.5, 1.0, 0.1], dtype=torch.float64)
    logits = base.repeat(r, 1).requires_grad_()
    w = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=torch.float64)
    p = torch.softmax(base, -1)
    exact = p * (w - (p * w).sum())
    fac = lambda lg: ra.GumbelSoftmax(lg, 1.0, validate_args=False).categorical()  # noqa: E731
    torch.manual_seed(4)
    g = ra.score_function_gradient(lambda z: z @ w, fac, logits, n, "loo")  # (r, 4)
    se = g.std(0) / math.sqrt(r)
    assert bool(((g.mean(0) - exact).abs() < 5 * se).all()), ((g.mean(0) - exact) / se)


# ---------------------------------------------------------------------------- the surrogate, exactly
def _captured(f):
    """f that records the samples it is given (the estimator calls f once, on its n draws)."""
    seen = []

    def g(z):
        seen.append(z.clone())
        return f(z)
    return g, seen


@pytest.mark.parametrize("baseline", [None, 2.5, "loo", "optimal"])
def test_surrogate_gradient_is_the_reinforce_formula_on_its_own_samples(baseline):
    """g = 1/n sum_i (f_i - b_i) (s_mu,i, s_sigma,i), s_mu = (z - mu)/s^2, s_sigma = ((z - mu)^2 - s^2)/s^3,
    with b computed here from the same draws (leave-one-out: sample i excluded)."""
    n = 6
    torch.manual_seed(5)
    f, seen = _captured(f_quadratic)
    g = torch.cat(ra.score_function_gradient(f, factory, params(), n, baseline))
    z = seen[0].reshape(n)
    fz = (z - K) ** 2
    s = torch.stack([(z - MU) / SIGMA**2, ((z - MU) ** 2 - SIGMA**2) / SIGMA**3], 1)  # (n, 2)
    others = 1 - torch.eye(n, dtype=torch.float64)  # others[i, j] = 1 for j != i
    if baseline is None:
        b = torch.zeros(n, dtype=torch.float64)
    elif baseline == 2.5:
        b = torch.full((n,), 2.5, dtype=torch.float64)
    elif baseline == "loo":
        b = others @ fz / (n - 1)
    else:
        s2 = s.square().sum(1)
        b = others @ (fz * s2) / (others @ s2)
    torch.testing.assert_close(g, ((fz - b)[:, None] * s).mean(0), rtol=1e-12, atol=1e-12)


def test_per_element_surrogate_pairs_each_term_with_its_own_score():
    # f(z) = (z_m - k_m)^2 per element (n, M): g_m = 1/n sum_i (f_im - b_im) (z_im - mu_m) / s^2
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    n = 5
    torch.manual_seed(6)
    f, seen = _captured(lambda z: (z - k) ** 2)
    g = ra.score_function_gradient(f, lambda m: ra.Normal(m, torch.ones_like(m), validate_args=False), mu, n, "loo")
    z = seen[0]
    fz = (z - k) ** 2
    b = (fz.sum(0) - fz) / (n - 1)
    torch.testing.assert_close(g, ((fz - b) * (z - mu.detach())).mean(0), rtol=1e-12, atol=1e-12)


def test_per_element_objective_stays_unbiased_and_pairing_lowers_variance():
    # f(z) = sum_m (z_m - k_m)^2 over M = 3 coordinates, R replicas: per element (n, R, 3) vs summed per
    # replica (n, R) with an event dim of 3 (each replica's sum paired with its joint log q).
    r, n = 20_000, 8
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    k = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    truth = 2 * (mu - k)
    torch.manual_seed(8)
    total = {}
    for b in (None, "loo"):
        for per_element in (True, False):
            f = (lambda z: (z - k) ** 2) if per_element else (lambda z: ((z - k) ** 2).sum(-1))
            event_dims = 0 if per_element else 1

            def fac(m, e=event_dims):
                return ra.Normal(m, torch.ones_like(m), event_dims=e, validate_args=False)
            g = ra.score_function_gradient(f, fac, mu.repeat(r, 1).requires_grad_(), n, b)  # (r, 3)
            se = g.std(0) / math.sqrt(r)
            assert bool(((g.mean(0) - truth).abs() < 5 * se).all())
            total[b, per_element] = float(g.var(0).sum())
    # Pairing each term with its own score removes the cross terms' variance (0.45x here; SE ~1%).
    assert total[None, True] < 0.7 * total[None, False] and total["loo", True] < 0.7 * total["loo", False]


def test_pathwise_requires_rsample_and_bad_baseline_is_named():
    fac = lambda lg: torch.distributions.Categorical(logits=lg)  # noqa: E731
    with pytest.raises(ValueError, match="rsample"):
        ra.pathwise_gradient(lambda z: z.float(), fac, torch.zeros(3, requires_grad=True))
    with pytest.raises(ValueError, match="unknown baseline"):
        ra.score_function_gradient(f_quadratic, factory, params(), 4, baseline="median")
    with pytest.raises(ValueError, match="use baseline='loo'"):  # the old name of the leave-one-out mean
        ra.score_function_gradient(f_quadratic, factory, params(), 4, baseline="mean")
    with pytest.raises(ValueError, match="n_samples >= 2"):
        ra.score_function_gradient(f_quadratic, factory, params(), 1, baseline="loo")
    with pytest.raises(ValueError, match="one value per sample"):
        ra.pathwise_gradient(lambda x: x.sum(), factory, params(), 4)
    assert ra.estimators.BASELINES == (None, "loo", "optimal")


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
