"""The core families as torch.distributions citizens: support and constraints, expand, cdf/icdf, moments,
the KL registry, the torch wrappers (Independent, MixtureSameFamily, TransformedDistribution), validation of
bad input, torch.func.vmap and torch.compile. References: scipy.stats, torch's own families (``to_torch()``
and by hand), closed forms and Monte Carlo with tolerances from the sample variance.

torch's own distribution test helpers are not shipped in the wheel (no ``torch.testing._internal``
distributions module), so the generic checks are written here, parametrised over our families.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import reparam_apps as ra

td = torch.distributions
F64 = torch.float64
ALL = ["Normal", "Laplace", "Logistic", "LogNormal", "Gumbel", "GumbelSoftmax", "TanhNormal"]
WITH_CDF = [n for n in ALL if n != "GumbelSoftmax"]
LOC_SCALE = ["Normal", "Laplace", "Logistic", "LogNormal", "Gumbel"]
LOW, HIGH = torch.tensor([-2.0, 0.0, 1.0], dtype=F64), torch.tensor([1.0, 0.5, 4.0], dtype=F64)


def make(name, shape=(4, 3), event_dims=0, seed=0, validate=True, dtype=F64):
    """A family with random parameters of ``shape`` (GumbelSoftmax: K = shape[-1], always one event dim)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g, dtype=dtype)
    scale = torch.rand(shape, generator=g, dtype=dtype) + 0.3
    if name == "GumbelSoftmax":
        return ra.GumbelSoftmax(2 * loc, 0.7, validate_args=validate)
    if name == "TanhNormal":
        return ra.TanhNormal(loc, scale, LOW.to(dtype), HIGH.to(dtype), event_dims=event_dims, validate_args=validate)
    return getattr(ra, name)(loc, scale, event_dims=event_dims, validate_args=validate)


# scipy frozen distribution of one coordinate, from (loc, scale)
SCIPY = {
    "Normal": lambda m, s: stats.norm(m, s),
    "Laplace": lambda m, s: stats.laplace(m, s),
    "Logistic": lambda m, s: stats.logistic(m, s),
    "LogNormal": lambda m, s: stats.lognorm(s=s, scale=math.exp(m)),
    "Gumbel": lambda m, s: stats.gumbel_r(m, s),
}


# ---------------------------------------------------------------------------- generic checks


