"""VAE losses against closed forms, torch.distributions and hand-made models; estimator unbiasedness."""

import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, kl_divergence
from torch.distributions import Normal as TorchNormal

from reparam_apps import (
    CheckpointError,
    kl_normal_std_normal,
    load_checkpoint,
    mc_kl,
    pathwise_gradient,
    save_checkpoint,
    score_function_gradient,
)
from reparam_apps.distributions import Normal
from vae import VAE, CategoricalVAE, categorical_kl_uniform, load_model
from vae.model import CHECKPOINT_KIND, LOGVAR_RANGE

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread is faster


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
class FixedOutput(torch.nn.Module):
    """An encoder that returns one leaf row per example, whatever x: the loss's gradient w.r.t. row b is
    then example b's own estimate, so a batch of R copies gives R independent estimates in one pass."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = torch.nn.Parameter(rows.clone())

    def forward(self, x):
        return self.rows


def _row_estimates(model, x, copies: int):
    """(copies, D) gradient estimates of -ELBO w.r.t. the encoder output of each of x's examples."""
    (g,) = torch.autograd.grad(model.loss(x)[0], [model.encoder.rows])
    return (g * x.shape[0]).reshape(copies, -1)  # the loss averages over the batch


def _z_scores(a, b):
    return (a.mean(0) - b.mean(0)) / ((a.var(0) + b.var(0)) / a.shape[0]).sqrt()


# R copies give R estimates per coordinate; with 8 or 6 coordinates, P(max |z| > 4.5) is below 1e-4.
COPIES = 4000


def test_score_function_training_loss_is_unbiased_for_the_pathwise_gradient():
    """E[grad of the REINFORCE surrogate loss] = E[grad of the pathwise loss] = -grad ELBO (encoder output)."""
    torch.manual_seed(0)
    x = torch.rand(2, 16, dtype=torch.float64).bernoulli()
    kw = dict(image_shape=(4, 4), latent_dim=2, hidden=(8,))
    pw = VAE(**kw).double()
    sf = VAE(**kw, estimator="score-function", sf_samples=8).double()
    sf.load_state_dict(pw.state_dict())
    with torch.no_grad():
        rows = pw.encoder(x).repeat(COPIES, 1)  # (COPIES * 2, 2L): the trained encoder's output, fixed
    pw.encoder, sf.encoder = FixedOutput(rows), FixedOutput(rows)
    xr = x.repeat(COPIES, 1)
    g_pw, g_sf = _row_estimates(pw, xr, COPIES), _row_estimates(sf, xr, COPIES)  # (COPIES, 8)
    assert _z_scores(g_pw, g_sf).abs().max() < 4.5
    assert (g_pw.mean(0).abs() / (g_pw.var(0) / COPIES).sqrt()).max() > 10  # the gradient is resolved


def test_categorical_score_function_loss_matches_exact_gradient_by_enumeration():
    """Two latents of three classes: the ELBO is a sum over 9 configurations, so its exact gradient w.r.t.
    the logits is known."""
    torch.manual_seed(0)
    m = CategoricalVAE(image_shape=(2, 4), n_latents=2, n_classes=3, hidden=(8,), estimator="score-function",
                       sf_samples=6).double()
    x1 = torch.rand(1, 8, dtype=torch.float64).bernoulli()
    with torch.no_grad():
        base = m.encoder(x1)  # (1, 6) logits
    leaf = base.clone().requires_grad_()

    def exact_neg_elbo():
        log_q = torch.log_softmax(leaf.reshape(2, 3), -1)
        total = 0.0
        for a, b in itertools.product(range(3), range(3)):
            z = torch.zeros(1, 2, 3, dtype=torch.float64)
            z[0, 0, a] = z[0, 1, b] = 1.0
            total = total + (log_q[0, a] + log_q[1, b]).exp() * m.log_likelihood(x1, z)[0]
        return -(total - categorical_kl_uniform(log_q).sum())

    (exact,) = torch.autograd.grad(exact_neg_elbo(), [leaf])
    m.encoder = FixedOutput(base.repeat(COPIES, 1))
    g_sf = _row_estimates(m, x1.repeat(COPIES, 1), COPIES)  # (COPIES, 6)
    se = (g_sf.var(0) / COPIES).sqrt()
    assert ((g_sf.mean(0) - exact.reshape(-1)) / se).abs().max() < 4.5
    assert (exact.abs().reshape(-1) / se).max() > 10


