#!/usr/bin/env python
"""Throughput of the core's reparameterized families vs their torch.distributions equivalents.

One iteration = build the distribution from parameters that require grad, draw a reparameterized
sample with its log-density, and backpropagate through both (sum of samples + sum of log-probs).
Ours uses ``rsample_and_log_prob`` (the density from the noise); torch uses ``rsample`` then
``log_prob`` (its transform caches make that its fastest path). Ours and torch's are timed
alternately, repeat by repeat, so machine load hits both alike; the table shows medians.

The flow table times the same iteration for a normalizing flow (``reparam_apps.flows.make_flow``: ours
draws with ``rsample_and_log_prob``, the log-density from the noise) against zuko's flows, each built with
the same dims, context, hidden widths and number of steps, at an RL size (256 x 6, without and with a state
context) and a VAE size (100 x 20 with a context of 64). zuko samples x = T^{-1}(eps) (its transforms run
in the density direction), so each zuko flow is timed both as shipped and, where zuko can express it, with
its steps inverted so that sampling runs the cheap direction, as ours does (see FLOW_CONTENDERS). Skipped,
with a note, when zuko is not installed (``pip install -e ".[flows]"``).

    python scripts/bench_core.py                    # default sizes, 2 threads: families, then flows
    python scripts/bench_core.py --part flows       # only the flow table
    python scripts/bench_core.py --quick            # a fast smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import distributions as td
from torch import nn

import reparam_apps as ra
from reparam_apps.flows import make_flow

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


def time_pair(ours: Callable[[], None], theirs: Callable[[], None], repeats: int, budget_s: float
              ) -> tuple[float, float]:
    """Median seconds per call of each, timed alternately (repeat by repeat) after a warm-up."""
    for fn in (ours, theirs):  # warm-up
        fn()
    per_call = max(_time(ours, 3), _time(theirs, 3))
    iters = max(1, int(budget_s / max(per_call, 1e-7) / repeats / 2))
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        t_ours.append(_time(ours, iters))
        t_theirs.append(_time(theirs, iters))
    return statistics.median(t_ours), statistics.median(t_theirs)


def bench(name: str, shape: tuple[int, ...], validate: bool, repeats: int, budget_s: float) -> tuple[float, float]:
    ours_make, torch_make = _families()[name]
    if name == "GumbelSoftmax":
        params = (torch.randn(shape).requires_grad_(),)
    else:
        params = _loc_scale(shape)
    ours = lambda: _step_ours(ours_make, params, validate)  # noqa: E731
    theirs = lambda: _step_torch(torch_make, params, validate)  # noqa: E731
    return time_pair(ours, theirs, repeats, budget_s)


SHAPES = [(1, 1), (256, 1), (256, 6), (65536, 32)]
GS_SHAPES = [(1, 10), (256, 10), (256, 6, 10), (65536, 32)]  # the last dim is the K categories


# ---- normalizing flows: ours vs zuko -------------------------------------------------------------------

FLOW_STEPS, FLOW_HIDDEN, FLOW_BINS = 4, (64, 64), 8
FLOW_CASES = [("RL", 256, 6, 0), ("RL+state", 256, 6, 17), ("VAE", 100, 20, 64)]  # name, batch, D, context C


def _zuko_iaf(dim: int, context: int):
    """zuko's MAF steps (MaskedAutoregressiveTransform, ELU like our MADE), each inverted with ``.inv``, so that
    sampling runs them forward: one masked-MLP pass per step, as in our IAF."""
    from zuko.flows import MAF, Flow, MaskedAutoregressiveTransform

    orders = [torch.arange(dim), torch.arange(dim).flip(0)]
    steps = [MaskedAutoregressiveTransform(dim, context, order=orders[k % 2], hidden_features=FLOW_HIDDEN,
                                           activation=nn.ELU).inv for k in range(FLOW_STEPS)]
    return Flow(steps, MAF(dim, context, transforms=1).base)  # zuko's N(0, I) base, as every zuko flow


def _zuko_spline_coupling(dim: int, context: int):
    """zuko's GeneralCouplingTransform with its MonotonicRQSTransform (8 bins, halves alternating as ours), each
    inverted with ``.inv`` so that sampling runs the spline forward: one MLP pass per step, as ours."""
    from zuko.flows import MAF, Flow, GeneralCouplingTransform
    from zuko.transforms import MonotonicRQSTransform

    steps = []
    for k in range(FLOW_STEPS):
        mask = torch.arange(dim) < dim // 2 if k % 2 == 0 else torch.arange(dim) >= dim // 2
        steps.append(GeneralCouplingTransform(dim, context, mask=mask, univariate=MonotonicRQSTransform,
                                              shapes=((FLOW_BINS,), (FLOW_BINS,), (FLOW_BINS - 1,)),
                                              hidden_features=FLOW_HIDDEN).inv)
    return Flow(steps, MAF(dim, context, transforms=1).base)


def _zuko_builders() -> dict[str, Callable[[int, int], nn.Module]]:
    import zuko

    return {
        "MAF": lambda d, c: zuko.flows.MAF(d, c, transforms=FLOW_STEPS, hidden_features=FLOW_HIDDEN,
                                           activation=nn.ELU),
        "MAF .inv": _zuko_iaf,
        "RealNVP": lambda d, c: zuko.flows.RealNVP(d, c, transforms=FLOW_STEPS, hidden_features=FLOW_HIDDEN),
        "NSF passes=2": lambda d, c: zuko.flows.NSF(d, c, transforms=FLOW_STEPS, bins=FLOW_BINS, passes=2,
                                                    hidden_features=FLOW_HIDDEN),
        "coupling RQS .inv": _zuko_spline_coupling,
    }


# (our kind, zuko flow, zuko's network passes per step when it samples with its log-density)
FLOW_CONTENDERS = [
    ("iaf", "MAF", "D+1 (samples by inverting)"),
    ("iaf", "MAF .inv", "1 (like ours)"),
    ("affine", "RealNVP", "2 (inverse, then log-det)"),
    ("spline", "NSF passes=2", "3 (2 inverse passes, log-det)"),
    ("spline", "coupling RQS .inv", "1 (like ours)"),
]


def bench_flow(kind: str, zuko_name: str, batch: int, dim: int, context: int, validate: bool, repeats: int,
               budget_s: float) -> tuple[float, float]:
    """Ours: ``make_flow(kind, dim, 4, context, (64, 64))(context=c).rsample_and_log_prob()``; zuko: the named
    flow's ``flow(c).rsample_and_log_prob()``; both then backward through sum(z) + sum(log q)."""
    torch.manual_seed(0)
    ours = make_flow(kind, dim, FLOW_STEPS, context, FLOW_HIDDEN)
    theirs = _zuko_builders()[zuko_name](dim, context)
    c = torch.randn(batch, context).requires_grad_() if context else None  # the encoder's h: it needs grads
    shape = () if context else (batch,)
    td.Distribution.set_default_validate_args(validate)  # zuko's distributions are torch's

    def step_ours() -> None:
        z, log_q = ours(context=c, validate_args=validate).rsample_and_log_prob(shape)
        (z.sum() + log_q.sum()).backward()

    def step_zuko() -> None:
        z, log_q = (theirs(c) if context else theirs()).rsample_and_log_prob(shape)
        (z.sum() + log_q.sum()).backward()

    return time_pair(step_ours, step_zuko, repeats, budget_s)


