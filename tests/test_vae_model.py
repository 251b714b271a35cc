"""VAE losses against closed forms, torch.distributions and hand-made models; estimator unbiasedness."""

import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, kl_divergence
from torch.distributions import Normal as TorchNormal

from reparam_apps import CheckpointError, kl_normal_std_normal, mc_kl, pathwise_gradient, score_function_gradient
from reparam_apps.distributions import Normal
from vae import VAE, CategoricalVAE, categorical_kl_uniform, load_model
from vae.model import LOGVAR_RANGE


def linear_gaussian_vae(d: int, s: float, enc_scale: float, enc_var: float) -> VAE:
    """p(z) = N(0, I), p(x|z) = N(z, s^2 I) (identity decoder), q(z|x) = N(enc_scale * x, enc_var I); float64."""
    m = VAE(image_shape=(2, d // 2), latent_dim=d, hidden=(), likelihood="gaussian", decoder_std=s).double()
    enc, dec = m.encoder.net[0], m.decoder.net[0]
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[:d].copy_(enc_scale * torch.eye(d, dtype=torch.float64))  # mu = enc_scale * x
        enc.bias.zero_()
        enc.bias[d:].fill_(math.log(enc_var))  # log sigma^2 = log enc_var
        dec.weight.copy_(torch.eye(d, dtype=torch.float64))  # decoder mean = z
        dec.bias.zero_()
    return m


# --------------------------------------------------------------------------------------------- KL terms
def test_analytic_kl_matches_torch_and_mc_in_expectation():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, generator=g, dtype=torch.float64)
    log_var = torch.randn(3, 5, generator=g, dtype=torch.float64)
    analytic = kl_normal_std_normal(mu, log_var).sum(-1)  # (3,)
    q_t = Independent(TorchNormal(mu, (0.5 * log_var).exp()), 1)
    p_t = Independent(TorchNormal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(analytic, kl_divergence(q_t, p_t), rtol=1e-12, atol=1e-12)
    # MC: E_q[log q - log p] = KL; tolerance 5 standard errors of the n-sample mean
    torch.manual_seed(1)
    n = 4000
    q = Normal(mu, (0.5 * log_var).exp(), event_dims=1)
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu), event_dims=1)
    z = q.rsample((n,))
    single = q.log_prob(z) - p.log_prob(z)  # (n, 3) one-sample KL estimates
    se = single.std(0) / math.sqrt(n)
    assert ((mc_kl(q, p, z=z) - analytic).abs() < 5 * se).all()


def test_model_mc_kl_training_term_matches_analytic_in_expectation():
    torch.manual_seed(0)
    m = VAE(image_shape=(8, 8), latent_dim=3, hidden=(16,), kl="mc", train_samples=20000).double()
    x = torch.rand(4, 64, dtype=torch.float64).bernoulli()
    _, stats = m.loss(x)
    with torch.no_grad():
        mu, log_var = m.encode_params(x)
        analytic = kl_normal_std_normal(mu, log_var).sum(-1).sum()
        q = m.encode(x)
        z = q.sample((20000,))  # the per-example KL estimates' spread gives the standard error of the sum
        se_sum = (q.log_prob(z) - m.prior(mu).log_prob(z)).std(0).square().sum().sqrt() / math.sqrt(20000)
    assert abs(float(stats["kl"] - analytic)) < 5 * float(se_sum)
    assert float(analytic) > 10 * float(se_sum)  # the check is not vacuous: KL clearly non-zero


def test_categorical_kl_matches_torch():
    logits = torch.randn(4, 6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    uniform = Categorical(logits=torch.zeros_like(logits))
    torch.testing.assert_close(categorical_kl_uniform(logits), kl_divergence(Categorical(logits=logits), uniform))


# --------------------------------------------------------------------------------------------- likelihoods
def test_bernoulli_and_gaussian_log_likelihood_match_torch_distributions():
    torch.manual_seed(0)
    x = torch.rand(5, 4, 4).bernoulli()
    z = torch.randn(3, 5, 2)
    m = VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,))
    ref = Independent(Bernoulli(logits=m.decoder(z)), 1).log_prob(x.reshape(5, 16).expand(3, 5, 16))
    torch.testing.assert_close(m.log_likelihood(x, z), ref)
    g = VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,), likelihood="gaussian")  # learned per-pixel std
    mean, log_std = g.decoder(z).split(16, -1)
    ref = Independent(TorchNormal(mean, log_std.clamp(math.log(0.01), math.log(10.0)).exp()), 1)
    torch.testing.assert_close(g.log_likelihood(x, z), ref.log_prob(x.reshape(5, 16)))


