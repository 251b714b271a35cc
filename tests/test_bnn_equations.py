"""Bayes-by-Backprop equations against independent references, on every execution path of the layers.

Paths (all in training mode, with grad enabled, as a training step runs them):
  native  the core's native kernel (float32 CPU): BayesLinear's one-node reparam path, else one core op per tensor
  fused   the kernel switched off (what REPARAM_APPS_NATIVE=0 gives): the eager fused autograd node per tensor
  eager   the per-tensor torch path (taken here through an all-ones pruning mask, which changes no value)

Checked: output mean x mu^T + b_mu and variance x^2 (sigma^2)^T + sigma_b^2; Flipout's fourth moments (its two
sign flips); unbiased pathwise gradients (no missing/extra detach); closed-form KL value and gradient against
torch.distributions; the ELBO's scaling (KL / N of the data set, Blundell's weights) against hand computations.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.distributions import Normal as TorchNormal
from torch.distributions import kl_divergence as torch_kl

import bnn
from bnn import BayesConv2d, BayesLinear
from reparam_apps import native

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5.0  # tolerances are K standard errors: a two-sided false alarm ~ 6e-7 per check
PATHS = ("native", "fused", "eager")
NATIVE_NODES = {"_BayesLinearSampleBackward", "_GaussianPosteriorBackward"}
FUSED_NODES = {"_FusedGaussianPosteriorBackward"}


def _set_params(layer: bnn.BayesLayer, seed: int = 0, sigma_range=(0.05, 0.6)) -> None:
    """Means ~ N(0, 0.5^2), sigmas uniform in ``sigma_range``: far from the prior and from each other."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            if mu is not None:
                mu.copy_(torch.randn(mu.shape, generator=g) * 0.5)
            if rho is not None:
                lo, hi = sigma_range
                rho.copy_(bnn.inverse_softplus(lo + (hi - lo) * torch.rand(rho.shape, generator=g)))


def _on_path(layer: bnn.BayesLayer, path: str, monkeypatch) -> bnn.BayesLayer:
    """Route ``layer``'s training forward pass through ``path`` (see the module doc)."""
    if path == "native" and not native.available():
        pytest.skip(f"native kernel: {native.unavailable_reason()}")
    if path == "fused":
        monkeypatch.setattr(native, "usable_for", lambda *tensors: False)  # the layers' only gate to the kernel
    if path == "eager":
        layer.weight_mask = torch.ones_like(layer.weight_mu)  # masking takes the per-tensor path; x * 1 == x
    return layer.train()


def _graph_names(t: torch.Tensor) -> set[str]:
    """Class names of every autograd node behind ``t``."""
    names, stack, seen = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _assert_path(y: torch.Tensor, path: str) -> None:
    names = _graph_names(y)
    if path == "native":
        assert names & NATIVE_NODES and not names & FUSED_NODES, names
    elif path == "fused":
        assert names & FUSED_NODES and not names & NATIVE_NODES, names
    else:
        assert not names & (NATIVE_NODES | FUSED_NODES), names


