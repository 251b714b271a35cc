#!/usr/bin/env python
"""The same trick, and its alternative, across domains: gradient-estimator mean, bias, variance,
signal-to-noise ratio and cost for the pathwise (reparameterization) and score-function (REINFORCE)
estimators, with and without baselines, on the real objective of each domain.

    python scripts/compare_domains.py --quick       # a few minutes on 2 CPU cores
    python scripts/compare_domains.py               # the full run (see the README for its time)

Domains: toy objectives under N(mu, sigma^2) (closed-form variances, Mohamed et al. 2020), a
categorical latent (Gumbel-Softmax vs score function), the VAE encoder, a Bayes-by-Backprop layer
(plain weight noise, local reparameterization, Flipout), and the SAC actor at a fixed critic. Then
learning curves with each estimator on the same budget (toy and VAE).

Writes to --out: measurements.csv, table.md, variance_bars.png, toy_variance_vs_k.png,
learning_curves.png, learning_curves.csv, config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reparam_apps as ra  # noqa: E402
from reparam_apps.plotting import plt, save_figure  # noqa: E402
from reparam_apps.toy import TOY_OBJECTIVES  # noqa: E402

DOMAINS = ("toy", "discrete", "vae", "bnn", "sac")


@dataclass
class CompareConfig:
    """Settings of one comparison run."""

    out: str = "results/compare"
    """Results folder (created; files in it are overwritten)."""
    quick: bool = False
    """Small budgets everywhere: finishes in a few minutes on 2 CPU cores."""
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    """Which domains to measure."""
    seed: int = 0
    """Seed for every random draw (the same seed gives the same numbers on the same machine)."""
    repeats: int = 400
    """Independent gradient estimates per estimator (variance and bias are computed over them)."""
    n_samples: int = 4
    """Monte Carlo samples per gradient estimate, the same for every estimator."""
    reference_factor: int = 4
    """The reference gradient uses this many times more repeats (pathwise, or exact where known)."""
    curve_steps: int = 1500
    """Optimisation steps of each learning curve (VAE); the toy curve uses 300."""
    threads: int = 2
    """torch intra-op threads."""
    progress: bool = True
    """Show per-domain progress."""

    def scaled(self) -> CompareConfig:
        if self.quick:
            return dataclasses.replace(self, repeats=min(self.repeats, 120), curve_steps=min(self.curve_steps, 300))
        return self


@dataclass
class Row:
    domain: str
    case: str
    estimator: str
    dim: int
    n_samples: int
    repeats: int
    mean_norm: float
    reference_norm: float
    bias: float  # |E g - reference|
    bias_z: float  # max |z| of the bias over 8 random projections: < 4 when unbiased (see _bias_z)
    total_variance: float
    variance_ratio: float  # total variance / the pathwise estimator's in the same case
    snr: float
    us_per_estimate: float
    closed_form_variance: float = float("nan")  # toy only: tr Var of the estimate, from the closed form
    note: str = ""


N_PROJECTIONS = 8


@dataclass
class Reference:
    mean: Tensor  # flattened reference gradient
    proj_mean: Tensor  # its projections on the test directions, (N_PROJECTIONS,)
    proj_var: Tensor  # variance of one reference draw's projections (zeros when exact)
    repeats: int


def _directions(dim: int, seed: int) -> Tensor:
    """N_PROJECTIONS fixed random unit directions in gradient space (seeded, float64)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N_PROJECTIONS, dim, generator=g, dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


def _stats_with_projections(estimate: Callable[[], object], repeats: int, dirs: Tensor | None, seed: int):
    """estimator_stats plus the mean and variance of the gradient's projections on ``dirs``."""
    projections: list[Tensor] = []

    def wrapped():
        g = estimate()
        nonlocal dirs
        flat = ra.flatten_gradient(g).double()
        if dirs is None:
            dirs = _directions(flat.numel(), seed)
        projections.append(dirs @ flat)
        return g

    s = ra.estimator_stats(wrapped, repeats)
    p = torch.stack(projections)
    return s, p.mean(0), p.var(0), dirs


def _bias_z(proj_mean: Tensor, proj_var: Tensor, repeats: int, ref: Reference) -> float:
    """Largest |z| over the projections, z = (mean - ref) / sqrt(var / R + ref_var / R_ref): each z is
    ~N(0, 1) for an unbiased estimator, so max |z| over 8 directions exceeds 4 with probability ~5e-4."""
    se = (proj_var / repeats + ref.proj_var / ref.repeats).sqrt().clamp_min(1e-300)
    return float(((proj_mean - ref.proj_mean) / se).abs().max())