def test_estimator_problem_plugs_into_core_estimators():
    """The problem's f and factories in the core estimators: pathwise and score function (leave-one-out)
    agree in the mean. Vectorised: a batch of R copies of 3 images, so each copy's rows of the gradient are
    independent estimates; the score function gets f per example (n, R B) so each row is paired with its
    own log q (prob.f sums over the batch: used as is for the pathwise estimator, where rows do not mix)."""
    torch.manual_seed(0)
    m = VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,)).double()
    r = 300
    x = torch.rand(3, 16, dtype=torch.float64).bernoulli().repeat(r, 1)  # (r * 3, 16)
    prob = m.estimator_problem(x)

    def per_example(z):  # (n, r * 3, L) -> (n, r * 3): prob.f before its sum over the batch
        return m.log_likelihood(x, z)

    assert torch.allclose(prob.f(torch.zeros(2, 3 * r, 2, dtype=torch.float64)),
                          per_example(torch.zeros(2, 3 * r, 2, dtype=torch.float64)).sum(-1))

    def rows(grads):  # ((r * 3, L), (r * 3, L)) -> (r, 3 * 2L): one row of 12 coordinates per copy
        return torch.cat([g.reshape(r, 3, -1) for g in grads], -1).reshape(r, -1)

    pw = rows(pathwise_gradient(prob.f, prob.pathwise_factory, prob.params, 50))
    sf = rows(score_function_gradient(per_example, prob.score_factory, prob.params, 50, baseline="loo"))
    z = (pw.mean(0) - sf.mean(0)) / ((pw.var(0) + sf.var(0)) / r).sqrt()
    assert z.abs().max() < 4.5  # 12 coordinates: P(max |z| > 4.5) ~ 1e-4
    assert (pw.mean(0).abs() / (pw.var(0) / r).sqrt()).max() > 10  # the mean is resolved: the test has power
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
    with pytest.raises(CheckpointError, match="not a reparam-apps checkpoint"):
        load_model(bad)
    VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,)).save(tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="not a CategoricalVAE"):
        CategoricalVAE.load(tmp_path / "v.pt")
    obj = load_checkpoint(tmp_path / "v.pt", kind=CHECKPOINT_KIND)
    obj["model_config"]["latent_dim"] = 5  # weights no longer fit
    save_checkpoint(obj, tmp_path / "w.pt", kind=CHECKPOINT_KIND)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "w.pt")


def test_running_mean_baseline_has_its_own_name_and_old_checkpoints_still_load(tmp_path):
    """One meaning per word: 'mean' was the running mean here and the leave-one-out mean in the core."""
    with pytest.raises(ValueError, match="running_mean"):
        VAE(image_shape=(4, 4), estimator="score-function", sf_baseline="mean")
    m = VAE(image_shape=(4, 4), latent_dim=2, hidden=(8,), estimator="score-function", sf_baseline="running_mean")
    obj = m.checkpoint_dict()
    obj["model_config"]["sf_baseline"] = "mean"  # as written before the rename
    save_checkpoint(obj, tmp_path / "old.pt", kind=CHECKPOINT_KIND)
    assert load_model(tmp_path / "old.pt").sf_baseline == "running_mean"


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


def test_bad_targets_are_named():
    """Bernoulli targets outside [0, 1] and a missing batch dimension: one clear ValueError each."""
    from vae import VAE

    m = VAE(image_shape=(8, 8), latent_dim=2, hidden=(16,))
    with pytest.raises(ValueError, match=r"needs pixel values in \[0, 1\], got values from .* to 2"):
        m.loss(torch.full((4, 64), 2.0))
    with pytest.raises(ValueError, match="without a batch dimension: pass x.unsqueeze"):
        m.loss(torch.rand(8, 8).round())
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 8, 8\)"):
        m.loss(torch.rand(4, 8))
    gauss = VAE(image_shape=(8, 8), latent_dim=2, hidden=(16,), likelihood="gaussian")
    assert torch.isfinite(gauss.loss(torch.full((4, 64), 2.0))[0])  # real-valued targets are fine for it