@pytest.mark.parametrize("event_dims", [0, 1])
@pytest.mark.parametrize("name", ALL)
def test_shapes_support_constraints_and_torch_equivalent(name, event_dims):
    d = make(name, event_dims=event_dims)
    ev = 1 if name == "GumbelSoftmax" else event_dims
    assert d.batch_shape == (4, 3)[: 2 - ev] and d.event_shape == (4, 3)[2 - ev:]
    assert d.support.event_dim == ev
    for param, constraint in d.arg_constraints.items():  # the declared constraints hold for valid parameters
        assert bool(constraint.check(getattr(d, param)).all()), param
    torch.manual_seed(0)
    z, lp = d.rsample_and_log_prob((5,))
    assert z.shape == (5, 4, 3) and lp.shape == (5,) + d.batch_shape and z.dtype == F64
    assert bool(d.support.check(z).all())
    # to_torch() is the same law built from torch.distributions: an independent density implementation.
    ref = d.to_torch()
    assert ref.batch_shape == d.batch_shape and ref.event_shape == d.event_shape
    torch.testing.assert_close(d.log_prob(z), ref.log_prob(z), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lp, ref.log_prob(z), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_expand_broadcasts_parameters_and_keeps_the_law(name):
    d = make(name, event_dims=1)
    e = d.expand((2,) + d.batch_shape)
    assert type(e) is type(d) and e.batch_shape == (2,) + d.batch_shape and e.event_shape == d.event_shape
    assert e._validate_args == d._validate_args and e.event_dims == d.event_dims
    x = d.sample((5,))
    torch.testing.assert_close(e.log_prob(x[:, None]), d.log_prob(x)[:, None].expand(5, 2, *d.batch_shape))
    torch.manual_seed(1)
    z, lp = e.rsample_and_log_prob((3,))
    assert z.shape == (3, 2) + d.batch_shape + d.event_shape and lp.shape == (3, 2) + d.batch_shape
    torch.testing.assert_close(lp, d.log_prob(z))
    if name not in ("GumbelSoftmax", "TanhNormal"):
        torch.testing.assert_close(e.entropy(), d.entropy().expand(2, *d.batch_shape))
        torch.testing.assert_close(e.cdf(x[:, None]), d.cdf(x)[:, None].expand(5, 2, *d.batch_shape))
    with pytest.raises(RuntimeError):
        d.expand((7,))  # not a broadcast of batch_shape (4,)


# ---------------------------------------------------------------------------- cdf, icdf, moments


@pytest.mark.parametrize("name", LOC_SCALE)
def test_cdf_icdf_moments_mode_match_scipy(name):
    locs, scales = [-0.7, 0.2, 1.3], [0.4, 1.0, 2.5]
    d = getattr(ra, name)(torch.tensor(locs, dtype=F64), torch.tensor(scales, dtype=F64))
    refs = [SCIPY[name](m, s) for m, s in zip(locs, scales, strict=True)]
    p = torch.tensor([1e-12, 0.03, 0.5, 0.9, 1 - 1e-6], dtype=F64)[:, None].expand(5, 3)  # 1e-12: the left tail
    q = d.icdf(p)
    np.testing.assert_allclose(q.numpy(), np.stack([r.ppf(p[:, 0].numpy()) for r in refs], 1), rtol=1e-9)
    np.testing.assert_allclose(d.cdf(q).numpy(), p.numpy(), rtol=1e-9)
    x = torch.tensor([0.05, 0.8, 3.0], dtype=F64)[:, None].expand(3, 3)  # in every support
    np.testing.assert_allclose(d.cdf(x).numpy(), np.stack([r.cdf(x[:, 0].numpy()) for r in refs], 1), rtol=1e-9)
    np.testing.assert_allclose(d.stddev.numpy(), [r.std() for r in refs], rtol=1e-9)
    np.testing.assert_allclose(d.variance.numpy(), [r.var() for r in refs], rtol=1e-9)
    np.testing.assert_allclose(d.mean.numpy(), [r.mean() for r in refs], rtol=1e-9)
    # The mode maximises the density: log_prob falls on both sides of it.
    h = 1e-4 * d.mode.abs().clamp_min(1.0)
    top = d.log_prob(d.mode)
    assert bool((top > d.log_prob(d.mode + h)).all() & (top > d.log_prob(d.mode - h)).all())


@pytest.mark.parametrize("name", WITH_CDF)
def test_cdf_icdf_match_torch_and_joint_cdf_over_event(name):
    d = make(name, event_dims=0)
    ref = d.to_torch()  # torch's Normal/Laplace, or its TransformedDistribution (cdf through the transforms)
    p = torch.rand(6, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(3)) * 0.98 + 0.01
    torch.testing.assert_close(d.icdf(p), ref.icdf(p), rtol=1e-8, atol=1e-10)
    x = d.sample((6,))
    torch.testing.assert_close(d.cdf(x), ref.cdf(x), rtol=1e-8, atol=1e-10)
    joint = make(name, event_dims=1)
    torch.testing.assert_close(joint.cdf(x), d.cdf(x).prod(-1))
    with pytest.raises(NotImplementedError, match="event_dims=0"):
        joint.icdf(p)


def test_tanh_normal_cdf_at_and_beyond_bounds_and_icdf_round_trip():
    d = make("TanhNormal")
    vector = make("TanhNormal", event_dims=1).support  # the box, per action vector
    box = vector.base_constraint
    assert torch.equal(box.lower_bound, LOW) and torch.equal(box.upper_bound, HIGH)
    assert vector.check(torch.stack([LOW, HIGH])).all() and not vector.check(HIGH + 1e-9).any()
    x = torch.stack([LOW - 1, LOW, HIGH, HIGH + 1]).unsqueeze(1).expand(4, 4, 3)
    torch.testing.assert_close(d.cdf(x), torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=F64)[:, None, None].expand(4, 4, 3))
    u = torch.tensor([1e-9, 0.2, 0.7, 1 - 1e-9], dtype=F64)[:, None, None].expand(4, 4, 3)
    torch.testing.assert_close(d.cdf(d.icdf(u)), u, rtol=1e-6, atol=1e-12)
    # (4) against scipy: P(action <= x) = Phi((atanh((x - mid) / half) - loc) / scale)
    a = d.sample((2,))
    mid, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    ref = stats.norm.cdf((np.arctanh(((a - mid) / half).numpy()) - d.loc.numpy()) / d.scale.numpy())
    np.testing.assert_allclose(d.cdf(a).numpy(), ref, rtol=1e-9)


