"""The measured domains: each returns the rows of its estimators on its real objective.

Every domain is a function ``(cfg, stop) -> list[Row]``; ``stop`` is polled between estimates (and between
training steps) so that Ctrl-C abandons a domain at once. A domain is re-seeded before it runs, so its
numbers do not depend on which domains ran before it (and a resumed run measures it identically).
Baselines: "score+loo" is the leave-one-out batch mean, "score+optimal" the variance-optimal scalar
(estimated leave-one-out), both from ``reparam_apps.score_function_gradient``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import reparam_apps as ra
from reparam_apps.data import load_digits
from reparam_apps.toy import TOY_OBJECTIVES

from .config import CompareConfig
from .digits_vae import vae_domain
from .flows import flows_domain
from .stats import Row, StopRequested, exact_reference, measure, never, reference

__all__ = ["DOMAIN_FUNCTIONS", "TOY_KS", "TOY_MU", "TOY_SIGMA", "toy_domain", "discrete_domain", "vae_domain",
           "bnn_domain", "sac_domain", "flows_domain"]

Stop = Callable[[], bool]

TOY_KS = {"quadratic": [0.5, 1.0, 2.0, 3.0], "exp": [0.1, 0.5, 1.0, 2.0, 5.0], "cos": [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]}
TOY_MU, TOY_SIGMA = 1.0, 1.0


# -- 1. toy objectives under N(mu, sigma^2), with closed-form variances (Mohamed et al. 2020) -----------
def _toy_estimators(f: Callable[[Tensor], Tensor], n: int) -> dict[str, Callable[[], Tensor]]:
    """d/dmu E[f(x)], x ~ N(mu, 1) at mu = TOY_MU, by each estimator."""
    sigma = torch.tensor([TOY_SIGMA], dtype=torch.float64)
    fac = lambda m: ra.Normal(m, sigma, validate_args=False)  # noqa: E731
    mu = lambda: torch.tensor([TOY_MU], dtype=torch.float64, requires_grad=True)  # noqa: E731
    return {
        "pathwise": lambda: ra.pathwise_gradient(f, fac, mu(), n),
        "score": lambda: ra.score_function_gradient(f, fac, mu(), n),
        "score+loo": lambda: ra.score_function_gradient(f, fac, mu(), n, "loo"),
        "score+optimal": lambda: ra.score_function_gradient(f, fac, mu(), n, "optimal"),
    }


def toy_domain(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """Every toy objective of ``reparam_apps.toy`` at a sweep of k; the reference is the exact gradient."""
    rows = []
    n = cfg.n_samples
    for name, obj in TOY_OBJECTIVES.items():
        for k in TOY_KS[name] if not cfg.quick else TOY_KS[name][::2]:
            ests = _toy_estimators(lambda x, k=k, obj=obj: obj.f(x, k), n)
            exact = exact_reference(torch.tensor([obj.true_grad_mu(TOY_MU, TOY_SIGMA, k)]), cfg.seed)
            closed = {"pathwise": obj.pathwise_var_mu(TOY_MU, TOY_SIGMA, k) / n,
                      "score": obj.score_var_mu(TOY_MU, TOY_SIGMA, k) / n}
            rows += measure("toy", f"{obj.name}, k={k:g}", ests, exact, cfg.repeats * 2, n, cfg.seed, closed,
                            stop=stop)
    return rows


# -- 2. a discrete latent: Gumbel-Softmax (soft, straight-through) vs the score function ---------------
def discrete_domain(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """f(z) = (sum_b w_b . z_b - t)^2 over B independent one-hot latents of K classes. The exact gradient
    comes from the closed-form expectation: with S = sum_b X_b, X_b = w_b[k_b] independent,
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
        "score+loo": lambda: ra.score_function_gradient(f, cat, leaf(), n, "loo"),
        "score+optimal": lambda: ra.score_function_gradient(f, cat, leaf(), n, "optimal"),
        "gumbel-softmax": lambda: ra.pathwise_gradient(f, soft, leaf(), n),
        "straight-through": lambda: ra.pathwise_gradient(f, hard, leaf(), n),
    }
    notes = {"gumbel-softmax": f"biased by design: relaxed objective at tau={tau}",
             "straight-through": "biased by design: relaxed backward, discrete forward"}
    rows = measure("discrete", f"{B} latents x {K} classes", ests, exact_reference(exact_grad, cfg.seed),
                   cfg.repeats, n, cfg.seed, notes=notes, stop=stop)
    # No pathwise estimator of a discrete expectation is unbiased: the ratio is to the plain score function's.
    score_var = next(r.total_variance for r in rows if r.estimator == "score")
    for r in rows:
        r.variance_ratio = r.total_variance / score_var
    return rows


