"""VAE learning, the IWAE ordering on a trained model, and the data layer (binarisation, MNIST files)."""

import gzip
import math

import pytest
import torch

from reparam_apps.data import DataError
from vae import VAE, CategoricalVAE, binarize, evaluate_elbo, load_vae_data, train_epoch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread is faster


@pytest.fixture(scope="module")
def digits():
    return load_vae_data("digits", mode="dynamic", seed=0)


def _train(model, data, epochs: int, batch_size: int = 16, lr: float = 3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step = 0
    for epoch in range(epochs):
        _, step = train_epoch(model, opt, data.train(epoch), batch_size, step)
    return model


def marginal_baseline(data) -> float:
    """Test log-likelihood of the best latent-free model: independent Bernoulli pixels at the training
    means. Dynamic binarisation makes the 8x8 digits noisy, so this is already about -26.7 nats."""
    p = data.raw_train.mean(0).clamp(1e-6, 1 - 1e-6)
    return float((data.test * p.log() + (1 - data.test) * (1 - p).log()).sum(1).mean())


# A collapsed posterior (q(z|x) = p(z), the decoder ignoring z) has KL = 0 and an ELBO no better than the
# latent-free model above. Learning means both: information in z (KL above a floor) and an ELBO above that
# model by a margin. Measured at this seed (8 epochs, batch 16): Gaussian ELBO +1.5 to +2.4 nats over it
# with KL 2.2-2.7; categorical +1.0 to +1.2 with KL 1.1-1.7. The floors leave about half of that as slack.
# The untrained test ELBO is about -45 nats (64 pixels at about log 2 each).
GAUSS, CAT = dict(image_shape=(8, 8), latent_dim=4, hidden=(64,)), dict(image_shape=(8, 8), n_latents=8,
                                                                      n_classes=4, hidden=(64,))
FLOORS = {"gaussian": (1.0, 1.2), "categorical": (0.5, 0.6)}  # (ELBO margin over the baseline, KL), nats


@pytest.mark.parametrize("name,make", [
    ("gaussian/pathwise", lambda: VAE(**GAUSS)),
    ("gaussian/score-function", lambda: VAE(**GAUSS, estimator="score-function")),
    ("gaussian/score-function running_mean", lambda: VAE(**GAUSS, estimator="score-function",
                                                         sf_baseline="running_mean")),
    ("categorical/gumbel-softmax", lambda: CategoricalVAE(**CAT)),
    ("categorical/straight-through", lambda: CategoricalVAE(**CAT, hard=True)),
    ("categorical/score-function", lambda: CategoricalVAE(**CAT, estimator="score-function")),
])
def test_short_training_learns_a_latent_code(digits, name, make):
    torch.manual_seed(0)
    model = make()
    before = evaluate_elbo(model, digits.test, n_samples=5)["elbo"]
    _train(model, digits, epochs=8)
    after = evaluate_elbo(model, digits.test, n_samples=5)
    base = marginal_baseline(digits)
    margin, kl_floor = FLOORS[name.split("/")[0]]
    assert after["elbo"] > before + 12.0, (name, before, after)
    assert after["kl"] > kl_floor, (name, after)  # not collapsed: z carries information about x
    assert after["elbo"] > base + margin, (name, base, after)  # and it pays: better than no latent at all


@pytest.fixture(scope="module")
def trained_gaussian(digits):
    threads = torch.get_num_threads()  # module scope runs before the one_thread fixture: the same, by hand
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return _train(VAE(**GAUSS), digits, epochs=8)
    finally:
        torch.set_num_threads(threads)


def test_elbo_below_iwae_k_below_iwae_larger_k_on_a_trained_model(trained_gaussian, digits):
    """E[IWAE_1] = ELBO <= E[IWAE_5] <= E[IWAE_50] (Burda et al. 2016, Theorem 1). Per-example paired
    differences averaged over the test set; each gap must exceed 4 of its standard errors."""
    torch.manual_seed(0)
    x = digits.test
    r = 10  # each example's bounds averaged over r independent evaluations (x repeated r times)
    xr = x.repeat(r, 1)
    n = x.shape[0]

    def per_example(values):  # (r * n,) -> (n,)
        return values.detach().reshape(r, n).double().mean(0)

    elbo = per_example(trained_gaussian.elbo(xr, n_samples=5))  # analytic-KL ELBO estimate
    iw1 = per_example(trained_gaussian.iwae_bound(xr, 1))
    iw5 = per_example(trained_gaussian.iwae_bound(xr, 5))
    iw50 = per_example(trained_gaussian.iwae_bound(xr, 50, chunk_size=7))  # chunked: 7 + 7 + ... + 1

    def gap(a, b):  # mean of b - a over the test set and its standard error
        d = b - a
        return float(d.mean()), float(d.std() / math.sqrt(n))

    m, se = gap(elbo, iw1)
    assert abs(m) < 4 * se  # IWAE_1 is an unbiased estimate of the ELBO
    for a, b in ((elbo, iw5), (iw5, iw50)):
        m, se = gap(a, b)
        assert m > 4 * se > 0, (m, se)


def test_save_load_round_trip_of_trained_model_reproduces_elbo(trained_gaussian, digits, tmp_path):
    trained_gaussian.save(tmp_path / "m.pt")
    loaded = VAE.load(tmp_path / "m.pt")
    torch.manual_seed(5)
    a = trained_gaussian.elbo(digits.test[:50])
    torch.manual_seed(5)
    torch.testing.assert_close(loaded.elbo(digits.test[:50]), a, rtol=0, atol=0)


def test_warmup_schedule_and_beta():
    from vae import beta_at
    assert beta_at(0, 1.0, 0) == 1.0
    assert beta_at(0, 2.0, 4) == 0.5 and beta_at(3, 2.0, 4) == 2.0 and beta_at(100, 2.0, 4) == 2.0


# --------------------------------------------------------------------------------------------- data
def test_binarisation_modes(digits):
    x0, x1 = digits.train(0), digits.train(1)
    assert set(x0.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(x0, x1)  # dynamic: resampled every epoch
    assert torch.equal(x0, digits.train(0))  # ... reproducibly (seeded by seed and epoch)
    # E[binarised] = intensity: the mean over ~92k pixels is within 5 standard errors (Var <= 1/4)
    assert abs(float(x0.mean() - digits.raw_train.mean())) < 5 * 0.5 / math.sqrt(x0.numel())
    static = load_vae_data("digits", mode="static", seed=0)
    assert torch.equal(static.train(0), static.train(3))
    assert torch.equal(static.test, digits.test)  # the test binarisation does not depend on the mode
    assert torch.equal(load_vae_data("digits", mode="dynamic", seed=1).test, digits.test)  # nor on the seed
    raw = load_vae_data("digits", mode="none")
    assert torch.equal(raw.train(0), raw.raw_train)
    assert torch.equal(binarize(torch.tensor([0.0, 1.0]), 0), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="binarisation"):
        load_vae_data("digits", mode="sometimes")


def test_reads_the_shared_mnist_split(shared_data):
    folder = shared_data / "mnist"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    data = load_vae_data("mnist", folder, mode="dynamic", seed=0)
    assert data.name == "mnist-10k-split" and data.image_shape == (28, 28)
    assert data.raw_train.shape == (8000, 784) and data.test.shape == (2000, 784)
    assert 0.10 < float(data.raw_train.mean()) < 0.16  # MNIST's mean intensity is about 0.13
    assert set(data.test.unique().tolist()) == {0.0, 1.0}


def test_broken_mnist_folders_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        load_vae_data("mnist", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_vae_data("mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-dir"):
        load_vae_data("mnist", None)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable IDX file"):
        load_vae_data("mnist", tmp_path)
