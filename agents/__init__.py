"""Soft Actor-Critic with a tanh-squashed Gaussian policy sampled through ``reparam_apps.TanhNormal``."""

from .sac import (
    ENV_DEFAULTS,
    SAC,
    Actor,
    Callback,
    CriticEnsemble,
    ReplayBuffer,
    SACConfig,
    StopOnReturn,
    config_for,
    evaluate,
    make_env,
)

__all__ = ["SAC", "SACConfig", "ENV_DEFAULTS", "config_for", "Actor", "CriticEnsemble", "ReplayBuffer",
           "make_env", "evaluate", "StopOnReturn", "Callback"]