def test_gumbel_softmax_has_no_cdf_and_tanh_normal_no_mean():
    with pytest.raises(NotImplementedError):
        make("GumbelSoftmax").cdf(torch.full((4, 3), 1 / 3, dtype=F64))
    with pytest.raises(NotImplementedError):
        _ = make("TanhNormal").mean


# ---------------------------------------------------------------------------- KL


PAIRS = {"Normal": td.Normal, "Laplace": td.Laplace, "Gumbel": td.Gumbel, "LogNormal": td.LogNormal}


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, generator=g, dtype=F64), torch.rand(4, 3, generator=g, dtype=F64) * 2 + 0.2


@pytest.mark.parametrize("name", list(PAIRS))
def test_registered_kl_matches_torch_for_every_combination(name):
    ours, theirs = getattr(ra, name), PAIRS[name]
    (mp, sp), (mq, sq) = _params(1), _params(2)
    ref = td.kl_divergence(theirs(mp, sp), theirs(mq, sq))
    assert not torch.allclose(ref, td.kl_divergence(theirs(mq, sq), theirs(mp, sp)))  # asymmetric: order is tested
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ambiguous-dispatch warning
        for p, q in ((ours(mp, sp), ours(mq, sq)), (ours(mp, sp), theirs(mq, sq)), (theirs(mp, sp), ours(mq, sq))):
            torch.testing.assert_close(td.kl_divergence(p, q), ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ra.kl_divergence(ours(mp, sp), ours(mq, sq)), ref, rtol=1e-10, atol=1e-12)
        # event dims: ours with event_dims=1, torch's Independent, and Independent around ours
        ev = ref.sum(-1)
        for p, q in ((ours(mp, sp, event_dims=1), ours(mq, sq, event_dims=1)),
                     (ours(mp, sp, event_dims=1), td.Independent(theirs(mq, sq), 1)),
                     (td.Independent(theirs(mp, sp), 1), ours(mq, sq, event_dims=1)),
                     (td.Independent(ours(mp, sp), 1), td.Independent(theirs(mq, sq), 1))):
            torch.testing.assert_close(td.kl_divergence(p, q), ev, rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError):
        td.kl_divergence(ours(mp, sp, event_dims=1), ours(mq, sq))


@pytest.mark.parametrize("name", list(PAIRS) + ["TanhNormal"])
def test_closed_form_kl_matches_monte_carlo(name):
    """An independent check of each formula: E_p[log p - log q] within 5 standard errors (SE = sd / sqrt(n))."""
    (mp, sp), (mq, sq) = _params(3), _params(4)
    if name == "TanhNormal":
        p, q = (ra.TanhNormal(m, s, LOW, HIGH, event_dims=0) for m, s in ((mp, sp), (mq, sq)))
    else:
        p, q = getattr(ra, name)(mp, sp), getattr(ra, name)(mq, sq)
    torch.manual_seed(5)
    n = 40_000
    z, log_p = p.rsample_and_log_prob((n,))
    terms = log_p - q.log_prob(z)
    se = terms.std(0) / math.sqrt(n)
    assert bool(((terms.mean(0) - td.kl_divergence(p, q)).abs() < 5 * se).all())


