"""Soft Actor-Critic with a tanh-squashed Gaussian policy sampled through ``reparam_apps.TanhNormal``.

Modules: ``sac`` (the algorithm), ``config`` (hyperparameters, per-env defaults), ``envs``, ``buffer``,
``networks``, ``callbacks``, ``evaluation``; entry points ``cli`` (reparam-sac) and ``enjoy`` (reparam-enjoy-sac).
"""

from .buffer import ReplayBuffer
from .callbacks import Callback, CallbackList, CheckpointCallback, EvalCallback, StopOnReturn
from .config import ENV_DEFAULTS, SACConfig, config_for
from .envs import make_env, make_vector_env
from .evaluation import evaluate_policy
from .networks import Actor, CriticEnsemble, polyak_update
from .sac import SAC

__all__ = ["SAC", "SACConfig", "ENV_DEFAULTS", "config_for", "Actor", "CriticEnsemble", "ReplayBuffer",
           "make_env", "make_vector_env", "evaluate_policy", "polyak_update", "Callback", "CallbackList",
           "EvalCallback", "CheckpointCallback", "StopOnReturn"]