def flow_table(validate: bool, repeats: int, budget_s: float) -> None:
    try:
        import zuko
    except ImportError:
        print("flows: zuko is not installed, so the flow table is skipped (pip install -e \".[flows]\")")
        return
    print(f"\nflows vs zuko {zuko.__version__}: {FLOW_STEPS} steps, hidden {FLOW_HIDDEN}, {FLOW_BINS} spline bins; "
          "sample + log-prob forward and backward, microseconds per call (median)")
    print(f"{'case':<10}{'batch x D, C':>14}  {'ours':<8}{'zuko':<19}{'zuko passes/step':<31}"
          f"{'ours us':>10}{'zuko us':>10}{'speed-up':>10}")
    for case, batch, dim, context in FLOW_CASES:
        for kind, zuko_name, passes in FLOW_CONTENDERS:
            t_ours, t_zuko = bench_flow(kind, zuko_name, batch, dim, context, validate, repeats, budget_s)
            print(f"{case:<10}{f'{batch}x{dim}, {context}':>14}  {kind:<8}{zuko_name:<19}{passes:<31}"
                  f"{t_ours * 1e6:>10.0f}{t_zuko * 1e6:>10.0f}{t_zuko / t_ours:>9.2f}x", flush=True)


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
    ap.add_argument("--part", choices=("all", "families", "flows"), default="all",
                    help="which table: the families vs torch.distributions, the flows vs zuko, or both (default)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.budget = 3, 0.2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.families or list(_families())
    unknown = set(names) - set(_families())
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; choose from {list(_families())}")
    print(f"torch {torch.__version__}, {args.threads} threads, validation {'on' if args.validate else 'off'}, "
          f"1-min load {os.getloadavg()[0]:.2f}")
    if args.part in ("all", "families"):
        print("rsample + log_prob forward and backward, microseconds per call (median)")
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
    if args.part in ("all", "flows"):
        flow_table(args.validate, args.repeats, args.budget)
        print(f"1-min load at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
