"""Environments for SAC: one construction each, with a one-line ``UserError`` for everything SAC cannot handle
(an unknown id, a missing optional dependency, a discrete or unbounded action space, a non-flat observation)."""

from __future__ import annotations

import contextlib
import difflib
import functools
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np

from reparam_apps import UserError

from .config import VECTOR_ENVS

__all__ = ["VECTOR_ENVS", "make_env", "make_vector_env", "wrap_env", "check_spaces", "env_id_of"]


def _extra_for(env_id: str) -> str:
    entry = str(gym.spec(env_id).entry_point)
    if "mujoco" in entry:
        return "pip install -e '.[mujoco]' (the mujoco extra)"
    if "box2d" in entry:
        return "pip install swig 'gymnasium[box2d]'"
    return "the package named above"


def _check_registered(env_id: str) -> None:
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list ids with gymnasium.pprint_registry()"
        raise UserError(f"unknown environment id {env_id!r}{hint}")


@contextlib.contextmanager
def _dependency_errors(env_id: str) -> Iterator[None]:
    """Turn gymnasium's missing-dependency errors into one line naming what to install."""
    try:
        yield
    except gym.error.DependencyNotInstalled as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{env_id} needs an optional dependency that is missing ({first}); "
                        f"install it with {_extra_for(env_id)}") from None
    except ImportError as err:
        raise UserError(f"{env_id} needs an optional dependency that is missing ({err}); "
                        f"install it with {_extra_for(env_id)}") from None


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


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with SAC's checks: known id, dependencies installed, Box observations and a
    bounded Box action space. Raises ``UserError`` with a one-line explanation otherwise."""
    _check_registered(env_id)
    with _dependency_errors(env_id):
        env = gym.make(env_id, **kwargs)
    try:
        check_spaces(env.observation_space, env.action_space, env_id)
    except UserError:
        env.close()
        raise
    return env


def make_vector_env(env_id: str, num_envs: int = 1, kind: str = "sync") -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` (SAME_STEP autoreset: a finished episode's final observation is in
    ``info["final_obs"]``), each built once, with ``make_env``'s checks.

    Args:
        kind: ``sync`` steps the copies one after another in this process (a SyncVectorEnv, picklable, so a
            checkpoint holds its episodes); ``async`` gives each copy a subprocess and steps them in parallel
            (an AsyncVectorEnv, for envs whose step is costly; a checkpoint cannot hold it, so a resumed run
            starts new episodes).
    """
    if kind not in VECTOR_ENVS:
        raise ValueError(f"kind must be one of {', '.join(VECTOR_ENVS)}, got {kind!r}")
    _check_registered(env_id)
    # functools.partial (not a lambda): picklable, so a SyncVectorEnv pickles and an AsyncVectorEnv can spawn.
    makers = [functools.partial(gym.make, env_id) for _ in range(num_envs)]
    with _dependency_errors(env_id):
        make = gym.vector.AsyncVectorEnv if kind == "async" else gym.vector.SyncVectorEnv
        envs = make(makers, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        check_spaces(envs.single_observation_space, envs.single_action_space, env_id)
    except UserError:
        envs.close()
        raise
    return envs


def wrap_env(env: gym.Env) -> gym.vector.SyncVectorEnv:
    """A one-env SyncVectorEnv around an existing instance (checked like ``make_env``; not picklable, so a
    checkpoint of a model built on it starts fresh episodes when it is loaded)."""
    check_spaces(env.observation_space, env.action_space, env_id_of(env))
    return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def env_id_of(env: gym.Env) -> str:
    """The registered id of an env instance (its class name when it was not made by ``gym.make``)."""
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__
