"""K independent SAC agents (seeds seed, seed + 1, ..., seed + K - 1) trained in ONE process: ``SACGroup``.

Each agent is a full ``SAC`` (its own env, replay buffer, optimizer state, temperature, numpy generator) and
learns exactly as a single run of its seed would, up to float summation order: the group keeps one torch
generator per agent, holding the stream that agent's single run would draw from the global generator (acting
noise, then each update's two noise draws), and steps the agents in the single run's order. What is shared is
the work: one ``StackedUpdate`` call runs the gradient steps of all K agents as one compiled graph (their
parameters stacked on a leading K axis), so the fixed costs of a step (dispatch, guards, the Python loop) are
paid once per K agents. Configs that the fused step does not support run each agent's eager ``_update``.

    group = SACGroup(SACConfig.for_env("Pendulum-v1", seed=0), num_seeds=8)
    group.learn(20_000)
    returns = [evaluate_policy(agent, "Pendulum-v1", 10).mean() for agent in group.agents]
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from reparam_apps import experiment as ex

from . import persistence
from .callbacks import Callback, as_callback
from .config import SACConfig
from .sac import SAC
from .update import StackedUpdate

__all__ = ["SACGroup", "seed_stats"]


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def seed_stats(values: Sequence[float]) -> dict[str, float]:
    """Across seeds: mean, standard error of the mean (sample std / sqrt(K); 0 for K = 1), interquartile mean
    (rliable's convention, Agarwal et al. 2021: the mean after dropping floor(K/4) values at each end, i.e.
    scipy.stats.trim_mean(values, 0.25); the plain mean for K < 4), min and max."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    k, cut = len(x), len(x) // 4
    se = float(x.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0
    return {"mean": float(x.mean()), "se": se, "iqm": float(x[cut:k - cut].mean()), "min": float(x[0]),
            "max": float(x[-1])}


class SACGroup:
    """K ``SAC`` agents of one config, seeds ``config.seed + k``, trained side by side in one process.

    Args:
        config: the common config (its ``seed`` is the first agent's).
        num_seeds: K.
        vec_envs: K already built training envs (else each agent makes its own).
    """

    def __init__(self, config: SACConfig, num_seeds: int, vec_envs: Sequence[gym.vector.VectorEnv] | None = None):
        if not isinstance(num_seeds, int) or num_seeds < 1:
            raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}")
        if vec_envs is not None and len(vec_envs) != num_seeds:
            raise ValueError(f"{len(vec_envs)} envs for {num_seeds} agents")
        self.config = config
        self.agents: list[SAC] = []
        states = []
        for k in range(num_seeds):
            agent = SAC(config.replace(seed=config.seed + k), vec_env=None if vec_envs is None else vec_envs[k])
            self.agents.append(agent)
            states.append(_rng_state(agent.device))  # right after its seeding and initialisation
        self._setup(states)

    def _setup(self, rng_states: Sequence[Tensor]) -> None:
        self.device = self.agents[0].device
        self.generators: list[torch.Generator] = []  # agent k's torch stream, as its single run would hold it
        for state in rng_states:
            g = torch.Generator(device=self.device)
            g.set_state(state)
            self.generators.append(g)
        self._fused: StackedUpdate | None = None
        self._fused_state = "unused"
        self._stop_requested = False

    @property
    def num_timesteps(self) -> int:
        return self.agents[0].num_timesteps

    @property
    def seeds(self) -> list[int]:
        return [a.config.seed for a in self.agents]

    def request_stop(self) -> None:
        self._stop_requested = True

    @contextlib.contextmanager
    def _stream(self, k: int) -> Iterator[None]:
        """Agent k's torch stream as the global generator (what its single run draws from), then stored back."""
        _set_rng_state(self.device, self.generators[k].get_state())
        try:
            yield
        finally:
            self.generators[k].set_state(_rng_state(self.device))

    # -- a gradient step of every agent ----------------------------------------------------------------
    def _train_step(self) -> Tensor:
        """(K, 4) stats of one gradient step of each agent: fused when the agents' config allows (see
        ``SAC.uses_compiled_update``), else each agent's eager ``_update`` on its own stream."""
        first = self.agents[0]
        if self._fused_state == "unused":
            self._fused_state = "eager"
            if first.uses_compiled_update():
                self._fused = StackedUpdate(self.agents, compile=True, generators=self.generators)
                self._fused_state = "compiling"
        if self._fused is not None:
            try:
                stats = self._fused.step()
                self._fused_state = "running"
                return stats
            except Exception as err:  # the first call compiles (see SAC._train_step)
                if self._fused_state == "running":
                    raise
                self._fused, self._fused_state = None, "failed"
                print(f"note: torch.compile failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
                      "continuing with the eager update", file=sys.stderr)
        rows = []
        for k, agent in enumerate(self.agents):
            with self._stream(k):
                rows.append(agent._update(*agent.buffer.sample(agent.config.batch_size, agent.rng, agent.device)))
        return torch.stack(rows)

    # -- the training loop ----------------------------------------------------------------------------
    def learn(self, total_steps: int | None = None, callbacks: Sequence[Any] | None = None,
              group_callback: Callback | Any = None, log_every: int = 1000, progress_bar: Any = None) -> SACGroup:
        """Train every agent to ``total_steps`` (default: the config's), as ``SAC.learn`` would one by one.

        Args:
            callbacks: K callbacks (or None), agent k's called as in ``SAC.learn`` with agent k and its metrics.
            group_callback: called with the group: ``on_log(group, [metrics of each agent])`` every ``log_every``
                steps and ``on_step(group)`` after every step (False from either stops every agent).
            progress_bar: anything with ``update(n)``; advanced by one agent's steps.
        """
        cfg = self.config
        total = cfg.total_steps if total_steps is None else int(total_steps)
        if total <= 0 or log_every <= 0:
            raise ValueError(f"total_steps and log_every must be positive, got {total} and {log_every}")
        cbs = [as_callback(c) for c in (callbacks or [None] * len(self.agents))]
        if len(cbs) != len(self.agents):
            raise ValueError(f"{len(cbs)} callbacks for {len(self.agents)} agents")
        gcb = as_callback(group_callback)
        for agent in self.agents:
            if agent._obs is None:
                agent._obs, _ = agent.envs.reset(seed=agent.config.seed)
            agent._window["t0"], agent._window["steps"] = time.perf_counter(), 0
        self._stop_requested = False
        step = self.num_timesteps
        next_log = (step // log_every + 1) * log_every
        vector_steps = step // cfg.num_envs
        interrupted = False
        for agent, cb in zip(self.agents, cbs, strict=True):
            if cb is not None:
                cb.on_training_start(agent, total)
        if gcb is not None:
            gcb.on_training_start(self, total)
        while self.num_timesteps < total:
            for k, agent in enumerate(self.agents):
                with self._stream(k):
                    agent._env_step()
            vector_steps += 1
            if self.num_timesteps > cfg.learning_starts and vector_steps % cfg.train_freq == 0:
                for _ in range(cfg.gradient_steps):
                    stats = self._train_step()
                    for k, agent in enumerate(self.agents):
                        w = agent._window
                        w["stats"] = stats[k] if w["stats"] is None else w["stats"] + stats[k]
                        w["updates"] += 1
            if progress_bar is not None:
                progress_bar.update(cfg.num_envs)
            if self.num_timesteps >= next_log or self.num_timesteps >= total:
                next_log = (self.num_timesteps // log_every + 1) * log_every
                rows = [agent._flush_window() for agent in self.agents]
                stop = [cb.on_log(agent, r) for agent, cb, r in zip(self.agents, cbs, rows, strict=True)
                        if cb is not None]
                if gcb is not None:
                    stop.append(gcb.on_log(self, rows))
                if False in stop:
                    break
            stop = [cb.on_step(agent) for agent, cb in zip(self.agents, cbs, strict=True) if cb is not None]
            if gcb is not None:
                stop.append(gcb.on_step(self))
            if self._stop_requested or False in stop:
                interrupted = True
                break
        for agent, cb in zip(self.agents, cbs, strict=True):
            if cb is not None:
                cb.on_training_end(agent, interrupted)
        if gcb is not None:
            gcb.on_training_end(self, interrupted)
        return self

    # -- checkpoints ---------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Every agent's full ``checkpoint_state`` and its torch stream."""
        return {"group": {"num_seeds": len(self.agents), "rng_states": [g.get_state() for g in self.generators]},
                "agents": [agent.checkpoint_state() for agent in self.agents]}

    def save(self, path: str | Path) -> None:
        ex.save_checkpoint(self.checkpoint_state(), path, "sac")

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], config: SACConfig | None = None,
                        source: Any = "the checkpoint") -> SACGroup:
        """The group ``checkpoint_state`` captured; ``config`` may differ in MAY_CHANGE_ON_RESUME fields."""
        if "group" not in ckpt:
            raise ex.CheckpointError(f"{source} holds a single SAC run, not a group of seeds")
        states = ckpt["agents"]
        config = config if config is not None else persistence.saved_config(states[0], source)
        group = cls.__new__(cls)
        group.config, group.agents = config, []
        for k, state in enumerate(states):
            group.agents.append(SAC.from_checkpoint(state, config.replace(seed=config.seed + k), source=source))
        group._setup(ckpt["group"]["rng_states"])
        return group

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> SACGroup:
        """A group saved by ``save``; ``overrides`` change config values for further training."""
        ckpt = ex.load_checkpoint(path, "sac")
        if "group" not in ckpt:
            raise ex.CheckpointError(f"{path} holds a single SAC run, not a group of seeds: use SAC.load")
        config = persistence.saved_config(ckpt["agents"][0], path).replace(**overrides)
        return cls.from_checkpoint(ckpt, config, source=path)

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