def measure(domain: str, case: str, estimators: dict[str, Callable[[], object]], ref: Reference, repeats: int,
            n_samples: int, seed: int, closed_forms: dict[str, float] | None = None,
            notes: dict[str, str] | None = None) -> list[Row]:
    """Run every estimator ``repeats`` times and summarise it against the reference."""
    results = {}
    for name, est in estimators.items():
        s, pm, pv, _ = _stats_with_projections(est, repeats, _directions(ref.mean.numel(), seed), seed)
        results[name] = (s, pm, pv)
    base = results["pathwise"][0].total_variance if "pathwise" in results else float("nan")
    rows = []
    for name, (s, pm, pv) in results.items():
        rows.append(Row(domain, case, name, s.mean.numel(), n_samples, repeats, float(s.mean.norm()),
                        float(ref.mean.norm()), s.bias_to(ref.mean), _bias_z(pm, pv, repeats, ref),
                        s.total_variance, s.total_variance / base, s.snr, s.seconds_per_estimate * 1e6,
                        (closed_forms or {}).get(name, float("nan")), (notes or {}).get(name, "")))
    return rows


def _reference(estimate: Callable[[], object], repeats: int, seed: int) -> Reference:
    s, pm, pv, _ = _stats_with_projections(estimate, repeats, None, seed)
    return Reference(s.mean, pm, pv, repeats)


def _exact_reference(grad: Tensor, seed: int) -> Reference:
    flat = grad.reshape(-1).double()
    zeros = torch.zeros(N_PROJECTIONS, dtype=torch.float64)
    return Reference(flat, _directions(flat.numel(), seed) @ flat, zeros, 1)


# ----------------------------------------------------------------------------------------------
# 1. Toy objectives (closed forms)
# ----------------------------------------------------------------------------------------------
TOY_KS = {"quadratic": [0.5, 1.0, 2.0, 3.0], "exp": [0.1, 0.5, 1.0, 2.0, 5.0], "cos": [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]}
TOY_MU, TOY_SIGMA = 1.0, 1.0


def _toy_estimators(f: Callable[[Tensor], Tensor], n: int) -> dict[str, Callable[[], Tensor]]:
    """d/dmu E[f(x)], x ~ N(mu, 1) at mu = TOY_MU, by each estimator."""
    sigma = torch.tensor([TOY_SIGMA], dtype=torch.float64)
    fac = lambda m: ra.Normal(m, sigma, validate_args=False)  # noqa: E731
    mu = lambda: torch.tensor([TOY_MU], dtype=torch.float64, requires_grad=True)  # noqa: E731
    return {
        "pathwise": lambda: ra.pathwise_gradient(f, fac, mu(), n),
        "score": lambda: ra.score_function_gradient(f, fac, mu(), n),
        "score+loo": lambda: ra.score_function_gradient(f, fac, mu(), n, "mean"),
        "score+optimal": lambda: ra.score_function_gradient(f, fac, mu(), n, "optimal"),
    }


def toy_domain(cfg: CompareConfig) -> list[Row]:
    rows = []
    n = cfg.n_samples
    for name, obj in TOY_OBJECTIVES.items():
        for k in TOY_KS[name] if not cfg.quick else TOY_KS[name][::2]:
            ests = _toy_estimators(lambda x, k=k, obj=obj: obj.f(x, k), n)
            exact = _exact_reference(torch.tensor([obj.true_grad_mu(TOY_MU, TOY_SIGMA, k)]), cfg.seed)
            closed = {"pathwise": obj.pathwise_var_mu(TOY_MU, TOY_SIGMA, k) / n,
                      "score": obj.score_var_mu(TOY_MU, TOY_SIGMA, k) / n}
            rows += measure("toy", f"{obj.name}, k={k:g}", ests, exact, cfg.repeats * 2, n, cfg.seed, closed)
    return rows


