#!/usr/bin/env python
"""Benchmark one Bayes-by-Backprop training step (forward, KL, backward, Adam) of a 784-400-400-10 MLP at
batch 128: the plain MLP, our layers in each sampling mode, and, when installed, bayesian-torch
(LinearReparameterization, LinearFlipout) and blitz (BayesianLinear). All models are timed alternately,
in rounds, in the same process, and the median ms/step per model is reported with ratios.

    flock /tmp/reparam_bench.lock python scripts/bench_bnn.py                 # timing table
    flock /tmp/reparam_bench.lock python scripts/bench_bnn.py --accuracy --data-dir ../shared/data/mnist

``--accuracy`` also trains every model on the same data (MNIST 8k/2k split with --data-dir, else the
embedded digits) for the same epochs, batch size and learning rate, and reports test error, NLL and ECE
(``--seeds N``: mean +- standard error over N seeds).
Every model uses torch's fused Adam (lr 1e-3). Each peer is used as its own documentation says
(bayesian-torch: loss = CE + kl / batch_size with its get_kl_loss; blitz: sample_elbo with
complexity_cost_weight = 1 / N); ours: bnn.elbo_loss (CE + KL / N).
Install the peers with ``pip install --no-deps bayesian-torch blitz-bayesian-pytorch``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import bnn
from reparam_apps import UserError, run_cli, seed_everything, set_threads
from reparam_apps.data import load_images

SIZES = (784, 400, 400, 10)


class Model:
    """A network plus how to get its KL and its loss, so every library is timed through the same loop."""

    def __init__(self, name: str, net: nn.Module, loss_fn: Callable, autocast: bool = False):
        self.name, self.net, self.loss_fn, self.autocast = name, net, loss_fn, autocast
        # torch's fused Adam for every model (one kernel per step: the optimizer is not what is compared)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    def step(self, x: torch.Tensor, y: torch.Tensor, n_data: int) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss_fn(self.net, x, y, n_data)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss


def _mlp(make_layer: Callable[[int, int], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        layers.append(make_layer(a, b))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def plain_model() -> Model:
    return Model("plain MLP", _mlp(nn.Linear), lambda net, x, y, n: F.cross_entropy(net(x), y))


def ours(sampling: str, prior: bnn.Prior | None = None, label: str = "", autocast: bool = False) -> Model:
    net = _mlp(lambda a, b: bnn.BayesLinear(a, b, sampling=sampling, prior=prior))
    likelihood = bnn.CategoricalLikelihood()
    name = f"ours {sampling}{label}" + (" bf16" if autocast else "")
    return Model(name, net, lambda net, x, y, n: bnn.elbo_loss(net, likelihood, x, y, n_data=n).loss, autocast)


class _TupleDrop(nn.Module):
    """bayesian-torch layers return (output, kl): keep the output, stash the kl."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.kl = None

    def forward(self, x):
        out, self.kl = self.layer(x)
        return out


def bayesian_torch_model(flipout: bool) -> Model | None:
    try:
        from bayesian_torch.layers import LinearFlipout, LinearReparameterization
    except ImportError:
        return None
    cls = LinearFlipout if flipout else LinearReparameterization
    net = _mlp(lambda a, b: _TupleDrop(cls(a, b)))

    def loss_fn(net, x, y, n):  # bayesian-torch README: loss = CE + kl / batch_size (kl: sum of per-layer means)
        out = net(x)
        kl = sum(m.kl for m in net.modules() if isinstance(m, _TupleDrop))
        return F.cross_entropy(out, y) + kl / x.shape[0]

    return Model("bayesian-torch " + ("Flipout" if flipout else "Reparameterization"), net, loss_fn)


def blitz_model() -> Model | None:
    try:
        from blitz.losses import kl_divergence_from_nn
        from blitz.modules import BayesianLinear
    except ImportError:
        return None
    net = _mlp(lambda a, b: BayesianLinear(a, b))

    def loss_fn(net, x, y, n):  # blitz sample_elbo(sample_nbr=1, complexity_cost_weight=1/N)
        out = net(x)
        return F.cross_entropy(out, y) + kl_divergence_from_nn(net) / n

    return Model("blitz BayesianLinear", net, loss_fn)


def build_models(args) -> list[Model]:
    models = [plain_model(), ours("reparam"), ours("local"), ours("flipout"),
              ours("reparam", bnn.ScaleMixturePrior(), " mixture-MC")]
    if args.bf16:
        models.append(ours("reparam", autocast=True))
    if not args.no_peers:
        models += [m for m in (bayesian_torch_model(False), bayesian_torch_model(True), blitz_model()) if m]
    return models


def time_steps(models: list[Model], args) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, SIZES[0], generator=generator)
    y = torch.randint(0, SIZES[-1], (args.batch_size,), generator=generator)
    n_data = 60000
    for model in models:  # warm-up
        for _ in range(5):
            model.step(x, y, n_data)
    per_model: dict[str, list[float]] = {m.name: [] for m in models}
    for _ in range(args.rounds):
        for model in models:  # alternate: every model sees the same machine state
            start = time.perf_counter()
            for _ in range(args.steps):
                model.step(x, y, n_data)
            per_model[model.name].append((time.perf_counter() - start) / args.steps * 1e3)
    return {name: statistics.median(v) for name, v in per_model.items()}


