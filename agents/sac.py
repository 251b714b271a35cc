"""Soft Actor-Critic (Haarnoja et al. 2018, "SAC: Algorithms and Applications", auto-entropy version).

Read top to bottom: config and per-env defaults -> environment checks -> replay buffer -> actor
(a tanh-squashed Gaussian through ``reparam_apps.TanhNormal``) -> fused critic ensemble -> the
``SAC`` class (``learn``, ``predict``, ``save``, ``load``) whose ``_update`` is the whole algorithm.

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
import dataclasses
import difflib
import functools
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from reparam_apps import (
    CheckpointError,
    SquashBox,
    TanhNormal,
    UserError,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    select_device,
    set_threads,
)

__all__ = ["SACConfig", "ENV_DEFAULTS", "SAC", "Actor", "CriticEnsemble", "ReplayBuffer", "make_env",
           "evaluate", "StopOnReturn", "Callback"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's bounds on the policy's log-std (hard clamp)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class SACConfig:
    """Every SAC hyperparameter. Defaults are SB3's; ``ENV_DEFAULTS`` overrides them per env."""

    env_id: str = "Pendulum-v1"
    """Gymnasium environment id (needs a continuous, bounded Box action space)."""
    seed: int = 0
    """Seed for python, numpy, torch and the environments: same seed, same machine, same run."""
    total_steps: int = 1_000_000
    """Environment steps to train for (summed over the vector envs)."""
    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and temperature unless set separately below."""
    actor_lr: float | None = None
    """Actor learning rate (None: ``learning_rate``)."""
    critic_lr: float | None = None
    """Critic learning rate (None: ``learning_rate``)."""
    alpha_lr: float | None = None
    """Temperature learning rate (None: ``learning_rate``)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity in transitions (preallocated, capped at ``total_steps``)."""
    learning_starts: int = 100
    """Steps of uniformly random actions before the first gradient step."""
    train_freq: int = 1
    """Vector-env steps between training phases."""
    gradient_steps: int = 1
    """Gradient steps per training phase (update-to-data ratio = gradient_steps / (train_freq * num_envs))."""
    tau: float = 0.005
    """Polyak coefficient of the target critics: theta' <- tau theta + (1 - tau) theta'."""
    gamma: float = 0.99
    """Discount factor."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor and of every critic (ReLU MLPs)."""
    n_critics: int = 2
    """Critics in the ensemble; targets and the actor use the minimum over them (clipped double Q)."""
    alpha: float | None = None
    """Fixed entropy temperature; None learns it automatically towards ``target_entropy``."""
    init_alpha: float = 1.0
    """Initial temperature when it is learned."""
    target_entropy: float | None = None
    """Target policy entropy in the tanh (unit-box) action space; None: -|A|."""
    num_envs: int = 1
    """Parallel environments (gymnasium SyncVectorEnv)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    bf16: bool = False
    """Run the network matmuls of the update under bfloat16 autocast (CPU with avx512_bf16 / CUDA)."""

    def resolved(self) -> SACConfig:
        """Check every value; raise ValueError naming the bad or contradictory one."""
        positive = {"total_steps": self.total_steps, "learning_rate": self.learning_rate,
                    "batch_size": self.batch_size, "buffer_size": self.buffer_size, "train_freq": self.train_freq,
                    "gradient_steps": self.gradient_steps, "tau": self.tau, "n_critics": self.n_critics,
                    "init_alpha": self.init_alpha, "num_envs": self.num_envs}
        for name in ("actor_lr", "critic_lr", "alpha_lr", "alpha"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name in ("total_steps", "batch_size", "buffer_size", "train_freq", "gradient_steps", "n_critics",
                     "num_envs", "learning_starts", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.tau > 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not self.hidden_sizes or any(int(h) <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes!r}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) is larger than buffer_size ({self.buffer_size})")
        if self.learning_starts >= self.total_steps:
            raise ValueError(f"learning_starts ({self.learning_starts}) >= total_steps ({self.total_steps}): "
                             "training would never take a gradient step")
        if self.num_envs > self.total_steps:
            raise ValueError(f"num_envs ({self.num_envs}) exceeds total_steps ({self.total_steps})")
        return dataclasses.replace(self, hidden_sizes=tuple(int(h) for h in self.hidden_sizes))


# Per-env defaults (RL zoo hyperparameters, github.com/DLR-RM/rl-baselines3-zoo hyperparams/sac.yml).
# Anything not listed keeps the SACConfig default; flags / keyword arguments override both.
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "Pendulum-v1":                   dict(total_steps=20_000, learning_rate=1e-3),
    "MountainCarContinuous-v0":      dict(total_steps=50_000, learning_rate=3e-4, buffer_size=50_000,
                                          batch_size=512, gamma=0.9999, tau=0.01, train_freq=32,
                                          gradient_steps=32, learning_starts=0),
    "LunarLanderContinuous-v3":      dict(total_steps=500_000, learning_rate=7.3e-4, buffer_size=1_000_000,
                                          batch_size=256, gamma=0.99, tau=0.01, learning_starts=10_000,
                                          hidden_sizes=(400, 300)),
    "BipedalWalker-v3":              dict(total_steps=500_000, learning_rate=7.3e-4, buffer_size=300_000,
                                          batch_size=256, gamma=0.98, tau=0.02, learning_starts=10_000,
                                          hidden_sizes=(400, 300)),
    "HalfCheetah-v5":                dict(total_steps=1_000_000, learning_starts=10_000),
    "Hopper-v5":                     dict(total_steps=1_000_000, learning_starts=10_000),
    "Walker2d-v5":                   dict(total_steps=1_000_000, learning_starts=10_000),
    "Ant-v5":                        dict(total_steps=1_000_000, learning_starts=10_000),
    "Humanoid-v5":                   dict(total_steps=2_000_000, learning_starts=10_000),
}


def config_for(env_id: str, **overrides: Any) -> SACConfig:
    """SACConfig defaults, then ``ENV_DEFAULTS[env_id]``, then ``overrides`` (None values ignored)."""
    names = {f.name for f in dataclasses.fields(SACConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown SAC option {unknown[0]!r}{hint}")
    values = {**ENV_DEFAULTS.get(env_id, {}), **{k: v for k, v in overrides.items() if v is not None}}
    # alpha=None is meaningful (learn it), so an explicit None from the API is kept.
    if "alpha" in overrides:
        values["alpha"] = overrides["alpha"]
    return SACConfig(env_id=env_id, **values).resolved()


# ----------------------------------------------------------------------------------------------
# Environments: clear one-line errors for everything SAC cannot handle
# ----------------------------------------------------------------------------------------------
def _extra_for(env_id: str) -> str:
    entry = str(gym.spec(env_id).entry_point)
    if "mujoco" in entry:
        return "pip install -e '.[mujoco]' (the mujoco extra)"
    if "box2d" in entry:
        return "pip install swig 'gymnasium[box2d]'"
    return "the package named above"


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with SAC's checks: known id, dependencies installed, Box observations and a
    bounded Box action space. Raises ``UserError`` with a one-line explanation otherwise."""
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list ids with gymnasium.pprint_registry()"
        raise UserError(f"unknown environment id {env_id!r}{hint}")
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{env_id} needs an optional dependency that is missing ({first}); "
                        f"install it with {_extra_for(env_id)}") from None
    except ImportError as err:
        raise UserError(f"{env_id} needs an optional dependency that is missing ({err}); "
                        f"install it with {_extra_for(env_id)}") from None
    check_spaces(env.observation_space, env.action_space, env_id)
    return env