# ----------------------------------------------------------------------------------------------
# 5. Discrete latent: Gumbel-Softmax (soft, straight-through) vs score function
# ----------------------------------------------------------------------------------------------
def discrete_domain(cfg: CompareConfig) -> list[Row]:
    """f(z) = (sum_b w_b . z_b - t)^2 over B independent one-hot latents of K classes. The exact
    gradient comes from the closed-form expectation: with S = sum_b X_b, X_b = w_b[k_b] independent,
    E f = Var S + (E S - t)^2. Gumbel-Softmax estimates the gradient of the *relaxed* objective
    E f(y_soft), which differs from the discrete one: its bias is by design and reported as such."""
    g = torch.Generator().manual_seed(cfg.seed)
    B, K, t, tau = 8, 10, 1.0, 0.5
    w = torch.randn(B, K, generator=g, dtype=torch.float64)
    logits0 = torch.randn(B, K, generator=g, dtype=torch.float64)
    n = cfg.n_samples

    def exact_objective(lg: Tensor) -> Tensor:
        p = torch.softmax(lg, -1)
        mean = (p * w).sum(-1)
        var = (p * w**2).sum(-1) - mean**2
        return var.sum() + (mean.sum() - t) ** 2

    lg = logits0.clone().requires_grad_()
    (exact_grad,) = torch.autograd.grad(exact_objective(lg), lg)
    f = lambda z: ((z * w).sum((-1, -2)) - t) ** 2  # noqa: E731  (n, B, K) -> (n,)
    leaf = lambda: logits0.clone().requires_grad_()  # noqa: E731
    cat = lambda lg: ra.GumbelSoftmax(lg, tau, validate_args=False).categorical()  # noqa: E731
    soft = lambda lg: ra.GumbelSoftmax(lg, tau, validate_args=False)  # noqa: E731
    hard = lambda lg: ra.GumbelSoftmax(lg, tau, hard=True, validate_args=False)  # noqa: E731
    ests = {
        "score": lambda: ra.score_function_gradient(f, cat, leaf(), n),
        "score+loo": lambda: ra.score_function_gradient(f, cat, leaf(), n, "mean"),
        "score+optimal": lambda: ra.score_function_gradient(f, cat, leaf(), n, "optimal"),
        "gumbel-softmax": lambda: ra.pathwise_gradient(f, soft, leaf(), n),
        "straight-through": lambda: ra.pathwise_gradient(f, hard, leaf(), n),
    }
    exact = _exact_reference(exact_grad, cfg.seed)
    notes = {"gumbel-softmax": f"biased by design: relaxed objective at tau={tau}",
             "straight-through": "biased by design: relaxed backward, discrete forward"}
    rows = measure("discrete", f"{B} latents x {K} classes", ests, exact, cfg.repeats, n, cfg.seed, notes=notes)
    # The variance ratio in this domain is against the best unbiased estimator family's plain form.
    score_var = next(r.total_variance for r in rows if r.estimator == "score")
    for r in rows:
        r.variance_ratio = r.total_variance / score_var
    return rows