def test_kl_pairs_without_closed_form_and_cross_families():
    (mp, sp), (mq, sq) = _params(5), _params(6)
    # A cross-family pair goes to torch's formula through to_torch().
    torch.testing.assert_close(td.kl_divergence(ra.Normal(mp, sp), ra.Laplace(mq, sq)),
                               td.kl_divergence(td.Normal(mp, sp), td.Laplace(mq, sq)))
    assert bool(torch.isinf(td.kl_divergence(ra.Normal(mp, sp), td.Uniform(mq - 1, mq + 1))).all())
    # LogNormal is not a Normal to the registry: no silent Normal formula between different supports.
    for p, q in ((ra.LogNormal(mp, sp), ra.Normal(mq, sq)), (ra.Normal(mp, sp), ra.LogNormal(mq, sq)),
                 (ra.Logistic(mp, sp), ra.Logistic(mq, sq)), (ra.GumbelSoftmax(mp, 0.5), ra.GumbelSoftmax(mq, 0.5)),
                 (ra.TanhNormal(mp, sp), ra.TanhNormal(mq, sq, LOW, HIGH))):
        with pytest.raises(NotImplementedError):
            td.kl_divergence(p, q)
        with pytest.raises(NotImplementedError, match="mc_kl"):
            ra.kl_divergence(p, q)
    # TanhNormal with the same bounds: the Gaussians' KL, with a box given either way.
    box = ra.SquashBox(LOW, HIGH)
    ref = td.kl_divergence(td.Normal(mp, sp), td.Normal(mq, sq)).sum(-1)
    for p, q in ((ra.TanhNormal(mp, sp, box=box), ra.TanhNormal(mq, sq, box=box)),
                 (ra.TanhNormal(mp, sp, box=box), ra.TanhNormal(mq, sq, LOW.clone(), HIGH.clone()))):
        torch.testing.assert_close(td.kl_divergence(p, q), ref)
    torch.testing.assert_close(td.kl_divergence(ra.TanhNormal(mp, sp), ra.TanhNormal(mq, sq).to_torch()), ref)


# ---------------------------------------------------------------------------- torch wrappers


@pytest.mark.parametrize("name", ALL)
def test_independent_mixture_and_transformed_wrappers(name):
    ev = 1 if name == "GumbelSoftmax" else 0
    comp = make(name, shape=(2, 4, 3))  # batch (2, 4[, 3]): 4 mixture components
    ref = comp.to_torch()
    cat = td.Categorical(logits=torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(7)))
    if ev == 0:
        comp, ref = td.Independent(comp, 1), td.Independent(ref, 1)  # components over 3-vectors
        assert comp.support.event_dim == 1 and comp.has_rsample
    mix, mix_ref = td.MixtureSameFamily(cat, comp, validate_args=True), td.MixtureSameFamily(cat, ref)
    torch.manual_seed(2)
    x = mix.sample((5,))
    assert x.shape == (5, 2, 3) and bool(mix.support.check(x).all())
    torch.testing.assert_close(mix.log_prob(x), mix_ref.log_prob(x), rtol=1e-9, atol=1e-9)  # validates x
    torch.testing.assert_close(mix.expand((6, 2)).log_prob(x[:, None]), mix_ref.log_prob(x)[:, None].expand(5, 6, 2))
    if name not in ("GumbelSoftmax", "TanhNormal", "Logistic"):  # torch's Logistic has no moments
        torch.testing.assert_close(mix.mean, mix_ref.mean)
        torch.testing.assert_close(mix.variance, mix_ref.variance)
    if ev == 0:  # the mixture's joint CDF: sum_k w_k prod_i F_ki(x_i), from our joint cdf over the event
        one = make(name, shape=(2, 4, 3), event_dims=1)
        ref_cdf = (one.to_torch().base_dist.cdf(x[:, :, None]).prod(-1) * cat.probs).sum(-1)
        torch.testing.assert_close(td.MixtureSameFamily(cat, one).cdf(x), ref_cdf)
    # An affine map after ours: the change of variables by torch, with validation of the result.
    t = [td.AffineTransform(1.0, 2.0)]
    d, d_ref = make(name, event_dims=ev), make(name, event_dims=ev).to_torch()
    tr, tr_ref = td.TransformedDistribution(d, t, validate_args=True), td.TransformedDistribution(d_ref, t)
    y = tr.rsample((3,))
    assert y.shape == (3, 4, 3) and bool(tr.support.check(y).all())
    torch.testing.assert_close(tr.log_prob(y), tr_ref.log_prob(y), rtol=1e-9, atol=1e-9)
    if ev == 0:
        torch.testing.assert_close(tr.cdf(y), tr_ref.cdf(y))