# --------------------------------------------------------------------------------------------- hand-made cases
def test_elbo_of_identity_decoder_matches_closed_form():
    """q = N(x, v I), p(x|z) = N(z, s^2 I): E_q log p(x|z) = -D/2 log(2 pi s^2) - D v / (2 s^2),
    KL = 1/2 sum (v + x^2 - 1 - log v)."""
    d, s, v, n = 6, 0.5, 0.3, 4000
    m = linear_gaussian_vae(d, s, enc_scale=1.0, enc_var=v)
    x = torch.tensor([[0.1, -0.4, 0.9, 0.0, 1.5, -1.0]], dtype=torch.float64)
    rec_exact = -d / 2 * math.log(2 * math.pi * s**2) - d * v / (2 * s**2)
    kl_exact = 0.5 * float((v + x.square() - 1 - math.log(v)).sum())
    torch.manual_seed(0)
    with torch.no_grad():
        terms = m.elbo_terms(x, n_samples=n)
    torch.testing.assert_close(terms.kl, torch.tensor([kl_exact], dtype=torch.float64))
    # rec per sample = const - |x - z|^2 / (2 s^2), |x - z|^2 ~ v chi2_D: Var = D v^2 / (2 s^4)
    se = math.sqrt(d * v**2 / (2 * s**4) / n)
    assert abs(float(terms.rec) - rec_exact) < 5 * se
    assert abs(float(terms.elbo) - (rec_exact - kl_exact)) < 5 * se


def test_exact_posterior_makes_elbo_and_iwae_equal_log_evidence():
    """With q(z|x) the true posterior N(x / (1 + s^2), s^2 / (1 + s^2) I), every importance weight equals
    p(x) = N(x; 0, (1 + s^2) I): IWAE_k is exact for any k and any chunking."""
    d, s = 6, 0.7
    m = linear_gaussian_vae(d, s, enc_scale=1 / (1 + s**2), enc_var=s**2 / (1 + s**2))
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_px = Independent(TorchNormal(torch.zeros(d, dtype=torch.float64),
                                     torch.full((d,), math.sqrt(1 + s**2), dtype=torch.float64)), 1).log_prob(x)
    torch.manual_seed(0)
    for k, chunk in ((1, None), (50, 7), (50, None)):
        torch.testing.assert_close(m.iwae_bound(x, k, chunk_size=chunk), log_px, rtol=0, atol=1e-9)
    z = m.encode(x).sample((5,))
    torch.testing.assert_close(m.log_weight(x, z), log_px.expand(5, 3), rtol=0, atol=1e-9)
    # the analytic-KL ELBO estimator is unbiased for log p(x) here; its noise is the rec term's only
    elbo = m.elbo(x, n_samples=20000)
    assert (elbo - log_px).abs().max() < 0.05


def test_logvar_is_clamped_to_documented_range():
    m = VAE(image_shape=(2, 2), latent_dim=1, hidden=())
    with torch.no_grad():
        m.encoder.net[0].bias.copy_(torch.tensor([0.0, 50.0]))
    assert float(m.encode_params(torch.zeros(1, 4))[1].detach()) == LOGVAR_RANGE[1]


# --------------------------------------------------------------------------------------------- estimators
def _grad_stats(loss_fn, params, reps: int):
    """Mean and squared standard error of ``reps`` independent gradient estimates (flattened)."""
    gs = []
    for _ in range(reps):
        g = torch.autograd.grad(loss_fn(), params)
        gs.append(torch.cat([t.reshape(-1) for t in g]))
    gs = torch.stack(gs)
    return gs.mean(0), gs.var(0) / reps


