#!/usr/bin/env python
"""Train Soft Actor-Critic on a gymnasium env with a continuous action space.

    python scripts/train_sac.py --env Pendulum-v1                       # RL-zoo defaults, 20k steps
    python scripts/train_sac.py --env Pendulum-v1 --out runs/p0 --resume  # continue an interrupted run

The run folder holds config.json, metrics.csv (per --log-every window: episodes, return, length,
losses, alpha, entropy; identical for the same seed on the same machine), speed.csv (wall-clock
steps/s), evals.csv (deterministic evaluations), latest.pt / best.pt and learning_curve.png.
Ctrl-C saves latest.pt at a step boundary and exits; --resume continues the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from agents.sac import ENV_DEFAULTS, SAC, SACConfig, config_docs, config_for, evaluate, make_env  # noqa: E402
from reparam_apps import RunDir, UserError, progress, run_cli, select_device  # noqa: E402
from reparam_apps.plotting import plot_curves  # noqa: E402

DETERMINISTIC_KEYS = ["step", "episodes", "episode_return", "episode_length", "critic_loss", "actor_loss",
                      "alpha", "entropy", "updates"]
SCRIPT_ONLY = {"env_id"}  # the config field set by --env


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _alpha(text: str) -> float | None:
    return None if text.lower() == "auto" else float(text)


def build_parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {env}: " + ", ".join(f"{k}={v}" for k, v in vals.items())
                      for env, vals in ENV_DEFAULTS.items())
    parser = argparse.ArgumentParser(
        description="Soft Actor-Critic (tanh-Gaussian policy through reparam_apps.TanhNormal).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Per-env defaults (override SACConfig's; flags override both):\n" + table)
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium env id (default: Pendulum-v1)")
    docs = config_docs()
    group = parser.add_argument_group("SAC hyperparameters (defaults: SACConfig, then the per-env table below)")
    for f in dataclasses.fields(SACConfig):
        if f.name in SCRIPT_ONLY:
            continue
        default = f.default
        env_vals = [f"{env}={vals[f.name]}" for env, vals in ENV_DEFAULTS.items() if f.name in vals]
        shown = "auto" if (f.name == "alpha" and default is None) else ("-|A|" if f.name == "target_entropy"
                                                                       else default)
        help_text = f"{docs.get(f.name, '')} (default: {shown}" + (f"; {', '.join(env_vals[:3])}"
                                                                   + (", ..." if len(env_vals) > 3 else "")
                                                                   if env_vals else "") + ")"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if f.name == "hidden_sizes":
            kwargs.update(type=int, nargs="+", metavar="WIDTH")
        elif f.name == "alpha":
            kwargs.update(type=_alpha, metavar="FLOAT|auto")
        elif f.name == "bf16":
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif f.name in ("device",):
            kwargs.update(type=str)
        elif f.name in ("actor_lr", "critic_lr", "alpha_lr", "target_entropy"):
            kwargs.update(type=float)
        else:
            kwargs.update(type=type(default))
        group.add_argument(_flag(f.name), **kwargs)
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None,
                     help="run folder (default: runs/sac/<env>_s<seed>); must not hold a run unless --resume")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest.pt (same steps, buffer, optimiser, RNG)")
    run.add_argument("--eval-every", type=int, default=None,
                     help="env steps between deterministic evaluations and checkpoints (default: total_steps/10)")
    run.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (default: 10)")
    run.add_argument("--log-every", type=int, default=1000,
                     help="env steps per metrics.csv row and callback (default: 1000)")
    run.add_argument("--tensorboard", action="store_true",
                     help="also log to <out>/tb (needs the optional tensorboard package; default: off)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown on a terminal)")
    return parser


def _check_run_options(args: argparse.Namespace, total_steps: int) -> None:
    if args.eval_episodes <= 0:
        raise UserError(f"--eval-episodes must be positive, got {args.eval_episodes}")
    if args.log_every <= 0:
        raise UserError(f"--log-every must be positive, got {args.log_every}")
    if args.eval_every is not None and args.eval_every <= 0:
        raise UserError(f"--eval-every must be positive, got {args.eval_every}")


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the optional tensorboard package: pip install tensorboard "
                        "(or drop --tensorboard; metrics.csv has the same numbers)") from None
    return SummaryWriter(str(path))


def _plot(run: RunDir, env_id: str) -> None:
    rows = [r for r in run.metrics("metrics.csv").rows() if r.get("episode_return") not in ("", "nan", None)]
    evals = run.metrics("evals.csv").rows()
    curves, bands = {}, {}
    if rows:
        curves["training episodes (window mean)"] = ([float(r["step"]) for r in rows],
                                                     [float(r["episode_return"]) for r in rows])
    if evals:
        x = [float(r["step"]) for r in evals]
        mean = np.array([float(r["eval_mean"]) for r in evals])
        std = np.array([float(r["eval_std"]) for r in evals])
        curves["deterministic evaluation"] = (x, mean.tolist())
        bands["deterministic evaluation"] = ((mean - std).tolist(), (mean + std).tolist())
    if curves:
        plot_curves(run.file("learning_curve.png"), curves, "environment steps", "episode return",
                    title=f"SAC on {env_id}", bands=bands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SACConfig) if hasattr(args, f.name)}
    env_id = args.env
    seed = overrides.get("seed", 0)
    out = Path(args.out) if args.out else ROOT / "runs" / "sac" / f"{env_id}_s{seed}"

    if args.resume:
        run = RunDir(out, resume=True)
        saved = run.read_json("config.json")
        if args.env != saved["sac"]["env_id"] and "--env" in (argv if argv is not None else sys.argv):
            raise UserError(f"{out} is a run on {saved['sac']['env_id']}, not {args.env}")
        env_id = saved["sac"]["env_id"]
        allowed = {"total_steps", "device", "threads"}
        changed = sorted(set(overrides) - allowed - {k for k, v in overrides.items() if saved["sac"].get(k) == v})
        if changed:
            raise UserError(f"--resume continues the saved configuration; only --total-steps, --device and "
                            f"--threads may change (got {_flag(changed[0])})")
        for key in ("eval_every", "eval_episodes", "log_every"):
            setattr(args, key, saved["script"][key])
        ckpt = run.file("latest.pt")
        if not ckpt.is_file():
            raise UserError(f"cannot resume: {ckpt} does not exist (the run saved no checkpoint yet)")
        model = SAC.load(ckpt, env=env_id, **{k: overrides[k] for k in allowed & set(overrides)})
        config = model.config
        _check_run_options(args, config.total_steps)
        for name in ("metrics.csv", "speed.csv", "evals.csv"):  # rows written after the checkpoint
            run.metrics(name).truncate_after("step", model.num_timesteps)
        if config.total_steps != saved["sac"]["total_steps"]:
            saved["sac"]["total_steps"] = config.total_steps
            run.write_json("config.json", saved)
    else:
        config = config_for(env_id, **overrides)
        select_device(config.device)  # a bad --device fails before the run folder is created
        _check_run_options(args, config.total_steps)
        if args.eval_every is None:
            args.eval_every = max(1, config.total_steps // 10)
        if (out / "config.json").is_file():
            raise UserError(f"{out} already holds a run: pass --resume to continue it, or another --out")
        make_env(env_id).close()  # env errors before the run folder is created
        run = RunDir(out, config={"sac": dataclasses.asdict(config),
                                  "script": {"eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
                                             "log_every": args.log_every}})
        model = SAC(env_id, **{k: v for k, v in dataclasses.asdict(config).items() if k != "env_id"})

    writer = _tensorboard_writer(run.file("tb")) if args.tensorboard else None
    evals = run.metrics("evals.csv").rows()
    best = max((float(r["eval_mean"]) for r in evals), default=-math.inf)
    state = {"last_eval": int(float(evals[-1]["step"])) if evals else 0, "best": best}
    eval_env = make_env(env_id)

    def do_eval() -> None:
        step = model.num_timesteps
        returns = evaluate(model, eval_env, episodes=args.eval_episodes, seed=10_000)
        row = {"step": step, "eval_mean": float(returns.mean()), "eval_std": float(returns.std()),
               "eval_min": float(returns.min()), "eval_max": float(returns.max())}
        run.log(row, "evals.csv")
        if writer is not None:
            writer.add_scalar("eval/return_mean", row["eval_mean"], step)
        model.save(run.file("latest.pt"))
        if row["eval_mean"] > state["best"]:
            state["best"] = row["eval_mean"]
            model.save(run.file("best.pt"), include_buffer=False)
        state["last_eval"] = step
        _plot(run, env_id)

    def callback(m: SAC, metrics: dict[str, float]) -> bool:
        run.log({k: metrics[k] for k in DETERMINISTIC_KEYS})
        run.log({"step": metrics["step"], "steps_per_s": metrics["steps_per_s"], "time_s": metrics["time_s"]},
                "speed.csv")
        if writer is not None:
            for k in DETERMINISTIC_KEYS[2:] + ["steps_per_s"]:
                if metrics[k] == metrics[k]:
                    writer.add_scalar(f"train/{k}", metrics[k], metrics["step"])
        if m.num_timesteps // args.eval_every > state["last_eval"] // args.eval_every:
            do_eval()
        return True

    interrupted = {"flag": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted["flag"]:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        interrupted["flag"] = True
        model.request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = progress(config.total_steps, f"SAC {env_id}", disable=args.no_progress, unit="step",
                   initial=model.num_timesteps)
    try:
        model.learn(config.total_steps, callback=callback, log_every=args.log_every, progress_bar=bar)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
        if writer is not None:
            writer.flush()
    if interrupted["flag"]:
        model.save(run.file("latest.pt"))
        print(f"interrupted at step {model.num_timesteps}: saved {run.file('latest.pt')}; continue with "
              f"python scripts/train_sac.py --out {out} --resume", file=sys.stderr)
        return 130
    if state["last_eval"] != model.num_timesteps:
        do_eval()
    model.save(run.file("latest.pt"))
    if writer is not None:
        writer.close()
    last = run.metrics("evals.csv").rows()[-1]
    print(f"{env_id}: step {model.num_timesteps}, eval return {float(last['eval_mean']):.1f} "
          f"+- {float(last['eval_std']):.1f} (best {state['best']:.1f}); run folder {out}")
    eval_env.close()
    model.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
