"""Train a VAE (Gaussian or categorical latents; pathwise or score-function encoder gradients).

    reparam-vae                                          # Gaussian VAE on the embedded 8x8 digits
    reparam-vae --dataset mnist --data-dir DIR --epochs 50
    reparam-vae --model categorical --estimator score-function
    reparam-vae --resume --epochs 80                     # continue the newest gaussian-digits_s0 run
    reparam-vae --out runs/vae/my-run --resume           # continue that run (after a Ctrl-C or a crash)

(``python scripts/train_vae.py`` is the same command.) Each run gets a fresh folder
runs/vae/<model>-<dataset>_s<seed>_<time> (or --out) holding config.json, metrics.csv (train/test ELBO,
reconstruction term and KL every --log-every epochs), speed.csv (wall-clock), latest.pt (the checkpoint,
written atomically with the previous one kept), log.txt, summary.json (final ELBO and IWAE bound) and PNGs:
reconstructions.png, samples.png, elbo.png, and manifold.png when the Gaussian latent size is 2.
Ctrl-C saves at the end of the epoch and exits 130; --resume continues exactly where it stopped.

Data parallel on N processes (--batch-size stays the global batch; only rank 0 writes; docs/scale.md):

    torchrun --nproc-per-node 2 $(which reparam-vae) --epochs 20
"""

from __future__ import annotations

import sys

import torch

from reparam_apps import experiment as ex
from reparam_apps.experiment import distributed as D
from reparam_apps.utils import select_device

from .config import VAEConfig
from .train import load_data, train_run

__all__ = ["main", "entry"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), open the run folder and train; returns the exit code."""
    cli = ex.parse_cli(VAEConfig, argv, description=__doc__, log_every=1)
    info, _ = D.init_distributed()  # under torchrun: join the group (one process otherwise, unchanged)
    try:
        data = None
        if not cli.options.resume:  # check the data before a folder is made (a resumed run reads its saved config)
            cfg = ex.build_config(VAEConfig, cli.given)
            # under torchrun on CPU first: train_run moves it to this rank's GPU
            data = load_data(cfg, torch.device("cpu") if info.distributed else select_device(cfg.device))
            D.check_world_size(data.n_train, cfg.batch_size, info)
        run = ex.start_or_resume("vae", cli, name=lambda c: c.run_name, dist_info=info)
        return train_run(run, data, dist_info=info)
    finally:
        D.shutdown(info, wait=sys.exc_info()[0] is None)


def entry() -> None:
    """The ``reparam-vae`` console command: one-line errors and exit codes (2 input, 3 diverged, 130 Ctrl-C)."""
    ex.run_cli(main)
