#!/usr/bin/env python
"""Train a VAE (Gaussian or categorical latents; pathwise or score-function encoder gradients).

    python scripts/train_vae.py                                   # Gaussian VAE on the embedded digits
    python scripts/train_vae.py --dataset mnist --data-dir DIR --epochs 50 --out runs/vae-mnist
    python scripts/train_vae.py --model categorical --estimator score-function
    python scripts/train_vae.py --out runs/vae-mnist --resume --epochs 80   # continue a run

The run folder holds config.json, metrics.csv (train/test ELBO, reconstruction term and KL per
epoch), checkpoint.pt (written atomically every epoch), final.json, and PNGs: reconstructions.png,
samples.png, elbo.png, and manifold.png when the Gaussian latent size is 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reparam_apps import (  # noqa: E402
    RunDir,
    UserError,
    load_checkpoint,
    progress,
    run_cli,
    save_checkpoint,
    seed_everything,
    select_device,
    set_threads,
)
from reparam_apps.plotting import plot_curves  # noqa: E402
from vae import VAE, CategoricalVAE, evaluate, evaluate_iwae, load_vae_data, train_epoch  # noqa: E402
from vae.data import BINARIZE_MODES  # noqa: E402
from vae.model import CHECKPOINT_KIND, model_from_checkpoint  # noqa: E402
from vae.nets import ARCHS  # noqa: E402
from vae.plots import save_manifold, save_reconstructions, save_samples  # noqa: E402

DEFAULT_EPOCHS = 20
MODEL_CHOICES = ("gaussian", "categorical", "score-function")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a variational autoencoder on binarised digits or MNIST and write a run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", choices=("digits", "mnist"),
                   help="'digits': scikit-learn's bundled 8x8 digits (offline); 'mnist': IDX files in --data-dir")
    d.add_argument("--data-dir", default=None,
                   help="folder with the MNIST IDX files (the four standard ones, or only the two t10k files, "
                        "then split 8k/2k with a fixed seed)")
    d.add_argument("--binarize", default=None, choices=BINARIZE_MODES,
                   help="pixel binarisation: dynamic (resampled every epoch), static (once) or none; "
                        "default: dynamic for the Bernoulli decoder, none for the Gaussian decoder")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="gaussian", choices=MODEL_CHOICES,
                   help="gaussian latents, categorical (Gumbel-Softmax) latents, or score-function "
                        "(= gaussian with --estimator score-function)")
    m.add_argument("--estimator", default="pathwise", choices=("pathwise", "score-function"),
                   help="encoder gradient: pathwise (reparameterized / Gumbel-Softmax) or score function "
                        "(REINFORCE with a baseline)")
    m.add_argument("--latent-dim", type=int, default=20,
                   help="Gaussian latent size; for --model categorical the number of categorical latents")
    m.add_argument("--n-classes", type=int, default=10, help="classes per categorical latent")
    m.add_argument("--hidden", default="400",
                   help="comma-separated hidden layer sizes of the MLP encoder (the decoder mirrors them); "
                        "for --arch conv the first is the width of the dense layer")
    m.add_argument("--arch", default="mlp", choices=ARCHS, help="MLP or small convolutional encoder/decoder")
    m.add_argument("--likelihood", default="bernoulli", choices=("bernoulli", "gaussian"),
                   help="decoder p(x|z): Bernoulli logits or a Gaussian")
    m.add_argument("--decoder-std", type=float, default=None,
                   help="fixed std of the Gaussian decoder; default: learned per pixel")
    m.add_argument("--kl", default="analytic", choices=("analytic", "mc"),
                   help="KL term in training: closed form or a Monte Carlo estimate on the drawn sample")
    m.add_argument("--temperature", type=float, default=1.0, help="initial Gumbel-Softmax temperature tau_0")
    m.add_argument("--temperature-min", type=float, default=0.5, help="floor of the annealed temperature")
    m.add_argument("--anneal-rate", type=float, default=1e-4,
                   help="tau_t = max(tau_min, tau_0 exp(-rate * step))")
    m.add_argument("--hard", action="store_true", help="straight-through Gumbel-Softmax (one-hot forward pass)")
    m.add_argument("--sf-samples", type=int, default=4, help="latent samples per example for the score function")
    m.add_argument("--sf-baseline", default="loo", choices=("loo", "mean", "none"),
                   help="score-function baseline: leave-one-out over the samples of the same example, "
                        "a running mean, or none")
    m.add_argument("--train-samples", type=int, default=1, help="latent samples per example for pathwise training")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help=f"total epochs (default {DEFAULT_EPOCHS}; with "
                                                            "--resume, the new total)")
    t.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE); ELBO is reported at 1")
    t.add_argument("--warmup", type=float, default=0.0,
                   help="epochs of linear KL warm-up from 0 to --beta (0: none)")
    t.add_argument("--seed", type=int, default=0, help="random seed (model init, shuffling, binarisation, noise)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/vae", help="run folder")
    o.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint: its stored config is used, except "
                        "--epochs, --device, --threads, --iwae-k and --iwae-n, taken from this command")
    o.add_argument("--iwae-k", type=int, default=5000,
                   help="importance samples of the final IWAE bound (0: skip it)")
    o.add_argument("--iwae-n", type=int, default=200,
                   help="test examples the final IWAE bound is computed on (the first N of the test set)")
    return p


def _check_args(a: argparse.Namespace) -> None:
    positive = {"--latent-dim": a.latent_dim, "--n-classes": a.n_classes, "--batch-size": a.batch_size,
                "--sf-samples": a.sf_samples, "--train-samples": a.train_samples, "--iwae-n": a.iwae_n}
    if a.epochs is not None:
        positive["--epochs"] = a.epochs
    for flag, v in positive.items():
        if v <= 0:
            raise UserError(f"{flag} must be positive, got {v}")
    try:
        hidden = [int(h) for h in str(a.hidden).split(",") if h.strip()]
    except ValueError:
        raise UserError(f"--hidden must be comma-separated integers, got {a.hidden!r}") from None
    if any(h <= 0 for h in hidden):
        raise UserError(f"--hidden sizes must be positive, got {a.hidden!r}")
    a.hidden = hidden
    for flag, v in (("--lr", a.lr), ("--temperature", a.temperature), ("--temperature-min", a.temperature_min)):
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"{flag} must be a positive number, got {v}")
    if a.temperature_min > a.temperature:
        raise UserError(f"--temperature-min ({a.temperature_min}) must not exceed --temperature ({a.temperature})")
    if not (math.isfinite(a.beta) and a.beta >= 0):
        raise UserError(f"--beta must be >= 0, got {a.beta}")
    for flag, v in (("--warmup", a.warmup), ("--anneal-rate", a.anneal_rate), ("--iwae-k", a.iwae_k),
                    ("--threads", a.threads)):
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"{flag} must be >= 0, got {v}")
    if a.decoder_std is not None and not (math.isfinite(a.decoder_std) and a.decoder_std > 0):
        raise UserError(f"--decoder-std must be positive, got {a.decoder_std}")
    if a.seed < 0:
        raise UserError(f"--seed must be >= 0, got {a.seed}")
    if a.model == "score-function":
        a.model, a.estimator = "gaussian", "score-function"
    if a.binarize is None:
        a.binarize = "dynamic" if a.likelihood == "bernoulli" else "none"


def build_model(cfg: dict, image_shape: tuple[int, int]) -> VAE | CategoricalVAE:
    common = dict(image_shape=image_shape, hidden=cfg["hidden"], arch=cfg["arch"], likelihood=cfg["likelihood"],
                  decoder_std=cfg["decoder_std"], kl=cfg["kl"], estimator=cfg["estimator"],
                  sf_samples=cfg["sf_samples"], sf_baseline=cfg["sf_baseline"], train_samples=cfg["train_samples"])
    if cfg["model"] == "categorical":
        return CategoricalVAE(n_latents=cfg["latent_dim"], n_classes=cfg["n_classes"],
                              temperature=cfg["temperature"], temperature_min=cfg["temperature_min"],
                              anneal_rate=cfg["anneal_rate"], hard=cfg["hard"], **common)
    return VAE(latent_dim=cfg["latent_dim"], **common)


def main() -> int:
    args = build_parser().parse_args()
    _check_args(args)
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    if args.resume:
        if not (out / "config.json").is_file():
            raise UserError(f"cannot resume: {out} holds no config.json; start a new run with this --out")
        cfg = json.loads((out / "config.json").read_text())
        if args.epochs is not None:
            cfg["epochs"] = args.epochs
        # evaluation and placement flags are taken from this command line; the rest from the stored config
        cfg.update(device=args.device, threads=args.threads, iwae_k=args.iwae_k, iwae_n=args.iwae_n)
    else:
        if ckpt_path.exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        cfg = {k: v for k, v in vars(args).items() if k not in ("resume", "out")}
        cfg["epochs"] = args.epochs or DEFAULT_EPOCHS
    set_threads(cfg["threads"])
    device = select_device(cfg["device"])
    seed_everything(cfg["seed"])

    data = load_vae_data(cfg["dataset"], cfg["data_dir"], cfg["binarize"], seed=cfg["seed"]).to(device)
    model = build_model(cfg, data.image_shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    run = RunDir(out, {**cfg, "image_shape": list(data.image_shape), "n_train": data.n_train,
                       "n_test": int(data.test.shape[0]), "data_name": data.name}, resume=args.resume)
    epoch, step = 0, 0
    if args.resume:
        state = load_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, map_location=device)
        model = model_from_checkpoint(state, ckpt_path).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"].cpu())
        run.metrics().truncate_after("epoch", epoch)
        print(f"resuming {out} at epoch {epoch}/{cfg['epochs']}", file=sys.stderr)

    steps_per_epoch = math.ceil(data.n_train / cfg["batch_size"])
    warmup_steps = int(round(cfg["warmup"] * steps_per_epoch))
    while epoch < cfg["epochs"]:
        t0 = time.perf_counter()
        with progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg['epochs']}", unit="batch") as bar:
            train, step = train_epoch(model, optimizer, data.train(epoch), cfg["batch_size"], step, cfg["beta"],
                                      warmup_steps, on_batch=lambda: bar.update(1))
            test = evaluate(model, data.test)
            bar.set_postfix(train_elbo=f"{train['elbo']:.2f}", test_elbo=f"{test['elbo']:.2f}")
        epoch += 1
        row = {"epoch": epoch, "step": step, **{f"train_{k}": v for k, v in train.items()},
               **{f"test_{k}": v for k, v in test.items()}, "seconds": time.perf_counter() - t0}
        if isinstance(model, CategoricalVAE):
            row["temperature"] = model.temperature_at(step)
        run.log(row)
        save_checkpoint({**model.checkpoint_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "step": step, "rng": torch.get_rng_state(), "config": cfg}, ckpt_path, kind=CHECKPOINT_KIND)

    rows = run.metrics().rows()
    ep = [int(r["epoch"]) for r in rows]
    plot_curves(run.file("elbo.png"), {"train ELBO": (ep, [float(r["train_elbo"]) for r in rows]),
                                       "test ELBO": (ep, [float(r["test_elbo"]) for r in rows])},
                xlabel="epoch", ylabel="ELBO (nats per example)", title=f"{cfg['model']} VAE, {cfg['estimator']}")
    save_reconstructions(run.file("reconstructions.png"), model, data.test[:20])
    save_samples(run.file("samples.png"), model)
    if isinstance(model, VAE) and model.latent_dim == 2:
        save_manifold(run.file("manifold.png"), model)

    final = evaluate(model, data.test)
    summary = {"epochs": epoch, "test_elbo": final["elbo"], "test_rec": final["rec"], "test_kl": final["kl"]}
    msg = f"final test ELBO {final['elbo']:.2f} nats"
    if cfg["iwae_k"] > 0:
        subset = data.test[: cfg["iwae_n"]]
        summary.update(iwae=evaluate_iwae(model, subset, cfg["iwae_k"]), iwae_k=cfg["iwae_k"],
                       iwae_n=int(subset.shape[0]), elbo_on_iwae_subset=evaluate(model, subset)["elbo"])
        msg += (f", IWAE(k={cfg['iwae_k']}) {summary['iwae']:.2f} nats on the first {subset.shape[0]} test "
                f"examples (ELBO there {summary['elbo_on_iwae_subset']:.2f})")
    run.write_json("final.json", summary)
    print(f"{msg}; run folder {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