# The losses average over the batch, so a batch of R copies of x gives the mean of R independent
# estimates in one pass; 40 such passes give a mean and a standard error from 40 values. With 40
# values the z-scores below are t(39)-distributed: |t| > 4.5 has probability ~6e-5 per coordinate.
REPLICAS, PASSES = 200, 40


def test_score_function_training_loss_is_unbiased_for_the_pathwise_gradient():
    """E[grad of the REINFORCE surrogate loss] = E[grad of the pathwise loss] = -grad ELBO (encoder)."""
    torch.manual_seed(0)
    x = torch.rand(2, 16, dtype=torch.float64).bernoulli().repeat(REPLICAS, 1)
    kw = dict(image_shape=(4, 4), latent_dim=2, hidden=(8,))
    pw = VAE(**kw).double()
    sf = VAE(**kw, estimator="score-function", sf_samples=8).double()
    sf.load_state_dict(pw.state_dict())
    g_pw, se_pw = _grad_stats(lambda: pw.loss(x)[0], list(pw.encoder.parameters()), PASSES)
    g_sf, se_sf = _grad_stats(lambda: sf.loss(x)[0], list(sf.encoder.parameters()), PASSES)
    live = (se_pw > 0) & (se_sf > 0)  # coordinates behind a dead ReLU are exactly zero in both
    assert live.sum() >= 20
    z = (g_pw - g_sf)[live] / (se_pw + se_sf)[live].sqrt()
    assert z.abs().max() < 4.5, z.abs().max()
    assert (g_pw.abs()[live] / se_pw[live].sqrt()).max() > 10  # the gradient is resolved: the test has power


def test_categorical_score_function_loss_matches_exact_gradient_by_enumeration():
    """Two latents of three classes: the ELBO is a sum over 9 configurations, so its exact gradient is known."""
    torch.manual_seed(0)
    m = CategoricalVAE(image_shape=(2, 4), n_latents=2, n_classes=3, hidden=(8,), estimator="score-function",
                       sf_samples=6).double()
    x1 = torch.rand(1, 8, dtype=torch.float64).bernoulli()
    params = list(m.encoder.parameters())

    def exact_neg_elbo():
        log_q = torch.log_softmax(m.logits(x1), -1)[0]  # (2, 3)
        total = 0.0
        for a, b in itertools.product(range(3), range(3)):
            z = torch.zeros(1, 2, 3, dtype=torch.float64)
            z[0, 0, a] = z[0, 1, b] = 1.0
            total = total + (log_q[0, a] + log_q[1, b]).exp() * m.log_likelihood(x1, z)[0]
        return -(total - categorical_kl_uniform(log_q).sum())

    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact_neg_elbo(), params)])
    x = x1.repeat(REPLICAS, 1)
    g_sf, se_sf = _grad_stats(lambda: m.loss(x)[0], params, PASSES)
    live = se_sf > 0
    assert live.sum() >= 20
    z = (g_sf - exact)[live] / se_sf[live].sqrt()
    assert z.abs().max() < 4.5, z.abs().max()
    assert (exact.abs()[live] / se_sf[live].sqrt()).max() > 10


def test_estimator_problem_plugs_into_core_estimators():
    torch.manual_seed(0)
    m = VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,)).double()
    x = torch.rand(3, 16, dtype=torch.float64).bernoulli()
    prob = m.estimator_problem(x)
    pw = torch.stack([torch.cat([g.reshape(-1) for g in pathwise_gradient(prob.f, prob.pathwise_factory,
                                                                           prob.params, 50)]) for _ in range(200)])
    sf = torch.stack([torch.cat([g.reshape(-1) for g in score_function_gradient(
        prob.f, prob.score_factory, prob.params, 50, baseline="mean")]) for _ in range(200)])
    z = (pw.mean(0) - sf.mean(0)) / ((pw.var(0) + sf.var(0)) / 200).sqrt()
    assert z.abs().max() < 4.5
    assert sf.var(0).sum() > pw.var(0).sum()  # the pathwise estimator has the lower variance here


