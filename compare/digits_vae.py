"""The VAE in the comparison: a 64-64-8 VAE on the 8x8 digits, trained with ``vae.train.train_epoch``.

Used twice: partly trained (pathwise) as the model whose encoder gradient the estimators estimate, and
trained with each estimator on the same budget for the learning curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

import reparam_apps as ra
from vae import VAE
from vae.data import VAEData, load_vae_data
from vae.train import evaluate_elbo, train_epoch

from .config import CompareConfig
from .stats import Row, StopRequested, measure, never, reference

__all__ = ["BATCH_SIZE", "LR", "FLOW_HIDDEN", "digits_data", "train_digits_vae", "vae_domain", "vae_curves"]

BATCH_SIZE, LR = 64, 3e-3
FLOW_HIDDEN = (64,)  # each flow step's MADE width with a flow posterior (the encoder's width)
CURVE_POINTS = 30  # about this many test-ELBO points per learning curve
CURVE_EVAL_SAMPLES = 8  # latent samples per test image in a curve's ELBO


def digits_data(seed: int) -> VAEData:
    """The digits with dynamic binarisation (seeded by ``seed``) and the fixed binarised test set."""
    return load_vae_data("digits", mode="dynamic", seed=seed)


def train_digits_vae(cfg: CompareConfig, data: VAEData, estimator: str, baseline: str, steps: int,
                     curve: bool = False, stop: Callable[[], bool] = never, posterior: str = "gaussian",
                     flow_steps: int = 2) -> tuple[VAE, list[tuple[int, float]]]:
    """A digits VAE (seeded init: every estimator starts from the same weights) trained for ``steps`` gradient
    steps rounded up to whole epochs, Adam at LR, minibatches of BATCH_SIZE.

    Args:
        estimator, baseline: ``vae.VAE``'s encoder estimator and score-function baseline.
        curve: also return the test ELBO (nats per image) at step 0 and about every steps / CURVE_POINTS
            steps, evaluated on common random numbers (seed + 1) outside the training stream.
        stop: polled after every minibatch; True raises ``StopRequested``.
        posterior, flow_steps: ``vae.VAE``'s posterior ('gaussian' or a flow kind, of FLOW_HIDDEN-wide steps).
    Returns:
        The model and the curve [(step, test ELBO)] (empty unless ``curve``).
    """
    torch.manual_seed(cfg.seed)
    model = VAE(image_shape=data.image_shape, latent_dim=8, hidden=(64,), estimator=estimator, sf_baseline=baseline,
                sf_samples=cfg.n_samples, posterior=posterior, flow_steps=flow_steps, flow_hidden=FLOW_HIDDEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = math.ceil(data.n_train / BATCH_SIZE)
    epochs = math.ceil(steps / steps_per_epoch)
    every = max(1, round(steps / CURVE_POINTS / steps_per_epoch))  # epochs between curve points
    points: list[tuple[int, float]] = []

    def point(step: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            points.append((step, evaluate_elbo(model, data.test, n_samples=CURVE_EVAL_SAMPLES)["elbo"]))

    def check_stop() -> None:
        if stop():
            raise StopRequested

    step = 0
    if curve:
        point(0)
    for epoch in range(epochs):
        _, step = train_epoch(model, optimizer, data.train(epoch), BATCH_SIZE, step, on_batch=check_stop)
        if curve and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            point(step)
    return model, points


def vae_domain(cfg: CompareConfig, stop: Callable[[], bool] = never) -> list[Row]:
    """A partly trained VAE (pathwise, about 300 or 1000 steps), one batch of 32 test images: the gradient of
    the reconstruction term E_q[log p(x|z)] w.r.t. the encoder weights (the KL term's gradient is exact and
    identical for every estimator, so it is left out). Each estimator estimates the gradient w.r.t. q's
    (mu, sigma); the chain rule through the encoder gives the weights' gradient."""
    data = digits_data(cfg.seed)
    model, _ = train_digits_vae(cfg, data, "pathwise", "loo", 300 if cfg.quick else 1000, stop=stop)
    x = data.test[:32]  # (B, D)
    enc_params = list(model.encoder.parameters())
    mu, log_var = model.encode_params(x)  # (B, L) each, with the encoder's graph
    sigma = torch.exp(0.5 * log_var)
    n = cfg.n_samples
    f = lambda z: model.log_likelihood(x, z)  # noqa: E731  (n, B, L) -> (n, B) per-image terms
    fac = lambda m, s: ra.Normal(m, s, event_dims=1, validate_args=False)  # noqa: E731

    def to_encoder(estimator: Callable[..., tuple[Tensor, Tensor]], *args: object) -> Callable[[], tuple[Tensor, ...]]:
        def run() -> tuple[Tensor, ...]:
            m, s = mu.detach().requires_grad_(), sigma.detach().requires_grad_()
            g_mu, g_sigma = estimator(f, fac, [m, s], n, *args)
            # chain rule through the encoder: g_phi = J^T g_(mu, sigma)
            return torch.autograd.grad([mu, sigma], enc_params, grad_outputs=[g_mu, g_sigma], retain_graph=True)
        return run

    ests = {
        "pathwise": to_encoder(ra.pathwise_gradient),
        "score": to_encoder(ra.score_function_gradient),
        "score+loo": to_encoder(ra.score_function_gradient, "loo"),
        "score+optimal": to_encoder(ra.score_function_gradient, "optimal"),
    }
    ref = reference(ests["pathwise"], cfg.repeats * cfg.reference_factor, cfg.seed, stop)
    return measure("vae", "encoder weights, batch 32", ests, ref, cfg.repeats, n, cfg.seed, stop=stop)


def vae_curves(cfg: CompareConfig, stop: Callable[[], bool] = never) -> dict[str, list[tuple[int, float]]]:
    """The digits VAE trained with each estimator for the same steps, batch and samples; the curve is the
    test ELBO (8 samples per image, nats per image)."""
    data = digits_data(cfg.seed)
    out = {}
    for name, (est, base) in {"pathwise": ("pathwise", "loo"), "score": ("score-function", "none"),
                              "score+loo": ("score-function", "loo")}.items():
        out[name] = train_digits_vae(cfg, data, est, base, cfg.curve_steps, curve=True, stop=stop)[1]
    return out
