"""Every family of the core against independent references: scipy.stats, torch.distributions,
stable-baselines3, finite differences, and the Kolmogorov-Smirnov test at fixed seeds."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import reparam_apps as ra

# family -> (scipy frozen distribution from (loc, scale), torch.distributions equivalent or None)
FAMILIES = {
    "Normal": (ra.Normal, lambda m, s: stats.norm(m, s), torch.distributions.Normal),
    "Laplace": (ra.Laplace, lambda m, s: stats.laplace(m, s), torch.distributions.Laplace),
    "Logistic": (ra.Logistic, lambda m, s: stats.logistic(m, s), None),
    "LogNormal": (ra.LogNormal, lambda m, s: stats.lognorm(s=s, scale=math.exp(m)), torch.distributions.LogNormal),
    "Gumbel": (ra.Gumbel, lambda m, s: stats.gumbel_r(m, s), torch.distributions.Gumbel),
}
NAMES = list(FAMILIES)

locs = st.floats(-3.0, 3.0)
scales = st.floats(0.05, 4.0)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(loc=locs, scale=scales, q=st.floats(0.02, 0.98))
def test_log_prob_entropy_moments_match_scipy(name, loc, scale, q):
    cls, ref, _ = FAMILIES[name]
    d = cls(torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64))
    r = ref(loc, scale)
    x = r.ppf(q)  # a point where the density is well inside its support
    np.testing.assert_allclose(d.log_prob(torch.tensor([x], dtype=torch.float64)).item(), r.logpdf(x),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.entropy().item(), r.entropy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.mean.item(), r.mean(), rtol=1e-9)
    np.testing.assert_allclose(d.variance.item(), r.var(), rtol=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILIES[n][2] is not None])
def test_log_prob_and_entropy_match_torch_distributions(name):
    cls, _, torch_cls = FAMILIES[name]
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(4, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(4, 3, generator=g, dtype=torch.float64) * 2 + 0.1
    ours, theirs = cls(loc, scale), torch_cls(loc, scale)
    x = theirs.sample((7,))
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))
    if name != "LogNormal" or hasattr(theirs, "entropy"):
        torch.testing.assert_close(ours.entropy(), theirs.entropy())


@pytest.mark.parametrize("name", NAMES)
def test_samples_pass_ks_test_and_moments(name):
    cls, ref, _ = FAMILIES[name]
    loc, scale, n = 0.3, 0.7, 20_000
    torch.manual_seed(1234)
    d = cls(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    z = d.sample((n,)).numpy()
    # False rejection probability of this check is 1e-3 for a correct sampler.
    assert stats.kstest(z, ref(loc, scale).cdf).pvalue > 1e-3
    r = ref(loc, scale)
    # Sample mean within 5 standard errors of the true mean.
    assert abs(z.mean() - r.mean()) < 5 * r.std() / math.sqrt(n)


@pytest.mark.parametrize("name", NAMES)
def test_contract_noise_then_transform(name):
    cls = FAMILIES[name][0]
    loc = torch.randn(2, 3, requires_grad=True)
    d = cls(loc, torch.full((2, 3), 0.5))
    torch.manual_seed(7)
    eps = d.sample_noise((5,))
    z_two_steps = d.transform(eps)
    torch.manual_seed(7)
    z = d.rsample((5,))
    torch.testing.assert_close(z, z_two_steps)
    assert z.shape == (5, 2, 3) and d.has_rsample and isinstance(d, torch.distributions.Distribution)
    # The noise is parameter-free: it carries no graph back to the parameters.
    assert not eps.requires_grad and z.requires_grad
    # The log-density computed from the noise equals log_prob of the sample.
    torch.manual_seed(3)
    z2, lp = d.rsample_and_log_prob((5,))
    torch.testing.assert_close(lp, d.log_prob(z2), rtol=1e-4, atol=1e-4)
    assert d.sample((2,)).requires_grad is False


@pytest.mark.parametrize("name", NAMES)
def test_transform_gradients_match_finite_differences(name):
    cls = FAMILIES[name][0]
    eps = cls(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)).sample_noise((4,))
    loc = torch.randn(3, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: cls(m, s).transform(eps), (loc, scale))


@pytest.mark.parametrize("name", NAMES)
def test_dtype_batch_shape_and_event_dims(name):
    cls = FAMILIES[name][0]
    d = cls(torch.zeros(2, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), event_dims=1)
    assert d.batch_shape == (2,) and d.event_shape == (3,)
    z = d.rsample((4,))
    assert z.dtype == torch.float64 and z.shape == (4, 2, 3)
    assert d.log_prob(z).shape == (4, 2) and d.entropy().shape == (2,)
    elementwise = cls(torch.zeros(2, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(d.log_prob(z), elementwise.log_prob(z).sum(-1))


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameters_raise_value_error_naming_argument(name):
    cls = FAMILIES[name][0]
    with pytest.raises(ValueError, match="scale"):
        cls(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="loc .* and scale .* do not broadcast"):
        cls(torch.zeros(3), torch.ones(4))
    cls(torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), validate_args=False)  # off on the hot path


# ---------------------------------------------------------------------------- TanhNormal


def _sb3_squashed_log_prob(loc, scale, u):
    from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

    dist = SquashedDiagGaussianDistribution(loc.shape[-1])
    dist.proba_distribution(loc, scale.log())
    return dist.log_prob(torch.tanh(u), gaussian_actions=u)


def test_tanh_normal_log_prob_matches_sb3_and_torch():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(64, 3, generator=g)
    scale = torch.rand(64, 3, generator=g) + 0.2
    d = ra.TanhNormal(loc, scale)
    torch.manual_seed(0)
    eps = d.sample_noise()
    u = loc + scale * eps
    a = d.transform(eps)
    torch.manual_seed(0)
    _, lp_noise = d.rsample_and_log_prob()
    # SB3 adds 1e-6 inside log(1 - tanh^2 + 1e-6): its relative effect is 1e-6 / (1 - a^2) per dim.
    tol = float((1e-6 / (1 - torch.tanh(u) ** 2)).sum(-1).max()) * 2 + 1e-4
    torch.testing.assert_close(lp_noise, _sb3_squashed_log_prob(loc, scale, u), atol=tol, rtol=0)
    ref = torch.distributions.Independent(torch.distributions.TransformedDistribution(
        torch.distributions.Normal(loc.double(), scale.double()), [torch.distributions.TanhTransform()]), 1)
    torch.testing.assert_close(lp_noise.double(), ref.log_prob(a.double()), atol=2e-3, rtol=1e-4)
    # log_prob(value) inverts the squash; it must agree with the noise path.
    torch.testing.assert_close(d.log_prob(a), lp_noise, atol=5e-3, rtol=1e-4)


def test_tanh_normal_rescaled_to_bounds_matches_torch_affine():
    low, high = torch.tensor([-2.0, 0.0, 10.0]), torch.tensor([2.0, 1.0, 30.0])
    loc, scale = torch.randn(32, 3, dtype=torch.float64), torch.rand(32, 3, dtype=torch.float64) + 0.2
    d = ra.TanhNormal(loc, scale, low=low, high=high)
    a, lp = d.rsample_and_log_prob()
    assert bool(((a >= low) & (a <= high)).all())
    T = torch.distributions.transforms
    ref = torch.distributions.Independent(torch.distributions.TransformedDistribution(
        torch.distributions.Normal(loc, scale),
        [T.TanhTransform(), T.AffineTransform((high + low).double() / 2, (high - low).double() / 2)]), 1)
    torch.testing.assert_close(lp, ref.log_prob(a), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d.mode, (high + low) / 2 + (high - low) / 2 * torch.tanh(loc))


def test_squash_box_gives_the_same_distribution_as_low_and_high():
    low, high = torch.tensor([-2.0, 0.0, 10.0]), torch.tensor([2.0, 1.0, 30.0])
    box = ra.SquashBox(low, high)
    torch.testing.assert_close(box.log_volume, torch.log((high - low) / 2).sum())
    loc, scale = torch.randn(16, 3), torch.rand(16, 3) + 0.2
    with_bounds = ra.TanhNormal(loc, scale, low=low, high=high)
    with_box = ra.TanhNormal(loc, scale, box=box)
    torch.manual_seed(3)
    a1, lp1 = with_bounds.rsample_and_log_prob((4,))
    torch.manual_seed(3)
    a2, lp2 = with_box.rsample_and_log_prob((4,))
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    torch.testing.assert_close(lp1, lp2, rtol=0, atol=0)
    torch.testing.assert_close(with_box.log_prob(a1), with_bounds.log_prob(a1), rtol=0, atol=0)
    torch.testing.assert_close(with_box.mode, with_bounds.mode, rtol=0, atol=0)
    # A box used with other event dims falls back to the general per-element computation.
    per_dim = ra.TanhNormal(loc, scale, box=box, event_dims=0)
    torch.testing.assert_close(per_dim.log_prob(a1).sum(-1), with_bounds.log_prob(a1), rtol=1e-6, atol=1e-5)
    assert box.to(torch.float64).mid.dtype == torch.float64  # a module: follows .to() with its owner
    with pytest.raises(ValueError, match="either as low and high or as box"):
        ra.TanhNormal(loc, scale, low=low, high=high, box=box)
    with pytest.raises(ValueError, match="low must be < high"):
        ra.SquashBox(torch.tensor([1.0]), torch.tensor([0.0]))


def test_tanh_log_det_jacobian_exact_and_finite():
    u = torch.linspace(-8, 8, 101, dtype=torch.float64)
    direct = torch.log(1 - torch.tanh(u) ** 2)
    torch.testing.assert_close(ra.TanhNormal.log_abs_det_jacobian(u), direct, rtol=1e-9, atol=1e-9)
    big = torch.tensor([-50.0, 50.0, -300.0, 300.0])
    ld = ra.TanhNormal.log_abs_det_jacobian(big)
    # Asymptotically log(1 - tanh(u)^2) = 2 log 2 - 2|u|.
    torch.testing.assert_close(ld, 2 * math.log(2) - 2 * big.abs())


def test_tanh_normal_extreme_means_and_boundary_actions_are_finite():
    loc = torch.tensor([[-50.0, 50.0, 0.0]], requires_grad=True)
    d = ra.TanhNormal(loc, torch.full((1, 3), 0.5), low=-torch.ones(3), high=torch.ones(3) * 2)
    a, lp = d.rsample_and_log_prob((1000,))
    assert torch.isfinite(a).all() and torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all()
    boundary = torch.tensor([[-1.0, 2.0, 0.5]])
    assert torch.isfinite(d.log_prob(boundary)).all()


def test_tanh_normal_bad_bounds():
    with pytest.raises(ValueError, match="low must be < high"):
        ra.TanhNormal(torch.zeros(2), torch.ones(2), low=torch.tensor([0.0, 1.0]), high=torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        ra.TanhNormal(torch.zeros(1), torch.ones(1), low=torch.tensor([-math.inf]), high=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="both"):
        ra.TanhNormal(torch.zeros(1), torch.ones(1), low=torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="scale"):
        ra.TanhNormal(torch.zeros(1), torch.zeros(1))


def test_tanh_normal_samples_ks_against_transformed_normal():
    torch.manual_seed(5)
    d = ra.TanhNormal(torch.tensor([0.4], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64))
    a = d.sample((20_000,)).squeeze(-1).numpy()
    # P(tanh(U) <= a) = Phi((atanh(a) - 0.4) / 0.8)
    assert stats.kstest(a, lambda x: stats.norm.cdf((np.arctanh(x) - 0.4) / 0.8)).pvalue > 1e-3


# ---------------------------------------------------------------------------- GumbelSoftmax


@settings(max_examples=20, deadline=None)
@given(tau=st.floats(0.1, 3.0), seed=st.integers(0, 1000))
def test_gumbel_softmax_log_prob_matches_torch_relaxed(tau, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ours = ra.GumbelSoftmax(logits, tau)
    ref = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits)
    y = ref.sample((4,))
    torch.testing.assert_close(ours.log_prob(y), ref.log_prob(y), rtol=1e-7, atol=1e-7)
    y2, lp = ours.rsample_and_log_prob((4,))
    torch.testing.assert_close(lp, ref.log_prob(y2), rtol=1e-6, atol=1e-6)


def test_gumbel_max_argmax_frequencies_match_probs():
    torch.manual_seed(11)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    d = ra.GumbelSoftmax(probs.log(), temperature=0.7)
    n = 20_000
    counts = torch.bincount(d.sample((n,)).argmax(-1), minlength=4).numpy()
    # Gumbel-max trick: argmax is Categorical(probs) at any temperature. Chi-square, false alarm 1e-3.
    assert stats.chisquare(counts, probs.numpy() * n).pvalue > 1e-3
    y = d.sample((100,))
    torch.testing.assert_close(y.sum(-1), torch.ones(100, dtype=torch.float64))


def test_straight_through_is_one_hot_with_relaxed_gradient():
    logits = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    soft, hard = ra.GumbelSoftmax(logits, 0.5), ra.GumbelSoftmax(logits, 0.5, hard=True)
    eps = soft.sample_noise((3,))
    y_soft, y_hard = soft.transform(eps), hard.transform(eps)
    assert set(y_hard.detach().unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(y_hard.sum(-1), torch.ones(3, 8, dtype=torch.float64))
    assert torch.equal(y_hard.argmax(-1), y_soft.argmax(-1))
    w = torch.randn(6, dtype=torch.float64)
    (g_soft,) = torch.autograd.grad((y_soft * w).sum(), logits)
    (g_hard,) = torch.autograd.grad((y_hard * w).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)
    with pytest.raises(ValueError, match="hard"):
        hard.rsample_and_log_prob()


@pytest.mark.parametrize("tau", [0.05, 0.01])
def test_gumbel_softmax_low_temperature_is_finite(tau):
    logits = (torch.randn(512, 10) * 5).requires_grad_()
    d = ra.GumbelSoftmax(logits, tau)
    y, lp = d.rsample_and_log_prob((4,))
    assert torch.isfinite(y).all() and torch.isfinite(lp).all()
    (y * torch.randn(10)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    # Noise at the extremes of the uniform (u -> 0 or 1) stays finite too.
    eps = d.sample_noise()
    assert torch.isfinite(eps).all()


def test_gumbel_softmax_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        ra.GumbelSoftmax(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        ra.GumbelSoftmax(torch.zeros(3), -1.0)


@pytest.mark.parametrize("bounds", [False, True])
@pytest.mark.parametrize("sample_shape", [(), (3,)])
def test_tanh_normal_fused_gradient_matches_plain_ops(bounds, sample_shape):
    """The fused sample's closed-form backward against finite differences and the plain-op path."""
    loc = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(4, 2, dtype=torch.float64) + 0.3).requires_grad_()
    kw = dict(low=torch.tensor([-2.0, 0.0]), high=torch.tensor([1.0, 5.0])) if bounds else {}

    def fused(m, s):
        torch.manual_seed(9)
        return ra.TanhNormal(m, s, **kw).rsample_and_log_prob(sample_shape)

    def plain(m, s):
        torch.manual_seed(9)
        d = ra.TanhNormal(m, s, **kw)
        eps = d.sample_noise(sample_shape)
        return d.transform(eps), d._log_prob_from_noise(eps, None).sum(-1)

    assert torch.autograd.gradcheck(fused, (loc, scale))
    w_a, w_l = torch.randn(sample_shape + (4, 2), dtype=torch.float64), torch.randn(sample_shape + (4,))
    outs = [fused(loc, scale), plain(loc, scale)]
    for a, lp in outs:
        torch.testing.assert_close(a, outs[1][0])
        torch.testing.assert_close(lp, outs[1][1])
    grads = [torch.autograd.grad((a * w_a).sum() + (lp * w_l).sum(), (loc, scale)) for a, lp in outs]
    torch.testing.assert_close(grads[0], grads[1])


