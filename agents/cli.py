"""Train Soft Actor-Critic on a gymnasium env with a bounded continuous action space.

    python scripts/train_sac.py --env Pendulum-v1                       # RL-zoo defaults: lr 1e-3, 20k steps
    python scripts/train_sac.py --env Pendulum-v1 --resume              # continue the newest Pendulum-v1_s0 run
    python scripts/train_sac.py --env Pendulum-v1 --out runs/p0 --resume  # continue the run in runs/p0

The run folder (runs/sac/<env>_s<seed>_<time> unless --out) holds config.json, metrics.csv (per --log-every
window: episodes, mean episode return and length, losses, alpha, entropy; identical for the same seed on the
same machine, and after a kill + --resume), speed.csv (wall-clock steps/s), evals.csv (deterministic
evaluations), log.txt (status lines), latest.pt (+ the previous one), best.pt, learning_curve.png and
summary.json. Ctrl-C saves latest.pt at a step boundary (exit 130); --resume continues the same run (buffer,
optimiser, RNG and env states). A NaN or inf loss or action stops with exit 3, the last good latest.pt kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from reparam_apps import experiment as ex

from .callbacks import Callback, CheckpointCallback, EvalCallback
from .config import SACConfig, env_table
from .envs import make_vector_env
from .multi_cli import group_name, train_group
from .sac import SAC

__all__ = ["SACTrainConfig", "RunRecorder", "main", "entry", "METRIC_KEYS"]

METRIC_KEYS = ("step", "episodes", "episode_return", "episode_length", "critic_loss", "actor_loss", "alpha",
               "entropy", "updates")  # metrics.csv: deterministic; the wall-clock keys go to speed.csv
SPEED_KEYS = ("step", "steps_per_s", "time_s")


@dataclass
class SACTrainConfig(SACConfig):
    """SACConfig and the evaluation schedule of a training run."""

    eval_every: int | None = field(default=None, metadata={"shown_default": "total_steps/10"})
    """Environment steps between deterministic evaluations and checkpoints (latest.pt; best.pt when the
    evaluation is the best so far)."""
    eval_episodes: int = 10
    """Episodes per deterministic evaluation (reset with seeds 10000, 10001, ...)."""
    num_seeds: int = 1
    """Independent agents trained side by side in this process, seeds seed, seed+1, ... (each its own env, buffer,
    optimizer and temperature; their gradient steps run as one graph): a folder per seed (seed_<s>/) under the
    group's, which holds the statistics across seeds (mean, standard error, interquartile mean) and their curve."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_every is None:  # resolved once, so a resume with more --total-steps keeps the schedule
            self.eval_every = max(1, self.total_steps // 10)
        for name in ("eval_every", "eval_episodes", "num_seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def run_name(config: SACTrainConfig) -> str:
    """<env>_s<seed>, or <env>_s<first>-<last> for a group of seeds."""
    return group_name(config) if getattr(config, "num_seeds", 1) > 1 else f"{config.env_id}_s{config.seed}"


class RunRecorder(Callback):
    """The run folder's side of training: metrics.csv and speed.csv rows, status lines, evals.csv and the
    learning curve, checkpoints through ``run.save_checkpoint``, and stopping at a Ctrl-C."""

    def __init__(self, run: ex.Run, bar: ex.Progress):
        self.run, self.bar = run, bar
        self.evaluation: EvalCallback | None = None  # its state goes into every checkpoint

    def on_step(self, model: SAC) -> bool | None:
        return False if self.run.stop_requested else None

    def on_log(self, model: SAC, metrics: dict[str, float]) -> None:
        self.run.log({k: metrics[k] for k in METRIC_KEYS})
        self.run.log({k: metrics[k] for k in SPEED_KEYS}, "speed.csv")
        self.bar.status(**{"return": metrics["episode_return"], "critic_loss": metrics["critic_loss"],
                           "alpha": metrics["alpha"]})

    def on_eval(self, row: dict[str, float]) -> None:
        self.run.log(row, "evals.csv")
        self.bar.log(f"evaluation at step {row['step']}: return {row['eval_mean']:.1f} +- {row['eval_std']:.1f}")
        plot_learning_curve(self.run, self.run.config.env_id)
        self.run.report(row["step"], row)  # to reparam-tune's pruner, if it runs this run (else a no-op)

    def save_checkpoint(self, model: SAC) -> None:
        extra = {"eval": self.evaluation.state_dict()} if self.evaluation is not None else {}
        self.run.save_checkpoint({**model.checkpoint_state(), **extra}, "sac", model.num_timesteps,
                                 check=model.networks())


def plot_learning_curve(run: ex.Run, env_id: str) -> None:
    """learning_curve.png: the logged windows' mean training return and the evaluations (mean +- std)."""
    rows = [r for r in run.metrics("metrics.csv").rows() if r.get("episode_return") not in ("", "nan", None)]
    evals = run.metrics("evals.csv").rows()
    curves, bands = {}, {}
    if rows:
        curves["training episodes (window mean)"] = ([float(r["step"]) for r in rows],
                                                     [float(r["episode_return"]) for r in rows])
    if evals:
        mean = np.array([float(r["eval_mean"]) for r in evals])
        std = np.array([float(r["eval_std"]) for r in evals])
        curves["deterministic evaluation"] = ([float(r["step"]) for r in evals], mean.tolist())
        bands["deterministic evaluation"] = ((mean - std).tolist(), (mean + std).tolist())
    if curves:
        ex.plot_curves(run.file("learning_curve.png"), curves, "environment steps", "episode return",
                       title=f"SAC on {env_id}", bands=bands)


def _kept_message(err: ex.DivergenceError, run: ex.Run) -> str:
    text = str(err)
    if "is kept" in text:
        return text
    latest = run.checkpoint_path
    kept = latest if latest.is_file() else ex.previous_path(latest)
    return f"{text}; " + (f"the last good checkpoint {kept} is kept" if kept.is_file() else "no checkpoint was saved")


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) one SAC run; returns the exit code (0, or 130 after a saved Ctrl-C)."""
    cli = ex.parse_cli(SACTrainConfig, argv, description=__doc__, log_every=1000,
                       epilog="Per-env defaults (under the flags you give):\n" + env_table())
    envs: list | None = None
    if not cli.options.resume:
        # The training envs are built once, here, before start_or_resume writes anything: a bad --env leaves
        # no run folder behind. (start_or_resume validates the same typed values again; that is pure and cheap.)
        typed = ex.build_config(SACTrainConfig, cli.given)
        envs = [make_vector_env(typed.env_id, typed.num_envs, typed.vector_env) for _ in range(typed.num_seeds)]
    try:
        run = ex.start_or_resume("sac", cli, name=run_name)
    except BaseException:
        for e in envs or []:
            e.close()
        raise
    cfg: SACTrainConfig = run.config
    if cfg.num_seeds > 1:
        return train_group(run, envs)
    envs = envs[0] if envs else None
    state = run.load_checkpoint("sac")
    if state is not None:
        model = SAC.from_checkpoint(state, cfg, source=run.checkpoint_path)
        run.rewind(state["step"])
    else:
        model = SAC(cfg, vec_env=envs)
    t0 = time.perf_counter()
    bar = run.progress(cfg.total_steps, f"SAC {cfg.env_id}", initial=model.num_timesteps)
    recorder = RunRecorder(run, bar)
    evaluation = EvalCallback(cfg.env_id, cfg.eval_every, cfg.eval_episodes, best_model_path=run.file("best.pt"),
                              on_eval=recorder.on_eval)
    if state is not None and "eval" in state:
        evaluation.load_state_dict(state["eval"])
    recorder.evaluation = evaluation
    checkpoints = CheckpointCallback(cfg.eval_every, save_fn=recorder.save_checkpoint)
    try:
        with run.interruptible():
            model.learn(cfg.total_steps, callback=[recorder, evaluation, checkpoints],
                        log_every=run.options.log_every, progress_bar=bar)
    except ex.DivergenceError as err:
        raise ex.DivergenceError(_kept_message(err, run)) from None
    finally:
        bar.close()
        evaluation.close()
        model.close()
    if run.stop_requested:
        return run.interrupted(f"step {model.num_timesteps}")
    plot_learning_curve(run, cfg.env_id)
    last = run.metrics("evals.csv").rows()[-1]
    run.write_summary({"env_id": cfg.env_id, "seed": cfg.seed, "steps": model.num_timesteps,
                       "episodes": model.num_episodes, "updates": model.num_updates,
                       "eval_mean": float(last["eval_mean"]), "eval_std": float(last["eval_std"]),
                       "best_eval_mean": evaluation.best_mean, "wall_s_this_session": time.perf_counter() - t0,
                       "run_folder": str(run.path)})
    run.close()
    print(f"{cfg.env_id}: step {model.num_timesteps}, eval return {float(last['eval_mean']):.1f} "
          f"+- {float(last['eval_std']):.1f} (best {evaluation.best_mean:.1f}); run folder {run.path}")
    return 0


def entry() -> None:
    """Console script ``reparam-sac``."""
    ex.run_cli(main)


if __name__ == "__main__":
    entry()
