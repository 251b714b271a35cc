"""bnn layers: KL (closed form vs MC vs independent references), priors, sampling modes vs explicit
weight sampling, gradient flow, noise modes, bayesianize, pruning."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import nn

import bnn
from bnn import BayesConv2d, BayesLinear
from reparam_apps import native

pytestmark = pytest.mark.usefixtures("one_thread")


def _set_params(layer: bnn.BayesLayer, seed: int = 0, sigma_range=(0.05, 0.6)) -> None:
    """Random means and sigmas in a range where the posterior differs clearly from the prior."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            if mu is None:
                continue
            mu.copy_(torch.randn(mu.shape, generator=g) * 0.5)
            if rho is not None:
                sigma = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * torch.rand(rho.shape, generator=g)
                rho.copy_(bnn.inverse_softplus(sigma))


# -- KL ---------------------------------------------------------------------------------------
def test_closed_form_kl_matches_hand_formula_and_scipy_integral():
    torch.manual_seed(0)
    layer = BayesLinear(3, 2, prior=bnn.GaussianPrior(0.7))
    _set_params(layer)
    mu = torch.cat([layer.weight_mu.flatten(), layer.bias_mu]).double().detach().numpy()
    sigma = torch.cat([layer.weight_sigma().flatten(), layer.bias_sigma()]).double().detach().numpy()
    s_p = 0.7
    hand = np.sum(np.log(s_p / sigma) + (sigma**2 + mu**2) / (2 * s_p**2) - 0.5)
    assert layer.kl_divergence().item() == pytest.approx(hand, rel=1e-5)
    # independent: numerical integral of q log(q / p) for two of the weights
    for m, s in zip(mu[:2], sigma[:2], strict=True):
        def f(w, m=m, s=s):
            return stats.norm.pdf(w, m, s) * (stats.norm.logpdf(w, m, s) - stats.norm.logpdf(w, 0, s_p))

        numeric, _ = integrate.quad(f, m - 12 * s, m + 12 * s)
        assert np.log(s_p / s) + (s**2 + m**2) / (2 * s_p**2) - 0.5 == pytest.approx(numeric, abs=1e-7)


def test_mc_kl_equals_closed_form_in_expectation():
    torch.manual_seed(1)
    closed = BayesLinear(4, 3, prior=bnn.GaussianPrior(1.0), kl_method="closed")
    mc = BayesLinear(4, 3, prior=bnn.GaussianPrior(1.0), kl_method="mc")
    _set_params(closed, seed=3)
    mc.load_state_dict(closed.state_dict())
    x = torch.randn(5, 4)
    exact = closed.kl_divergence().item()
    draws = []
    with torch.no_grad():
        for _ in range(2000):
            mc(x)
            draws.append(mc.kl_divergence().item())
    draws = np.array(draws)
    # the MC estimator is unbiased: its mean lies within 5 standard errors of the exact KL
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 5 * se
    assert se < 0.05 * exact  # and the test has power: the tolerance is a small fraction of the KL


def test_mc_kl_uses_the_weight_sample_of_the_forward_pass():
    """With x = I the output is W^T + b, so the sample used can be read off and scored independently."""
    torch.manual_seed(2)
    prior = bnn.ScaleMixturePrior(0.25, 1.0, 0.1)
    layer = BayesLinear(3, 2, prior=prior)
    _set_params(layer)
    with torch.no_grad():
        out = layer(torch.cat([torch.eye(3), torch.zeros(1, 3)]))  # row i < 3: W[:, i] + b; row 3: b
        kl = layer.kl_divergence().item()
    b = out[3].double().numpy()
    w = (out[:3] - out[3]).T.double().numpy()
    mu_w, s_w = layer.weight_mu.double().detach().numpy(), layer.weight_sigma().double().detach().numpy()
    mu_b, s_b = layer.bias_mu.double().detach().numpy(), layer.bias_sigma().double().detach().numpy()

    def log_prior(v):
        return np.log(0.25 * stats.norm.pdf(v, 0, 1.0) + 0.75 * stats.norm.pdf(v, 0, 0.1))

    reference = (stats.norm.logpdf(w, mu_w, s_w) - log_prior(w)).sum() + \
                (stats.norm.logpdf(b, mu_b, s_b) - log_prior(b)).sum()
    assert kl == pytest.approx(reference, abs=2e-3)