def check_spaces(obs_space: gym.Space, act_space: gym.Space, env_id: str) -> None:
    """Raise ``UserError`` unless SAC can act in these spaces."""
    if not isinstance(act_space, gym.spaces.Box):
        raise UserError(f"{env_id} has a {type(act_space).__name__} action space; SAC needs a continuous "
                        "Box action space (try Pendulum-v1, or a DQN-style agent for discrete actions)")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise UserError(f"{env_id} has unbounded action bounds (low={act_space.low}, high={act_space.high}); "
                        "the tanh policy squashes actions into [low, high], so wrap the env with "
                        "gymnasium.wrappers.RescaleAction or ClipAction to give it finite bounds")
    if len(act_space.shape) != 1:
        raise UserError(f"{env_id} has an action space of shape {act_space.shape}; SAC needs a flat vector")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UserError(f"{env_id} has a {obs_space} observation space; this SAC needs a flat Box "
                        "(wrap image or dict observations with gymnasium.wrappers.FlattenObservation)")


def _make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    make_env(env_id).close()  # run the checks once, with the clear errors
    # functools.partial (not a lambda) keeps the vector env picklable, so checkpoints can hold it.
    return gym.vector.SyncVectorEnv([functools.partial(gym.make, env_id) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


# ----------------------------------------------------------------------------------------------
# Replay buffer: one preallocated float32 array, one gather per batch
# ----------------------------------------------------------------------------------------------
class ReplayBuffer:
    """Ring buffer of (s, a, r, s', terminated). Each row is [s | a | r | s' | d] in one float32 array,
    so a batch is a single numpy gather and a single host-to-device copy."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity, self.obs_dim, self.act_dim = int(capacity), obs_dim, act_dim
        self.data = np.zeros((self.capacity, 2 * obs_dim + act_dim + 2), dtype=np.float32)
        self.pos, self.size = 0, 0

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Add N transitions at once (arrays with a leading N axis)."""
        n = len(obs)
        idx = (self.pos + np.arange(n)) % self.capacity
        o, a = self.obs_dim, self.act_dim
        row = self.data[idx]
        row[:, :o] = obs
        row[:, o:o + a] = act
        row[:, o + a] = rew
        row[:, o + a + 1:2 * o + a + 1] = next_obs
        row[:, -1] = terminated
        self.data[idx] = row
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> tuple[Tensor, ...]:
        """Uniform batch (with replacement, like SB3): obs (B, O), act (B, A), rew (B,), next_obs (B, O), term (B,)."""
        idx = rng.integers(0, self.size, size=batch_size)
        batch = torch.from_numpy(self.data[idx]).to(device, non_blocking=True)  # (B, 2O + A + 2)
        o, a = self.obs_dim, self.act_dim
        return batch[:, :o], batch[:, o:o + a], batch[:, o + a], batch[:, o + a + 1:2 * o + a + 1], batch[:, -1]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[:self.size].copy(), "pos": self.pos, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["data"].shape[1] != self.data.shape[1]:
            raise CheckpointError("replay buffer in the checkpoint has transitions of another shape")
        size, pos = int(state["size"]), int(state["pos"])
        if size > self.capacity:  # a smaller buffer than the checkpoint's: keep the checkpoint's capacity
            self.capacity = int(state["capacity"])
            self.data = np.zeros((self.capacity, self.data.shape[1]), dtype=np.float32)
        self.data[:size] = state["data"]
        # Same capacity: the same ring position. A larger one (longer training): append after the data.
        self.pos, self.size = (pos if self.capacity == state["capacity"] else size % self.capacity), size


# ----------------------------------------------------------------------------------------------
# Actor: s -> (mu, log sigma) -> TanhNormal over the env's Box  (sampling only through the core)
# ----------------------------------------------------------------------------------------------
class Actor(nn.Module):
    """ReLU MLP trunk and one linear head producing [mu | log sigma] (B, 2A); log sigma is clamped
    to [LOG_STD_MIN, LOG_STD_MAX] like SB3. The distribution is ``reparam_apps.TanhNormal`` rescaled
    to [low, high] (a ``SquashBox``: the bounds' constants are computed once, not per step);
    ``log_prob_offset`` = sum log((high - low) / 2) converts its log-density (in env units) back to
    the unit box, so the entropy target -|A| means the same for every env."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], low: Tensor, high: Tensor):
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]  # in place: Linear does not save its output
            d = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(d, 2 * act_dim)  # == SB3's separate mu and log_std layers, fused
        self.box = SquashBox(low, high)

    @property
    def log_prob_offset(self) -> Tensor:
        return self.box.log_volume

    def dist(self, obs: Tensor) -> TanhNormal:
        mu, log_std = self.head(self.trunk(obs)).float().chunk(2, dim=-1)  # (B, A) each, fp32 even under bf16
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return TanhNormal(mu, log_std.exp(), box=self.box, validate_args=False)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """a = low + (tanh(mu + sigma eps) + 1)(high - low)/2, eps ~ N(0, I) (reparameterized: differentiable
        in the actor's weights) and log pi(a|s) in the unit box. Shapes (B, A), (B,)."""
        action, log_q = self.dist(obs).rsample_and_log_prob()
        return action, log_q + self.box.log_volume


# ----------------------------------------------------------------------------------------------
# Critics: n Q-networks as ONE module with stacked weights, evaluated with batched matmuls
# ----------------------------------------------------------------------------------------------
class CriticEnsemble(nn.Module):
    """n ReLU MLPs Q_j(s, a) stored as stacked weights W_l (n, fan_in, fan_out) and biases (n, 1, fan_out);
    one ``torch.baddbmm`` per layer evaluates all critics at once. Each member is initialised like
    ``nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in))). Actions are fed in the unit box, like SB3."""

    def __init__(self, n: int, obs_dim: int, act_dim: int, hidden: Sequence[int], low: Tensor, high: Tensor):
        super().__init__()
        self.n = n
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        self.register_buffer("act_mid", 0.5 * (high + low))
        self.register_buffer("act_half_range", 0.5 * (high - low))

    def forward(self, obs: Tensor, act: Tensor, detach_params: bool = False) -> Tensor:
        """Q-values (n, B) for obs (B, O) and env-unit actions (B, A). ``detach_params`` treats the
        weights as constants (the actor loss needs dQ/da only, not dQ/dtheta: saves the weight grads)."""
        x = torch.cat([obs, (act - self.act_mid) / self.act_half_range], dim=-1)  # (B, O + A)
        h = x.expand(self.n, *x.shape)  # (n, B, O + A), a view
        *hidden, (w_out, b_out) = zip(self.weights, self.biases, strict=True)
        for w, b in hidden:
            if detach_params:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b, h, w).relu_()  # (n, B, fan_out) = relu(b + h @ W), all critics in one call;
            # relu in place: baddbmm's backward does not need its output
        if detach_params:
            w_out, b_out = w_out.detach(), b_out.detach()
        # Output layer (fan_out 1): a row-wise dot product, 2-4x cheaper here than a batched matmul with N = 1.
        return ((h * w_out.transpose(1, 2)).sum(-1) + b_out.squeeze(-1)).float()  # (n, B)


# ----------------------------------------------------------------------------------------------
# Evaluation and callbacks
# ----------------------------------------------------------------------------------------------
Callback = Callable[["SAC", dict[str, float]], "bool | None"]
"""Called every ``log_every`` steps with the metrics row; return False to stop training."""


class StopOnReturn:
    """Callback that stops training once the mean episode return of a logging window reaches ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, model: SAC, metrics: dict[str, float]) -> bool:
        ret = metrics.get("episode_return", float("nan"))
        return not (ret == ret and ret >= self.threshold)


def evaluate(model: SAC, env: gym.Env | str, episodes: int = 10, seed: int = 10_000,
             deterministic: bool = True, frames: list[np.ndarray] | None = None) -> np.ndarray:
    """Run ``episodes`` episodes (episode i reset with seed + i) and return their returns.
    With ``frames`` (a list) and an env made with render_mode='rgb_array', rendered frames are appended."""
    own = isinstance(env, str)
    env = make_env(env, render_mode="rgb_array" if frames is not None else None) if own else env
    returns = np.zeros(episodes)
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done = False
            while not done:
                if frames is not None:
                    frames.append(env.render())
                action, _ = model.predict(obs, deterministic=deterministic)
                obs, rew, term, trunc, _ = env.step(action)
                returns[ep] += float(rew)
                done = term or trunc
    finally:
        if own:
            env.close()
    return returns


# ----------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------
class SAC:
    """Soft Actor-Critic with an SB3-style API::

        model = SAC("Pendulum-v1", seed=0)          # or SAC(env_instance, learning_rate=1e-3, ...)
        model.learn(20_000)
        action, _ = model.predict(obs, deterministic=True)
        model.save("sac.pt"); model = SAC.load("sac.pt")
    """

    def __init__(self, env: str | gym.Env, **config: Any):
        if isinstance(env, str):
            env_id, env_instance = env, None
        elif isinstance(env, gym.Env):
            env_instance = env
            env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        else:
            raise UserError(f"env must be a gymnasium env id or gymnasium.Env, got {type(env).__name__}")
        self.config = cfg = config_for(env_id, **config)
        set_threads(cfg.threads)
        self.device = select_device(cfg.device)
        seed_everything(cfg.seed)
        if env_instance is None:
            self.envs = _make_vector_env(env_id, cfg.num_envs)
        else:
            check_spaces(env_instance.observation_space, env_instance.action_space, env_id)
            if cfg.num_envs != 1:
                raise ValueError("num_envs > 1 needs an env id (each copy is made with gym.make)")
            self.envs = gym.vector.SyncVectorEnv([lambda: env_instance],
                                                 autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        space = self.envs.single_action_space
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.act_dim = int(space.shape[0])
        self.act_low, self.act_high = space.low.astype(np.float32), space.high.astype(np.float32)
        low = torch.as_tensor(self.act_low, device=self.device)
        high = torch.as_tensor(self.act_high, device=self.device)

        # Networks. The target critics are a frozen copy updated by Polyak averaging only.
        dev = self.device
        self.actor = Actor(self.obs_dim, self.act_dim, cfg.hidden_sizes, low, high).to(dev)
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
                                   self.obs_dim, self.act_dim)
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
        """Ask ``learn`` to return at the next step boundary (used by the script's Ctrl-C handler)."""
        self._stop_requested = True

    def learn(self, total_steps: int | None = None, callback: Callback | None = None, log_every: int = 1000,
              progress_bar: Any = None) -> SAC:
        """Train until ``num_timesteps`` reaches ``total_steps`` (default: the config's; counted from 0, so
        a loaded checkpoint continues). ``callback(model, metrics)`` runs every ``log_every`` steps; returning
        False stops. ``progress_bar``: an object with ``update(n)`` and ``set_postfix`` (a tqdm bar)."""
        cfg = self.config
        total = cfg.total_steps if total_steps is None else int(total_steps)
        if total <= 0 or log_every <= 0:
            raise ValueError(f"total_steps and log_every must be positive, got {total} and {log_every}")
        n_envs = cfg.num_envs
        if self._obs is None:
            self._obs, _ = self.envs.reset(seed=cfg.seed)
        self._stop_requested = False
        self._window["t0"], self._window["steps"] = time.perf_counter(), 0
        next_log = (self.num_timesteps // log_every + 1) * log_every
        vector_steps = self.num_timesteps // n_envs
        while self.num_timesteps < total and not self._stop_requested:
            obs = self._obs
            if self.num_timesteps < cfg.learning_starts:
                actions = self.rng.uniform(self.act_low, self.act_high, (n_envs, self.act_dim)).astype(np.float32)
            else:
                actions = self._act(obs, deterministic=False)
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
            self.num_timesteps += n_envs
            self._window["steps"] += n_envs
            vector_steps += 1

            if self.num_timesteps > cfg.learning_starts and vector_steps % cfg.train_freq == 0:
                for _ in range(cfg.gradient_steps):
                    stats = self._update(*self.buffer.sample(cfg.batch_size, self.rng, self.device))
                    w = self._window
                    w["stats"] = stats if w["stats"] is None else w["stats"] + stats  # no .item() in the loop
                    w["updates"] += 1
            if progress_bar is not None:
                progress_bar.update(n_envs)
            if self.num_timesteps >= next_log or self.num_timesteps >= total:
                next_log = (self.num_timesteps // log_every + 1) * log_every
                metrics = self._flush_window()
                if progress_bar is not None:
                    progress_bar.set_postfix(ret=f"{metrics['episode_return']:.1f}",
                                             sps=f"{metrics['steps_per_s']:.0f}", refresh=False)
                if callback is not None and callback(self, metrics) is False:
                    break
        return self

    def _flush_window(self) -> dict[str, float]:
        """Metrics of the steps since the last flush (episode means, mean losses). Timing keys: steps_per_s, time_s."""
        w, nan = self._window, float("nan")
        stats = (w["stats"] / w["updates"]).tolist() if w["updates"] else [nan] * 4
        elapsed = time.perf_counter() - w["t0"]
        metrics = {
            "step": self.num_timesteps,
            "episodes": self.num_episodes,
            "episode_return": float(np.mean(w["returns"])) if w["returns"] else nan,
            "episode_length": float(np.mean(w["lengths"])) if w["lengths"] else nan,
            "critic_loss": stats[0], "actor_loss": stats[1], "alpha": stats[2], "entropy": stats[3],
            "updates": self.num_updates,
            "steps_per_s": w["steps"] / elapsed if elapsed > 0 else nan,
            "time_s": elapsed,
        }
        self._window = self._new_window()
        return metrics

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path, include_buffer: bool = True) -> None:
        """Atomic checkpoint: config, networks, optimisers, step counters, RNG states, and (by default)
        the replay buffer and the environments' state, so ``load`` + ``learn`` continues the same run."""
        try:
            envs_blob = pickle.dumps(self.envs) if include_buffer else None
        except Exception:  # some envs (e.g. MuJoCo handles) cannot be pickled: resume starts new episodes
            envs_blob = None
        state = {
            "config": dataclasses.asdict(self.config),
            "spaces": {"obs_dim": self.obs_dim, "act_low": self.act_low, "act_high": self.act_high},
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {"num_timesteps": self.num_timesteps, "num_updates": self.num_updates,
                         "num_episodes": self.num_episodes},
        }
        if include_buffer:
            w = self._window
            state["training"] = {
                "buffer": self.buffer.state_dict(), "np_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "obs": self._obs, "ep_return": self._ep_return, "ep_length": self._ep_length, "envs": envs_blob,
                "window": {"returns": w["returns"], "lengths": w["lengths"], "updates": w["updates"],
                           "stats": w["stats"].cpu() if w["stats"] is not None else None},
            }
        save_checkpoint(state, path, kind="sac")

    @classmethod
    def load(cls, path: str | Path, env: str | gym.Env | None = None, device: str | None = None,
             **overrides: Any) -> SAC:
        """Load a checkpoint written by ``save``. ``env`` (id or instance) must match the checkpoint's;
        ``overrides`` change config values for further training (e.g. total_steps)."""
        ckpt = load_checkpoint(path, kind="sac")
        try:
            cfg = dict(ckpt["config"])
            spaces = ckpt["spaces"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{path} is missing SAC state (config/spaces); it is not a SAC checkpoint") from None
        cfg["hidden_sizes"] = tuple(cfg["hidden_sizes"])
        env_id = cfg.pop("env_id")
        if isinstance(env, str) and env != env_id:
            raise CheckpointError(f"{path} was trained on {env_id}, not {env}")
        if isinstance(env, gym.Env):
            space = env.action_space
            if (not isinstance(space, gym.spaces.Box) or space.shape != spaces["act_low"].shape
                    or int(np.prod(env.observation_space.shape)) != spaces["obs_dim"]
                    or not np.allclose(space.low, spaces["act_low"])
                    or not np.allclose(space.high, spaces["act_high"])):
                raise CheckpointError(f"{path} was trained on {env_id}, whose spaces differ from the given env's")
        if device is not None:
            cfg["device"] = device
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        model = cls(env if env is not None else env_id, **cfg)
        try:
            model.actor.load_state_dict(ckpt["actor"])
            model.critic.load_state_dict(ckpt["critic"])
            model.critic_target.load_state_dict(ckpt["critic_target"])
            with torch.no_grad():
                model.log_alpha.copy_(ckpt["log_alpha"])
            model.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{path} does not match this SAC configuration ({first})") from None
        c = ckpt["counters"]
        model.num_timesteps, model.num_updates = c["num_timesteps"], c["num_updates"]
        model.num_episodes = c["num_episodes"]
        tr = ckpt.get("training")
        if tr is not None:
            model.buffer.load_state_dict(tr["buffer"])
            model.rng.bit_generator.state = tr["np_rng"]
            torch.set_rng_state(tr["torch_rng"])
            if tr["cuda_rng"] is not None and model.device.type == "cuda":
                torch.cuda.set_rng_state_all(tr["cuda_rng"])
            if tr["envs"] is not None and not isinstance(env, gym.Env):
                model.envs.close()
                model.envs = pickle.loads(tr["envs"])
                model._obs, model._ep_return, model._ep_length = tr["obs"], tr["ep_return"], tr["ep_length"]
            else:  # the env state could not be stored: start fresh episodes, seeded by the step count
                model._obs, _ = model.envs.reset(seed=model.config.seed + model.num_timesteps)
            w = tr["window"]
            model._window.update(returns=list(w["returns"]), lengths=list(w["lengths"]), updates=w["updates"],
                                 stats=w["stats"].to(model.device) if w["stats"] is not None else None)
        return model

    def close(self) -> None:
        self.envs.close()


def polyak_update(params: Any, target_params: Any, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta'  (== theta'.lerp_(theta, tau)), in place, no autograd."""
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"{len(params)} parameters but {len(target_params)} target parameters")
    with torch.no_grad():
        torch._foreach_lerp_(target_params, params, tau)  # one call for all tensors


def _adam(groups: list[dict[str, Any]]) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch build has it (one kernel per group), else foreach."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, foreach=True)


def config_docs() -> dict[str, str]:
    """{field name: its docstring} for SACConfig, read from the source (the script's --help uses it)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(SACConfig)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body[:-1], body[1:], strict=True):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(node.target, ast.Name)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs

