"""Training callbacks for ``SAC.learn`` in the style of stable-baselines3: hooks at the start, after every
environment step, at every logged window and at the end, and three ready-made ones (evaluation with the
best model kept, periodic checkpoints, stopping at a return).

A plain function ``f(model, metrics) -> bool | None`` is accepted wherever a callback is: it runs at every
logged window and returning False stops training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from reparam_apps import experiment as ex

from .envs import make_env
from .evaluation import evaluate_policy

if TYPE_CHECKING:
    from .sac import SAC

__all__ = ["Callback", "CallbackList", "FunctionCallback", "EvalCallback", "CheckpointCallback", "StopOnReturn",
           "as_callback"]


class Callback:
    """Base class: override the hooks you need. ``on_step`` and ``on_log`` stop training by returning False.

    Calling a callback, ``cb(model, metrics)``, is ``on_log`` (the form of a plain function callback).
    """

    def on_training_start(self, model: SAC, total_steps: int) -> None:
        """Before the first step of ``learn`` (``total_steps``: the step count ``learn`` trains to)."""

    def on_step(self, model: SAC) -> bool | None:
        """After every environment step (and its gradient steps and log window, if any); keep it cheap."""
        return None

    def on_log(self, model: SAC, metrics: dict[str, float]) -> bool | None:
        """Every ``log_every`` steps with the window's metrics (see ``SAC.learn``)."""
        return None

    def on_training_end(self, model: SAC, interrupted: bool) -> None:
        """When ``learn`` returns; ``interrupted``: stopped by ``on_step`` or ``request_stop``, not by reaching
        its step count or by ``on_log``. Not called when training raised (e.g. a ``DivergenceError``)."""

    def __call__(self, model: SAC, metrics: dict[str, float]) -> bool | None:
        return self.on_log(model, metrics)


class FunctionCallback(Callback):
    """A function ``f(model, metrics) -> bool | None`` run at every logged window."""

    def __init__(self, fn: Callable[[Any, dict[str, float]], bool | None]):
        self.fn = fn

    def on_log(self, model: SAC, metrics: dict[str, float]) -> bool | None:
        return self.fn(model, metrics)


class CallbackList(Callback):
    """Several callbacks in order; training stops if any of them asks to (the rest of that hook still runs)."""

    def __init__(self, callbacks: Iterable[Any]):
        self.callbacks = [c for c in (as_callback(c) for c in callbacks) if c is not None]
        # Only the callbacks that override on_step are called every step.
        self._stepping = [c for c in self.callbacks if type(c).on_step is not Callback.on_step]

    def on_training_start(self, model: SAC, total_steps: int) -> None:
        for c in self.callbacks:
            c.on_training_start(model, total_steps)

    def on_step(self, model: SAC) -> bool | None:
        results = [c.on_step(model) for c in self._stepping]
        return False if False in results else None

    def on_log(self, model: SAC, metrics: dict[str, float]) -> bool | None:
        results = [c.on_log(model, metrics) for c in self.callbacks]
        return False if False in results else None

    def on_training_end(self, model: SAC, interrupted: bool) -> None:
        for c in self.callbacks:
            c.on_training_end(model, interrupted)


def as_callback(callback: Any) -> Callback | None:
    """None, a ``Callback``, a function ``f(model, metrics)`` or a list of these, as one ``Callback``."""
    if callback is None or isinstance(callback, Callback):
        return callback
    if isinstance(callback, (list, tuple)):
        return CallbackList(callback)
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(f"callback must be a Callback, a function (model, metrics) or a list, got {type(callback)}")


def _due(step: int, last: int, every: int) -> bool:
    """A multiple of ``every`` was passed since ``last`` (logged windows need not line up with ``every``)."""
    return step // every > last // every