def test_mixture_prior_log_density_matches_direct_computation_including_extremes():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    pi, s1, s2 = 0.5, 1.0, math.exp(-6)
    prior = bnn.ScaleMixturePrior(pi, s1, s2)
    w = torch.tensor([0.0, 1e-4, 0.01, 0.5, 3.0, 40.0, -300.0, 1e4], dtype=torch.float64)

    def direct(v):
        n = lambda s: mpmath.exp(-mpmath.mpf(v) ** 2 / (2 * s**2)) / (mpmath.sqrt(2 * mpmath.pi) * s)  # noqa: E731
        return float(mpmath.log(pi * n(mpmath.mpf(s1)) + (1 - pi) * n(mpmath.mpf(s2))))

    got = prior.log_prob(w)
    for value, expected in zip(got.tolist(), [direct(v) for v in w.tolist()], strict=True):
        assert value == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # float32 at extreme weights: finite values and finite gradients (no -inf, no NaN)
    w32 = torch.tensor([1e3, -5e3, 1e-30, 0.0], requires_grad=True)
    lp = prior.log_prob(w32)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(w32.grad).all()
    assert lp[0].item() == pytest.approx(direct(1e3), rel=1e-5)


def test_gaussian_prior_log_prob_matches_scipy():
    w = torch.linspace(-5, 5, 11, dtype=torch.float64)
    got = bnn.GaussianPrior(0.3, loc=0.2).log_prob(w).numpy()
    np.testing.assert_allclose(got, stats.norm.logpdf(w.numpy(), 0.2, 0.3), rtol=1e-12)


