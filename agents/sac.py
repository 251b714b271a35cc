"""Soft Actor-Critic (Haarnoja et al. 2018, "SAC: Algorithms and Applications", auto-entropy version).

The ``SAC`` class, read top to bottom: construction (config, envs, networks, one optimiser) ->
``compute_target`` and ``_update`` (the whole algorithm) -> acting (``predict``) -> the training loop
(``learn``) -> checkpoints (``save``, ``load``). The parts live beside it: ``config`` (hyperparameters and
per-env defaults), ``envs``, ``buffer``, ``networks`` (actor, critic ensemble, Polyak averaging),
``callbacks`` and ``evaluation``; ``cli`` and ``enjoy`` are the command-line entry points.

Equations (numbers as in Haarnoja et al. 2018b, arXiv:1812.05905):
  critic  (eq. 5-6): J_Q = 1/2 E[(Q_j(s, a) - y)^2],  y = r + gamma (1 - d) (min_j Q'_j(s', a') - alpha log pi(a'|s'))
  actor   (eq. 7/11): J_pi = E[alpha log pi(f(eps; s)|s) - min_j Q_j(s, f(eps; s))],  a = f(eps; s) reparameterized
  alpha   (eq. 18): J_alpha = E[-alpha (log pi(a|s) + H_target)]  (optimised in log alpha, like SB3/CleanRL)
  targets: theta' <- tau theta + (1 - tau) theta'  (Polyak averaging)

``d`` is *termination* only: a time-limit truncation still bootstraps (the state is not terminal).
Shapes: B = batch size, n = number of critics, O = observation dim, A = action dim.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from reparam_apps import experiment as ex
from reparam_apps import seed_everything, select_device, set_threads
from reparam_apps.experiment.guard import LIKELY_CAUSE

from . import persistence
from .buffer import ReplayBuffer
from .callbacks import Callback, as_callback
from .config import ENV_DEFAULTS, SACConfig, config_for
from .envs import check_spaces, env_id_of, make_vector_env, wrap_env
from .networks import Actor, CriticEnsemble, polyak_update
from .update import StackedUpdate, unsupported_reason

__all__ = ["SAC", "polyak_update", "ENV_DEFAULTS", "SACConfig", "config_for", "COMPILE_MIN_UPDATES",
           "gradient_steps_of"]

STAT_NAMES = ("critic_loss", "actor_loss", "alpha", "entropy")  # what _update returns, in this order
# The compiled step pays from about this many gradient steps: compiling costs 10-60 s (a few s from inductor's
# cache) and saves ~3-5 ms per 2x256 update (see docs/benchmarks.md).
COMPILE_MIN_UPDATES = 10_000


def gradient_steps_of(cfg: SACConfig) -> int:
    """Gradient steps of a whole run of ``cfg`` (the compile rule reads this, so a resumed run decides alike)."""
    vector_steps = max(0, cfg.total_steps - cfg.learning_starts) // cfg.num_envs
    return vector_steps // cfg.train_freq * cfg.gradient_steps


class SAC:
    """Soft Actor-Critic with an SB3-style API::

        model = SAC("Pendulum-v1", seed=0)          # per-env defaults + keywords; or SAC(gym_env_instance, ...)
        model = SAC(SACConfig.for_env("Pendulum-v1", seed=0))   # or a validated config (keywords override it)
        model.learn(20_000)
        action, _ = model.predict(obs, deterministic=True)
        model.save("sac.pt"); model = SAC.load("sac.pt")

    Args:
        env: an env id, a ``gymnasium.Env`` instance (num_envs 1) or a ``SACConfig``.
        vec_env: already built training envs (a SyncVectorEnv of the config's env, SAME_STEP autoreset).
        **overrides: ``SACConfig`` fields.
    """

    def __init__(self, env: str | gym.Env | SACConfig, *, vec_env: gym.vector.VectorEnv | None = None,
                 **overrides: Any):
        instance = None
        if isinstance(env, SACConfig):
            cfg = env.replace(**overrides)
        elif isinstance(env, str):
            cfg = config_for(env, **overrides)
        elif isinstance(env, gym.Env):
            instance, cfg = env, config_for(env_id_of(env), **overrides)
        else:
            raise ex.UserError(f"env must be a gymnasium env id, a gymnasium.Env or a SACConfig, got {type(env)}")
        self.config = cfg
        set_threads(cfg.threads)
        self.device = select_device(cfg.device)
        seed_everything(cfg.seed)
        if vec_env is not None:
            check_spaces(vec_env.single_observation_space, vec_env.single_action_space, cfg.env_id)
            if vec_env.num_envs != cfg.num_envs:
                raise ValueError(f"vec_env holds {vec_env.num_envs} envs, the config says num_envs={cfg.num_envs}")
            self.envs = vec_env
        elif instance is not None:
            if cfg.num_envs != 1:
                raise ValueError("num_envs > 1 needs an env id (each copy is made with gym.make)")
            self.envs = wrap_env(instance)
        else:
            self.envs = make_vector_env(cfg.env_id, cfg.num_envs, cfg.vector_env)
        space = self.envs.single_action_space
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.act_dim = int(space.shape[0])
        self.act_low, self.act_high = space.low.astype(np.float32), space.high.astype(np.float32)
        low = torch.as_tensor(self.act_low, device=self.device)
        high = torch.as_tensor(self.act_high, device=self.device)

        # Networks. The target critics are a frozen copy updated by Polyak averaging only.
        dev = self.device
        self.actor = Actor.from_config(cfg, self.obs_dim, self.act_dim, low, high).to(dev)
        self.critic = CriticEnsemble(cfg.n_critics, self.obs_dim, self.act_dim, cfg.hidden_sizes, low, high).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor([math.log(cfg.alpha or cfg.init_alpha)], device=dev,
                                      requires_grad=cfg.alpha is None)
        self.target_entropy = float(-self.act_dim if cfg.target_entropy is None else cfg.target_entropy)
        lr = cfg.learning_rate
        self.learn_alpha = cfg.alpha is None
        groups = [{"params": list(self.actor.parameters()), "lr": cfg.actor_lr or lr},
                  {"params": list(self.critic.parameters()), "lr": cfg.critic_lr or lr}]
        if self.learn_alpha:
            groups.append({"params": [self.log_alpha], "lr": cfg.alpha_lr or lr})
        if len({g["lr"] for g in groups}) == 1:  # one learning rate: one group, one fused kernel launch
            groups = [{"params": [p for g in groups for p in g["params"]], "lr": groups[0]["lr"]}]
        self.optimizer = _adam(groups)  # one optimizer, one step for actor, all critics and the temperature
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())

        self.buffer = ReplayBuffer(min(cfg.buffer_size, max(cfg.total_steps, cfg.batch_size)),
                                   self.obs_dim, self.act_dim, device=dev)  # on a GPU: kept there
        self.rng = np.random.default_rng(cfg.seed)  # random warm-up actions and batch indices
        # Rollout state (all of it goes into checkpoints, so a resumed run is the same run).
        self.num_timesteps = 0
        self.num_updates = 0
        self.num_episodes = 0
        self._obs: np.ndarray | None = None
        self._ep_return = np.zeros(cfg.num_envs)
        self._ep_length = np.zeros(cfg.num_envs, dtype=np.int64)
        self._window: dict[str, Any] = self._new_window()
        self.episode_returns: list[float] = []  # every finished training episode since construction / load
        self._stop_requested = False
        self._fused: StackedUpdate | None = None  # the compiled step, built at the first update that uses it
        self._fused_state = "unused"  # -> "running" after its first step, or "failed" (eager from then on)

    def uses_compiled_update(self) -> bool:
        """Whether ``learn`` runs the compiled step: ``config.compile``, a model it supports, and a run long enough
        to repay the compile time (``COMPILE_MIN_UPDATES`` gradient steps in the config's ``total_steps``)."""
        cfg = self.config
        return (cfg.compile and self._fused_state != "failed" and gradient_steps_of(cfg) >= COMPILE_MIN_UPDATES
                and unsupported_reason(self) is None)

    def _train_step(self) -> Tensor:
        """One gradient step on a fresh batch: the compiled step when ``uses_compiled_update``, else ``_update``."""
        if self._fused is None and self._fused_state == "unused":
            self._fused_state = "eager"
            if self.uses_compiled_update():
                self._fused, self._fused_state = StackedUpdate([self], compile=True), "compiling"
            elif self.config.compile and gradient_steps_of(self.config) >= COMPILE_MIN_UPDATES:
                print(f"note: eager update ({unsupported_reason(self)})", file=sys.stderr)
        if self._fused is not None:
            try:
                stats = self._fused.step()[0]
                self._fused_state = "running"
                return stats
            except Exception as err:  # the first call compiles: no C++ compiler, an unsupported build
                if self._fused_state == "running":
                    raise
                self._fused, self._fused_state = None, "failed"
                print(f"note: torch.compile failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
                      "continuing with the eager update", file=sys.stderr)
        return self._update(*self.buffer.sample(self.config.batch_size, self.rng, self.device))

    def networks(self) -> list[nn.Module | Tensor]:
        """Everything trained (checked for NaN/inf before a checkpoint or an evaluation)."""
        return [self.actor, self.critic, self.critic_target, self.log_alpha]

    # -- the algorithm -------------------------------------------------------------------------
    @torch.no_grad()
    def compute_target(self, rew: Tensor, next_obs: Tensor, term: Tensor, alpha: Tensor) -> Tensor:
        """Critic target (eq. 6): y = r + gamma (1 - terminated) (min_j Q'_j(s', a') - alpha log pi(a'|s')),
        a' ~ pi(.|s'). ``term`` is 1 only for a true termination; a truncated step bootstraps. Shape (B,)."""
        next_a, next_log_pi = self.actor.sample(next_obs)  # (B, A), (B,)
        q_next = self.critic_target(next_obs, next_a).min(dim=0).values  # (B,) min over critics
        return rew + self.config.gamma * (1.0 - term) * (q_next - alpha * next_log_pi)

    def _update(self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor, term: Tensor) -> Tensor:
        """One gradient step of SAC on a batch; returns detached stats [critic_loss, actor_loss, alpha, entropy].

        All three losses are built from the same (pre-update) networks and minimised by ONE backward pass
        and ONE fused Adam step, as in the original SAC implementation (softlearning), where the Q, policy
        and temperature updates run simultaneously. The losses do not share gradients: the target is
        computed without autograd, the actor loss sees the critic weights as constants, and the
        temperature loss sees log pi as a constant.
        """
        cfg = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            alpha = self.log_alpha.detach().exp()  # (1,)

            y = self.compute_target(rew, next_obs, term, alpha)  # (B,), no autograd

            # Critic loss (eq. 5): 1/2 sum_j mean_B (Q_j(s, a) - y)^2 (SB3's scaling), all critics at once
            q = self.critic(obs, act)  # (n, B)
            critic_loss = 0.5 * (q - y).square().mean(dim=1).sum()

            # Actor loss (eq. 7): E[alpha log pi(a|s) - min_j Q_j(s, a)], a = f(eps; s) reparameterized;
            # critic weights are constants here, only dQ/da flows back into the actor.
            a_pi, log_pi = self.actor.sample(obs)  # (B, A), (B,)
            q_pi = self.critic(obs, a_pi, detach_params=True).min(dim=0).values  # (B,)
            actor_loss = (alpha * log_pi - q_pi).mean()

            # Temperature (eq. 18): J(alpha) = E[-log alpha (log pi + H_target)]  (in log alpha, like SB3)
            loss = critic_loss + actor_loss
            if self.learn_alpha:
                loss = loss - (self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()  # actor, critics and log alpha: one fused Adam step, one lr per group

        # Target critics: theta' <- tau theta + (1 - tau) theta'
        polyak_update(self._critic_params, self._target_params, cfg.tau)
        self.num_updates += 1
        return torch.stack([critic_loss.detach(), actor_loss.detach(), alpha.squeeze(0), -log_pi.detach().mean()])

    # -- acting -------------------------------------------------------------------------------
    @torch.inference_mode()
    def _act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(-1, self.obs_dim)
        dist = self.actor.dist(obs_t)
        action = dist.mode if deterministic else dist.sample()
        return action.cpu().numpy()

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """SB3's signature: (action, None). One observation (O,) gives one action (A,); a batch (N, O) gives (N, A).
        Deterministic: the mode squash(mu); otherwise a sample from the policy."""
        obs = np.asarray(observation, dtype=np.float32)
        if obs.shape[-1:] != (self.obs_dim,) or obs.ndim > 2:
            raise ValueError(f"observation of shape {obs.shape}; expected ({self.obs_dim},) or (N, {self.obs_dim})")
        action = self._act(obs, deterministic)
        return (action[0] if obs.ndim == 1 else action), None

    # -- training loop ------------------------------------------------------------------------
    @staticmethod
    def _new_window() -> dict[str, Any]:
        return {"returns": [], "lengths": [], "stats": None, "updates": 0, "t0": time.perf_counter(), "steps": 0}

    def request_stop(self) -> None:
        """Ask ``learn`` to return at the next step boundary (callbacks see ``interrupted=True``)."""
        self._stop_requested = True

    def learn(self, total_steps: int | None = None, callback: Callback | Any = None, log_every: int = 1000,
              progress_bar: Any = None) -> SAC:
        """Train until ``num_timesteps`` reaches ``total_steps`` (default: the config's; counted from 0, so a
        loaded checkpoint continues).

        Args:
            callback: a ``Callback``, a function ``f(model, metrics)`` run every ``log_every`` steps (False stops),
                or a list of them. ``metrics``: step, episodes, the window's mean episode_return and
                episode_length, its mean critic_loss, actor_loss, alpha, entropy, updates, steps_per_s, time_s.
            progress_bar: anything with ``update(n)`` (a tqdm bar, ``reparam_apps.experiment.Progress``).
        Raises:
            DivergenceError: a logged window's loss is NaN or inf, or the policy's action is (it is not sent).
        """
        cfg = self.config
        total = cfg.total_steps if total_steps is None else int(total_steps)
        if total <= 0 or log_every <= 0:
            raise ValueError(f"total_steps and log_every must be positive, got {total} and {log_every}")
        cb = as_callback(callback)
        if self._obs is None:
            self._obs, _ = self.envs.reset(seed=cfg.seed)
        self._stop_requested = False
        self._window["t0"], self._window["steps"] = time.perf_counter(), 0
        next_log = (self.num_timesteps // log_every + 1) * log_every
        vector_steps = self.num_timesteps // cfg.num_envs
        interrupted = False
        if cb is not None:
            cb.on_training_start(self, total)
        while self.num_timesteps < total:
            self._env_step()
            vector_steps += 1
            if self.num_timesteps > cfg.learning_starts and vector_steps % cfg.train_freq == 0:
                for _ in range(cfg.gradient_steps):
                    stats = self._train_step()
                    w = self._window
                    w["stats"] = stats if w["stats"] is None else w["stats"] + stats  # no .item() in the loop
                    w["updates"] += 1
            if progress_bar is not None:
                progress_bar.update(cfg.num_envs)
            if self.num_timesteps >= next_log or self.num_timesteps >= total:
                next_log = (self.num_timesteps // log_every + 1) * log_every
                metrics = self._flush_window()
                if cb is not None and cb.on_log(self, metrics) is False:
                    break
            if self._stop_requested or (cb is not None and cb.on_step(self) is False):
                interrupted = True
                break
        if cb is not None:
            cb.on_training_end(self, interrupted)
        return self

    def _env_step(self) -> None:
        """One step of every env: act (uniformly at random before learning_starts), store the transitions."""
        obs = self._obs
        if self.num_timesteps < self.config.learning_starts:
            actions = self.rng.uniform(self.act_low, self.act_high, (self.config.num_envs, self.act_dim)
                                       ).astype(np.float32)
        else:
            actions = self._act(obs, deterministic=False)
            if not np.isfinite(actions).all():  # a few microseconds; a NaN action never reaches the env
                raise ex.DivergenceError(f"training diverged at step {self.num_timesteps}: the policy's action is "
                                         f"NaN or inf ({LIKELY_CAUSE}); it was not sent to the environment")
        next_obs, rew, term, trunc, info = self.envs.step(actions)
        # The true s' of a finished episode is info["final_obs"]; next_obs already holds the reset state.
        real_next = next_obs
        done = term | trunc
        if done.any():
            real_next = next_obs.copy()
            for i in np.flatnonzero(done):
                real_next[i] = info["final_obs"][i]
        self.buffer.add(obs, actions, rew, real_next, term)  # store terminated only: truncation bootstraps
        self._obs = next_obs
        self._ep_return += rew
        self._ep_length += 1
        for i in np.flatnonzero(done):
            self._window["returns"].append(float(self._ep_return[i]))
            self.episode_returns.append(float(self._ep_return[i]))
            self._window["lengths"].append(int(self._ep_length[i]))
            self._ep_return[i], self._ep_length[i] = 0.0, 0
            self.num_episodes += 1
        self.num_timesteps += self.config.num_envs
        self._window["steps"] += self.config.num_envs

    def _flush_window(self) -> dict[str, float]:
        """Metrics of the steps since the last flush (episode means, mean losses). Timing keys: steps_per_s, time_s.
        Raises ``DivergenceError`` if a mean loss is NaN or inf."""
        w, nan = self._window, float("nan")
        stats = (w["stats"] / w["updates"]).tolist() if w["updates"] else [nan] * 4
        if w["updates"]:
            ex.check_finite_values(dict(zip(STAT_NAMES, stats, strict=True)), self.num_timesteps)
        elapsed = time.perf_counter() - w["t0"]
        metrics = {
            "step": self.num_timesteps,
            "episodes": self.num_episodes,
            "episode_return": float(np.mean(w["returns"])) if w["returns"] else nan,
            "episode_length": float(np.mean(w["lengths"])) if w["lengths"] else nan,
            **dict(zip(STAT_NAMES, stats, strict=True)),
            "updates": self.num_updates,
            "steps_per_s": w["steps"] / elapsed if elapsed > 0 else nan,
            "time_s": elapsed,
        }
        self._window = self._new_window()
        return metrics

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state(self, include_buffer: bool = True) -> dict[str, Any]:
        """Config, networks, optimiser, step counters, and (by default) the replay buffer, RNG states, the
        environments and the current log window: all ``from_checkpoint`` needs to continue the same run."""
        return persistence.capture(self, include_buffer)

    def save(self, path: str | Path, include_buffer: bool = True, keep_previous: bool = False) -> None:
        """Atomic, checksummed checkpoint (``checkpoint_state``); ``keep_previous`` keeps the last good file."""
        ex.save_checkpoint(self.checkpoint_state(include_buffer), path, "sac", keep_previous=keep_previous)

    @classmethod
    def load(cls, path: str | Path, env: str | gym.Env | None = None, device: str | None = None,
             **overrides: Any) -> SAC:
        """Load a checkpoint written by ``save``. ``env`` (id or instance) must match the checkpoint's;
        ``overrides`` change config values for further training (e.g. total_steps)."""
        ckpt = ex.load_checkpoint(path, "sac")
        config = persistence.saved_config(ckpt, path)
        persistence.check_env(ckpt, config.env_id, env, path)
        config = config.replace(device=device, **overrides)
        return cls.from_checkpoint(ckpt, config, env=env if isinstance(env, gym.Env) else None, source=path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], config: SACConfig | None = None, env: gym.Env | None = None,
                        source: Any = "the checkpoint") -> SAC:
        """A model continuing the state ``checkpoint_state`` captured (the saved environments too, when they
        could be stored and no ``env`` instance is given). ``config`` may differ in MAY_CHANGE_ON_RESUME fields."""
        config = config if config is not None else persistence.saved_config(ckpt, source)
        envs = persistence.saved_envs(ckpt, source) if env is None else None
        if envs is not None and config.vector_env == "async":  # sync envs were saved; async asked for on resume
            envs.close()
            envs = None  # new async envs, new episodes
        model = cls(config, vec_env=wrap_env(env) if env is not None else envs)
        persistence.restore(model, ckpt, envs_restored=envs is not None, source=source)
        return model

    def close(self) -> None:
        self.envs.close()


def _adam(groups: list[dict[str, Any]]) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch build has it (one kernel per group), else foreach."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, foreach=True)
