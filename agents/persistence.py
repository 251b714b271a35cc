"""What a SAC checkpoint holds and how a model is rebuilt from it (``SAC.checkpoint_state`` / ``from_checkpoint``).

A full checkpoint is the config, the networks, the optimiser, the step counters, the replay buffer, every
RNG state (numpy generator, torch CPU and CUDA), the environments (pickled, when they can be), the current
observation and episode sums, and the partial sums of the current log window, so a resumed run continues
the same stream of numbers: its logged metrics equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from reparam_apps import experiment as ex

from .config import SACConfig

if TYPE_CHECKING:
    from .sac import SAC

__all__ = ["capture", "restore", "saved_config", "saved_envs", "check_env"]


def _compact(obj: Any) -> Any:
    """Tensors that view a larger storage (a model in a ``StackedUpdate`` views its group's stacked tensors)
    cloned, so that ``torch.save`` writes their own values only; containers walked."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size() else obj
    if isinstance(obj, dict):
        return {k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_compact(v) for v in obj)
    return obj


def capture(model: SAC, include_buffer: bool = True) -> dict[str, Any]:
    """The checkpoint dict of ``model``; without ``include_buffer``: only what acting and further training
    from fresh episodes need (a small file, e.g. best.pt)."""
    state: dict[str, Any] = {
        "config": {f.name: getattr(model.config, f.name) for f in dataclasses.fields(SACConfig)},
        "spaces": {"obs_dim": model.obs_dim, "act_low": model.act_low, "act_high": model.act_high},
        **_compact({"actor": model.actor.state_dict(), "critic": model.critic.state_dict(),
                    "critic_target": model.critic_target.state_dict(), "log_alpha": model.log_alpha.detach().cpu(),
                    "optimizer": model.optimizer.state_dict()}),
        "counters": {"num_timesteps": model.num_timesteps, "num_updates": model.num_updates,
                     "num_episodes": model.num_episodes},
    }
    if include_buffer:
        try:
            envs_blob = pickle.dumps(model.envs)
        except Exception:  # some envs (e.g. MuJoCo handles) cannot be pickled: resume starts new episodes
            envs_blob = None
        w = model._window
        state["training"] = {
            "buffer": model.buffer.state_dict(), "np_rng": model.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if model.device.type == "cuda" else None,
            "obs": model._obs, "ep_return": model._ep_return, "ep_length": model._ep_length, "envs": envs_blob,
            "window": {"returns": w["returns"], "lengths": w["lengths"], "updates": w["updates"],
                       "stats": w["stats"].cpu() if w["stats"] is not None else None},
        }
    return state


def saved_config(ckpt: dict[str, Any], source: Any) -> SACConfig:
    """The checkpoint's config, validated; ``CheckpointError`` if it has none this version can read."""
    try:
        return ex.config_from_dict(SACConfig, ckpt["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ex.CheckpointError(f"{source} holds no usable SAC config ({err}); it is not a SAC checkpoint of "
                                 "this version") from None


def saved_envs(ckpt: dict[str, Any], source: Any) -> gym.vector.VectorEnv | None:
    """The pickled training environments, or None when the checkpoint has none (no buffer, or unpicklable)."""
    blob = (ckpt.get("training") or {}).get("envs")
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception as err:
        raise ex.CheckpointError(f"{source}: its environments cannot be restored ({err})") from None


def check_env(ckpt: dict[str, Any], env_id: str, env: str | gym.Env | None, source: Any) -> None:
    """``CheckpointError`` unless ``env`` (an id or an instance) is the one the checkpoint was trained on."""
    if isinstance(env, str) and env != env_id:
        raise ex.CheckpointError(f"{source} was trained on {env_id}, not {env}")
    if isinstance(env, gym.Env):
        space, spaces = env.action_space, ckpt["spaces"]
        if (not isinstance(space, gym.spaces.Box) or space.shape != spaces["act_low"].shape
                or int(np.prod(env.observation_space.shape)) != spaces["obs_dim"]
                or not np.allclose(space.low, spaces["act_low"]) or not np.allclose(space.high, spaces["act_high"])):
            raise ex.CheckpointError(f"{source} was trained on {env_id}, whose spaces differ from the given env's")


def restore(model: SAC, ckpt: dict[str, Any], envs_restored: bool, source: Any) -> None:
    """Load the checkpoint's state into ``model`` (built from its config, on the restored envs if any)."""
    try:
        model.actor.load_state_dict(ckpt["actor"])
        model.critic.load_state_dict(ckpt["critic"])
        model.critic_target.load_state_dict(ckpt["critic_target"])
        with torch.no_grad():
            model.log_alpha.copy_(ckpt["log_alpha"])
        model.optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ex.CheckpointError(f"{source} does not match this SAC configuration ({first})") from None
    c = ckpt["counters"]
    model.num_timesteps, model.num_updates, model.num_episodes = (c["num_timesteps"], c["num_updates"],
                                                                  c["num_episodes"])
    tr = ckpt.get("training")
    if tr is None:  # a small checkpoint: the first learn() resets the envs with the config's seed
        return
    model.buffer.load_state_dict(tr["buffer"])
    model.rng.bit_generator.state = tr["np_rng"]
    torch.set_rng_state(tr["torch_rng"])
    if tr["cuda_rng"] is not None and model.device.type == "cuda":
        torch.cuda.set_rng_state_all(tr["cuda_rng"])
    if envs_restored:
        model._obs, model._ep_return, model._ep_length = tr["obs"], tr["ep_return"], tr["ep_length"]
    else:  # the env state could not be stored: start fresh episodes, seeded by the step count
        model._obs, _ = model.envs.reset(seed=model.config.seed + model.num_timesteps)
    w = tr["window"]
    model._window.update(returns=list(w["returns"]), lengths=list(w["lengths"]), updates=w["updates"],
                         stats=w["stats"].to(model.device) if w["stats"] is not None else None)
