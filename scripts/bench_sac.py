#!/usr/bin/env python
"""Benchmark: our SAC against stable-baselines3's and SBX's (SB3's API on JAX), identical hyperparameters.

    python scripts/bench_sac.py                                   # Pendulum-v1, seeds 0-2, 20k steps, ours/sb3/sbx
    python scripts/bench_sac.py --steady-state                    # env-steps/s after warm-up, contenders alternating
    python scripts/bench_sac.py --steady-state --num-seeds 8      # + ours as 8 seeds in one process (aggregate)
    python scripts/bench_sac.py --env HalfCheetah-v5 --lr 3e-4 --learning-starts 10000 --eval-at 15000 20000 25000 \
        30000 --seeds 0 1 --peers sb3 --threshold-every 0                  # MuJoCo parity (RL-zoo settings)

Every contender: batch 256, 2x256 ReLU MLPs, lr 1e-3 (--lr), learning_starts 100 (--learning-starts), one
gradient step per env step, tau 0.005, gamma 0.99, automatic entropy (target -|A|), twin critics, CPU,
--threads torch threads (JAX uses its own pool). Each runs in a process of its own, driven from this one, which
alternates them. "ours" runs with its defaults (the compiled step where it pays: it does for these run
lengths), "ours-eager" with --no-compile (--eager adds it). A peer that is not installed is skipped with a note.

Full mode (default): per seed, each contender trains to the last --eval-at step, the order rotating between
seeds; env-steps/s counts training wall time only (compile and JIT included, evaluations paused out);
deterministic evaluation (--eval-episodes episodes seeded 10000..) at each --eval-at step and every
--threshold-every steps for the time to threshold: training seconds until an evaluation first reaches
--threshold (-200 on Pendulum; median over seeds; "-" if never).
Steady state (--steady-state): all contenders of a seed live side by side (in their processes); each first takes
learning_starts + --warmup steps untimed (compile, JIT, caches), then --rounds rounds of --chunk steps, the
order rotating every round, so load drifts hit every contender alike; env-steps/s over the timed chunks.
--num-seeds K adds "ours-xK": K agents (seeds s..s+K-1) in one process, its env-steps/s summed over them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from agents import SAC, SACConfig, evaluate_policy, make_env
from agents.multi import SACGroup
from reparam_apps import UserError, run_cli, set_threads
from reparam_apps.experiment import plot_curves

HYPER = dict(batch_size=256, learning_starts=100, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1,
             buffer_size=1_000_000)


class Contender:
    """One agent behind a common interface: ``train(n)`` more env steps, ``predict``, ``episodes``."""

    def __init__(self, kind: str, env_id: str, seed: int, lr: float, total: int, num_seeds: int = 1,
                 learning_starts: int = 100):
        self.kind, self.steps, self.num_agents = kind, 0, 1
        hyper = {**HYPER, "learning_starts": learning_starts}
        if kind.startswith("ours"):
            cfg = SACConfig.for_env(env_id, seed=seed, total_steps=total, hidden_sizes=(256, 256), device="cpu",
                                    learning_rate=lr, compile=kind != "ours-eager", **hyper)
            if kind.startswith("ours-x"):
                self.model, self.num_agents = SACGroup(cfg, num_seeds), num_seeds
            else:
                self.model = SAC(cfg)
            return
        if kind == "sb3":
            from stable_baselines3 import SAC as PeerSAC
        else:
            from sbx import SAC as PeerSAC
        self.env = make_env(env_id)
        self.model = PeerSAC("MlpPolicy", self.env, seed=seed, verbose=0, ent_coef="auto", learning_rate=lr,
                             policy_kwargs=dict(net_arch=[256, 256]), **hyper,
                             **({"device": "cpu"} if kind == "sb3" else {}))

    def train(self, n: int) -> float:
        """n more env steps; returns the wall seconds they took."""
        t0 = time.perf_counter()
        if self.kind.startswith("ours"):
            self.model.learn(self.steps + n, log_every=10**9)
        else:
            self.model.learn(n, reset_num_timesteps=self.steps == 0)
        self.steps += n
        return time.perf_counter() - t0

    def evaluate(self, env: Any, episodes: int) -> float:
        agents = self.model.agents if self.kind.startswith("ours-x") else [self.model]
        return float(np.mean([evaluate_policy(a, env, episodes, seed=10_000).mean() for a in agents]))

    def episodes(self) -> list[float]:
        if self.kind.startswith("ours-x"):
            return self.model.agents[0].episode_returns
        if self.kind.startswith("ours"):
            return self.model.episode_returns
        return [float(r) for r in self.model.get_env().envs[0].get_episode_rewards()]  # SB3's Monitor

    def close(self) -> None:
        self.model.close() if self.kind.startswith("ours") else self.model.get_env().close()


def _serve(conn: Any, kind: str, env_id: str, seed: int, lr: float, total: int, num_seeds: int,
           threads: int, learning_starts: int) -> None:
    """A contender's process: builds it, then answers ("train", n), ("eval", episodes), ("episodes",), ("close",)."""
    set_threads(threads)
    contender = Contender(kind, env_id, seed, lr, total, num_seeds, learning_starts)
    eval_env = make_env(env_id)
    conn.send(contender.num_agents)
    while True:
        cmd, *arg = conn.recv()
        if cmd == "train":
            conn.send(contender.train(arg[0]))
        elif cmd == "eval":
            conn.send(contender.evaluate(eval_env, arg[0]))
        elif cmd == "episodes":
            conn.send(contender.episodes())
        else:
            contender.close()
            eval_env.close()
            conn.send(None)
            return