# ---------------------------------------------------------------------------- bad input


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("name", LOC_SCALE + ["TanhNormal"])
@pytest.mark.parametrize("arg,bad", [("loc", NAN), ("loc", INF), ("loc", -INF), ("scale", NAN), ("scale", INF),
                                     ("scale", 0.0), ("scale", -1.0)])
def test_nan_inf_and_nonpositive_parameters_are_named(name, arg, bad):
    cls = getattr(ra, name)
    kw = {"loc": torch.zeros(2, 3), "scale": torch.ones(2, 3)}
    kw[arg][1, 2] = bad
    with pytest.raises(ValueError, match=f"^{arg} must be .*finite everywhere"):
        cls(**kw)
    cls(**kw, validate_args=False)  # the hot path checks nothing


@pytest.mark.parametrize("arg,bad", [("logits", NAN), ("logits", INF), ("logits", -INF), ("temperature", NAN),
                                     ("temperature", INF), ("temperature", 0.0), ("temperature", -0.5)])
def test_gumbel_softmax_bad_logits_and_temperature_are_named(arg, bad):
    kw = {"logits": torch.zeros(2, 3), "temperature": torch.tensor(0.5)}
    kw[arg] = kw[arg].clone()
    kw[arg].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"^{arg} must be"):
        ra.GumbelSoftmax(**kw)
    ra.GumbelSoftmax(**kw, validate_args=False)
    with pytest.raises(ValueError, match="temperature must be one value"):
        ra.GumbelSoftmax(torch.zeros(2, 3), torch.ones(2))


@pytest.mark.parametrize("name", ALL)
def test_nan_values_raise_and_values_outside_the_support_get_minus_inf(name):
    d, lax = make(name, event_dims=1), make(name, event_dims=1, validate=False)
    x = d.sample()
    bad = x.clone()
    bad[0, 0] = NAN
    with pytest.raises(ValueError, match="value contains NaN"):
        d.log_prob(bad)
    assert torch.isnan(lax.log_prob(bad)[0])  # no check without validation
    outside = {"LogNormal": -1.0, "TanhNormal": 9.0, "GumbelSoftmax": 2.0}.get(name, INF)
    x[0, 0] = outside
    lp = d.log_prob(x)
    assert lp[0].item() == -INF and bool(torch.isfinite(lp[1:]).all())
    if name == "TanhNormal":  # without validation: the clamped boundary density, as before
        assert math.isfinite(lax.log_prob(x)[0].item())
    if name in WITH_CDF:
        with pytest.raises(ValueError, match="value contains NaN"):
            d.cdf(bad)
        with pytest.raises(ValueError, match=r"icdf value .* must be in \[0, 1\]"):
            make(name).icdf(torch.full((4, 3), 1.5, dtype=F64))


