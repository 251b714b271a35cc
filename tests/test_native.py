"""The core's native Gaussian-posterior kernel against independent references: the N(0, 1) law of its
counter-based noise (Kolmogorov-Smirnov, moments, independence), and the value, KL and gradients of the fused
op against float64 autograd through softplus on the same noise."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from reparam_apps import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel: {native.unavailable_reason()}")

N = 200_000
# Tolerances from the sampling distributions at n = N: 5 standard errors (two-sided p ~ 6e-7 per check).
SE = 1 / math.sqrt(N)


def test_noise_is_standard_normal():
    eps = native.standard_normal((N,), key=(12345, 678)).double()
    assert stats.kstest(eps.numpy(), "norm").statistic < 1.95 * SE  # KS 0.1% critical value 1.95 / sqrt(n)
    assert abs(eps.mean().item()) < 5 * SE
    assert abs(eps.var().item() - 1) < 5 * math.sqrt(2) * SE  # var of the sample variance: 2 / n
    assert abs(stats.kurtosis(eps.numpy())) < 5 * math.sqrt(24) * SE  # excess kurtosis: var 24 / n
    assert eps.abs().max().item() <= math.sqrt(-2 * math.log(2.0**-25)) + 1e-4  # 24-bit uniforms bound the tails


def test_noise_has_no_correlations():
    eps = native.standard_normal((N,), key=(1, 2)).double()
    blocks = eps.reshape(-1, 16)
    pairs = {
        "neighbours": (eps[:-1], eps[1:]),
        "Box-Muller cos/sin of one pair": (blocks[:, :8].reshape(-1), blocks[:, 8:].reshape(-1)),
        "squares of a pair": (blocks[:, :8].reshape(-1) ** 2, blocks[:, 8:].reshape(-1) ** 2),
        "adjacent keys": (eps, native.standard_normal((N,), key=(1, 3)).double()),
    }
    for name, (a, b) in pairs.items():
        r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(len(a)), name


def test_noise_is_deterministic_per_key_and_drawn_from_torch_seed():
    a = native.standard_normal((1000,), key=(7, 8))
    assert torch.equal(a, native.standard_normal((1000,), key=(7, 8)))
    assert not torch.equal(a, native.standard_normal((1000,), key=(7, 9)))
    # A prefix of a stream is the stream of a shorter tensor (counter-based, tail blocks included).
    torch.testing.assert_close(native.standard_normal((37,), key=(7, 8)), a[:37], rtol=0, atol=0)
    torch.manual_seed(0)
    k1 = native.new_key()
    torch.manual_seed(0)
    assert native.new_key() == k1


def _reference(mu, rho, eps, kind, loc_p, scale_p):
    """float64 autograd through the textbook formulas."""
    sigma = F.softplus(rho)
    out = {"sample": mu + sigma * eps, "perturbation": sigma * eps, "variance": sigma**2}[kind]
    kl = (math.log(scale_p) - sigma.log() + (sigma**2 + (mu - loc_p) ** 2) / (2 * scale_p**2) - 0.5).sum()
    return out, kl


@pytest.mark.parametrize("kind", list(native.KINDS))
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 70_001])  # tails, whole blocks, the multithreaded size
@pytest.mark.parametrize("regime", ["mixed", "small sigma"])
def test_value_kl_and_gradients_match_autograd(kind, n, regime):
    gen = torch.Generator().manual_seed(n)
    mu = (torch.randn(n, generator=gen) * 0.3).requires_grad_()
    if regime == "mixed":  # every softplus branch: rho > 20, moderate, and very negative
        rho = (torch.randn(n, generator=gen) * 3 - 3).clamp(-30, 30)
        rho[:3] = torch.tensor([-30.0, 25.0, 0.0])[: min(3, n)]
    else:  # rho <= -4 everywhere: the kernel's series path for softplus and log sigma
        rho = torch.rand(n, generator=gen) * -12 - 4
        rho[:2] = torch.tensor([-4.0, -80.0])[: min(2, n)]
    rho.requires_grad_()
    key, loc_p, scale_p = (11, 22), 0.1, 0.7
    out, kl = native.gaussian_posterior(mu, rho, kind, loc_p, scale_p, key=key)
    eps = native.standard_normal((n,), key).double()
    mu64, rho64 = mu.detach().double().requires_grad_(), rho.detach().double().requires_grad_()
    ref_out, ref_kl = _reference(mu64, rho64, eps, kind, loc_p, scale_p)
    torch.testing.assert_close(out.double(), ref_out, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(kl.double(), ref_kl, rtol=1e-5, atol=1e-3)
    g_out = torch.randn(n, generator=gen)
    g_mu, g_rho = torch.autograd.grad(out * g_out, (mu, rho), torch.ones(n), retain_graph=True)
    g_mu_kl, g_rho_kl = torch.autograd.grad(kl * 0.3, (mu, rho))
    r_mu, r_rho = torch.autograd.grad((ref_out * g_out.double()).sum() + 0.3 * ref_kl, (mu64, rho64))
    torch.testing.assert_close((g_mu + g_mu_kl).double(), r_mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((g_rho + g_rho_kl).double(), r_rho, rtol=1e-4, atol=1e-5)


def test_kl_alone_has_gradients_and_bad_input_is_rejected():
    mu, rho = torch.zeros(5, requires_grad=True), torch.full((5,), -1.0, requires_grad=True)
    _, kl = native.gaussian_posterior(mu, rho)
    kl.backward()  # no gradient reached the sample: the backward pass must treat it as zero
    assert mu.grad is not None and torch.isfinite(rho.grad).all()
    with pytest.raises(ValueError, match="unknown kind"):
        native.gaussian_posterior(mu, rho, "weights")
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        native.gaussian_posterior(mu, rho, prior_scale=0.0)
    with pytest.raises(ValueError, match="float32 CPU"):
        native.gaussian_posterior(mu.double(), rho.double())
    assert not native.usable_for(torch.zeros(4, 4).t())  # not contiguous


def test_switch_off_falls_back_cleanly():
    code = ("from reparam_apps import native; import bnn, torch;"
            "print(native.available(), native.unavailable_reason());"
            "layer = bnn.BayesLinear(3, 2); y = layer(torch.randn(4, 3)); bnn.kl_divergence(layer).backward()")
    env = {**os.environ, "REPARAM_APPS_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False switched off by REPARAM_APPS_NATIVE=0"


def test_bayes_linear_uses_the_kernel_with_its_noise_stream():
    """The layer's sample is mu + softplus(rho) eps with eps from the keys it drew (weight first, then bias)."""
    import bnn

    layer = bnn.BayesLinear(20, 7, init_rho=-3.0)
    x = torch.randn(5, 20)
    torch.manual_seed(4)
    y = layer(x)
    kl = bnn.kl_divergence(layer)
    torch.manual_seed(4)
    eps_w = native.standard_normal((7, 20), native.new_key())
    eps_b = native.standard_normal((7,), native.new_key())
    with torch.no_grad():
        w = layer.weight_mu + F.softplus(layer.weight_rho) * eps_w
        b = layer.bias_mu + F.softplus(layer.bias_rho) * eps_b
        ref_kl = sum(torch.distributions.kl_divergence(torch.distributions.Normal(m, F.softplus(r)),
                                                       torch.distributions.Normal(0.0, 1.0)).sum()
                     for m, r in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)))
    torch.testing.assert_close(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, ref_kl, rtol=1e-5, atol=1e-4)
