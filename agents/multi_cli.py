"""``reparam-sac --num-seeds K``: K seeds trained in one process (``agents.multi.SACGroup``), on the experiment spine.

The group's folder (runs/sac/<env>_s<seed>-<seed+K-1>_<time> unless --out) holds config.json, latest.pt (the
whole group: every agent's buffer, optimizer, env and RNG states; --resume continues it), evals.csv (per
evaluation step: mean, standard error, interquartile mean, min and max across seeds, and each seed's value),
speed.csv (env-steps/s summed over the seeds), log.txt, learning_curve.png (the mean across seeds with its
standard-error band, the IQM, each seed's line) and summary.json. Each seed has the folder a single run would
have, seed_<s>/ (metrics.csv, speed.csv, evals.csv, best.pt, learning_curve.png, summary.json), so
reparam-enjoy-sac and other tools read a seed like a run.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from reparam_apps import experiment as ex

from .callbacks import Callback, CheckpointCallback, EvalCallback
from .multi import SACGroup, seed_stats

__all__ = ["train_group", "group_name", "GroupRecorder"]


def group_name(config: Any) -> str:
    return f"{config.env_id}_s{config.seed}-{config.seed + config.num_seeds - 1}"


class GroupRecorder(Callback):
    """The group folder's side: after each evaluation round (every seed evaluated at one step) a row of
    statistics across seeds and the learning curve; aggregate speed; Ctrl-C; the group checkpoint."""

    def __init__(self, run: ex.Run, bar: ex.Progress, evaluations: list[EvalCallback], seeds: list[int]):
        self.run, self.bar, self.evaluations, self.seeds = run, bar, evaluations, seeds
        self.last_eval_step = max([e.last_step or 0 for e in evaluations] + [0])

    def on_step(self, group: SACGroup) -> bool | None:
        return False if self.run.stop_requested else None

    def on_log(self, group: SACGroup, rows: list[dict[str, float]]) -> None:
        step = group.num_timesteps
        self.run.log({"step": step, "steps_per_s": sum(r["steps_per_s"] for r in rows),
                      "time_s": rows[0]["time_s"]}, "speed.csv")
        returns = [r["episode_return"] for r in rows if r["episode_return"] == r["episode_return"]]
        if returns:
            self.bar.status(**{"return": float(np.mean(returns)), "seeds": len(rows)})
        self.evaluated(step)

    def on_training_end(self, group: SACGroup, interrupted: bool) -> None:
        self.evaluated(group.num_timesteps)

    def evaluated(self, step: int) -> None:
        """Write the across-seeds row once every seed has evaluated at ``step``."""
        if step == self.last_eval_step or not all(e.evaluations and e.evaluations[-1]["step"] == step
                                                  for e in self.evaluations):
            return
        self.last_eval_step = step
        means = [e.evaluations[-1]["eval_mean"] for e in self.evaluations]
        stats = seed_stats(means)
        seeds = {f"seed_{s}": m for s, m in zip(self.seeds, means, strict=True)}
        self.run.log({"step": step, **{f"eval_{k}": v for k, v in stats.items()}, **seeds}, "evals.csv")
        self.bar.log(f"evaluation at step {step}: mean return {stats['mean']:.1f} +- {stats['se']:.1f} (SE over "
                     f"{len(means)} seeds), IQM {stats['iqm']:.1f}")
        plot_group_curve(self.run)
        self.run.report(step, {"step": step, "eval_mean": stats["mean"], "eval_iqm": stats["iqm"]})

    def save_checkpoint(self, group: SACGroup) -> None:
        state = {**group.checkpoint_state(), "eval": [e.state_dict() for e in self.evaluations]}
        self.run.save_checkpoint(state, "sac", group.num_timesteps,
                                 check=[t for a in group.agents for t in a.networks()])


def plot_group_curve(run: ex.Run) -> None:
    """learning_curve.png: the evaluation mean across seeds (band: +- one standard error), the IQM, each seed."""
    rows = run.metrics("evals.csv").rows()
    if not rows:
        return
    steps = [float(r["step"]) for r in rows]
    mean = np.array([float(r["eval_mean"]) for r in rows])
    se = np.array([float(r["eval_se"]) for r in rows])
    curves = {"mean over seeds (band: +- 1 SE)": (steps, mean.tolist()),
              "interquartile mean": (steps, [float(r["eval_iqm"]) for r in rows])}
    for col in [c for c in rows[0] if c.startswith("seed_")]:
        curves[col.replace("_", " ")] = (steps, [float(r[col]) for r in rows])
    ex.plot_curves(run.file("learning_curve.png"), curves, "environment steps", "deterministic evaluation return",
                   title=f"SAC on {run.config.env_id}: {run.config.num_seeds} seeds",
                   bands={"mean over seeds (band: +- 1 SE)": ((mean - se).tolist(), (mean + se).tolist())})


def train_group(run: ex.Run, envs: list[gym.vector.VectorEnv] | None) -> int:
    """Train (or resume) the group of ``run.config.num_seeds`` seeds in ``run``'s folder; the exit code."""
    from .cli import RunRecorder, _kept_message, plot_learning_curve  # the single run's pieces

    cfg = run.config
    state = run.load_checkpoint("sac")
    if state is not None:
        if "group" not in state:
            raise ex.CheckpointError(f"{run.checkpoint_path} holds a single run, not a group of seeds")
        group = SACGroup.from_checkpoint(state, cfg, source=run.checkpoint_path)
        run.rewind(state["step"])
    else:
        group = SACGroup(cfg, cfg.num_seeds, vec_envs=envs)
    seed_runs = []
    for agent in group.agents:
        seed_run = ex.Run(run.path / f"seed_{agent.config.seed}", agent.config, run.options, domain="sac",
                          resumed=run.resumed, prog=run.prog)
        seed_run.path.mkdir(exist_ok=True)
        if state is not None:
            seed_run.rewind(state["step"])
        seed_runs.append(seed_run)
    t0 = time.perf_counter()
    bar = run.progress(cfg.total_steps, f"SAC {cfg.env_id} x{cfg.num_seeds} seeds", initial=group.num_timesteps)
    recorders, evaluations = [], []
    for k, seed_run in enumerate(seed_runs):
        recorder = RunRecorder(seed_run, _Quiet())
        evaluation = EvalCallback(cfg.env_id, cfg.eval_every, cfg.eval_episodes,
                                  best_model_path=seed_run.file("best.pt"), on_eval=recorder.on_eval)
        if state is not None:
            evaluation.load_state_dict(state["eval"][k])
        recorder.evaluation = evaluation
        recorders.append(recorder)
        evaluations.append(evaluation)
    group_rec = GroupRecorder(run, bar, evaluations, group.seeds)
    checkpoints = CheckpointCallback(cfg.eval_every, save_fn=group_rec.save_checkpoint)
    try:
        with run.interruptible():
            group.learn(cfg.total_steps, callbacks=[[r, e] for r, e in zip(recorders, evaluations, strict=True)],
                        group_callback=[group_rec, checkpoints], log_every=run.options.log_every, progress_bar=bar)
    except ex.DivergenceError as err:
        raise ex.DivergenceError(_kept_message(err, run)) from None
    finally:
        bar.close()
        for e in evaluations:
            e.close()
        group.close()
    if run.stop_requested:
        return run.interrupted(f"step {group.num_timesteps}")
    finals = []
    for agent, seed_run, evaluation in zip(group.agents, seed_runs, evaluations, strict=True):
        plot_learning_curve(seed_run, cfg.env_id)
        last = seed_run.metrics("evals.csv").rows()[-1]
        finals.append(float(last["eval_mean"]))
        seed_run.write_summary({"env_id": cfg.env_id, "seed": agent.config.seed, "steps": agent.num_timesteps,
                                "episodes": agent.num_episodes, "updates": agent.num_updates,
                                "eval_mean": finals[-1], "eval_std": float(last["eval_std"]),
                                "best_eval_mean": evaluation.best_mean, "run_folder": str(seed_run.path)})
        seed_run.close()
    stats = seed_stats(finals)
    per_seed = dict(zip(map(str, group.seeds), finals, strict=True))
    run.write_summary({"env_id": cfg.env_id, "seeds": group.seeds, "steps": group.num_timesteps,
                       "final_eval": stats, "final_eval_per_seed": per_seed,
                       "wall_s_this_session": time.perf_counter() - t0,
                       "run_folder": str(run.path)})
    plot_group_curve(run)
    run.close()
    print(f"{cfg.env_id}: {cfg.num_seeds} seeds, step {group.num_timesteps}, final eval return "
          f"{stats['mean']:.1f} +- {stats['se']:.1f} (SE), IQM {stats['iqm']:.1f}; run folder {run.path}")
    return 0


class _Quiet:
    """A seed's RunRecorder reports through the group's bar instead of its own."""

    def status(self, **values: Any) -> None:
        pass

    def log(self, text: str) -> None:
        pass