def accuracy_comparison(args) -> None:
    """Train every model on the same data, epochs, batch size and learning rate, once per seed (the seed sets the
    initialisation, the batch order and the noise); report each model's mean test error, NLL and ECE with their
    standard errors over the seeds."""
    data = load_images("mnist" if args.data_dir else "digits", args.data_dir, seed=0)
    x_tr, y_tr = data.x_train.reshape(len(data.x_train), -1), data.y_train
    x_te, y_te = data.x_test.reshape(len(data.x_test), -1), data.y_test
    if x_tr.shape[1] != SIZES[0]:  # digits are 8x8: pad to 28x28 so every model keeps the 784-input shape
        pad = lambda t: F.pad(t.reshape(-1, 8, 8), (10, 10, 10, 10)).reshape(len(t), -1)  # noqa: E731
        x_tr, x_te = pad(x_tr), pad(x_te)
    n = len(x_tr)
    runs: dict[str, list[dict[str, float]]] = {}
    print(f"accuracy: {data.name}, {n} train / {len(x_te)} test, {args.epochs} epochs, batch {args.batch_size}, "
          f"Adam lr 1e-3, {args.test_samples} test samples, seeds 0..{args.seeds - 1}")
    for seed in range(args.seeds):
        seed_everything(seed)
        for model in build_models(args):
            seed_everything(seed)
            start = time.perf_counter()
            for _ in range(args.epochs):
                model.net.train()
                for idx in torch.randperm(n).split(args.batch_size):
                    model.step(x_tr[idx], y_tr[idx], n)
            seconds = time.perf_counter() - start
            model.net.eval()
            with torch.no_grad():
                samples = 1 if model.name == "plain MLP" else args.test_samples
                probs = torch.stack([model.net(x_te).float().softmax(-1) for _ in range(samples)]).mean(0)
            r = {"error": 1 - bnn.accuracy(probs, y_te), "nll": bnn.categorical_nll(probs, y_te),
                 "ece": bnn.expected_calibration_error(probs, y_te), "train_s": seconds}
            runs.setdefault(model.name, []).append(r)
            print(f"  seed {seed} {model.name:34s} error {r['error']:.4f}  NLL {r['nll']:.4f}  ECE {r['ece']:.4f}  "
                  f"({seconds:.1f} s)", flush=True)
    print("| model | test error | NLL | ECE | train s |")
    print("| --- | --- | --- | --- | --- |")
    for name, rs in runs.items():
        cells = []
        for key, scale, fmt in (("error", 100, ".2f"), ("nll", 1, ".3f"), ("ece", 1, ".3f"), ("train_s", 1, ".1f")):
            values = [r[key] * scale for r in rs]
            mean = statistics.mean(values)
            unit = "%" if key == "error" else ""
            se = f" +- {statistics.stdev(values) / math.sqrt(len(values)):{fmt}}" if len(values) > 1 else ""
            cells.append(f"{mean:{fmt}}{unit}{se}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as in the issue)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model per round (default 20)")
    p.add_argument("--rounds", type=int, default=7,
                   help="alternating timing rounds; the median is reported (default 7)")
    p.add_argument("--bf16", action="store_true", help="also time ours (reparam) under bf16 autocast (default off)")
    p.add_argument("--no-peers", action="store_true", help="skip bayesian-torch and blitz (default: use if installed)")
    p.add_argument("--accuracy", action="store_true", help="also train every model and compare test error/NLL "
                   "(default off)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing table (e.g. with --accuracy) "
                   "(default: time)")
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder for --accuracy (default: embedded digits)")
    p.add_argument("--epochs", type=int, default=10, help="--accuracy training epochs (default 10)")
    p.add_argument("--test-samples", type=int, default=16, help="--accuracy MC samples at test (default 16)")
    p.add_argument("--seeds", type=int, default=1,
                   help="--accuracy: train every model with seeds 0..N-1 and report mean +- standard error (default 1)")
    args = p.parse_args()
    for name in ("threads", "batch_size", "steps", "rounds", "epochs", "test_samples", "seeds"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    set_threads(args.threads)
    seed_everything(0)
    models = build_models(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MLP {'-'.join(map(str, SIZES))}, "
          f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps, median ms/step")
    if not args.no_timing:
        print_timing(time_steps(models, args))
    if args.accuracy:
        accuracy_comparison(args)
    return 0


def print_timing(ms: dict[str, float]) -> None:
    plain = ms["plain MLP"]
    peers = {name: v for name, v in ms.items() if not name.startswith(("ours", "plain"))}
    header = "| model | ms/step | x plain |" + "".join(f" speed-up vs {n} |" for n in peers)
    print(header)
    print("|" + " --- |" * (3 + len(peers)))
    for name, v in ms.items():
        cells = "".join(f" {peer_ms / v:.2f}x |" for peer_ms in peers.values())
        print(f"| {name} | {v:.2f} | {v / plain:.2f} |{cells}")


if __name__ == "__main__":
    run_cli(main)