@pytest.mark.parametrize("name", ["LogNormal", "TanhNormal", "Normal"])
def test_gradients_stay_finite_next_to_values_outside_the_support(name):
    loc = torch.zeros(3, dtype=F64, requires_grad=True)
    scale = torch.ones(3, dtype=F64, requires_grad=True)
    d = getattr(ra, name)(loc, scale, event_dims=0)
    x = torch.tensor([{"LogNormal": -1.0, "TanhNormal": 2.0, "Normal": INF}[name], 0.5, 0.25], dtype=F64)
    lp = d.log_prob(x)
    assert lp[0].item() == -INF
    lp[1:].sum().backward()
    assert bool(torch.isfinite(loc.grad).all() & torch.isfinite(scale.grad).all())


def test_default_validation_switch():
    ra.set_default_validate_args(False)
    try:
        d = ra.Normal(torch.tensor([NAN]), torch.tensor([1.0]))  # accepted: validation off by default
        assert d._validate_args is False
    finally:
        ra.set_default_validate_args(True)
    with pytest.raises(ValueError, match="loc"):
        ra.Normal(torch.tensor([NAN]), torch.tensor([1.0]))


# ---------------------------------------------------------------------------- vmap and compile


def _build(name, loc, scale):
    if name == "GumbelSoftmax":
        return ra.GumbelSoftmax(loc, 0.7, validate_args=False)
    if name == "TanhNormal":
        return ra.TanhNormal(loc, scale, LOW, HIGH, validate_args=False)
    return getattr(ra, name)(loc, scale, validate_args=False)


def _batch_params():
    g = torch.Generator().manual_seed(11)
    return torch.randn(5, 4, 3, dtype=F64, generator=g), torch.rand(5, 4, 3, dtype=F64, generator=g) + 0.3


@pytest.mark.parametrize("name", ALL)
def test_rsample_and_log_prob_and_its_gradient_under_vmap(name):
    """randomness="same": each vmapped element sees the noise an unbatched call with the same seed draws."""
    loc, scale = _batch_params()

    def f(m, s):
        return _build(name, m, s).rsample_and_log_prob((2,))

    def objective(m, s):
        z, lp = f(m, s)
        return (z * torch.arange(3, dtype=F64)).sum() + lp.sum()

    torch.manual_seed(0)
    z, lp = torch.func.vmap(f, out_dims=1, randomness="same")(loc, scale)
    torch.manual_seed(0)
    g_loc, g_scale = torch.func.vmap(torch.func.grad(objective, argnums=(0, 1)), randomness="same")(loc, scale)
    for i in range(5):
        m, s = loc[i].clone().requires_grad_(), scale[i].clone().requires_grad_()
        torch.manual_seed(0)
        zi, lpi = f(m, s)
        torch.testing.assert_close(z[:, i], zi.detach(), rtol=0, atol=0)
        torch.testing.assert_close(lp[:, i], lpi.detach(), rtol=1e-13, atol=1e-13)  # sums may round in another order
        torch.manual_seed(0)
        objective(m, s).backward()
        torch.testing.assert_close(g_loc[i], m.grad)
        torch.testing.assert_close(g_scale[i], torch.zeros_like(s) if s.grad is None else s.grad)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", ALL)
def test_rsample_and_log_prob_compiles_without_graph_breaks(name, backend):
    """fullgraph=True fails on any graph break (the fused TanhNormal node included); values and gradients
    equal eager's for the same seed (inductor: fallback_random keeps eager's random stream)."""
    import torch._inductor.config as inductor_config

    loc, scale = (x[0] for x in _batch_params())

    def step(m, s):
        return _build(name, m, s).rsample_and_log_prob((2,))

    torch._dynamo.reset()  # one code object for every parametrisation: start each from a clean cache
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    with inductor_config.patch(fallback_random=True):
        outs = []
        for fn in (compiled, step):
            m, s = loc.clone().requires_grad_(), scale.clone().requires_grad_()
            torch.manual_seed(0)
            z, lp = fn(m, s)
            outs.append((z, lp, torch.autograd.grad(z.sum() + lp.sum(), m)[0]))
    for got, want in zip(*outs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