def test_model_kl_sums_layers_and_mixture_prior_under_local_has_kl_and_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(BayesLinear(4, 6, sampling="local", prior=bnn.ScaleMixturePrior()), nn.ReLU(),
                        BayesLinear(6, 2, sampling="local"))
    x = torch.randn(8, 4)
    net(x)
    kl = bnn.model_kl(net)
    assert torch.isfinite(kl) and kl.item() > 0  # the mixture layer's KL is not dropped
    kl.backward()
    assert net[0].weight_rho.grad is not None and net[0].weight_rho.grad.abs().sum() > 0
    with torch.no_grad():
        # the model's KL is the sum of the layers' KLs on the same draws: layer 0's MC estimate draws its own
        # weight sample under local reparameterization, so the same seed before each call gives the same draw
        net(x)
        torch.manual_seed(5)
        kl_0, kl_2 = net[0].kl_divergence(), net[2].kl_divergence()
        net(x)
        torch.manual_seed(5)
        total = bnn.model_kl(net)
        closed = sum(torch.distributions.kl_divergence(torch.distributions.Normal(m, F.softplus(r)),
                                                       torch.distributions.Normal(0.0, 1.0)).sum()
                     for m, r in ((net[2].weight_mu, net[2].weight_rho), (net[2].bias_mu, net[2].bias_rho)))
    assert kl_2.item() == pytest.approx(closed.item(), rel=1e-5)  # independent closed form
    assert kl_0.item() != 0.0 and abs(kl_0.item()) > 1e-3 * abs(kl_2.item())  # so dropping it shows
    assert total.item() == pytest.approx(kl_0.item() + kl_2.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no Bayesian layers"):
        bnn.model_kl(nn.Linear(2, 2))


# -- sampling modes vs explicit weight sampling -------------------------------------------------
def _moments(layer, x, n):
    with torch.no_grad():
        if layer.sampling == "local":  # independent noise per example: n copies of the batch in one pass
            outs = layer(x.repeat(n, *([1] * (x.dim() - 1)))).reshape(n, *layer(x).shape).double()
        else:  # one weight sample (reparam) or one perturbation (flipout) per pass: n passes
            outs = torch.stack([layer(x) for _ in range(n)]).double()
    return outs.mean(0), outs.var(0)


def _explicit_moments(layer, x, n):
    """Explicit weight sampling with one independent weight draw per example (the distribution that local
    reparameterization and Flipout reproduce per example)."""
    q_w = bnn.layers.Normal(layer.weight_mu.detach(), layer.weight_sigma().detach(), validate_args=False)
    q_b = bnn.layers.Normal(layer.bias_mu.detach(), layer.bias_sigma().detach(), validate_args=False)
    outs = []
    with torch.no_grad():
        for _ in range(n):
            outs.append(torch.cat([layer._affine(x[i : i + 1], q_w.rsample(), q_b.rsample()) for i in range(len(x))]))
    outs = torch.stack(outs).double()
    return outs.mean(0), outs.var(0)


@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_modes_match_explicit_weight_sampling_mean_and_variance(sampling, kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer = BayesLinear(5, 3, sampling=sampling)
        x = torch.randn(4, 5)
    else:
        layer = BayesConv2d(2, 3, 3, stride=1, padding=1, sampling=sampling)
        x = torch.randn(2, 2, 4, 4)
    _set_params(layer, seed=1)
    n = 3000 if kind == "linear" else 1500
    mean, var = _moments(layer, x, n)
    # exact moments of the output of a Gaussian weight layer: E = x mu + b_mu, Var = x^2 sigma^2 + s_b^2
    with torch.no_grad():
        exact_mean = layer._affine(x, layer.weight_mu, layer.bias_mu).double()
        exact_var = layer._affine(x.square(), layer.weight_sigma().square(), layer.bias_sigma().square()).double()
    z_mean = (mean - exact_mean) / (exact_var / n).sqrt()
    # sample variance of a Gaussian: standard error var * sqrt(2 / (n - 1))
    z_var = (var - exact_var) / (exact_var * math.sqrt(2.0 / (n - 1)))
    assert z_mean.abs().max() < 5.0 and z_var.abs().max() < 5.0
    if kind == "linear" and sampling != "reparam":
        e_mean, e_var = _explicit_moments(layer, x, 1500)  # the empirical reference agrees too
        assert ((mean - e_mean).abs() < 5 * (exact_var * (1 / n + 1 / 1500)).sqrt()).all()
        assert ((var - e_var).abs() < 5 * exact_var * math.sqrt(2 / n + 2 / 1500)).all()


def test_local_and_flipout_have_lower_gradient_variance_than_shared_weight_sample():
    torch.manual_seed(0)
    base = BayesLinear(10, 1)
    _set_params(base, seed=2, sigma_range=(0.3, 0.6))
    x = torch.randn(64, 10)
    target = torch.randn(64, 1)
    grads = {}
    for sampling in ("reparam", "local", "flipout"):
        layer = BayesLinear(10, 1, sampling=sampling)
        layer.load_state_dict(base.state_dict())
        g = []
        for _ in range(400):
            layer.zero_grad()
            ((layer(x) - target) ** 2).mean().backward()
            g.append(layer.weight_mu.grad.flatten().clone())
        grads[sampling] = torch.stack(g)
    means = {k: v.mean(0) for k, v in grads.items()}
    variance = {k: v.var(0).sum().item() for k, v in grads.items()}
    # same expected gradient (unbiased estimators of one quantity) ...
    for k in ("local", "flipout"):
        se = ((grads[k].var(0) + grads["reparam"].var(0)) / 400).sqrt()
        assert ((means[k] - means["reparam"]).abs() < 5 * se).all()
    # ... with a much smaller variance once the batch decorrelates the noise (~1/B vs O(1))
    assert variance["local"] < 0.5 * variance["reparam"]
    assert variance["flipout"] < 0.5 * variance["reparam"]


@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
@pytest.mark.parametrize("prior", [bnn.GaussianPrior(1.0), bnn.ScaleMixturePrior()])
def test_gradients_reach_mu_and_rho(sampling, prior):
    torch.manual_seed(0)
    net = nn.Sequential(BayesConv2d(1, 2, 3, padding=1, sampling=sampling, prior=prior), nn.ReLU(), nn.Flatten(),
                        BayesLinear(2 * 5 * 5, 3, sampling=sampling, prior=prior))
    terms = bnn.elbo_loss(net, bnn.CategoricalLikelihood(), torch.randn(4, 1, 5, 5), torch.tensor([0, 1, 2, 0]),
                          n_data=10)
    terms.loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# -- noise modes ------------------------------------------------------------------------------
def test_mean_and_frozen_modes():
    torch.manual_seed(0)
    net = nn.Sequential(BayesLinear(3, 4), nn.Tanh(), BayesLinear(4, 2, sampling="flipout"))
    for layer in bnn.bayes_layers(net):
        _set_params(layer)
    x = torch.randn(5, 3)
    with torch.no_grad():
        with bnn.mean_weights(net):
            a, b = net(x), net(x)
            expected = net[2](torch.tanh(F.linear(x, net[0].weight_mu, net[0].bias_mu)))
        assert torch.equal(a, b) and torch.allclose(a, expected)
        assert not torch.equal(net(x), net(x))  # back to sampling after the context
        with bnn.frozen_noise(net):
            f1, f2 = net(x), net(x)
            bnn.resample_frozen(net)
            f3 = net(x)
        assert torch.equal(f1, f2) and not torch.equal(f1, f3)
        # a frozen sample is one weight sample shared by the batch: row i is the same function of x_i
        with bnn.frozen_noise(net):
            assert torch.allclose(net(x[:2]), net(x)[:2], atol=1e-6)
    assert all(layer.noise == "sample" for layer in bnn.bayes_layers(net))


def test_bad_layer_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="sigma must be positive"):
        BayesLinear(2, 2, init_rho=-200.0)
    with pytest.raises(ValueError, match="positive"):
        bnn.GaussianPrior(0.0)
    with pytest.raises(ValueError, match="pi"):
        bnn.ScaleMixturePrior(pi=1.5)
    with pytest.raises(ValueError, match="sigma2"):
        bnn.ScaleMixturePrior(sigma2=-1.0)
    with pytest.raises(ValueError, match="closed"):
        BayesLinear(2, 2, prior=bnn.ScaleMixturePrior(), kl_method="closed")
    with pytest.raises(ValueError, match="sampling mode"):
        BayesLinear(2, 2, sampling="bogus")
    with pytest.raises(ValueError, match="out_features"):
        BayesLinear(2, 0)


# -- bayesianize -----------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1, dilation=1), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.features(x))


def test_bayesianize_preserves_architecture_and_moped_with_tiny_sigma_preserves_outputs():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        reference = net(x)
    shapes = [(n, tuple(m.weight.shape), m.bias is not None) for n, m in net.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d))]
    converted = bnn.bayesianize(net, moped_delta=1e-7)
    layers = [(n, m) for n, m in converted.named_modules() if isinstance(m, bnn.BayesLayer)]
    assert [(n, tuple(m.weight_mu.shape), m.bias_mu is not None) for n, m in layers] == shapes
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in converted.modules())
    conv = converted.features[2]
    assert (conv.stride, conv.padding, conv.dilation, conv.groups) == ((1, 1), (2, 2), (2, 2), 2)
    for sampling in bnn.SAMPLING_MODES:
        bnn.set_sampling(converted, sampling)
        with torch.no_grad():
            assert torch.allclose(converted(x), reference, atol=1e-5), sampling
    # MOPED: sigma = delta * |w|
    lin = converted.head[1]
    assert torch.allclose(lin.weight_sigma(), 1e-7 * lin.weight_mu.abs().clamp_min(1e-38), rtol=1e-3)
    # a fresh bayesianize gives rho = init_rho and nn's default mean init
    fresh = bnn.bayesianize(_Net(), init_rho=-4.0)
    assert torch.all(fresh.head[1].weight_rho == -4.0)
    bare = nn.Linear(3, 2)
    single = bnn.bayesianize(bare, moped_delta=0.1)
    assert isinstance(single, BayesLinear) and torch.equal(single.weight_mu, bare.weight)