def test_gumbel_softmax_and_tanh_transforms_match_finite_differences():
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    eps = ra.GumbelSoftmax(logits.detach(), 0.7).sample_noise((2,))
    assert torch.autograd.gradcheck(lambda lg: ra.GumbelSoftmax(lg, 0.7).transform(eps), (logits,))
    loc = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(3, 2, dtype=torch.float64) + 0.3).requires_grad_()
    e = torch.randn(5, 3, 2, dtype=torch.float64)
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([2.0, 4.0])
    assert torch.autograd.gradcheck(lambda m, s: ra.TanhNormal(m, s, low, high).transform(e), (loc, scale))


# ---------------------------------------------------------------------------- numerics near the edges

EPS32 = float(torch.finfo(torch.float32).eps)


def _tanh_reference(a, loc, scale):
    """float64 log N(atanh a; loc, scale) - log(1 - a^2) and d/du of its Gaussian part (error propagation)."""
    u = np.arctanh(a)
    return stats.norm.logpdf(u, loc, scale) - np.log1p(-a) - np.log1p(a), np.abs(u - loc) / scale**2


@pytest.mark.parametrize("bounds", [None, (-1.3, 2.1)])  # bounds whose float32 (action - mid) / half rounds
def test_tanh_normal_log_prob_as_the_action_nears_the_bounds_matches_float64(bounds):
    """Actions ~2^-1 ... 2^-22 of the half-range from each bound, in float32, against float64 at the same float32
    points and bounds. Error model: each log(1 -+ a) has a few ulp relative error, so |error| <= 4 eps32 (|ref| +
    |log N'(u)| (|log(1 - a)| + |log(1 + a)|) + 1)."""
    k = torch.arange(1, 23, dtype=torch.float64)
    low32, high32 = torch.tensor(bounds or (-1.0, 1.0))
    low, high = float(low32), float(high32)
    x32 = torch.cat([high - (high - low) / 2 * 1.37 * 2.0**-k, low + (high - low) / 2 * 1.37 * 2.0**-k]).float()
    loc, scale = 0.3, 0.8
    kw = dict(low=low32, high=high32) if bounds else {}
    d = ra.TanhNormal(torch.full_like(x32, loc), torch.full_like(x32, scale), event_dims=0, **kw)
    x = x32.double().numpy()
    half, mid = (high - low) / 2, (high + low) / 2
    a = (x - mid) / half  # float64: exact enough at the float32 points
    ref, slope = _tanh_reference(a, loc, scale)
    ref = ref - math.log(half)
    tol = 4 * EPS32 * (np.abs(ref) + slope * (np.abs(np.log1p(-a)) + np.abs(np.log1p(a))) + 1)
    err = np.abs(d.log_prob(x32).double().numpy() - ref)
    assert (err <= tol).all(), (err / tol).max()


