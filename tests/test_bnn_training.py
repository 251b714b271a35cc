"""bnn training pieces: the ELBO scaling by hand, Blundell's weights, likelihoods, prediction, metrics, UCI loader."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import bnn
from reparam_apps.data import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_layer() -> bnn.BayesLinear:
    layer = bnn.BayesLinear(2, 1, prior=bnn.GaussianPrior(1.0))
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([[0.5, -1.0]]))
        layer.bias_mu.copy_(torch.tensor([0.2]))
        layer.weight_rho.copy_(bnn.inverse_softplus(torch.tensor([[0.1, 0.2]])))
        layer.bias_rho.copy_(bnn.inverse_softplus(torch.tensor([0.3])))
    return layer


def test_elbo_scaling_matches_a_case_computed_by_hand():
    layer = _hand_layer()
    likelihood = bnn.GaussianLikelihood(init_std=0.5, learn=False)
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    y = torch.tensor([[0.0], [1.0], [2.0]])
    # mean network: f = (-1.3, -0.8, 2.7); residuals (1.3, 1.8, -0.7); squares / (2 * 0.25) = 3.38, 6.48, 0.98
    nll = (3.38 + 6.48 + 0.98) / 3 + 0.5 * math.log(2 * math.pi) + math.log(0.5)
    # KL per weight vs N(0, 1): log(1 / s) + (s^2 + m^2) / 2 - 1/2
    kl = sum(math.log(1 / s) + (s * s + m * m) / 2 - 0.5 for m, s in ((0.5, 0.1), (-1.0, 0.2), (0.2, 0.3)))
    assert kl == pytest.approx(4.330996, abs=1e-6)
    with bnn.mean_weights(layer):
        terms = bnn.elbo_loss(layer, likelihood, x, y, n_data=10)
        assert terms.nll.item() == pytest.approx(nll, rel=1e-6)
        assert terms.kl.item() == pytest.approx(kl, rel=1e-6)
        assert terms.loss.item() == pytest.approx(nll + kl / 10, rel=1e-6)  # per-example: KL / N, not KL / B
        weighted = bnn.elbo_loss(layer, likelihood, x, y, n_data=10, kl_weight=2.0)
        assert weighted.loss.item() == pytest.approx(nll + 2 * kl / 10, rel=1e-6)
        # summed over the M = N / B minibatches of an epoch, the per-example losses give the full ELBO / B
        full = bnn.elbo_loss(layer, likelihood, x, y, n_data=3)  # full batch: loss = (sum NLL + KL) / N
        assert full.loss.item() == pytest.approx((3 * nll + kl) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="training-set size"):
        bnn.elbo_loss(layer, likelihood, x, y, n_data=2)  # smaller than the batch: the N / B confusion
    with pytest.raises(ValueError, match="n_samples"):
        bnn.elbo_loss(layer, likelihood, x, y, n_data=10, n_samples=0)


def test_elbo_with_several_samples_averages_nll_and_kl_of_each_sample():
    torch.manual_seed(0)
    layer = bnn.BayesLinear(2, 1, prior=bnn.ScaleMixturePrior(), init_rho=-1.0)
    likelihood = bnn.GaussianLikelihood(init_std=0.5, learn=False)
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    torch.manual_seed(7)
    terms = bnn.elbo_loss(layer, likelihood, x, y, n_data=8, n_samples=3)
    torch.manual_seed(7)
    nlls, kls = [], []
    for _ in range(3):
        nlls.append(likelihood.nll(layer(x), y).mean().item())
        kls.append(layer.kl_divergence().item())
    assert terms.nll.item() == pytest.approx(np.mean(nlls), rel=1e-5)
    assert terms.kl.item() == pytest.approx(np.mean(kls), rel=1e-5)
    assert terms.loss.item() == pytest.approx(np.mean(nlls) + np.mean(kls) / 8, rel=1e-5)


def test_blundell_minibatch_weights():
    # M = 4: pi_i = 2^(4-i) / 15 = 8/15, 4/15, 2/15, 1/15; per-example weight M pi_i
    got = [bnn.blundell_kl_weight(i, 4) for i in range(1, 5)]
    assert got == pytest.approx([32 / 15, 16 / 15, 8 / 15, 4 / 15], rel=1e-12)
    big = [bnn.blundell_kl_weight(i, 3000) for i in (1, 2, 1500, 3000)]
    assert all(math.isfinite(w) for w in big) and big[0] == pytest.approx(1500.0) and big[-1] == 0.0
    assert sum(bnn.blundell_kl_weight(i, 30) for i in range(1, 31)) == pytest.approx(30.0)  # averages to 1
    with pytest.raises(ValueError):
        bnn.blundell_kl_weight(0, 4)


def test_likelihoods_against_scipy():
    out = torch.tensor([[0.3], [-1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    gauss = bnn.GaussianLikelihood(init_std=0.7).double()
    expected = -stats.norm.logpdf(y.numpy(), out.numpy(), 0.7)[:, 0]
    # the noise std is stored in float32 (rho), so 0.7 carries a float32 rounding: rtol 1e-6
    np.testing.assert_allclose(gauss.nll(out, y).detach().numpy(), expected, rtol=1e-6)
    het = bnn.HeteroscedasticGaussianLikelihood(min_std=0.0)
    raw = torch.tensor([[0.3, 0.1], [-1.0, -2.0]], dtype=torch.float64)
    std = np.log1p(np.exp(raw[:, 1].numpy()))
    expected = -stats.norm.logpdf(y[:, 0].numpy(), raw[:, 0].numpy(), std)
    np.testing.assert_allclose(het.nll(raw, y).numpy(), expected, rtol=1e-10)
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum()
    assert bnn.CategoricalLikelihood().nll(logits, torch.tensor([2])).item() == pytest.approx(-np.log(p[0, 2]))
    with pytest.raises(ValueError, match="init_std"):
        bnn.GaussianLikelihood(init_std=0.0)


def test_predict_decomposes_regression_and_classification_uncertainty():
    torch.manual_seed(0)
    net = nn.Sequential(bnn.BayesLinear(1, 16, init_rho=-2.0), nn.Tanh(), bnn.BayesLinear(16, 2, init_rho=-2.0))
    x = torch.linspace(-1, 1, 7)[:, None]
    pred = bnn.predict(net, x, n_samples=50, likelihood=bnn.HeteroscedasticGaussianLikelihood())
    assert torch.allclose(pred.std**2, pred.aleatoric_std**2 + pred.epistemic_std**2, rtol=1e-5)
    assert torch.allclose(pred.epistemic_std, pred.sample_means.std(0, unbiased=False), rtol=1e-5)
    assert torch.allclose(pred.mean, pred.sample_means.mean(0))
    assert pred.epistemic_std.min() > 0
    cls = bnn.predict(net, x, n_samples=50)  # default: categorical over the 2 outputs
    assert torch.allclose(cls.probs.sum(-1), torch.ones(7, dtype=cls.probs.dtype), atol=1e-6)
    entropies = -(cls.sample_probs * cls.sample_probs.log()).sum(-1).mean(0)
    assert torch.allclose(cls.mutual_information, cls.entropy - entropies, atol=1e-6)
    assert (cls.mutual_information > 0).all()
    with bnn.mean_weights(net):  # one deterministic network: no epistemic part
        det = bnn.predict(net, x, n_samples=5)
    assert det.mutual_information.abs().max() < 1e-6
    assert net.training  # predict restores the mode


def test_classification_metrics_by_hand():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    labels = torch.tensor([0, 1, 0, 2])
    assert bnn.accuracy(probs, labels) == pytest.approx(0.5)
    # bins: {0.9, 0.9}: acc 1/2 -> |0.5 - 0.9| * 2/4; {0.6}: acc 1 -> 0.4 / 4; {0.4}: acc 0 -> 0.4 / 4
    assert bnn.expected_calibration_error(probs, labels, 15) == pytest.approx(0.4, abs=1e-6)
    assert bnn.brier_score(probs, labels) == pytest.approx((0.015 + 1.715 + 0.26 + 0.845) / 4, abs=1e-6)
    nll = -(math.log(0.9) + math.log(0.05) + math.log(0.6) + math.log(0.25)) / 4
    assert bnn.categorical_nll(probs, labels) == pytest.approx(nll, rel=1e-6)


def test_regression_metrics_against_scipy():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 5, 1, generator=g, dtype=torch.float64)
    variances = 0.2 + torch.rand(3, 5, 1, generator=g, dtype=torch.float64)
    y = torch.randn(5, 1, generator=g, dtype=torch.float64)
    pdf = stats.norm.pdf(y.numpy()[None], means.numpy(), np.sqrt(variances.numpy())).mean(0)
    expected = np.mean(np.log(pdf)) - math.log(2.5)
    assert bnn.gaussian_log_likelihood(y, means, variances, y_scale=2.5) == pytest.approx(expected, rel=1e-10)
    assert bnn.rmse(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])) == pytest.approx(math.sqrt(2.5))
    target = torch.tensor([0.0, 1.9, 2.0, -1.5, 3.0])
    assert bnn.interval_coverage(torch.zeros(5), torch.ones(5), target, 0.95) == pytest.approx(0.6)


def _fake_uci(root, rows=40):
    folder = root / "yacht"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(5, 2, rows), np.full(rows, 3.0), rng.normal(0, 1, rows)])
    np.savetxt(folder / "data.txt", data)
    np.savetxt(folder / "index_features.txt", [0, 1], fmt="%d")
    np.savetxt(folder / "index_target.txt", [2], fmt="%d")
    np.savetxt(folder / "n_splits.txt", [2], fmt="%d")
    for k in range(2):
        perm = rng.permutation(rows)
        np.savetxt(folder / f"index_train_{k}.txt", perm[:30], fmt="%d")
        np.savetxt(folder / f"index_test_{k}.txt", perm[30:], fmt="%d")
    return folder, data


def test_uci_loader_normalises_by_the_training_split_and_names_missing_files(tmp_path):
    folder, data = _fake_uci(tmp_path)
    split = bnn.load_uci_split(tmp_path, "yacht", 1)
    train = np.loadtxt(folder / "index_train_1.txt", dtype=int)
    test = np.loadtxt(folder / "index_test_1.txt", dtype=int)
    assert split.x_train.shape == (30, 2) and split.x_test.shape == (10, 2) and split.y_train.shape == (30, 1)
    np.testing.assert_allclose(split.x_train[:, 0].mean().item(), 0.0, atol=1e-5)
    np.testing.assert_allclose(split.x_train[:, 0].std(unbiased=False).item(), 1.0, atol=1e-5)
    assert torch.all(split.x_train[:, 1] == 0)  # a constant column maps to 0, not NaN
    np.testing.assert_allclose(split.y_test[:, 0].numpy() * split.y_std + split.y_mean, data[test, 2], rtol=1e-5)
    assert split.y_mean == pytest.approx(data[train, 2].mean())
    assert bnn.uci_n_splits(tmp_path, "yacht") == 2
    (folder / "index_test_0.txt").unlink()
    with pytest.raises(DataError, match="index_test_0.txt"):
        bnn.load_uci_split(tmp_path, "yacht", 0)
    with pytest.raises(DataError, match="bostonHousing"):
        bnn.load_uci_split(tmp_path, "boston", 0)
    with pytest.raises(ValueError, match="unknown UCI dataset"):
        bnn.load_uci_split(tmp_path, "nope", 0)
    with pytest.raises(ValueError, match="split"):
        bnn.load_uci_split(tmp_path, "yacht", 5)


def test_uci_loader_on_the_shared_boston_data(shared_data):
    split = bnn.load_uci_split(shared_data / "uci", "boston", 0)
    assert split.x_train.shape == (455, 13) and split.x_test.shape == (51, 13)
    assert split.n_hidden == 50 and split.n_epochs == 40
    assert split.x_train.mean(0).abs().max() < 1e-4 and split.y_train.mean().abs() < 1e-4
    assert 5.0 < split.y_std < 15.0  # Boston house prices, in $1000s
