#!/usr/bin/env python
"""Throughput of the core's reparameterized families vs their torch.distributions equivalents.

One iteration = build the distribution from parameters that require grad, draw a reparameterized
sample with its log-density, and backpropagate through both (sum of samples + sum of log-probs).
Ours uses ``rsample_and_log_prob`` (the density from the noise); torch uses ``rsample`` then
``log_prob`` (its transform caches make that its fastest path). Ours and torch's are timed
alternately, repeat by repeat, so machine load hits both alike; the table shows medians.

    python scripts/bench_core.py                    # default sizes, 2 threads
    python scripts/bench_core.py --quick            # a fast smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import distributions as td

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reparam_apps as ra  # noqa: E402

T = td.transforms


def _loc_scale(shape):
    loc = torch.randn(shape).requires_grad_()
    scale = (torch.rand(shape) + 0.5).requires_grad_()
    return loc, scale


def _logistic_torch(loc, scale, validate):
    base = td.Uniform(torch.zeros_like(loc), torch.ones_like(loc), validate_args=validate)
    return td.TransformedDistribution(base, [T.SigmoidTransform().inv, T.AffineTransform(loc, scale)],
                                      validate_args=validate)


# name -> (ours(params, validate), torch's(params, validate), make params(shape))
def _families():
    tanh = lambda loc, scale, v: td.TransformedDistribution(  # noqa: E731
        td.Normal(loc, scale, validate_args=v), [T.TanhTransform(cache_size=1)], validate_args=v)
    return {
        "Normal": (lambda p, v: ra.Normal(*p, validate_args=v), lambda p, v: td.Normal(*p, validate_args=v)),
        "Laplace": (lambda p, v: ra.Laplace(*p, validate_args=v), lambda p, v: td.Laplace(*p, validate_args=v)),
        "Logistic": (lambda p, v: ra.Logistic(*p, validate_args=v), lambda p, v: _logistic_torch(*p, v)),
        "LogNormal": (lambda p, v: ra.LogNormal(*p, validate_args=v), lambda p, v: td.LogNormal(*p, validate_args=v)),
        "Gumbel": (lambda p, v: ra.Gumbel(*p, validate_args=v), lambda p, v: td.Gumbel(*p, validate_args=v)),
        "TanhNormal": (lambda p, v: ra.TanhNormal(*p, event_dims=0, validate_args=v), lambda p, v: tanh(*p, v)),
        "GumbelSoftmax": (
            lambda p, v: ra.GumbelSoftmax(p[0], 0.5, validate_args=v),
            lambda p, v: td.RelaxedOneHotCategorical(torch.tensor(0.5), logits=p[0], validate_args=v),
        ),
    }


def _step_ours(make: Callable, params, validate: bool) -> None:
    z, lp = make(params, validate).rsample_and_log_prob()
    (z.sum() + lp.sum()).backward()


def _step_torch(make: Callable, params, validate: bool) -> None:
    d = make(params, validate)
    z = d.rsample()
    (z.sum() + d.log_prob(z).sum()).backward()


def _time(step: Callable[[], None], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def bench(name: str, shape: tuple[int, ...], validate: bool, repeats: int, budget_s: float) -> tuple[float, float]:
    ours_make, torch_make = _families()[name]
    if name == "GumbelSoftmax":
        params = (torch.randn(shape).requires_grad_(),)
    else:
        params = _loc_scale(shape)
    ours = lambda: _step_ours(ours_make, params, validate)  # noqa: E731
    theirs = lambda: _step_torch(torch_make, params, validate)  # noqa: E731
    for fn in (ours, theirs):  # warm-up
        fn()
    per_call = max(_time(ours, 3), _time(theirs, 3))
    iters = max(1, int(budget_s / max(per_call, 1e-7) / repeats / 2))
    t_ours, t_torch = [], []
    for _ in range(repeats):
        t_ours.append(_time(ours, iters))
        t_torch.append(_time(theirs, iters))
    return statistics.median(t_ours), statistics.median(t_torch)


SHAPES = [(1, 1), (256, 1), (256, 6), (65536, 32)]
GS_SHAPES = [(1, 10), (256, 10), (256, 6, 10), (65536, 32)]  # the last dim is the K categories


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    ap.add_argument("--repeats", type=int, default=7, help="alternating timing repeats per cell (default: 7)")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds spent per cell, both sides (default: 1.5)")
    ap.add_argument("--validate", action="store_true",
                    help="time both libraries with argument validation on (default: off for both, the hot-path "
                         "setting; torch's own default is on)")
    ap.add_argument("--families", nargs="*", default=None, help="subset of families (default: all)")
    ap.add_argument("--quick", action="store_true", help="3 repeats, 0.2 s per cell: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.budget = 3, 0.2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.families or list(_families())
    unknown = set(names) - set(_families())
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; choose from {list(_families())}")
    print(f"torch {torch.__version__}, {args.threads} threads, validation {'on' if args.validate else 'off'}; "
          "rsample + log_prob forward and backward, microseconds per call (median)")
    print(f"{'family':<14}{'shape':>14}{'ours us':>12}{'torch us':>12}{'speed-up':>10}")
    worst = float("inf")
    for name in names:
        for shape in GS_SHAPES if name == "GumbelSoftmax" else SHAPES:
            t_ours, t_torch = bench(name, shape, args.validate, args.repeats, args.budget)
            ratio = t_torch / t_ours
            worst = min(worst, ratio)
            print(f"{name:<14}{'x'.join(map(str, shape)):>14}{t_ours * 1e6:>12.1f}{t_torch * 1e6:>12.1f}"
                  f"{ratio:>9.2f}x", flush=True)
    print(f"slowest ratio over all cells: {worst:.2f}x (>1 means ours is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
