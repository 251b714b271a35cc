#!/usr/bin/env python
"""Benchmark: our SAC vs stable-baselines3's SAC, identical hyperparameters, run alternately.

    flock /tmp/reparam_bench.lock python scripts/bench_sac.py                  # Pendulum-v1, 3 seeds, 20k steps
    python scripts/bench_sac.py --seeds 0 1 2 3 4 --eval-at 5000 10000 20000
    python scripts/bench_sac.py --env HalfCheetah-v5 --eval-at 3000 --seeds 0 --no-sb3   # MuJoCo smoke run

Both agents: batch 256, 2x256 ReLU MLPs, lr 1e-3, learning_starts 100, one gradient step per env step,
tau 0.005, gamma 0.99, automatic entropy (target -|A|), twin critics, CPU, the same torch thread count.
Per seed the two run back to back in this process (the order alternates between seeds), so machine
load drifts hit both. Env-steps/s counts training wall time only (evaluations are paused out).
Evaluation: deterministic policy, --eval-episodes episodes seeded 10000.. at each --eval-at step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from agents import SAC, evaluate_policy, make_env
from reparam_apps import UserError, run_cli, set_threads
from reparam_apps.experiment import plot_curves

HYPER = dict(learning_rate=1e-3, batch_size=256, learning_starts=100, tau=0.005, gamma=0.99,
             train_freq=1, gradient_steps=1, buffer_size=1_000_000)


def run_ours(env_id: str, seed: int, eval_at: list[int], episodes: int, bf16: bool) -> dict[str, Any]:
    model = SAC(env_id, seed=seed, total_steps=eval_at[-1], hidden_sizes=(256, 256), device="cpu",
                bf16=bf16, **HYPER)
    eval_env = make_env(env_id)
    train_s, returns = 0.0, {}
    for step in eval_at:
        t0 = time.perf_counter()
        model.learn(step)
        train_s += time.perf_counter() - t0
        returns[step] = float(evaluate_policy(model, eval_env, episodes, seed=10_000).mean())
    eval_env.close()
    model.close()
    return {"steps_per_s": eval_at[-1] / train_s, "returns": returns, "episodes": model.episode_returns}


def run_sb3(env_id: str, seed: int, eval_at: list[int], episodes: int) -> dict[str, Any]:
    from stable_baselines3 import SAC as SB3SAC

    env = make_env(env_id)
    model = SB3SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0, ent_coef="auto",
                   policy_kwargs=dict(net_arch=[256, 256]), **HYPER)
    eval_env = make_env(env_id)
    train_s, returns, done = 0.0, {}, 0
    for step in eval_at:
        t0 = time.perf_counter()
        model.learn(step - done, reset_num_timesteps=done == 0)
        train_s += time.perf_counter() - t0
        done = step
        returns[step] = float(evaluate_policy(model, eval_env, episodes, seed=10_000).mean())
    eval_env.close()
    monitor = model.get_env().envs[0]  # SB3 wraps the env in a Monitor: every episode's return
    episodes_log = [float(r) for r in monitor.get_episode_rewards()]
    env.close()
    return {"steps_per_s": eval_at[-1] / train_s, "returns": returns, "episodes": episodes_log}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Pendulum-v1", help="gymnasium env id (default: Pendulum-v1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--eval-at", type=int, nargs="+", default=[5000, 10000, 20000],
                   help="env steps at which both are evaluated; the last is the run length (default: 5000 10000 20000)")
    p.add_argument("--eval-episodes", type=int, default=10, help="deterministic episodes per evaluation (default: 10)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both (default: 2)")
    p.add_argument("--bf16", action="store_true", help="also run ours with bf16 autocast (default: off)")
    p.add_argument("--plot", default=None,
                   help="PNG of training episode returns, median over seeds, ours vs SB3 (default: none)")
    p.add_argument("--no-sb3", action="store_true", help="skip stable-baselines3 (e.g. a quick MuJoCo check)")
    args = p.parse_args(argv)
    eval_at = sorted(set(args.eval_at))
    if eval_at[0] <= HYPER["learning_starts"] or args.eval_episodes <= 0 or args.threads <= 0:
        raise UserError("--eval-at steps must exceed learning_starts (100); --eval-episodes and --threads positive")
    set_threads(args.threads)
    make_env(args.env).close()

    variants = ["ours"] + (["ours-bf16"] if args.bf16 else []) + ([] if args.no_sb3 else ["sb3"])
    results: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
    print(f"# {args.env}: seeds {args.seeds}, eval at {eval_at}, {args.eval_episodes} episodes, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}", flush=True)
    for i, seed in enumerate(args.seeds):
        order = variants if i % 2 == 0 else variants[::-1]  # alternate who runs first
        for v in order:
            if v == "sb3":
                res = run_sb3(args.env, seed, eval_at, args.eval_episodes)
            else:
                res = run_ours(args.env, seed, eval_at, args.eval_episodes, bf16=v == "ours-bf16")
            results[v][seed] = res
            rets = " ".join(f"{s}:{r:.1f}" for s, r in res["returns"].items())
            print(f"seed {seed} {v:9s} {res['steps_per_s']:7.1f} env-steps/s  eval {rets}", flush=True)

    def row(label: str, get: Any) -> str:
        cells = []
        for v in variants:
            cells.append(f"{get(v, 'steps_per_s'):.1f}")
        if "sb3" in variants:
            cells += [f"{get(v, 'steps_per_s') / get('sb3', 'steps_per_s'):.2f}x" for v in variants if v != "sb3"]
        for s in eval_at:
            cells += [f"{get(v, s):.1f}" for v in variants]
        return f"| {label} | " + " | ".join(cells) + " |"

    head = [f"{v} steps/s" for v in variants]
    if "sb3" in variants:
        head += [f"{v}/sb3" for v in variants if v != "sb3"]
    for s in eval_at:
        head += [f"{v} @{s // 1000}k" if s % 1000 == 0 else f"{v} @{s}" for v in variants]
    print()
    print("| seed | " + " | ".join(head) + " |")
    print("|" + " --- |" * (len(head) + 1))
    for seed in args.seeds:
        print(row(str(seed), lambda v, k, seed=seed: (results[v][seed]["steps_per_s"] if k == "steps_per_s"
                                                      else results[v][seed]["returns"][k])))

    def med(v: str, k: Any) -> float:
        vals = [r["steps_per_s"] if k == "steps_per_s" else r["returns"][k] for r in results[v].values()]
        return float(statistics.median(vals))

    print(row("median", med))
    if "sb3" in variants:
        ratios = [results["ours"][s]["steps_per_s"] / results["sb3"][s]["steps_per_s"] for s in args.seeds]
        print(f"\nthroughput ratio ours/sb3 per seed: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}x")
    if args.plot:
        curves, bands = {}, {}
        for v in variants:
            n = min(len(r["episodes"]) for r in results[v].values())
            if n == 0:
                continue
            per_seed = np.array([r["episodes"][:n] for r in results[v].values()])  # (seeds, episodes)
            x = (np.arange(1, n + 1) * eval_at[-1] / n).tolist()  # fixed-length episodes: approx. env steps
            label = {"ours": "ours (agents.SAC)", "sb3": "stable-baselines3 SAC"}.get(v, v)
            curves[label] = (x, np.median(per_seed, 0).tolist())
            bands[label] = (per_seed.min(0).tolist(), per_seed.max(0).tolist())
        plot_curves(args.plot, curves, "environment steps", "training episode return",
                    title=f"SAC on {args.env}: median (band: min-max) over seeds {args.seeds}", bands=bands)
        print(f"wrote {args.plot}")
    print(f"eval returns: mean over {args.eval_episodes} deterministic episodes; table cells are per seed, "
          f"then the median over seeds; np {np.__version__}")
    return 0


if __name__ == "__main__":
    run_cli(main)