class Remote:
    """A ``Contender`` in its own process (spawned: nothing of this process's thread pools is inherited)."""

    def __init__(self, kind: str, args: argparse.Namespace, seed: int, total: int):
        self.kind, self.steps = kind, 0
        self.conn, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(
            target=_serve, args=(child, kind, args.env, seed, args.lr, total, args.num_seeds, args.threads,
                                 args.learning_starts),
            daemon=True)
        self.proc.start()
        self.num_agents = self._get()

    def _get(self) -> Any:
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                raise RuntimeError(f"the {self.kind} process died (exit code {self.proc.exitcode})")
        return self.conn.recv()

    def call(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        return self._get()

    def train(self, n: int) -> float:
        self.steps += n
        return self.call("train", n)

    def close(self) -> None:
        self.call("close")
        self.proc.join(30)


def available(peers: list[str]) -> list[str]:
    kept = []
    for peer in peers:
        module = {"sb3": "stable_baselines3", "sbx": "sbx"}[peer]
        try:
            __import__(module)
            kept.append(peer)
        except ImportError:
            print(f"note: {peer} skipped ({module} is not installed; pip install "
                  f"{'stable-baselines3' if peer == 'sb3' else 'sbx-rl'})", file=sys.stderr)
    return kept


def full_run(kind: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    total = args.eval_at[-1]
    c = Remote(kind, args, seed, total)
    every = args.threshold_every
    marks = sorted(set(args.eval_at) | (set(range(every, total + 1, every)) if every else set()))
    train_s, returns, reached = 0.0, {}, None
    for mark in marks:
        train_s += c.train(mark - c.steps)
        ret = c.call("eval", args.eval_episodes)
        if mark in args.eval_at:
            returns[mark] = ret
        if every and reached is None and ret >= args.threshold:
            reached = train_s
    episodes = c.call("episodes")
    c.close()
    return {"steps_per_s": c.num_agents * total / train_s, "returns": returns, "to_threshold": reached,
            "episodes": episodes}


def steady_run(kinds: list[str], args: argparse.Namespace, seed: int) -> dict[str, dict[str, Any]]:
    total = max(20_000, args.learning_starts + args.warmup + args.rounds * args.chunk)
    contenders = {k: Remote(k, args, seed, total) for k in kinds}
    for c in contenders.values():
        c.train(args.learning_starts + args.warmup)  # untimed: compile, JIT, first updates
    timed = dict.fromkeys(kinds, 0.0)
    for r in range(args.rounds):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        for k in order:
            timed[k] += contenders[k].train(args.chunk)
    out = {}
    for k, c in contenders.items():
        out[k] = {"steps_per_s": c.num_agents * args.rounds * args.chunk / timed[k]}
        c.close()
    return out


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Pendulum-v1", help="gymnasium env id (default: Pendulum-v1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--peers", default="sb3,sbx", help="peers, comma-separated: sb3, sbx, or none (default: sb3,sbx)")
    p.add_argument("--eager", action="store_true", help="also run ours with --no-compile (default: off)")
    p.add_argument("--num-seeds", type=int, default=1, help="K > 1 adds ours-xK: K seeds in one process (default: 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of every contender (default: 1e-3)")
    p.add_argument("--learning-starts", type=int, default=100, help="random steps before learning (default: 100)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--eval-at", type=int, nargs="+", default=[5000, 10000, 20000],
                   help="full mode: evaluation steps; the last is the run length (default: 5000 10000 20000)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (default: 10)")
    p.add_argument("--threshold", type=float, default=-200.0, help="return for the time to threshold (default: -200)")
    p.add_argument("--threshold-every", type=int, default=1000,
                   help="full mode: steps between threshold evaluations; 0: none (default: 1000)")
    p.add_argument("--steady-state", action="store_true", help="steady-state env-steps/s instead (see above)")
    p.add_argument("--warmup", type=int, default=300, help="steady state: untimed steps after learning_starts "
                   "(default: 300)")
    p.add_argument("--chunk", type=int, default=500, help="steady state: steps per turn (default: 500)")
    p.add_argument("--rounds", type=int, default=4, help="steady state: turns per contender (default: 4)")
    p.add_argument("--plot", default=None, help="full mode: PNG of training returns, median over seeds (default: none)")
    args = p.parse_args(argv)
    args.eval_at = sorted(set(args.eval_at))
    if args.eval_at[0] <= args.learning_starts or min(args.eval_episodes, args.threads, args.num_seeds, args.chunk,
                                                      args.rounds) <= 0 or args.threshold_every < 0:
        raise UserError("--eval-at steps must exceed --learning-starts; counts must be positive")
    peers = [] if args.peers == "none" else [x.strip() for x in args.peers.split(",") if x.strip()]
    if set(peers) - {"sb3", "sbx"}:
        raise UserError(f"--peers takes sb3, sbx or none, got {args.peers!r}")
    set_threads(args.threads)
    make_env(args.env).close()  # a bad id fails here, in one line
    kinds = ["ours"] + (["ours-eager"] if args.eager else []) + available(peers)
    if args.num_seeds > 1:
        kinds.insert(1, f"ours-x{args.num_seeds}")
    print(f"# {args.env}: seeds {args.seeds}, {'steady state' if args.steady_state else 'full runs'}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, contenders {kinds}", flush=True)
    results: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in kinds}
    for i, seed in enumerate(args.seeds):
        if args.steady_state:
            for k, res in steady_run(kinds, args, seed).items():
                results[k][seed] = res
            print(f"seed {seed}: " + ", ".join(f"{k} {results[k][seed]['steps_per_s']:.1f}" for k in kinds)
                  + " env-steps/s", flush=True)
            continue
        for k in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            res = results[k][seed] = full_run(k, args, seed)
            rets = " ".join(f"{s}:{r:.1f}" for s, r in res["returns"].items())
            print(f"seed {seed} {k:10s} {res['steps_per_s']:7.1f} env-steps/s  to {args.threshold:g}: "
                  f"{fmt(res['to_threshold'])} s  eval {rets}", flush=True)
    report(results, kinds, args)
    if args.plot and not args.steady_state:
        plot(results, kinds, args)
    return 0


def report(results: dict[str, dict[int, dict[str, Any]]], kinds: list[str], args: argparse.Namespace) -> None:
    head = ["seed"] + [f"{k} steps/s" for k in kinds]
    if not args.steady_state:
        head += [f"{k} s to {args.threshold:g}" for k in kinds]
        head += [f"{k} @{s // 1000}k" if s % 1000 == 0 else f"{k} @{s}" for s in args.eval_at for k in kinds]
    print("\n| " + " | ".join(head) + " |\n|" + " --- |" * len(head))

    def cells(get: Any) -> list[str]:
        out = [fmt(get(k, "steps_per_s")) for k in kinds]
        if not args.steady_state:
            out += [fmt(get(k, "to_threshold")) for k in kinds]
            out += [fmt(get(k, s)) for s in args.eval_at for k in kinds]
        return out

    def value(res: dict[str, Any], key: Any) -> float | None:
        return res[key] if key in ("steps_per_s", "to_threshold") else res["returns"][key]

    for seed in args.seeds:
        print(f"| {seed} | " + " | ".join(cells(lambda k, key, s=seed: value(results[k][s], key))) + " |")

    def median(k: str, key: Any) -> float | None:
        vals = [value(r, key) for r in results[k].values()]
        if key == "to_threshold":  # never reached counts as infinitely slow
            vals = [np.inf if v is None else v for v in vals]
            m = float(statistics.median(vals))
            return None if np.isinf(m) else m
        return float(statistics.median(vals))

    print("| median | " + " | ".join(cells(median)) + " |")
    for other in kinds[1:]:
        ratios = [results["ours"][s]["steps_per_s"] / results[other][s]["steps_per_s"] for s in args.seeds]
        word = "aggregate/single" if other.startswith("ours-x") else f"ours/{other}"
        if other.startswith("ours-x"):
            ratios = [1 / r for r in ratios]
        print(f"env-steps/s {word} per seed: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}x")


def plot(results: dict[str, dict[int, dict[str, Any]]], kinds: list[str], args: argparse.Namespace) -> None:
    curves, bands = {}, {}
    for k in kinds:
        n = min(len(r["episodes"]) for r in results[k].values())
        if n == 0:
            continue
        per_seed = np.array([r["episodes"][:n] for r in results[k].values()])  # (seeds, episodes)
        x = (np.arange(1, n + 1) * args.eval_at[-1] / n).tolist()  # fixed-length episodes: approx. env steps
        curves[k] = (x, np.median(per_seed, 0).tolist())
        bands[k] = (per_seed.min(0).tolist(), per_seed.max(0).tolist())
    plot_curves(args.plot, curves, "environment steps", "training episode return",
                title=f"SAC on {args.env}: median (band: min-max) over seeds {args.seeds}", bands=bands)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    run_cli(main)
