#!/usr/bin/env python
"""Fit a Gaussian and each normalizing flow to the 2-D energies by the reverse KL (``vae/energy.py``).

Writes ``flows_energy.png`` (one row per energy: the target, then each fit's density) and ``results.md``
(the table) into --out, and prints the table:

    python scripts/fit_energy.py --out runs/energy            # a few minutes on one thread
    python scripts/fit_energy.py --out runs/energy --steps 200 --energies banana   # a quick look
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from reparam_apps.experiment import atomic_write_text, run_cli
from vae.energy import ENERGIES, KINDS, fit, plot_fits

FLOW_STEPS = {"planar": 16}  # planar steps are rank-one: they need many (Rezende and Mohamed used up to 32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/energy"), help="output folder (default: runs/energy)")
    ap.add_argument("--steps", type=int, default=2000, help="Adam steps per fit (default: 2000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every fit (default: 0)")
    ap.add_argument("--energies", nargs="+", default=list(ENERGIES), choices=list(ENERGIES))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--flow-steps", type=int, default=4, help="steps per flow, planar: 16 (default: 4)")
    ap.add_argument("--batch", type=int, default=256, help="samples per step (default: 256)")
    ap.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate, cosine-decayed (default: 0.01)")
    ap.add_argument("--grid", type=int, default=160, help="heat-map points per axis (default: 160)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1: the networks are tiny)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 2 or args.grid < 2 or args.flow_steps < 1:
        raise ValueError("--steps, --flow-steps must be >= 1 and --batch, --grid >= 2")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["| energy | q | E_q[log q + U] | log Z (IS) | log Z (ref) | ESS / n | KL(q, p*) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    fits = {}
    for name in args.energies:
        energy = ENERGIES[name]
        log_z = energy.log_z()
        fits[name] = []
        for kind in args.kinds:
            start = time.perf_counter()
            r = fit(energy, kind, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, log_z=log_z,
                    flow_steps=FLOW_STEPS.get(kind, args.flow_steps))
            fits[name].append(r)
            rows.append(f"| {name} | {kind} | {r.neg_elbo:.3f} ± {r.neg_elbo_se:.3f} | {r.log_z_is:.3f} | "
                        f"{log_z:.3f} | {r.ess / r.n_eval:.2f} | {r.kl:.3f} |")
            print(rows[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    table = "\n".join(rows) + "\n"
    atomic_write_text(args.out / "results.md", table)
    plot_fits(args.out / "flows_energy.png", fits, grid=args.grid)
    print(table + f"wrote {args.out / 'flows_energy.png'} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