# -- 3. BNN: the expected log-likelihood w.r.t. one layer's variational parameters (mu, rho) -----------
def bnn_domain(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """A partly trained 64-50-10 Bayes-by-Backprop classifier on digits (``bnn.train.fit``); the gradient of
    the expected data log-likelihood of one batch of 64 w.r.t. the first layer's (mu, rho). The second
    layer is held at its posterior mean, so every estimator sees the same objective."""
    import bnn
    from bnn.train import fit

    data = load_digits(seed=cfg.seed)
    xtr, ytr = data.x_train.reshape(len(data.x_train), -1), data.y_train
    torch.manual_seed(cfg.seed)
    # Deterministic biases: the compared gradient is the weight posterior's alone.
    net = nn.Sequential(bnn.BayesLinear(64, 50, bayesian_bias=False), nn.ReLU(),
                        bnn.BayesLinear(50, 10, bayesian_bias=False))

    def check_stop(epoch: int, row: dict) -> None:
        if stop():
            raise StopRequested

    batch = 64
    epochs = math.ceil((100 if cfg.quick else 400) / math.ceil(len(xtr) / batch))  # about 100 or 400 steps
    fit(net, bnn.CategoricalLikelihood(), xtr, ytr, epochs=epochs, batch_size=batch, lr=1e-2, seed=cfg.seed,
        on_epoch=check_stop)
    layer, head = net[0], net[2]
    bnn.set_noise(head, "mean")
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
        def run() -> tuple[Tensor, ...]:
            bnn.set_sampling(layer, mode)
            logp = -F.cross_entropy(head(torch.relu(layer(x.repeat(n, 1)))), y.repeat(n), reduction="sum") / n
            return torch.autograd.grad(logp, [w_mu, w_rho])
        return run

    ests = {
        "pathwise": lambda: ra.pathwise_gradient(lambda w: f(w).sum(-1), fac, leaves(), n),
        "local-reparam": layer_mode("local"),
        "flipout": layer_mode("flipout"),
        "score": lambda: ra.score_function_gradient(f, fac, leaves(), n),
        "score+loo": lambda: ra.score_function_gradient(f, fac, leaves(), n, "loo"),
        "score+optimal": lambda: ra.score_function_gradient(lambda w: f(w).sum(-1), fac, leaves(), n, "optimal"),
    }
    ref = reference(ests["pathwise"], cfg.repeats * cfg.reference_factor, cfg.seed, stop)
    notes = {"local-reparam": "one weight draw per example (n examples x batch)",
             "flipout": "pseudo-independent weight draws per example"}
    return measure("bnn", "layer 1 (mu, rho), batch 64", ests, ref, cfg.repeats, n, cfg.seed, notes=notes, stop=stop)


# -- 4. SAC: the actor loss gradient at a fixed critic ------------------------------------------------
def sac_domain(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """Actor loss J(theta) = E_s E_{a ~ pi(.|s)}[alpha log pi(a|s) - min_j Q_j(s, a)] at the critic of a short
    Pendulum run, on 64 replay states, w.r.t. the actor's weights. Pathwise: the SAC actor's own
    reparameterized sample (``Actor.sample``). Score function: the core's estimator w.r.t. the policy's
    (loc, scale) per state, pulled back to the weights by the chain rule, with f(a) = alpha log pi(a|s) -
    min Q held fixed; E[grad log pi] = 0 makes the direct term of alpha log pi zero-mean, so it is left out
    (unbiased)."""
    from agents import SAC

    model = SAC("Pendulum-v1", seed=cfg.seed, threads=cfg.threads, device="cpu", learning_starts=200)
    model.learn(1000 if cfg.quick else 3000, callback=lambda m, metrics: not stop(), log_every=100)
    if stop():
        model.close()
        raise StopRequested
    obs = model.buffer.sample(64, np.random.default_rng(cfg.seed), model.device)[0]  # (B, O)
    actor, critic = model.actor, model.critic
    alpha = float(model.log_alpha.detach().exp())
    params = list(actor.parameters())
    n, batch = cfg.n_samples, obs.shape[0]
    obs_rep = obs.repeat(n, 1)  # (n * B, O): row i * B + b holds state b

    def q_min(a: Tensor) -> Tensor:  # (n * B, A) -> (n * B,)
        return critic(obs_rep, a, detach_params=True).min(0).values

    def pathwise() -> tuple[Tensor, ...]:
        a, logp = actor.sample(obs_rep)
        return torch.autograd.grad((alpha * logp - q_min(a)).mean(), params)

    dist = actor.dist(obs)  # loc, scale (B, A), with the graph back to the actor's weights
    loc, scale = dist.loc, dist.scale
    fac = lambda m, s: ra.TanhNormal(m, s, box=actor.box, validate_args=False)  # noqa: E731
    fixed = fac(loc.detach(), scale.detach())

    def f(a: Tensor) -> Tensor:  # (n, B, A) -> (n, B): the per-state terms of the loss (a mean over states)
        logp = fixed.log_prob(a) + actor.log_prob_offset
        return (alpha * logp - q_min(a.reshape(n * batch, -1)).reshape(n, batch)) / batch

    def score(baseline: str | None) -> Callable[[], tuple[Tensor, ...]]:
        def run() -> tuple[Tensor, ...]:
            m, s = loc.detach().requires_grad_(), scale.detach().requires_grad_()
            g_m, g_s = ra.score_function_gradient(f, fac, [m, s], n, baseline)
            # chain rule: dJ/dtheta = (d loc/dtheta)^T g_loc + (d scale/dtheta)^T g_scale
            return torch.autograd.grad([loc, scale], params, grad_outputs=[g_m, g_s], retain_graph=True)
        return run

    ests = {"pathwise": pathwise, "score": score(None), "score+loo": score("loo")}
    try:
        ref = reference(pathwise, cfg.repeats * cfg.reference_factor, cfg.seed, stop)
        return measure("sac", "actor weights, 64 states", ests, ref, cfg.repeats, n, cfg.seed, stop=stop)
    finally:
        model.close()


DOMAIN_FUNCTIONS: dict[str, Callable[[CompareConfig, Stop], list[Row]]] = {
    "toy": toy_domain, "discrete": discrete_domain, "vae": vae_domain, "bnn": bnn_domain, "sac": sac_domain,
    "flows": flows_domain}