def test_tanh_softplus_log_det_near_the_bounds_matches_log1p_in_float64():
    # a = 1 - 10^-k: the direct log(1 - tanh(u)^2) loses every digit; the softplus form keeps them.
    a = 1 - 10.0 ** -torch.arange(1, 16, dtype=torch.float64)
    a = torch.cat([a, -a])
    u = 0.5 * (torch.log1p(a) - torch.log1p(-a))  # atanh(a) to ~1 ulp (torch.atanh loses digits near -1)
    ref = torch.log1p(-a) + torch.log1p(a)  # exact at the float64 a; |du| <= 2 eps |u|
    tol = 2 * 2 * torch.finfo(torch.float64).eps * u.abs() + 1e-15 * ref.abs()  # d(log det)/du = -2 tanh(u)
    assert bool(((ra.TanhNormal.log_abs_det_jacobian(u) - ref).abs() <= tol).all())


def test_fused_tanh_normal_log_prob_with_saturated_actions_matches_float64():
    """float32 samples with means far out (tanh(u) == +-1 in float32): the log-density from the noise stays
    exact; the reference is the float64 change of variables at the same eps. Tolerance: terms of size
    |u|^2 / scale^2 rounded at eps32 each."""
    loc = torch.tensor([[-12.0, -6.0, 0.0, 6.0, 12.0]])
    scale = torch.full((1, 5), 0.7)
    d = ra.TanhNormal(loc, scale, low=-torch.ones(5), high=2 * torch.ones(5), validate_args=False)
    torch.manual_seed(4)
    a, lp = d.rsample_and_log_prob((200,))
    torch.manual_seed(4)
    eps = torch.randn(200, 1, 5).double()
    u = (loc.double() + scale.double() * eps).numpy()
    log_det = 2 * math.log(2) - 2 * np.logaddexp(u, -u)  # log(1 - tanh(u)^2), exact in float64
    ref = (stats.norm.logpdf(u, loc.double().numpy(), 0.7) - log_det - math.log(1.5)).sum(-1)
    assert torch.isfinite(lp).all() and bool(((a >= -1) & (a <= 2)).all())
    tol = 8 * EPS32 * ((u**2).sum(-1) / 0.49 + 2 * np.abs(u).sum(-1) + 10)
    assert (np.abs(lp.double().numpy() - ref) <= tol).all()