class StopOnReturn(Callback):
    """Stop training once the mean episode return of a logged window reaches ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_log(self, model: SAC, metrics: Mapping[str, float]) -> bool:
        ret = metrics.get("episode_return", float("nan"))
        return not (ret == ret and ret >= self.threshold)


class EvalCallback(Callback):
    """Deterministic evaluations every ``eval_every`` steps (at the first logged window past each multiple) and
    at the end of training; the best model so far is saved to ``best_model_path`` (without its buffer).

    Args:
        eval_env: an env instance, or an id (built once, here).
        eval_every: environment steps between evaluations.
        n_eval_episodes: episodes per evaluation, reset with seeds ``seed``, ``seed + 1``, ...
        best_model_path: where to save the best model (None: not saved).
        on_eval: called with each evaluation's row {step, eval_mean, eval_std, eval_min, eval_max}.
    """

    def __init__(self, eval_env: gym.Env | str, eval_every: int, n_eval_episodes: int = 10, seed: int = 10_000,
                 best_model_path: str | Path | None = None,
                 on_eval: Callable[[dict[str, float]], None] | None = None):
        if eval_every <= 0 or n_eval_episodes <= 0:
            raise ValueError(f"eval_every and n_eval_episodes must be positive, got {eval_every}, {n_eval_episodes}")
        self._own_env = isinstance(eval_env, str)
        self.eval_env = make_env(eval_env) if isinstance(eval_env, str) else eval_env
        self.eval_every, self.n_eval_episodes, self.seed = eval_every, n_eval_episodes, seed
        self.best_model_path, self.on_eval = best_model_path, on_eval
        self.best_mean = -math.inf
        self.last_step: int | None = None  # step of the last evaluation
        self.evaluations: list[dict[str, float]] = []

    def on_training_start(self, model: SAC, total_steps: int) -> None:
        if self.last_step is None:
            self.last_step = model.num_timesteps

    def on_log(self, model: SAC, metrics: dict[str, float]) -> None:
        if _due(model.num_timesteps, self.last_step or 0, self.eval_every):
            self.evaluate(model)

    def on_training_end(self, model: SAC, interrupted: bool) -> None:
        if not interrupted and self.last_step != model.num_timesteps:
            self.evaluate(model)

    def evaluate(self, model: SAC) -> dict[str, float]:
        """Evaluate now; returns the row passed to ``on_eval``."""
        step = model.num_timesteps
        ex.check_finite_parameters(model.networks(), step)  # a NaN policy never acts in the eval env
        returns = evaluate_policy(model, self.eval_env, self.n_eval_episodes, seed=self.seed)
        row = {"step": step, "eval_mean": float(returns.mean()), "eval_std": float(returns.std()),
               "eval_min": float(returns.min()), "eval_max": float(returns.max())}
        self.evaluations.append(row)
        self.last_step = step
        if row["eval_mean"] > self.best_mean:
            self.best_mean = row["eval_mean"]
            if self.best_model_path is not None:
                model.save(self.best_model_path, include_buffer=False)
        if self.on_eval is not None:
            self.on_eval(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same schedule and best model."""
        return {"best_mean": self.best_mean, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_mean, self.last_step = float(state["best_mean"]), state["last_step"]

    def close(self) -> None:
        if self._own_env:
            self.eval_env.close()


class CheckpointCallback(Callback):
    """Save a full checkpoint (networks, optimiser, buffer, RNG and env states) every ``save_every`` steps (at the
    first logged window past each multiple) and when training ends or is interrupted.

    Args:
        save_every: environment steps between checkpoints.
        path: the file; the previous good one is kept beside it (``latest.previous.pt``), and a model with NaN
            or inf parameters is never saved (``DivergenceError``).
        save_fn: instead of ``path``, a function ``save_fn(model)`` that writes the checkpoint.
    """

    def __init__(self, save_every: int, path: str | Path | None = None,
                 save_fn: Callable[[Any], None] | None = None):
        if save_every <= 0 or (path is None) == (save_fn is None):
            raise ValueError("CheckpointCallback needs a positive save_every and exactly one of path and save_fn")
        self.save_every, self.path, self.save_fn = save_every, path, save_fn
        self.last_step: int | None = None

    def on_training_start(self, model: SAC, total_steps: int) -> None:
        if self.last_step is None:
            self.last_step = model.num_timesteps

    def on_log(self, model: SAC, metrics: dict[str, float]) -> None:
        if _due(model.num_timesteps, self.last_step or 0, self.save_every):
            self.save(model)

    def on_training_end(self, model: SAC, interrupted: bool) -> None:
        if self.last_step != model.num_timesteps:
            self.save(model)

    def save(self, model: SAC) -> None:
        if self.save_fn is not None:
            self.save_fn(model)
        else:
            path = Path(self.path)
            kept = path if path.is_file() else None
            ex.check_finite_parameters(model.networks(), model.num_timesteps, checkpoint=kept)
            model.save(path, keep_previous=True)
        self.last_step = model.num_timesteps