class _Scaled(nn.Module):
    """A module with a parameter of its own around a convertible child."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.inner = nn.Linear(3, 3)

    def forward(self, x):
        return self.scale * self.inner(x)


def test_bayesianize_warns_about_every_module_it_leaves_deterministic():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.BatchNorm2d(2, affine=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2, 3), nn.LayerNorm(3), _Scaled(), bnn.BayesLinear(3, 2))
    with pytest.warns(UserWarning, match="left 3 module") as record:
        bnn.bayesianize(net)
    message = str(record[0].message)
    for left in ("1 (BatchNorm2d)", "6 (LayerNorm)", "7 (_Scaled)"):
        assert left in message
    assert "2 (BatchNorm2d)" not in message  # no parameters (affine=False): nothing left out
    assert isinstance(net[0], BayesConv2d) and isinstance(net[5], BayesLinear) and isinstance(net[7].inner, BayesLinear)
    root = _Scaled()
    with pytest.warns(UserWarning, match=r"<root> \(_Scaled\)"):
        bnn.bayesianize(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only convertible layers: no warning
        bnn.bayesianize(_Net())
        bnn.bayesianize(nn.Linear(2, 2))


# -- pruning ----------------------------------------------------------------------------------
def test_prune_by_snr_removes_the_lowest_snr_weights():
    torch.manual_seed(0)
    net = nn.Sequential(BayesLinear(6, 5), nn.ReLU(), BayesLinear(5, 2))
    for i, layer in enumerate(bnn.bayes_layers(net)):
        _set_params(layer, seed=i)
    snr = torch.cat([layer.signal_to_noise().flatten() for layer in bnn.bayes_layers(net)])
    bnn.prune_by_snr(net, 0.5)
    masks = torch.cat([layer.weight_mask.flatten() for layer in bnn.bayes_layers(net)])
    assert masks.sum().item() == snr.numel() - round(0.5 * snr.numel())
    assert snr[masks == 1].min() > snr[masks == 0].max()
    x = torch.randn(4, 6)
    with torch.no_grad(), bnn.mean_weights(net):
        h = F.relu(F.linear(x, net[0].weight_mu * net[0].weight_mask, net[0].bias_mu))
        assert torch.allclose(net(x), F.linear(h, net[2].weight_mu * net[2].weight_mask, net[2].bias_mu))
    bnn.prune_by_snr(net, 0.0)
    assert all(layer.weight_mask is None for layer in bnn.bayes_layers(net))


@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
def test_fused_training_path_matches_the_core_transform_and_kl(sampling):
    """The fused hot path (softplus once, analytic backward) against Normal.transform + kl_normal_normal."""
    from reparam_apps import Normal, kl_normal_normal

    torch.manual_seed(0)
    layer = BayesLinear(5, 3, sampling=sampling, prior=bnn.GaussianPrior(0.8, loc=0.1)).double()
    _set_params(layer)
    x = torch.randn(4, 5, dtype=torch.float64)
    mu, rho = layer.weight_mu, layer.weight_rho
    # KL value and gradient: fused (during a training forward) vs the core's closed form through autograd
    layer(x)
    fused_kl = layer.kl_divergence()
    g_fused = torch.autograd.grad(fused_kl, (mu, rho, layer.bias_mu, layer.bias_rho))
    ref_kl = sum(kl_normal_normal(m, F.softplus(r), 0.1, 0.8).sum()
                 for m, r in ((mu, rho), (layer.bias_mu, layer.bias_rho)))
    g_ref = torch.autograd.grad(ref_kl, (mu, rho, layer.bias_mu, layer.bias_rho))
    assert fused_kl.item() == pytest.approx(ref_kl.item(), rel=1e-12)
    for a, b in zip(g_fused, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    # output gradient: same noise through the fused op and through Normal.transform + F.linear
    if sampling == "reparam":
        torch.manual_seed(3)
        out = layer(x)
        g1 = torch.autograd.grad(out.square().sum(), (mu, rho))
        torch.manual_seed(3)
        eps_w = Normal(torch.zeros((), dtype=x.dtype), torch.ones((), dtype=x.dtype)).sample_noise(mu.shape)
        eps_b = Normal(torch.zeros((), dtype=x.dtype), torch.ones((), dtype=x.dtype)).sample_noise((3,))
        w = Normal(mu, F.softplus(rho)).transform(eps_w)
        b = Normal(layer.bias_mu, F.softplus(layer.bias_rho)).transform(eps_b)
        ref = F.linear(x, w, b)
        assert torch.allclose(out, ref, rtol=1e-12)
        g2 = torch.autograd.grad(ref.square().sum(), (mu, rho))
        for a, b in zip(g1, g2, strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


native_only = pytest.mark.skipif(not native.available(), reason=f"native kernel: {native.unavailable_reason()}")


def _native_reference(layer: BayesLinear):
    """w = mu + softplus(rho) eps in float64 autograd, eps rebuilt from the keys the layer drew from torch's
    generator (weight first, then a Bayesian bias), and the closed-form KL to N(0.1, 0.8^2)."""
    eps_w = native.standard_normal(layer.weight_mu.shape, native.new_key()).double()
    params = [p.detach().double().requires_grad_() for p in (layer.weight_mu, layer.weight_rho)]
    w = params[0] + F.softplus(params[1]) * eps_w
    kl = (math.log(0.8) - F.softplus(params[1]).log()
          + (F.softplus(params[1]) ** 2 + (params[0] - 0.1) ** 2) / (2 * 0.8**2) - 0.5).sum()
    b = None
    if layer.bias_mu is not None:
        params.append(layer.bias_mu.detach().double().requires_grad_())
        b = params[-1]
        if layer.bias_rho is not None:
            params.append(layer.bias_rho.detach().double().requires_grad_())
            eps_b = native.standard_normal(layer.bias_mu.shape, native.new_key()).double()
            sb = F.softplus(params[-1])
            b = params[-2] + sb * eps_b
            kl = kl + (math.log(0.8) - sb.log() + (sb**2 + (params[-2] - 0.1) ** 2) / (2 * 0.8**2) - 0.5).sum()
    return params, w, b, kl


@native_only
@pytest.mark.parametrize("bias", ["bayesian", "point", "none"])
@pytest.mark.parametrize("x_shape", [(6, 40), (40,), (2, 3, 40)])
def test_native_fused_linear_matches_float64_autograd(bias, x_shape):
    """BayesLinear's one-node native path (float32): output, KL and every gradient (x, mu, rho, bias) against float64
    autograd on the same noise, for any leading input shape, with and without a (Bayesian) bias."""
    torch.manual_seed(0)
    layer = BayesLinear(40, 24, bias=bias != "none", bayesian_bias=bias == "bayesian",
                        prior=bnn.GaussianPrior(0.8, loc=0.1), init_rho=-3.0)
    _set_params(layer, sigma_range=(0.001, 0.3))
    x = torch.randn(x_shape, requires_grad=True)
    torch.manual_seed(5)
    y = layer(x)
    kl = layer.kl_divergence()
    assert y.grad_fn is not None and "BayesLinearSample" in type(y.grad_fn).__name__  # the fused node ran
    g_out = torch.randn(y.shape)
    grads = torch.autograd.grad((y * g_out).sum() + 0.3 * kl, [x] + [p for p in layer.parameters()])
    torch.manual_seed(5)
    params, w, b, ref_kl = _native_reference(layer)
    x64 = x.detach().double().requires_grad_()
    ref_y = F.linear(x64, w, b)
    ref = torch.autograd.grad((ref_y * g_out.double()).sum() + 0.3 * ref_kl, [x64] + params)
    torch.testing.assert_close(y.double(), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl.double(), ref_kl, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, ref, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@native_only
def test_native_fused_linear_keeps_each_graph_s_noise_until_its_backward():
    """Two forward passes before one backward (several MC samples per step): each graph keeps its own weight
    sample and noise, so the summed gradient equals the sum of the two references; recycled buffers are only
    handed out again once a graph is freed."""
    torch.manual_seed(0)
    layer = BayesLinear(300, 200, prior=bnn.GaussianPrior(0.8, loc=0.1))  # 60k weights: above the pool's minimum
    x = torch.randn(4, 300)
    torch.manual_seed(11)
    y1, kl1 = layer(x), layer.kl_divergence()
    y2, kl2 = layer(x), layer.kl_divergence()
    grads = torch.autograd.grad(y1.square().sum() + y2.sum() + kl1 + kl2, list(layer.parameters()))
    torch.manual_seed(11)
    refs = []
    for loss in (lambda y: y.square().sum(), lambda y: y.sum()):
        params, w, b, ref_kl = _native_reference(layer)
        refs.append(torch.autograd.grad(loss(F.linear(x.double(), w, b)) + ref_kl, params))
    for got, a, b in zip(grads, *refs, strict=True):
        torch.testing.assert_close(got.double(), a + b, rtol=1e-4, atol=1e-5)


def test_autocast_and_float64_fall_back_to_the_generic_path():
    layer = BayesLinear(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(3, 8))
    (y.float().sum() + layer.kl_divergence()).backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(layer.weight_rho.grad).all()
    layer64 = BayesLinear(8, 4).double()
    y64 = layer64(torch.randn(3, 8, dtype=torch.float64))
    (y64.sum() + layer64.kl_divergence()).backward()
    assert "BayesLinearSample" not in type(y64.grad_fn).__name__ and layer64.weight_mu.grad.dtype == torch.float64


@native_only
def test_native_fused_linear_gives_the_numbers_of_the_per_tensor_path():
    """The one-node path and the per-tensor path (core op on each tensor, then F.linear) draw the same keys in the
    same order: training a small network a few steps with either gives bit-identical outputs and parameters; the
    KL agrees to float32 rounding (the one-node path sums weight and bias terms in double before rounding)."""
    results, outputs, kls = [], [], []
    for fused in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(BayesLinear(30, 20), nn.ReLU(), BayesLinear(20, 5, bayesian_bias=False),
                            nn.ReLU(), BayesLinear(5, 3, bias=False))
        if not fused:
            for layer in bnn.bayes_layers(net):
                layer._fused_sample_forward = lambda *args: None  # the per-tensor path
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        x, y = torch.randn(16, 30), torch.randint(0, 3, (16,))
        for _ in range(5):
            terms = bnn.elbo_loss(net, bnn.CategoricalLikelihood(), x, y, n_data=100)
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
        torch.manual_seed(1)
        outputs.append(net(x).detach())
        kls.append(bnn.model_kl(net).detach())
    assert torch.equal(results[0], results[1])
    assert torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(kls[0], kls[1], rtol=2 * 2.0**-24, atol=0)
