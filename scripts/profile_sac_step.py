"""Where the compiled SAC gradient step spends its time: one agent against K agents stacked in one step.

    python scripts/profile_sac_step.py                 # K = 1 and 8, 2 threads, Pendulum-v1 defaults (2x256, batch 256)
    python scripts/profile_sac_step.py --num-seeds 1 4 --threads 1

For each K: the step's wall time over --steps steps after warm-up (per stack and per agent, with the GFLOP/s
implied by about 0.5 GFLOP per agent-update at 2x256 and batch 256), then torch.profiler's table of the ops that
took the most time (the matrix products, the compiled graph's fused loops, copies, dynamo's guards).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from agents import SAC
from agents.update import StackedUpdate
from reparam_apps import run_cli, set_threads

GFLOP_PER_UPDATE = 0.5  # 2x256 actor and twin critics at batch 256, forward and backward (docs/benchmarks.md)


def profile_k(k: int, steps: int, rows: int) -> None:
    models = [SAC("Pendulum-v1", seed=s, total_steps=20000, learning_starts=300, device="cpu") for s in range(k)]
    for m in models:
        m.learn(300)  # random warm-up actions: fills each buffer
    generators = [torch.Generator().manual_seed(s) for s in range(k)] if k > 1 else None
    update = StackedUpdate(models, compile=True, generators=generators)
    for _ in range(30):  # compile, then caches
        update.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        update.step()
    dt = (time.perf_counter() - t0) / steps
    print(f"K={k}: {dt * 1e3:.2f} ms per stacked step, {dt * 1e3 / k:.2f} ms per agent, "
          f"{GFLOP_PER_UPDATE * k / dt:.0f} GFLOP/s", flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(30):
            update.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)
    for m in models:
        m.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-seeds", type=int, nargs="+", default=[1, 8], help="K values to profile (default: 1 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per K (default: 100)")
    p.add_argument("--rows", type=int, default=14, help="rows of the profiler table (default: 14)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    for k in args.num_seeds:
        profile_k(k, args.steps, args.rows)
    return 0


if __name__ == "__main__":
    run_cli(main)