# ----------------------------------------------------------------------------------------------
# 2. VAE: the ELBO gradient w.r.t. the encoder's weights
# ----------------------------------------------------------------------------------------------
def _train_vae(cfg: CompareConfig, estimator: str, steps: int, baseline: str = "loo",
               log_every: int = 0, eval_x: Tensor | None = None):
    from vae import VAE

    data = ra.data.load_digits(seed=cfg.seed)
    x_train = data.x_train.reshape(len(data.x_train), -1)
    torch.manual_seed(cfg.seed)
    model = VAE(image_shape=(8, 8), latent_dim=8, hidden=(64,), estimator=estimator, sf_baseline=baseline,
                sf_samples=cfg.n_samples)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    curve = []
    for step in range(steps + 1):
        if log_every and eval_x is not None and step % log_every == 0:
            with torch.no_grad():
                torch.manual_seed(cfg.seed + 1)
                curve.append((step, float(model.elbo(eval_x, n_samples=8).mean())))
        if step == steps:
            break
        idx = torch.randint(len(x_train), (64,), generator=g)
        xb = torch.bernoulli(x_train[idx], generator=g)
        loss, _ = model.loss(xb, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, curve


def vae_domain(cfg: CompareConfig) -> list[Row]:
    """A partly trained VAE (digits, 64-64-8), one batch of 32 images: the gradient of the
    reconstruction term E_q[log p(x|z)] w.r.t. the encoder weights (the KL term's gradient is
    exact and identical for every estimator, so it is left out)."""
    model, _ = _train_vae(cfg, "pathwise", 300 if cfg.quick else 1000)
    data = ra.data.load_digits(seed=cfg.seed)
    x = torch.bernoulli(data.x_test[:32].reshape(32, -1), generator=torch.Generator().manual_seed(cfg.seed))
    enc_params = [p for name, p in model.named_parameters() if name.startswith("encoder")]
    mu, log_var = model.encode_params(x)  # with the encoder's graph, to pull gradients back to its weights
    sigma = torch.exp(0.5 * log_var)
    x_flat = x.reshape(32, -1)
    n = cfg.n_samples
    f = lambda z: model.log_likelihood(x_flat, z)  # noqa: E731  (n, B, L) -> (n, B) per-image terms
    fac = lambda m, s: ra.Normal(m, s, event_dims=1, validate_args=False)  # noqa: E731

    def to_encoder(estimator: Callable[..., tuple[Tensor, Tensor]], *args) -> Callable[[], tuple[Tensor, ...]]:
        def run():
            m, s = mu.detach().requires_grad_(), sigma.detach().requires_grad_()
            g_mu, g_sigma = estimator(f, fac, [m, s], n, *args)
            # chain rule through the encoder: g_phi = J^T g_(mu, sigma)
            return torch.autograd.grad([mu, sigma], enc_params, grad_outputs=[g_mu, g_sigma], retain_graph=True)
        return run

    ests = {
        "pathwise": to_encoder(ra.pathwise_gradient),
        "score": to_encoder(ra.score_function_gradient),
        "score+loo": to_encoder(ra.score_function_gradient, "mean"),
        "score+optimal": to_encoder(ra.score_function_gradient, "optimal"),
    }
    ref = _reference(ests["pathwise"], cfg.repeats * cfg.reference_factor, cfg.seed)
    return measure("vae", "encoder weights, batch 32", ests, ref, cfg.repeats, n, cfg.seed)


# ----------------------------------------------------------------------------------------------
# 3. BNN: the ELBO gradient w.r.t. one layer's variational parameters (mu, rho)
# ----------------------------------------------------------------------------------------------
def bnn_domain(cfg: CompareConfig) -> list[Row]:
    """A partly trained 64-50-10 Bayes-by-Backprop classifier on digits; the gradient of the
    expected data log-likelihood of one batch of 64 w.r.t. the first layer's (mu, rho). The
    second layer is held at its posterior mean, so every estimator sees the same objective."""
    import bnn

    data = ra.data.load_digits(seed=cfg.seed)
    xtr, ytr = data.x_train.reshape(len(data.x_train), -1), data.y_train
    torch.manual_seed(cfg.seed)
    # Deterministic biases: the compared gradient is the weight posterior's alone.
    net = nn.Sequential(bnn.BayesLinear(64, 50, bayesian_bias=False), nn.ReLU(),
                        bnn.BayesLinear(50, 10, bayesian_bias=False))
    lik = bnn.CategoricalLikelihood()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(100 if cfg.quick else 400):
        idx = torch.randint(len(xtr), (64,), generator=g)
        terms = bnn.elbo_loss(net, lik, xtr[idx], ytr[idx], n_data=len(xtr))
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        opt.step()
    layer, head = net[0], net[2]
    head.set_noise("mean")
    x, y = data.x_test[:64].reshape(64, -1), data.y_test[:64]
    w_mu, w_rho = layer.weight_mu, layer.weight_rho
    b = layer.bias_mu.detach()
    n = cfg.n_samples

    def f(w: Tensor) -> Tensor:  # (n, out, in) weight samples -> (n, B) per-example log-likelihoods
        h = torch.relu(torch.einsum("bi,noi->nbo", x, w) + b)  # (n, B, 50)
        nll = F.cross_entropy(head(h).reshape(-1, 10), y.repeat(w.shape[0]), reduction="none")
        return -nll.reshape(w.shape[0], -1)

    fac = lambda m, r: ra.Normal(m, F.softplus(r), validate_args=False)  # noqa: E731  q(W) = N(mu, softplus(rho)^2)
    leaves = lambda: [w_mu.detach().requires_grad_(), w_rho.detach().requires_grad_()]  # noqa: E731

    def layer_mode(mode: str) -> Callable[[], tuple[Tensor, ...]]:
        """The real BayesLinear in a sampling mode, on the batch repeated n times (n draws per example)."""
        def run():
            layer.sampling = mode
            logp = -F.cross_entropy(head(torch.relu(layer(x.repeat(n, 1)))), y.repeat(n), reduction="sum") / n
            return torch.autograd.grad(logp, [w_mu, w_rho])
        return run

    ests = {
        "pathwise": lambda: ra.pathwise_gradient(lambda w: f(w).sum(-1), fac, leaves(), n),
        "local-reparam": layer_mode("local"),
        "flipout": layer_mode("flipout"),
        "score": lambda: ra.score_function_gradient(f, fac, leaves(), n),
        "score+loo": lambda: ra.score_function_gradient(f, fac, leaves(), n, "mean"),
        "score+optimal": lambda: ra.score_function_gradient(lambda w: f(w).sum(-1), fac, leaves(), n, "optimal"),
    }
    ref = _reference(ests["pathwise"], cfg.repeats * cfg.reference_factor, cfg.seed)
    notes = {"local-reparam": "one weight draw per example (n examples x batch)",
             "flipout": "pseudo-independent weight draws per example"}
    return measure("bnn", "layer 1 (mu, rho), batch 64", ests, ref, cfg.repeats, n, cfg.seed, notes=notes)


# ----------------------------------------------------------------------------------------------
# 4. SAC: the actor loss gradient at a fixed critic
# ----------------------------------------------------------------------------------------------
def sac_domain(cfg: CompareConfig) -> list[Row]:
    """Actor loss J(theta) = E_s E_{a ~ pi(.|s)}[alpha log pi(a|s) - min_j Q_j(s, a)] at the critic of
    a short Pendulum run, on 64 replay states, w.r.t. the actor's weights. The score-function form
    uses f(a) = alpha log pi(a|s) - min Q (held fixed) times grad log pi(a|s); E[grad log pi] = 0 makes
    the direct term of alpha log pi zero-mean, so it is left out (unbiased)."""
    from agents import SAC

    model = SAC("Pendulum-v1", seed=cfg.seed, threads=cfg.threads, learning_starts=200)
    model.learn(1000 if cfg.quick else 3000, log_every=10**9)
    obs = model.buffer.sample(64, np.random.default_rng(cfg.seed), model.device)[0]
    actor, critic = model.actor, model.critic
    alpha = float(model.log_alpha.detach().exp())
    params = list(actor.parameters())
    n = cfg.n_samples
    obs_rep = obs.repeat(n, 1)  # (n * B, O): n action samples per state

    def q_min(a: Tensor) -> Tensor:
        return critic(obs_rep, a, detach_params=True).min(0).values

    def pathwise():
        a, logp = actor.sample(obs_rep)
        loss = (alpha * logp - q_min(a)).mean() * 1.0
        return torch.autograd.grad(loss, params)

    def score(baseline: str | None):
        def run():
            dist = actor.dist(obs_rep)
            with torch.no_grad():
                a = dist.sample()
            logp = dist.log_prob(a) + actor.log_prob_offset
            with torch.no_grad():
                fa = (alpha * logp - q_min(a)).reshape(n, -1)  # (n, B)
            lp = logp.reshape(n, -1)
            b = (fa.sum(0, keepdim=True) - fa) / (n - 1) if baseline == "mean" else torch.zeros_like(fa)
            return torch.autograd.grad(((fa - b) * lp).mean(), params)
        return run

    ests = {"pathwise": pathwise, "score": score(None), "score+loo": score("mean")}
    ref = _reference(pathwise, cfg.repeats * cfg.reference_factor, cfg.seed)
    model.close()
    return measure("sac", "actor weights, 64 states", ests, ref, cfg.repeats, n, cfg.seed)


# ----------------------------------------------------------------------------------------------
# Learning curves on the same budget
# ----------------------------------------------------------------------------------------------
def toy_curves(cfg: CompareConfig, steps: int = 300) -> dict[str, list[tuple[int, float]]]:
    """Minimise E[(x - 2)^2] = (mu - 2)^2 + sigma^2 over (mu, log sigma) from (0, 0) with Adam,
    n samples per step for every estimator; the curve is the exact objective."""
    k, n = 2.0, cfg.n_samples
    f = lambda x: (x - k) ** 2  # noqa: E731
    fac = lambda m, ls: ra.Normal(m, ls.exp(), validate_args=False)  # noqa: E731
    out = {}
    for name, est in {"pathwise": lambda p: ra.pathwise_gradient(f, fac, p, n),
                      "score": lambda p: ra.score_function_gradient(f, fac, p, n),
                      "score+loo": lambda p: ra.score_function_gradient(f, fac, p, n, "mean")}.items():
        torch.manual_seed(cfg.seed)
        mu, log_s = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([mu, log_s], lr=0.05)
        curve = []
        for step in range(steps + 1):
            with torch.no_grad():
                curve.append((step, float((mu - k) ** 2 + (2 * log_s).exp())))
            g_mu, g_ls = est([mu, log_s])
            opt.zero_grad()
            mu.grad, log_s.grad = g_mu, g_ls
            opt.step()
        out[name] = curve
    return out


def vae_curves(cfg: CompareConfig) -> dict[str, list[tuple[int, float]]]:
    """The digits VAE trained with each estimator for the same steps, batch and samples; the curve
    is the test ELBO (8 samples, nats per image)."""
    data = ra.data.load_digits(seed=cfg.seed)
    x_eval = torch.bernoulli(data.x_test.reshape(len(data.x_test), -1),
                             generator=torch.Generator().manual_seed(cfg.seed))
    every = max(1, cfg.curve_steps // 30)
    out = {}
    for name, (est, base) in {"pathwise": ("pathwise", "loo"), "score": ("score-function", "none"),
                              "score+loo": ("score-function", "loo")}.items():
        _, curve = _train_vae(cfg, est, cfg.curve_steps, base, every, x_eval)
        out[name] = curve
    return out


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def write_table(rows: Sequence[Row], path: Path) -> str:
    lines = ["| domain | case | estimator | total variance | ratio to pathwise | SNR | bias max abs z "
             "| us / estimate |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.domain == "toy" and not r.case.endswith(("k=1", "k=10", "k=2")):
            continue  # the full toy sweep is in the CSV and the plot
        ratio_label = f"{r.variance_ratio:.3g}" + (" (vs score)" if r.domain == "discrete" else "")
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.domain} | {r.case} | {r.estimator}{note} | {r.total_variance:.3g} | {ratio_label} | "
                     f"{r.snr:.3g} | {r.bias_z:.2f} | {r.us_per_estimate:.0f} |")
    text = "\n".join(lines) + "\n"
    ra.atomic_write_text(path, text)
    return text


def plot_variance_bars(rows: Sequence[Row], path: Path) -> None:
    domains = [d for d in DOMAINS if d != "toy" and any(r.domain == d for r in rows)]
    if not domains:
        return
    fig, axes = plt.subplots(1, len(domains), figsize=(3.6 * len(domains), 3.6), squeeze=False)
    for ax, d in zip(axes[0], domains, strict=True):
        rs = [r for r in rows if r.domain == d]
        colors = ["tab:blue" if not r.estimator.startswith("score") else "tab:red" for r in rs]
        ax.bar(range(len(rs)), [r.total_variance for r in rs], color=colors)
        ax.set_xticks(range(len(rs)), [r.estimator for r in rs], rotation=45, ha="right")
        ax.set_yscale("log")
        ax.set_title(d)
    axes[0][0].set_ylabel("total gradient variance (log)")
    fig.suptitle("Gradient variance per estimator (blue: pathwise family, red: score function)")
    save_figure(fig, path)


def plot_toy(rows: Sequence[Row], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, obj) in zip(axes, TOY_OBJECTIVES.items(), strict=True):
        ks = np.linspace(min(TOY_KS[key]), max(TOY_KS[key]), 100)
        n = next((r.n_samples for r in rows if r.domain == "toy"), 4)
        ax.plot(ks, [obj.pathwise_var_mu(TOY_MU, TOY_SIGMA, k) / n for k in ks], "b-", label="pathwise (closed form)")
        ax.plot(ks, [obj.score_var_mu(TOY_MU, TOY_SIGMA, k) / n for k in ks], "r-", label="score (closed form)")
        for est, style in (("pathwise", "bo"), ("score", "rs"), ("score+loo", "m^")):
            pts = [(float(r.case.split("k=")[1]), r.total_variance) for r in rows
                   if r.domain == "toy" and r.case.startswith(obj.name) and r.estimator == est]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{est} (measured)", alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("k")
        ax.set_title(f"d/dmu E[{obj.name}], mu=sigma=1")
    axes[0].set_ylabel(f"variance of the estimate (n={n})")
    axes[-1].legend(fontsize=7)
    save_figure(fig, path)


def plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    labels = {"toy": ("step", "E[(x-2)^2] (exact)", True), "vae": ("step", "test ELBO (nats)", False)}
    for ax, (name, per_est) in zip(axes[0], curves.items(), strict=True):
        for est, pts in per_est.items():
            ax.plot(*zip(*pts, strict=True), label=est)
        xl, yl, logy = labels[name]
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if logy:
            ax.set_yscale("log")
        ax.set_title(f"{name}: same steps and samples per estimator")
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def run(cfg: CompareConfig) -> dict[str, object]:
    """Run the comparison; returns {'rows': [...], 'curves': {...}, 'table': str, 'out': Path}."""
    cfg = cfg.scaled()
    unknown = set(cfg.domains) - set(DOMAINS)
    if unknown:
        raise ra.UserError(f"unknown domain(s) {sorted(unknown)}: choose from {', '.join(DOMAINS)}")
    if cfg.repeats < 10 or cfg.n_samples < 2:
        raise ra.UserError("--repeats must be >= 10 and --n-samples >= 2 (leave-one-out baselines need 2)")
    ra.set_threads(cfg.threads)
    out = Path(cfg.out)
    run_dir = ra.RunDir(out, cfg)
    fns = {"toy": toy_domain, "discrete": discrete_domain, "vae": vae_domain, "bnn": bnn_domain, "sac": sac_domain}
    rows: list[Row] = []
    timings = {}
    bar = ra.progress(len(cfg.domains), "domains", disable=not cfg.progress, unit="domain")
    for d in cfg.domains:
        bar.set_postfix_str(d)
        ra.seed_everything(cfg.seed)
        start = time.perf_counter()
        rows += fns[d](cfg)
        timings[d] = time.perf_counter() - start
        print(f"[{d}] done in {timings[d]:.1f} s", file=sys.stderr, flush=True)
        bar.update(1)
    bar.close()
    csv_path = out / "measurements.csv"
    csv_path.unlink(missing_ok=True)
    for r in rows:
        run_dir.log(dataclasses.asdict(r), "measurements.csv")
    table = write_table(rows, out / "table.md")
    plot_variance_bars(rows, out / "variance_bars.png")
    if "toy" in cfg.domains:
        plot_toy(rows, out / "toy_variance_vs_k.png")
    curves = {}
    ra.seed_everything(cfg.seed)
    start = time.perf_counter()
    if "toy" in cfg.domains:
        curves["toy"] = toy_curves(cfg)
    if "vae" in cfg.domains:
        curves["vae"] = vae_curves(cfg)
    timings["curves"] = time.perf_counter() - start
    if curves:
        (out / "learning_curves.csv").unlink(missing_ok=True)
        for dom, per_est in curves.items():
            for est, pts in per_est.items():
                for step, value in pts:
                    run_dir.log({"domain": dom, "estimator": est, "step": step, "value": value}, "learning_curves.csv")
        plot_curves(curves, out / "learning_curves.png")
    run_dir.write_json("timings.json", timings)
    return {"rows": rows, "curves": curves, "table": table, "out": out, "timings": timings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = CompareConfig()
    ap.add_argument("--out", default=d.out, help=f"results folder (default: {d.out})")
    ap.add_argument("--quick", action="store_true", help="small budgets: a few minutes on 2 CPU cores")
    ap.add_argument("--domains", nargs="+", default=d.domains,
                    help=f"domains to run (default: all: {' '.join(DOMAINS)})")
    ap.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    ap.add_argument("--repeats", type=int, default=d.repeats,
                    help=f"independent estimates per estimator (default: {d.repeats}; --quick caps it at 120)")
    ap.add_argument("--n-samples", type=int, default=d.n_samples,
                    help=f"Monte Carlo samples per estimate, every estimator (default: {d.n_samples})")
    ap.add_argument("--curve-steps", type=int, default=d.curve_steps,
                    help=f"steps of the VAE learning curves (default: {d.curve_steps}; --quick caps it at 300)")
    ap.add_argument("--threads", type=int, default=d.threads, help=f"torch threads (default: {d.threads})")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = ap.parse_args()
    cfg = CompareConfig(out=a.out, quick=a.quick, domains=a.domains, seed=a.seed, repeats=a.repeats,
                        n_samples=a.n_samples, curve_steps=a.curve_steps, threads=a.threads,
                        progress=not a.no_progress)
    start = time.perf_counter()
    result = run(cfg)
    print(result["table"])
    print(f"wrote {result['out']}/ in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    ra.run_cli(main)
