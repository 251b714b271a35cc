"""The VAE's equations against closed forms and independent implementations (torch.distributions).

1. A linear-Gaussian model, p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I), with a deliberately WRONG but
   fixed Gaussian encoder q = N(m, diag v): log p(x) = log N(x; b, W W^T + s^2 I) and the ELBO
       E_q[log p(x|z)] - KL = -D/2 log(2 pi s^2) - (|x - W m - b|^2 + sum_j v_j |W_:j|^2) / (2 s^2)
                              - 1/2 sum_j (v_j + m_j^2 - 1 - log v_j)
   are closed forms. Checked: the ELBO estimate, E[IWAE_1] = ELBO, E[IWAE_k] increasing in k, never above
   log p(x) (Jensen), and within its delta-method gap chi^2 / (2k) of log p(x) at large k.
2. The categorical VAE with 2 latents of 3 classes: log p(x), the ELBO and chi^2 by enumeration of the 9 z.
3. Each score-function training path (baselines loo / running_mean / none, KL analytic / Monte Carlo) and
   each Gumbel-Softmax path (soft, straight-through, relaxed Monte Carlo KL): the loss and its gradient
   equal a surrogate written here from the same draws (re-seeded), with torch.distributions densities.

Statistics: R independent estimates per check (the batch holds R copies of x), k standard errors with
SE = std / sqrt(R); a difference of two independent means has SE sqrt(SE_1^2 + SE_2^2).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MultivariateNormal,
    OneHotCategorical,
    RelaxedOneHotCategorical,
    kl_divergence,
)
from torch.distributions import Normal as TorchNormal

from vae import VAE, CategoricalVAE

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


# --------------------------------------------------------------------------------------------- 1. linear Gaussian
class LinearGaussian:
    """D = 6 pixels, L = 3 latents, W = Q diag(c) with orthonormal Q: the posterior is diagonal,
    N(a, diag alpha) with alpha_j = 1 / (1 + c_j^2 / s^2), a = alpha * W^T (x - b) / s^2."""

    D, L, S = 6, 3, 0.6

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(self.D, self.L, generator=g, dtype=F64))
        self.c = torch.tensor([1.5, 0.8, 2.0], dtype=F64)
        self.w, self.b = q * self.c, 0.3 * torch.randn(self.D, generator=g, dtype=F64)
        self.x = torch.randn(1, self.D, generator=g, dtype=F64) * 1.5
        self.alpha = 1 / (1 + self.c**2 / self.S**2)
        self.a = self.alpha * (self.w.T @ (self.x[0] - self.b)) / self.S**2
        # the wrong encoder: shifted by (0.8, -0.6, 0.5) posterior sds and 1.6x the posterior variance
        self.m = self.a + torch.tensor([0.8, -0.6, 0.5], dtype=F64) * self.alpha.sqrt()
        self.v = 1.6 * self.alpha

    def model(self) -> VAE:
        m = VAE(image_shape=(2, 3), latent_dim=self.L, hidden=(), likelihood="gaussian", decoder_std=self.S).double()
        enc, dec = m.encoder.net[0], m.decoder.net[0]
        with torch.no_grad():
            enc.weight.zero_()  # q(z|x) = N(m, diag v) whatever x: fixed, and wrong
            enc.bias.copy_(torch.cat([self.m, self.v.log()]))
            dec.weight.copy_(self.w)
            dec.bias.copy_(self.b)
        return m

    def log_px(self) -> float:
        cov = self.w @ self.w.T + self.S**2 * torch.eye(self.D, dtype=F64)
        return float(MultivariateNormal(self.b, cov).log_prob(self.x[0]))

    def rec_kl(self) -> tuple[float, float]:
        r = self.x[0] - self.w @ self.m - self.b
        rec = -self.D / 2 * math.log(2 * math.pi * self.S**2) - (r @ r + (self.v * (self.w**2).sum(0)).sum()) / (
            2 * self.S**2)
        kl = 0.5 * (self.v + self.m**2 - 1 - self.v.log()).sum()
        return float(rec), float(kl)

    def chi2(self) -> float:
        """Var_q[w / p(x)] = prod_j int N(z; a_j, alpha_j)^2 / N(z; m_j, v_j) dz - 1 (composite Gauss-Legendre)."""
        t, wt = np.polynomial.legendre.leggauss(20)
        total = 1.0
        for a, al, m, v in zip(self.a.tolist(), self.alpha.tolist(), self.m.tolist(), self.v.tolist(), strict=True):
            edges = np.linspace(a - 20 * math.sqrt(al), a + 20 * math.sqrt(al), 201)
            half = np.diff(edges)[:, None] / 2
            z = ((edges[:-1, None] + edges[1:, None]) / 2 + half * t).ravel()
            log_ratio = 2 * (-0.5 * (z - a) ** 2 / al - 0.5 * math.log(2 * math.pi * al)) - (
                -0.5 * (z - m) ** 2 / v - 0.5 * math.log(2 * math.pi * v))
            total *= float(((half * wt).ravel() * np.exp(log_ratio)).sum())
        return total - 1


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def test_linear_gaussian_closed_forms_are_consistent():
    lg = LinearGaussian()
    rec, kl = lg.rec_kl()
    # log p(x) - ELBO = KL(q || p(z|x)), both sides closed forms
    post = TorchNormal(lg.a, lg.alpha.sqrt())
    kl_post = float(kl_divergence(TorchNormal(lg.m, lg.v.sqrt()), post).sum())
    assert math.isclose(lg.log_px() - (rec - kl), kl_post, rel_tol=1e-10)
    assert 0.5 < kl_post < 2.0  # the encoder is wrong enough for the IWAE to have something to recover


def test_elbo_estimate_and_analytic_kl_match_the_closed_form():
    lg = LinearGaussian()
    m = lg.model()
    rec, kl = lg.rec_kl()
    r = 4000
    torch.manual_seed(0)
    with torch.no_grad():
        terms = m.elbo_terms(lg.x.repeat(r, 1), n_samples=1)  # r independent one-sample estimates
    torch.testing.assert_close(terms.kl, torch.full((r,), kl, dtype=F64), rtol=1e-12, atol=1e-12)
    for est, exact in ((terms.rec, rec), (terms.elbo, rec - kl)):
        mean, se = _mean_se(est)
        assert abs(mean - exact) < 5 * se, (mean, exact, se)


def test_iwae_starts_at_the_elbo_increases_with_k_and_converges_to_log_evidence():
    """E[IWAE_1] = ELBO; E[IWAE_k] increases with k (Burda et al. 2016), stays <= log p(x) (Jensen) and
    log p(x) - E[IWAE_k] = chi^2 / (2k) + O(1/k^2) (delta method). The mean-of-log-weights bug keeps every
    k at the ELBO (0.9 nats low); a missing - log k puts IWAE_k log k above log p(x)."""
    lg = LinearGaussian()
    m = lg.model()
    rec, kl = lg.rec_kl()
    log_px, chi2 = lg.log_px(), lg.chi2()
    torch.manual_seed(1)
    est = {}
    for k, r in ((1, 4000), (4, 4000), (32, 2000), (1024, 400)):
        est[k] = _mean_se(m.iwae_bound(lg.x.repeat(r, 1), k))
    mean1, se1 = est[1]
    assert abs(mean1 - (rec - kl)) < 5 * se1, (mean1, rec - kl, se1)
    ks = sorted(est)
    for k0, k1 in itertools.pairwise(ks):
        (m0, s0), (m1, s1) = est[k0], est[k1]
        assert m1 - m0 > 4 * math.hypot(s0, s1), (k0, k1, m0, m1)
    for k in ks:
        mean, se = est[k]
        assert mean < log_px + 4 * se, (k, mean, log_px)
    mean, se = est[ks[-1]]
    first_order = chi2 / (2 * ks[-1])
    # we allow the first-order gap twice over for the O(1/k^2) terms: 0.8 SE here
    assert abs(mean - (log_px - first_order)) < 4 * se + first_order, (mean, log_px, first_order, se)


def test_iwae_is_the_same_bound_in_chunks():
    lg = LinearGaussian()
    m = lg.model()
    x = lg.x.repeat(3, 1)
    torch.manual_seed(2)
    whole = m.iwae_bound(x, 50)
    torch.manual_seed(2)
    z, log_q = m.encode(x).rsample_and_log_prob((50,))  # the same draws, log-mean-exp'd here
    log_w = m.log_likelihood(x, z) + m.log_prior(z) - log_q
    torch.testing.assert_close(whole, log_w.logsumexp(0) - math.log(50), rtol=1e-12, atol=1e-12)
    torch.manual_seed(3)
    chunked = m.iwae_bound(x.repeat(2000, 1), 50, chunk_size=7)  # 7 + 7 + ... + 1
    mean, se = _mean_se(chunked)
    torch.manual_seed(3)
    mean_whole, se_whole = _mean_se(m.iwae_bound(x.repeat(2000, 1), 50))
    assert abs(mean - mean_whole) < 4 * math.hypot(se, se_whole)


# --------------------------------------------------------------------------------------------- 2. categorical
def tiny_categorical(**kw) -> tuple[CategoricalVAE, torch.Tensor]:
    torch.manual_seed(0)
    m = CategoricalVAE(image_shape=(2, 3), n_latents=2, n_classes=3, hidden=(), **kw).double()
    with torch.no_grad():
        for p in m.decoder.parameters():
            p.mul_(2.0)  # a decoder that cares about z: log p(x) - ELBO = 1.7 nats, chi^2(p(z|x) || q) = 6.5
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]], dtype=F64)
    return m, x


@torch.no_grad()
def enumerate_categorical(m: CategoricalVAE, x: torch.Tensor) -> dict[str, float]:
    """log p(x) = logsumexp_z [log p(x|z) + log p(z)], the ELBO, KL and chi^2 over all 9 configurations."""
    log_q_k = torch.log_softmax(m.logits(x)[0], -1)  # (2, 3)
    rows = []
    for i, j in itertools.product(range(3), range(3)):
        z = torch.zeros(1, 1, 2, 3, dtype=F64)
        z[..., 0, i] = z[..., 1, j] = 1.0
        logits = m.decoder(z.flatten(-2))[0, 0]
        log_lik = float(Independent(Bernoulli(logits=logits), 1).log_prob(x[0]))
        rows.append((log_lik, -2 * math.log(3), float(log_q_k[0, i] + log_q_k[1, j])))
    log_lik, log_prior, log_q = (torch.tensor(c, dtype=F64) for c in zip(*rows, strict=True))
    q = log_q.exp()
    log_joint = log_lik + log_prior
    log_px = float(log_joint.logsumexp(0))
    post = (log_joint - log_px).exp()
    return {"log_px": log_px, "rec": float((q * log_lik).sum()), "kl": float((q * (log_q - log_prior)).sum()),
            "elbo": float((q * (log_joint - log_q)).sum()), "chi2": float((post**2 / q).sum() - 1)}


def test_categorical_elbo_and_iwae_against_enumeration():
    m, x = tiny_categorical()
    ex = enumerate_categorical(m, x)
    assert ex["log_px"] - ex["elbo"] > 1.0  # q is not the posterior
    r = 4000
    torch.manual_seed(4)
    with torch.no_grad():
        terms = m.elbo_terms(x.repeat(r, 1))
    torch.testing.assert_close(terms.kl, torch.full((r,), ex["kl"], dtype=F64), rtol=1e-10, atol=1e-12)
    mean, se = _mean_se(terms.elbo)
    assert abs(mean - ex["elbo"]) < 5 * se
    est = {k: _mean_se(m.iwae_bound(x.repeat(rr, 1), k)) for k, rr in ((1, 4000), (8, 2000), (1024, 400))}
    assert abs(est[1][0] - ex["elbo"]) < 5 * est[1][1]
    for k0, k1 in ((1, 8), (8, 1024)):
        assert est[k1][0] - est[k0][0] > 4 * math.hypot(est[k0][1], est[k1][1]), (k0, k1, est)
    for k, (mean, se) in est.items():
        assert mean < ex["log_px"] + 4 * se, (k, mean, ex["log_px"])
    first_order = ex["chi2"] / (2 * 1024)  # delta method, allowed twice over as above
    assert abs(est[1024][0] - (ex["log_px"] - first_order)) < 4 * est[1024][1] + first_order


def test_categorical_log_weight_is_log_joint_minus_log_q():
    m, x = tiny_categorical()
    ex_logits = torch.log_softmax(m.logits(x), -1)
    z = OneHotCategorical(logits=m.logits(x)).sample((5,))  # (5, 1, 2, 3)
    log_lik = Independent(Bernoulli(logits=m.decoder(z.flatten(-2))), 1).log_prob(x)
    expect = log_lik - 2 * math.log(3) - (z * ex_logits).sum((-1, -2))
    torch.testing.assert_close(m.log_weight(x, z), expect, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- 3. training paths
S, B, BETA = 5, 4, 0.7


def _bernoulli_log_lik(m, x, z_flat):
    return Independent(Bernoulli(logits=m.decoder(z_flat)), 1).log_prob(x)


def _baseline(kind: str, f: torch.Tensor, ema: float | None) -> torch.Tensor:
    """b for f (S, B), written from the definitions: leave-one-out over the S samples of an example, a
    running mean fixed before the batch (or, before any, the mean of the other S B - 1 values), or 0."""
    if kind == "loo":
        return (f.sum(0, keepdim=True) - f) / (f.shape[0] - 1)
    if kind == "running_mean":
        return torch.full_like(f, ema) if ema is not None else (f.sum() - f) / (f.numel() - 1)
    return torch.zeros_like(f)


def _reference_sf_loss(log_q, rec, kl_exact, log_prior, kl_mode, kind, ema):
    """-mean_B[mean_S rec + mean_S (f - b) log q - beta KL]: its gradient is rec's plus REINFORCE's."""
    if kl_mode == "analytic":
        f, kl = rec.detach(), kl_exact
    else:
        f, kl = (rec - BETA * (log_q - log_prior)).detach(), (log_q - log_prior).detach().mean(0)
    b = _baseline(kind, f, ema)
    return -(rec.mean(0) + ((f - b) * log_q).mean(0) - BETA * kl).mean(), f


def _check_against(m, loss, ref_loss):
    params = [p for p in m.parameters()]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind,ema", [("loo", None), ("none", None),
                                      ("running_mean", None), ("running_mean", -3.0)])  # first batch, then stored
@pytest.mark.parametrize("kl_mode", ["analytic", "mc"])
def test_gaussian_score_function_loss_is_the_reinforce_surrogate(kind, ema, kl_mode):
    torch.manual_seed(0)
    m = VAE(image_shape=(2, 3), latent_dim=2, hidden=(5,), estimator="score-function", sf_samples=S,
            sf_baseline=kind, kl=kl_mode, sf_baseline_decay=0.8).double()
    x = torch.rand(B, 6, dtype=F64).bernoulli()
    if ema is not None:
        m.baseline_ema.fill_(ema)
        m.baseline_ready.fill_(True)
    m.train()
    torch.manual_seed(1)
    loss, stats = m.loss(x, beta=BETA)
    # the reference, from the same draw
    mu, log_var = m.encoder(x).chunk(2, -1)
    q = Independent(TorchNormal(mu, (0.5 * log_var).exp()), 1)
    torch.manual_seed(1)
    z = (mu + (0.5 * log_var).exp() * torch.randn(S, B, 2, dtype=F64)).detach()  # the model's S x B x L normals
    rec = _bernoulli_log_lik(m, x, z)
    log_prior = Independent(TorchNormal(torch.zeros_like(mu), torch.ones_like(mu)), 1).log_prob(z)
    kl_exact = kl_divergence(q, Independent(TorchNormal(torch.zeros_like(mu), torch.ones_like(mu)), 1))
    ref, f = _reference_sf_loss(q.log_prob(z), rec, kl_exact, log_prior, kl_mode, kind, ema)
    torch.testing.assert_close(stats["rec"], rec.mean(0).sum().detach())  # the same samples
    _check_against(m, loss, ref)
    if kind == "running_mean":  # updated after use: d ema + (1 - d) mean f, or mean f after the first batch
        expect = f.mean() if ema is None else 0.8 * ema + 0.2 * f.mean()
        torch.testing.assert_close(m.baseline_ema, expect)
        assert bool(m.baseline_ready)


@pytest.mark.parametrize("kind", ["loo", "running_mean", "none"])
@pytest.mark.parametrize("kl_mode", ["analytic", "mc"])
def test_categorical_score_function_loss_is_the_reinforce_surrogate(kind, kl_mode):
    m, _ = tiny_categorical(estimator="score-function", sf_samples=S, sf_baseline=kind, kl=kl_mode)
    x = torch.rand(B, 6, dtype=F64, generator=torch.Generator().manual_seed(1)).bernoulli()
    m.train()
    torch.manual_seed(2)
    loss, stats = m.loss(x, beta=BETA)
    logits = m.logits(x)  # (B, 2, 3)
    torch.manual_seed(2)
    z = OneHotCategorical(logits=torch.log_softmax(logits, -1)).sample((S,))  # (S, B, 2, 3)
    log_q = (z * torch.log_softmax(logits, -1)).sum((-1, -2))
    rec = _bernoulli_log_lik(m, x, z.flatten(-2))
    kl_exact = kl_divergence(Categorical(logits=logits), Categorical(logits=torch.zeros_like(logits))).sum(-1)
    ref, _ = _reference_sf_loss(log_q, rec, kl_exact, torch.full_like(log_q, -2 * math.log(3)), kl_mode, kind, None)
    torch.testing.assert_close(stats["rec"], rec.mean(0).sum().detach())
    _check_against(m, loss, ref)


def test_running_mean_is_not_updated_in_eval_mode():
    torch.manual_seed(0)
    m = VAE(image_shape=(2, 3), latent_dim=2, hidden=(5,), estimator="score-function", sf_baseline="running_mean")
    m.eval()
    m.loss(torch.rand(B, 6).bernoulli())
    assert not bool(m.baseline_ready) and float(m.baseline_ema) == 0.0


@pytest.mark.parametrize("hard,kl_mode", [(False, "analytic"), (True, "analytic"), (False, "mc")])
def test_gumbel_softmax_loss_and_gradient_against_an_independent_relaxation(hard, kl_mode):
    """y = softmax((l + g) / tau_t), g = -log(-log u); straight-through: one-hot(argmax y) forward with the
    relaxed sample's gradient; relaxed KL = E[log Concrete(y; l, tau) - log Concrete(y; 0, tau)]."""
    m, _ = tiny_categorical(temperature=2.0, temperature_min=0.3, anneal_rate=0.1, hard=hard, kl=kl_mode,
                            train_samples=S)
    x = torch.rand(B, 6, dtype=F64, generator=torch.Generator().manual_seed(1)).bernoulli()
    step = 3
    tau = 2.0 * math.exp(-0.1 * step)  # tau_t = max(tau_min, tau_0 e^{-r t}) = 1.48
    torch.manual_seed(3)
    loss, _ = m.loss(x, beta=BETA, step=step)
    logits = m.logits(x)
    torch.manual_seed(3)
    u = torch.rand(S, B, 2, 3, dtype=F64).clamp(torch.finfo(F64).tiny, 1 - torch.finfo(F64).eps)
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    if hard:
        y = torch.nn.functional.one_hot(y.argmax(-1), 3).to(F64) - y.detach() + y
    rec = _bernoulli_log_lik(m, x, y.flatten(-2))
    if kl_mode == "analytic":
        kl = kl_divergence(Categorical(logits=logits), Categorical(logits=torch.zeros_like(logits))).sum(-1)
    else:
        t = torch.tensor(tau, dtype=F64)
        kl = (RelaxedOneHotCategorical(t, logits=logits).log_prob(y)
              - RelaxedOneHotCategorical(t, logits=torch.zeros_like(logits)).log_prob(y)).sum(-1).mean(0)
    ref = -(rec.mean(0) - BETA * kl).mean()
    _check_against(m, loss, ref)
    if hard:  # the decoder saw exact one-hot codes
        assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
