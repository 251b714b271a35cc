"""vae: a Gaussian VAE (diagonal-Gaussian or normalizing-flow posterior) and a categorical (Gumbel-Softmax) VAE
on the shared reparameterized core, each trainable with its pathwise estimator or with the score-function
(REINFORCE) estimator."""

from .data import BINARIZE_MODES, VAEData, binarize, load_vae_data
from .model import (
    ESTIMATORS,
    KL_MODES,
    LIKELIHOODS,
    LOGVAR_RANGE,
    POSTERIORS,
    SF_BASELINES,
    VAE,
    CategoricalVAE,
    EstimatorProblem,
    VAELossTerms,
    categorical_kl_uniform,
    load_model,
)
from .nets import ARCHS
from .train import beta_at, evaluate_elbo, evaluate_iwae, train_epoch

__all__ = [
    "VAE", "CategoricalVAE", "VAELossTerms", "EstimatorProblem", "load_model", "categorical_kl_uniform",
    "VAEData", "load_vae_data", "binarize", "train_epoch", "evaluate_elbo", "evaluate_iwae", "beta_at",
    "ARCHS", "ESTIMATORS", "KL_MODES", "LIKELIHOODS", "LOGVAR_RANGE", "SF_BASELINES", "BINARIZE_MODES",
    "POSTERIORS",
]
