#!/usr/bin/env python
"""VAE benchmark: speed against a minimal reference, and pathwise vs score-function quality.

    flock /tmp/reparam_bench.lock python scripts/bench_vae.py --part timing  --data-dir ../shared/data/mnist
    python scripts/bench_vae.py --part quality --data-dir ../shared/data/mnist --epochs 30

timing:  seconds per training epoch of our ``vae.VAE`` (784-400-20, Bernoulli decoder) and of a
         minimal reference written here (the classic PyTorch-example VAE: separate mu / log-var heads,
         sigmoid + binary cross-entropy, ``loss.item()`` every batch), on the same binarised data,
         batch size, thread count and initial weights; epochs timed alternately in one process,
         medians and the ratio printed. A bf16-autocast variant of ours is timed too.
quality: the Gaussian and the categorical (20 x 10) VAE, each trained with its pathwise estimator
         and with the score-function estimator (leave-one-out baseline) for the same epochs; test
         ELBO on the whole test split and IWAE (k = 5000, chunked) on a test subset.

Without --data-dir (or when the folder lacks the files) it runs on the embedded 8x8 digits instead
and says so. Results are printed as markdown tables and written to --out (results.json, PNGs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reparam_apps import UserError, atomic_write_text, run_cli, seed_everything, set_threads
from reparam_apps.data import DataError
from vae import VAE, CategoricalVAE, evaluate_elbo, evaluate_iwae, load_vae_data, train_epoch
from vae.plots import save_reconstructions, save_samples


class ReferenceVAE(nn.Module):
    """The classic 784-400-20 VAE exactly as the PyTorch examples write it."""

    def __init__(self, d: int = 784, h: int = 400, latent: int = 20):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(d, h), nn.Linear(h, latent), nn.Linear(h, latent)
        self.fc3, self.fc4 = nn.Linear(latent, h), nn.Linear(h, d)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def reference_epoch(model: ReferenceVAE, opt: torch.optim.Optimizer, x: torch.Tensor, batch_size: int) -> float:
    model.train()
    perm = torch.randperm(x.shape[0])
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[perm[start:start + batch_size]]
        recon, mu, logvar = model(xb)
        bce = F.binary_cross_entropy(recon, xb, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (bce + kld) / xb.shape[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * xb.shape[0]
    return -total / x.shape[0]  # the train ELBO, nats per example


def copy_reference_weights(ours: VAE, ref: ReferenceVAE) -> None:
    """Give both models the same initial weights (ours fuses the mu and log-var heads)."""
    enc, dec = ours.encoder.net, ours.decoder.net
    with torch.no_grad():
        ref.fc1.load_state_dict(enc[0].state_dict())
        w_mu, w_lv = enc[2].weight.chunk(2, 0)
        b_mu, b_lv = enc[2].bias.chunk(2, 0)
        ref.fc21.weight.copy_(w_mu), ref.fc21.bias.copy_(b_mu)
        ref.fc22.weight.copy_(w_lv), ref.fc22.bias.copy_(b_lv)
        ref.fc3.load_state_dict(dec[0].state_dict())
        ref.fc4.load_state_dict(dec[2].state_dict())


def part_timing(args, data) -> dict:
    d = data.raw_train.shape[1]
    seed_everything(args.seed)
    ours = VAE(image_shape=data.image_shape, latent_dim=20, hidden=(400,))
    ours_bf16 = VAE(image_shape=data.image_shape, latent_dim=20, hidden=(400,))
    ref = ReferenceVAE(d, 400, 20)
    ours_bf16.load_state_dict(ours.state_dict())
    copy_reference_weights(ours, ref)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in
            (("ours", ours), ("ours_bf16", ours_bf16), ("reference", ref))}
    times: dict[str, list[float]] = {k: [] for k in opts}
    elbos: dict[str, float] = {}
    steps = {k: 0 for k in opts}

    def run(name: str, epoch: int) -> float:
        x = data.train(epoch)  # same binarised data for every model in this epoch
        t0 = time.perf_counter()
        if name == "reference":
            elbos[name] = reference_epoch(ref, opts[name], x, args.batch_size)
        else:
            model = ours if name == "ours" else ours_bf16
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "ours_bf16"):
                stats, steps[name] = train_epoch(model, opts[name], x, args.batch_size, steps[name])
            elbos[name] = stats["elbo"]
        return time.perf_counter() - t0

    for name in opts:  # one warm-up epoch each (allocator, kernels), not timed
        run(name, 0)
    for r in range(args.repeats):
        order = list(opts) if r % 2 == 0 else list(reversed(opts))  # alternate the order
        for name in order:
            times[name].append(run(name, r + 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.no_grad():
        test_ours = evaluate_elbo(ours, data.test)["elbo"]
        test_bf16 = evaluate_elbo(ours_bf16, data.test)["elbo"]
        recon, mu, logvar = ref(data.test)
        test_ref = -float((F.binary_cross_entropy(recon, data.test, reduction="sum")
                           - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())) / data.test.shape[0])
    return {"seconds_per_epoch": med, "all_seconds": times, "ratio_ours_over_reference": med["ours"] / med["reference"],
            "ratio_bf16_over_reference": med["ours_bf16"] / med["reference"],
            "train_elbo_last_epoch": elbos,
            "test_elbo_after_timing": {"ours": test_ours, "ours_bf16": test_bf16, "reference": test_ref},
            "epochs_trained": args.repeats + 1, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "n_train": data.n_train}


QUALITY_MODELS = {
    "gaussian / pathwise": (VAE, dict(latent_dim=20, estimator="pathwise")),
    "gaussian / score function": (VAE, dict(latent_dim=20, estimator="score-function")),
    "categorical 20x10 / pathwise (Gumbel-Softmax)": (CategoricalVAE, dict(n_latents=20, n_classes=10,
                                                                              estimator="pathwise")),
    "categorical 20x10 / score function": (CategoricalVAE, dict(n_latents=20, n_classes=10,
                                                                estimator="score-function")),
    "categorical 20x10 / pathwise (straight-through Gumbel-Softmax)": (
        CategoricalVAE, dict(n_latents=20, n_classes=10, estimator="pathwise", hard=True)),
}


def part_quality(args, data, out: Path) -> dict:
    results = {}
    for i, (name, (cls, kw)) in enumerate(QUALITY_MODELS.items()):
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        seed_everything(args.seed)
        model = cls(image_shape=data.image_shape, hidden=(400,), sf_samples=args.sf_samples,
                    train_samples=args.train_samples, **kw)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        step, t0 = 0, time.perf_counter()
        curve = []
        for epoch in range(args.epochs):
            train, step = train_epoch(model, opt, data.train(epoch), args.batch_size, step)
            curve.append(train["elbo"])
            print(f"  {name}: epoch {epoch + 1}/{args.epochs} train ELBO {train['elbo']:.2f}", file=sys.stderr,
                  flush=True)
        train_s = time.perf_counter() - t0
        torch.manual_seed(args.seed + 1)  # the same evaluation noise for every model
        test = evaluate_elbo(model, data.test, n_samples=10)
        subset = data.test[: args.iwae_n]
        iwae = evaluate_iwae(model, subset, args.iwae_k)
        elbo_subset = evaluate_elbo(model, subset, n_samples=10)["elbo"]
        tag = f"model{i}"
        model.save(out / f"{tag}.pt")
        save_reconstructions(out / f"{tag}_reconstructions.png", model, data.test[:20])
        save_samples(out / f"{tag}_samples.png", model)
        results[name] = {"test_elbo": test["elbo"], "test_rec": test["rec"], "test_kl": test["kl"],
                         "iwae": iwae, "elbo_on_iwae_subset": elbo_subset, "train_elbo_curve": curve,
                         "train_seconds": train_s, "file": f"{tag}.pt"}
        print(f"{name}: test ELBO {test['elbo']:.2f}, IWAE {iwae:.2f} ({train_s:.0f} s)", file=sys.stderr,
              flush=True)
        atomic_write_text(out / "quality_partial.json", json.dumps(results, indent=2))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--part", default="all", choices=("timing", "quality", "all"), help="what to run")
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder; embedded digits when absent")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size (both parts)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per model (after one warm-up epoch)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per model in the quality part")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate in the quality part")
    p.add_argument("--sf-samples", type=int, default=4, help="samples per example of the score-function estimator")
    p.add_argument("--iwae-k", type=int, default=5000, help="importance samples of the IWAE bound")
    p.add_argument("--iwae-n", type=int, default=300, help="test examples the IWAE bound is computed on")
    p.add_argument("--train-samples", type=int, default=1,
                   help="latent samples per example of the pathwise estimator (set it to --sf-samples to give "
                        "both estimators the same samples per step)")
    p.add_argument("--only", default="",
                   help="quality part: run only the models whose name contains one of these comma-separated strings")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default="runs/bench_vae", help="output folder")
    args = p.parse_args()
    for flag in ("batch_size", "repeats", "epochs", "sf_samples", "train_samples", "iwae_k", "iwae_n", "threads"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = load_vae_data("mnist", args.data_dir, "dynamic", seed=args.seed) if args.data_dir else None
    except DataError as err:
        print(f"note: {err}; using the embedded digits instead", file=sys.stderr)
        data = None
    if data is None:
        data = load_vae_data("digits", None, "dynamic", seed=args.seed)
    print(f"data: {data.name}, {data.n_train} train / {data.test.shape[0]} test, {torch.get_num_threads()} thread(s)")
    report = {"data": data.name, "command": " ".join(sys.argv), "torch": torch.__version__, "args": vars(args)}
    if args.part in ("timing", "all"):
        t = part_timing(args, data)
        report["timing"] = t
        s = t["seconds_per_epoch"]
        print(f"\n| model | s / epoch (median of {args.repeats}) | vs reference |\n| --- | --- | --- |")
        print(f"| reference (PyTorch-example VAE) | {s['reference']:.3f} | 1.00 |")
        print(f"| ours (vae.VAE, fp32) | {s['ours']:.3f} | {t['ratio_ours_over_reference']:.2f} |")
        print(f"| ours, bf16 autocast | {s['ours_bf16']:.3f} | {t['ratio_bf16_over_reference']:.2f} |")
        te = t["test_elbo_after_timing"]
        print(f"test ELBO after {t['epochs_trained']} epochs: ours {te['ours']:.2f}, bf16 {te['ours_bf16']:.2f}, "
              f"reference {te['reference']:.2f}")
    if args.part in ("quality", "all"):
        q = part_quality(args, data, out)
        report["quality"] = q
        print(f"\n| model / estimator | test ELBO ({data.test.shape[0]} images) | IWAE k={args.iwae_k} "
              f"({args.iwae_n} images) | ELBO on those images |\n| --- | --- | --- | --- |")
        for name, r in q.items():
            print(f"| {name} | {r['test_elbo']:.2f} | {r['iwae']:.2f} | {r['elbo_on_iwae_subset']:.2f} |")
        for kind in ("gaussian", "categorical"):
            pw = [(n, r) for n, r in q.items() if n.startswith(kind) and "pathwise" in n]
            sf = [(n, r) for n, r in q.items() if n.startswith(kind) and "score" in n]
            for p_name, p_res in pw:
                for s_name, s_res in sf:
                    gap = p_res["test_elbo"] - s_res["test_elbo"]
                    print(f"{p_name} {'beats' if gap > 0 else 'does NOT beat'} {s_name} by {gap:.2f} nats "
                          "of test ELBO")
    atomic_write_text(out / f"results_{args.part}.json", json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