# --------------------------------------------------------------------------------------------- categorical
def test_categorical_hard_samples_are_one_hot_with_relaxed_gradients():
    torch.manual_seed(0)
    m = CategoricalVAE(image_shape=(4, 4), n_latents=5, n_classes=7, hidden=(8,), hard=True)
    x = torch.rand(3, 16).bernoulli()
    q = m.encode(x, temperature=0.5)
    y = q.rsample((4,))  # (4, 3, 5, 7)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(y.sum(-1), torch.ones(4, 3, 5))
    loss, _ = m.loss(x)
    loss.backward()
    assert m.encoder.net[0].weight.grad.abs().sum() > 0  # straight-through: the encoder gets a gradient


def test_temperature_annealing_schedule():
    m = CategoricalVAE(image_shape=(4, 4), n_latents=2, n_classes=3, hidden=(8,), temperature=1.0,
                       temperature_min=0.5, anneal_rate=1e-3)
    assert m.temperature_at(0) == 1.0
    assert m.temperature_at(100) == pytest.approx(math.exp(-0.1))
    assert m.temperature_at(10_000) == 0.5


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=1.0, temperature_min=2.0), "temperature_min"),
    (dict(n_classes=1), "n_classes"), (dict(kl="mc", hard=True), "hard"),
    (dict(estimator="reinforce"), "estimator"), (dict(sf_samples=1, estimator="score-function"), "leave-one-out"),
])
def test_categorical_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CategoricalVAE(image_shape=(4, 4), **kwargs)


def test_conv_architecture_and_bad_shapes():
    m = VAE(image_shape=(8, 8), latent_dim=3, hidden=(32,), arch="conv")
    x = torch.rand(2, 8, 8).bernoulli()
    assert m.elbo(x).shape == (2,) and m.reconstruct(x).shape == (2, 8, 8) and m.sample(5).shape == (5, 8, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE(image_shape=(6, 6), arch="conv")
    with pytest.raises(ValueError, match="expected images"):
        m.elbo(torch.zeros(2, 7, 7))


# --------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("cls,kw", [(VAE, dict(latent_dim=3)), (CategoricalVAE, dict(n_latents=3, n_classes=4))])
def test_save_load_reproduces_elbo(tmp_path, cls, kw):
    torch.manual_seed(0)
    m = cls(image_shape=(4, 4), hidden=(8,), **kw)
    x = torch.rand(5, 16).bernoulli()
    m.save(tmp_path / "m.pt")
    loaded = cls.load(tmp_path / "m.pt")
    assert type(loaded) is cls and loaded.config == m.config
    torch.manual_seed(3)
    a = m.elbo(x)
    torch.manual_seed(3)
    b = loaded.elbo(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(load_model(tmp_path / "m.pt"), cls)


def test_load_rejects_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)
    VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,)).save(tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="not a CategoricalVAE"):
        CategoricalVAE.load(tmp_path / "v.pt")
    obj = torch.load(tmp_path / "v.pt", weights_only=False)
    obj["model_config"]["latent_dim"] = 5  # weights no longer fit
    torch.save(obj, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "w.pt")


@pytest.mark.parametrize("cls,kw", [(VAE, dict(latent_dim=3)), (CategoricalVAE, dict(n_latents=3, n_classes=4))])
def test_loss_is_the_beta_weighted_negative_elbo(cls, kw):
    """Pathwise loss (2) = -mean(rec - beta KL); the reported stats are the beta = 1 ELBO terms."""
    m = cls(image_shape=(4, 4), hidden=(8,), **kw)
    x = torch.rand(6, 16, generator=torch.Generator().manual_seed(0)).bernoulli()
    for beta in (0.0, 0.5, 2.0):
        torch.manual_seed(1)
        loss, st = m.loss(x, beta=beta)
        n = float(st["n"])
        assert n == 6
        torch.testing.assert_close(loss.detach(), -(st["rec"] - beta * st["kl"]) / n)
        torch.testing.assert_close(st["elbo"], st["rec"] - st["kl"])
    assert float(st["kl"]) > 0