def _exact_moments(layer: bnn.BayesLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[y] = x mu^T + b_mu and Var[y] = x^2 (sigma_w^2)^T + sigma_b^2 per output element, in float64 from the
    parameters (torch's own linear / conv2d, not the layer's code)."""
    with torch.no_grad():
        x64 = x.double()
        mu, s2 = layer.weight_mu.double(), F.softplus(layer.weight_rho.double()).square()
        b_mu = layer.bias_mu.double()
        b_s2 = F.softplus(layer.bias_rho.double()).square()
        if isinstance(layer, BayesConv2d):
            def op(inp, w, b):
                return F.conv2d(inp, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            op = F.linear
        return op(x64, mu, b_mu), op(x64.square(), s2, b_s2)


def _training_draws(layer: bnn.BayesLayer, x: torch.Tensor, n: int, path: str) -> torch.Tensor:
    """n independent outputs for input ``x`` from grad-enabled training forward passes: (n, *output)."""
    assert torch.is_grad_enabled() and layer.training
    if layer.sampling == "local":  # independent noise per example: the n copies of the batch in one pass
        y = layer(x.repeat(n, *([1] * (x.dim() - 1))))
        _assert_path(y, path)
        return y.detach().reshape(n, *x.shape[:1], *y.shape[1:])  # row k B + b is copy k of example b
    ys = [layer(x) for _ in range(n)]  # one weight sample (reparam) or one perturbation (flipout) per pass
    _assert_path(ys[0], path)
    return torch.stack([y.detach() for y in ys])


# -- predictive moments on every path ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_training_output_has_the_exact_mean_and_variance(kind, sampling, path, monkeypatch):
    """Every mode on every path: the output's mean x mu^T + b_mu and variance x^2 sigma^2^T + sigma_b^2.

    Under the null hypothesis each output element is exactly Gaussian across passes (a linear map of Gaussian
    weights; Flipout's is Gaussian given the signs, with a variance the signs do not change), so its fourth
    central moment is mu_4 = 3 v^2. Standard errors over n independent draws: SE(mean) = sqrt(v / n), and
    Var(s^2) = (mu_4 - v^2 (n - 3) / (n - 1)) / n = 2 v^2 / (n - 1), so SE(s^2) = v sqrt(2 / (n - 1))."""
    torch.manual_seed(0)
    if kind == "linear":
        layer, x, n = BayesLinear(5, 3, sampling=sampling), torch.randn(4, 5), 2000
    else:
        layer, x, n = BayesConv2d(2, 3, 3, padding=1, sampling=sampling), torch.randn(2, 2, 4, 4), 1500
    _set_params(layer, seed=1)
    _on_path(layer, path, monkeypatch)
    draws = _training_draws(layer, x, n, path).double()
    mean, var = _exact_moments(layer, x)
    se_mean, se_var = (var / n).sqrt(), var * math.sqrt(2.0 / (n - 1))
    assert ((draws.mean(0) - mean).abs() < K * se_mean).all()
    assert ((draws.var(0) - var).abs() < K * se_var).all()
    # power: a variance bug of 20% (e.g. sigma for sigma^2 is a factor >= 1.6 here) is outside the tolerance
    assert K * math.sqrt(2.0 / (n - 1)) < 0.2


@pytest.mark.parametrize("path", PATHS)
def test_flipout_fourth_moments_show_both_sign_flips(path, monkeypatch):
    """Flipout: d_n = y_n - E[y_n] = r_n o (dW (x_n o s_n) + db) with Rademacher s_n (inputs), r_n (outputs).
    Its marginal moments do not see the signs; these fourth moments over two examples n != m with the same x do
    (Isserlis for the zero-mean Gaussian rows w_j = (dW_j, db_j), Sigma_j = diag(sigma_j^2, sigma_bj^2),
    a = (x o s_n, 1), c = (x o s_m, 1)):

      E[d_nj d_nj' d_mj d_mj'] = 0 for j != j' (r_nj r_nj' r_mj r_mj' has mean 0)
                               = sum_i x_i^4 s_ji^2 s_j'i^2 + sb_j^2 sb_j'^2 without the output signs;
      E[d_nj^2 d_mj^2] = E_s[(a S a)(c S c) + 2 (a S c)^2] = V_j^2 + 2 (sum_i x_i^4 s_ji^4 + sb_j^4)
                       = 3 V_j^2 without the input signs (a = c), V_j = sum_i x_i^2 s_ji^2 + sb_j^2.

    Each pass gives one average over the B (B - 1) / 2 pairs; passes are independent, so SE = std / sqrt(n)."""
    torch.manual_seed(0)
    n_in, n_out, batch, n = 4, 3, 8, 2000
    layer = BayesLinear(n_in, n_out, sampling="flipout")
    _set_params(layer, seed=2, sigma_range=(0.2, 0.6))
    _on_path(layer, path, monkeypatch)
    x_row = torch.tensor([1.0, -0.7, 1.3, 0.5])
    d = _training_draws(layer, x_row.expand(batch, n_in).contiguous(), n, path).double()
    d = d - _exact_moments(layer, x_row[None])[0]  # (n, B, out)
    with torch.no_grad():
        s2 = F.softplus(layer.weight_rho.double()).square()  # (out, in)
        sb2 = F.softplus(layer.bias_rho.double()).square()  # (out,)
    x2 = x_row.double().square()

    def pair_mean(a: torch.Tensor) -> torch.Tensor:  # (n, B, ...) -> (n, ...): mean over pairs n < m of a_n a_m
        return (a.sum(1).square() - a.square().sum(1)) / (batch * (batch - 1))

    def check(stat: torch.Tensor, expected: torch.Tensor, alternative: torch.Tensor) -> None:
        se = stat.std(0) / math.sqrt(n)
        assert ((stat.mean(0) - expected).abs() < K * se).all(), (stat.mean(0), expected, se)
        assert ((alternative - expected).abs() > 2 * K * se).all()  # power: the one-sided bug is caught

    j, jp = torch.triu_indices(n_out, n_out, 1)
    cross = pair_mean(d[..., j] * d[..., jp])  # (n, pairs of outputs)
    no_output_signs = (x2.square() * s2[j] * s2[jp]).sum(-1) + sb2[j] * sb2[jp]
    check(cross, torch.zeros_like(no_output_signs), no_output_signs)
    v = (x2 * s2).sum(-1) + sb2  # (out,)
    squares = pair_mean(d.square())  # (n, out)
    check(squares, v.square() + 2 * ((x2.square() * s2.square()).sum(-1) + sb2.square()), 3 * v.square())


# -- gradients: unbiased on every path (a missing or extra detach biases them) ---------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
def test_pathwise_gradient_is_unbiased(sampling, path, monkeypatch):
    """E[grad L] = grad E[L] for L = sum g o y^2, where E[y^2] = mean^2 + variance in closed form (float64 autograd
    through softplus). The Monte Carlo mean over n passes lies within K standard errors (SE = per-pass std /
    sqrt(n)) of that gradient for every parameter: a detached mean, sigma or bias shifts it by O(1)."""
    torch.manual_seed(0)
    layer = BayesLinear(4, 3, sampling=sampling, prior=bnn.GaussianPrior(0.8, loc=0.1))
    _set_params(layer, seed=3, sigma_range=(0.2, 0.8))
    _on_path(layer, path, monkeypatch)
    x, g = torch.randn(6, 4), torch.rand(6, 3) + 0.5
    params = list(layer.parameters())
    n = 1000
    grads = []
    for i in range(n):
        y = layer(x)
        if i == 0:
            _assert_path(y, path)
        grads.append(torch.cat([t.flatten() for t in torch.autograd.grad((g * y.square()).sum(), params)]))
    grads = torch.stack(grads).double()
    ref_params = [p.detach().double().requires_grad_() for p in params]
    w_mu, w_rho, b_mu, b_rho = ref_params
    x64 = x.double()
    mean = F.linear(x64, w_mu, b_mu)
    var = F.linear(x64.square(), F.softplus(w_rho).square(), F.softplus(b_rho).square())
    expected = torch.cat([t.flatten() for t in torch.autograd.grad((g.double() * (mean.square() + var)).sum(),
                                                                   ref_params)])
    se = grads.std(0) / math.sqrt(n)
    assert ((grads.mean(0) - expected).abs() < K * se + 1e-6).all(), (grads.mean(0) - expected) / se


# -- KL: closed form against torch.distributions on every path ------------------------------------------------------
def _reference_kl(layer: bnn.BayesLayer, loc: float, scale: float):
    """(KL, its float64 parameters) from torch.distributions.kl_divergence, summed over weights and bias."""
    params = [p.detach().double().requires_grad_() for p in (layer.weight_mu, layer.weight_rho,
                                                             layer.bias_mu, layer.bias_rho)]
    prior = TorchNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    kl = sum(torch_kl(TorchNormal(m, F.softplus(r)), prior).sum() for m, r in (params[:2], params[2:]))
    return kl, params


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_closed_form_kl_and_its_gradient_match_torch_distributions(kind, sampling, path, monkeypatch):
    torch.manual_seed(0)
    loc, scale = 0.1, 0.8
    if kind == "linear":
        layer, x = BayesLinear(5, 3, sampling=sampling, prior=bnn.GaussianPrior(scale, loc=loc)), torch.randn(4, 5)
    else:
        layer = BayesConv2d(2, 3, 3, padding=1, sampling=sampling, prior=bnn.GaussianPrior(scale, loc=loc))
        x = torch.randn(2, 2, 4, 4)
    _set_params(layer, seed=4)
    _on_path(layer, path, monkeypatch)
    _assert_path(layer(x), path)
    kl = layer.kl_divergence()  # the KL the forward pass left (computed with it on the native and fused paths)
    params = [layer.weight_mu, layer.weight_rho, layer.bias_mu, layer.bias_rho]
    grads = torch.autograd.grad(kl, params)
    ref, ref_params = _reference_kl(layer, loc, scale)
    ref_grads = torch.autograd.grad(ref, ref_params)
    assert kl.item() == pytest.approx(ref.item(), rel=1e-5)  # float32 sums
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_model_kl_is_the_sum_of_the_layers_and_each_forward_feeds_one_kl():
    torch.manual_seed(0)
    net = nn.Sequential(BayesLinear(3, 4, prior=bnn.GaussianPrior(0.5)), nn.ReLU(), nn.Unflatten(1, (1, 2, 2)),
                        BayesConv2d(1, 2, 1, sampling="local"), nn.Flatten(), BayesLinear(8, 2, sampling="flipout"))
    layers = bnn.bayes_layers(net)
    for i, layer in enumerate(layers):
        _set_params(layer, seed=10 + i)
    net(torch.randn(5, 3))
    total = bnn.model_kl(net)
    ref = sum(_reference_kl(layer, 0.0, s)[0] for layer, s in zip(layers, (0.5, 1.0, 1.0), strict=True))
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    total.backward()
    assert all(p.grad is not None for p in net.parameters())


# -- the ELBO (Blundell et al. 2015, eq. 8-9) and its scaling ---------------------------------------------------------
def _hand_kl(layer: bnn.BayesLayer, loc: float, scale: float) -> float:
    """sum_i log(s / sigma_i) + (sigma_i^2 + (mu_i - m)^2) / (2 s^2) - 1/2, in numpy float64."""
    mu = np.concatenate([layer.weight_mu.detach().double().numpy().ravel(), layer.bias_mu.detach().double().numpy()])
    rho = np.concatenate([layer.weight_rho.detach().double().numpy().ravel(),
                          layer.bias_rho.detach().double().numpy()])
    sigma = np.log1p(np.exp(rho))
    return float(np.sum(np.log(scale / sigma) + (sigma**2 + (mu - loc) ** 2) / (2 * scale**2) - 0.5))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n_samples", [1, 2])
def test_sampled_elbo_matches_a_hand_computation(n_samples, path, monkeypatch):
    """loss = (1/S) sum_s mean_batch NLL(y | f(x, w_s)) + kl_weight KL / N on the training path, with the outputs
    the forward passes produced and the KL by hand; nll and kl are reported detached, the loss is not."""
    torch.manual_seed(0)
    layer = BayesLinear(2, 1, prior=bnn.GaussianPrior(0.7, loc=0.1))
    _set_params(layer, seed=5)
    _on_path(layer, path, monkeypatch)
    outputs = []
    layer.register_forward_hook(lambda module, inputs, out: outputs.append(out.detach().double()))
    likelihood = bnn.GaussianLikelihood(init_std=0.5, learn=False)
    x, y = torch.randn(3, 2), torch.randn(3, 1)
    terms = bnn.elbo_loss(layer, likelihood, x, y, n_data=12, n_samples=n_samples, kl_weight=0.75)
    assert len(outputs) == n_samples
    s = float(likelihood.noise_std)
    nll = np.mean([(0.5 * math.log(2 * math.pi) + math.log(s) + (y.double() - out) ** 2 / (2 * s * s)).mean().item()
                   for out in outputs])
    kl = _hand_kl(layer, 0.1, 0.7)
    assert terms.nll.item() == pytest.approx(nll, rel=1e-5)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-5)
    assert terms.loss.item() == pytest.approx(nll + 0.75 * kl / 12, rel=1e-5)  # KL / N of the data set, not / B
    assert terms.loss.requires_grad and not terms.nll.requires_grad and not terms.kl.requires_grad
    assert (terms.n_data, terms.kl_weight) == (12, 0.75)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
def test_kl_gradient_is_scaled_by_one_over_the_data_set_size_whatever_the_batch(sampling, path, monkeypatch):
    """With an all-zero input and no bias the output is 0 whatever the weights, so the loss's only gradient is the
    KL's: kl_weight / N * dKL/d(mu, rho), exactly, for any batch size B (the classic bug divides by B)."""
    torch.manual_seed(0)
    layer = BayesLinear(3, 2, bias=False, sampling=sampling, prior=bnn.GaussianPrior(0.7, loc=0.1))
    _set_params(layer, seed=6)
    _on_path(layer, path, monkeypatch)
    params = [p.detach().double().requires_grad_() for p in (layer.weight_mu, layer.weight_rho)]
    ref = torch_kl(TorchNormal(params[0], F.softplus(params[1])), TorchNormal(0.1, 0.7)).sum()
    ref_grads = torch.autograd.grad(ref, params)
    for batch, n_data, kl_weight in ((2, 10, 1.0), (5, 10, 1.0), (5, 50, bnn.blundell_kl_weight(2, 10))):
        grads = torch.autograd.grad(
            bnn.elbo_loss(layer, bnn.GaussianLikelihood(learn=False), torch.zeros(batch, 3), torch.randn(batch, 2),
                          n_data=n_data, kl_weight=kl_weight).loss, (layer.weight_mu, layer.weight_rho))
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got.double(), want * kl_weight / n_data, rtol=1e-4, atol=1e-8)


def test_blundell_weights_are_2_to_the_m_minus_i_over_2_to_the_m_minus_1():
    """pi_i = 2^(M-i) / (2^M - 1), i = 1..M (Blundell eq. 9), as the per-example weight M pi_i: exact fractions."""
    for m in (1, 2, 5, 12):
        pis = [Fraction(2 ** (m - i), 2**m - 1) for i in range(1, m + 1)]
        assert sum(pis) == 1
        for i, pi in enumerate(pis, start=1):
            assert bnn.blundell_kl_weight(i, m) == pytest.approx(float(m * pi), rel=1e-12)
    assert bnn.blundell_kl_weight(1, 2000) == pytest.approx(1000.0, rel=1e-12)  # no overflow: M / 2 (1 + 2^-M)
    for bad in ((0, 3), (4, 3), (1, 0)):
        with pytest.raises(ValueError):
            bnn.blundell_kl_weight(*bad)


@pytest.mark.parametrize("schedule", ["uniform", "blundell"])
def test_an_epoch_of_minibatch_losses_sums_to_the_full_negative_elbo(schedule):
    """sum_i B loss_i over the M = N / B minibatches of an epoch = sum_n NLL_n + KL (the full negative ELBO), with
    kl_weight 1 or Blundell's M pi_i (the mean network makes every term deterministic)."""
    torch.manual_seed(0)
    net = nn.Sequential(BayesLinear(3, 4), nn.Tanh(), BayesLinear(4, 1))
    for i, layer in enumerate(bnn.bayes_layers(net)):
        _set_params(layer, seed=20 + i)
    likelihood = bnn.GaussianLikelihood(init_std=0.4, learn=False)
    n_data, batch = 12, 4
    x, y = torch.randn(n_data, 3), torch.randn(n_data, 1)
    n_batches = n_data // batch
    with torch.no_grad(), bnn.mean_weights(net):
        full_nll = likelihood.nll(net(x), y).double().sum().item()
        kl = sum(_hand_kl(layer, 0.0, 1.0) for layer in bnn.bayes_layers(net))
        epoch = 0.0
        for i in range(1, n_batches + 1):
            weight = bnn.blundell_kl_weight(i, n_batches) if schedule == "blundell" else 1.0
            rows = slice((i - 1) * batch, i * batch)
            epoch += batch * bnn.elbo_loss(net, likelihood, x[rows], y[rows], n_data=n_data, kl_weight=weight).loss
    assert epoch.item() == pytest.approx(full_nll + kl, rel=1e-5)


# -- the native kernel and its fallback draw from the same law ------------------------------------------------------
@pytest.mark.parametrize("sampling", ["reparam", "local", "flipout"])
def test_native_and_fallback_paths_have_the_same_law(sampling, monkeypatch):
    """One output element, n draws from each path: each standardised sample against N(0, 1) (one-sample KS) and
    the two samples against each other (two-sample KS), at p > 1e-4; plus the moment checks above."""
    if not native.available():
        pytest.skip(f"native kernel: {native.unavailable_reason()}")
    torch.manual_seed(0)
    layer = BayesLinear(5, 3, sampling=sampling)
    _set_params(layer, seed=7)
    x, n = torch.randn(2, 5), 3000
    mean, var = _exact_moments(layer, x)
    samples = {}
    for path in ("native", "fused"):
        with monkeypatch.context() as patch:
            _on_path(layer, path, patch)
            z = (_training_draws(layer, x, n, path).double() - mean) / var.sqrt()
        samples[path] = z[:, 1, 2].numpy()  # one element: draws are independent across passes
        assert stats.kstest(samples[path], "norm").pvalue > 1e-4, path
    assert stats.ks_2samp(samples["native"], samples["fused"]).pvalue > 1e-4