def _concrete_log_density(y, logits, tau):
    """float64 reference (Maddison et al. 2017, eq. for the Concrete density):
    log (K-1)! + (K-1) log tau + sum_k (log pi_k - (tau + 1) log y_k) - K log sum_k pi_k y_k^-tau."""
    k = y.shape[-1]
    log_pi = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    log_y = np.log(y)
    return (math.lgamma(k) + (k - 1) * math.log(tau) + (log_pi - (tau + 1) * log_y).sum(-1)
            - k * np.logaddexp.reduce(log_pi - tau * log_y, axis=-1))


@pytest.mark.parametrize("tiny_logit", [-60.0, -100.0])  # pi ~ 1e-26, and 4e-44 (below float32's normal range)
def test_gumbel_softmax_with_a_tiny_probability_is_finite_and_correct(tiny_logit):
    logits = torch.tensor([0.5, 0.0, tiny_logit, 1.0])
    tau = 0.6
    d = ra.GumbelSoftmax(logits, tau)
    y = torch.tensor([[0.3, 0.3, 1e-30, 0.4], [0.1, 0.2, 1e-12, 0.7], [0.25, 0.25, 0.25, 0.25]])
    ref = _concrete_log_density(y.double().numpy(), logits.double().numpy(), tau)
    lp = d.log_prob(y)
    # The log-density's terms are up to |tau log y| ~ 40 and |logit| = 100 in size, each rounded at eps32.
    assert torch.isfinite(lp).all()
    np.testing.assert_allclose(lp.double().numpy(), ref, rtol=0, atol=4 * 4 * EPS32 * (100 + 40 * 2))
    # The noise path: float32 log-density against float64 at the same noise (log-space: finite even
    # where y underflows to 0).
    torch.manual_seed(8)
    y_s, lp_s = d.rsample_and_log_prob((500,))
    torch.manual_seed(8)
    eps = d.sample_noise((500,)).double()
    log_y = torch.log_softmax((logits.double() + eps) / tau, -1)
    ref_s = _concrete_log_density(log_y.exp().numpy(), logits.double().numpy(), tau)
    finite = np.isfinite(ref_s)  # float64 y can underflow too at pi = 4e-44: compare where the reference exists
    assert torch.isfinite(lp_s).all() and finite.mean() > 0.5
    scale = np.abs(log_y.numpy()).sum(-1)[finite] * (tau + 1) + abs(tiny_logit) + 10
    assert (np.abs(lp_s.double().numpy()[finite] - ref_s[finite]) <= 8 * EPS32 * scale).all()
