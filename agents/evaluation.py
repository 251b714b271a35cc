"""Deterministic evaluation of a policy (SB3's ``evaluate_policy``, returning the episode returns)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from reparam_apps import DivergenceError

from .envs import make_env

__all__ = ["evaluate_policy"]


def evaluate_policy(model: Any, env: gym.Env | str, episodes: int = 10, seed: int = 10_000,
                    deterministic: bool = True, frames: list[np.ndarray] | None = None) -> np.ndarray:
    """Run ``episodes`` episodes and return their returns, shape (episodes,).

    Args:
        model: anything with SB3's ``predict(obs, deterministic=...) -> (action, state)`` (a ``SAC``, an SB3 model).
        env: an env instance (left open) or an id (made with ``make_env`` and closed afterwards).
        episodes: how many episodes; episode i is reset with ``seed + i``, so evaluations are comparable.
        deterministic: the policy's mode (True) or samples from it.
        frames: with a list here and an env made with ``render_mode="rgb_array"``, rendered frames are appended.
    Raises:
        DivergenceError: the policy produced a NaN or inf action (it is not sent to the env).
    """
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
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
                if not np.isfinite(action).all():
                    raise DivergenceError(f"the policy's action is {action} in evaluation episode {ep}: its "
                                          "parameters hold NaN or inf")
                obs, rew, term, trunc, _ = env.step(action)
                returns[ep] += float(rew)
                done = term or trunc
    finally:
        if own:
            env.close()
    return returns
