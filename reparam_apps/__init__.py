"""reparam_apps: the shared reparameterized-sampling core.

Distributions expose the trick as two steps (``sample_noise`` then ``transform``); estimators
compare the pathwise gradient with the score-function one; KL helpers and run utilities are
shared by the SAC, BNN and VAE domains.
"""

from . import experiment, native
from .distributions import (
    Gumbel,
    GumbelSoftmax,
    Laplace,
    Logistic,
    LogNormal,
    Normal,
    ReparamDistribution,
    SquashBox,
    TanhNormal,
    set_default_validate_args,
)
from .estimators import (
    EstimatorStats,
    estimator_stats,
    flatten_gradient,
    pathwise_gradient,
    score_function_gradient,
)
from .experiment import (
    CheckpointError,
    DivergenceError,
    MetricsCSV,
    UserError,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    run_cli,
    save_checkpoint,
)
from .kl import kl_divergence, kl_normal_normal, kl_normal_std_normal, mc_kl
from .utils import derived_seed, rng_state, seed_everything, select_device, set_rng_state, set_threads

__version__ = "0.1.0"

__all__ = [
    "ReparamDistribution", "Normal", "Laplace", "Logistic", "LogNormal", "Gumbel", "GumbelSoftmax",
    "TanhNormal", "SquashBox", "set_default_validate_args",
    "pathwise_gradient", "score_function_gradient", "estimator_stats", "EstimatorStats",
    "flatten_gradient",
    "kl_normal_normal", "kl_normal_std_normal", "mc_kl", "kl_divergence",
    "seed_everything", "derived_seed", "rng_state", "set_rng_state", "select_device", "set_threads",
    "MetricsCSV", "save_checkpoint", "load_checkpoint", "CheckpointError",
    "atomic_write_bytes", "atomic_write_text",
    "UserError", "DivergenceError", "run_cli", "native", "experiment",
]
