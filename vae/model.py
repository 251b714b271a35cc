"""Variational autoencoders on the shared core: a Gaussian VAE and a categorical (Gumbel-Softmax) VAE,
each trainable with its pathwise estimator or with the score-function (REINFORCE) estimator.

Notation (Kingma & Welling 2014; Burda et al. 2016; Jang et al. 2017), per example x:

    ELBO(x)   = E_q[log p(x|z)] - KL(q(z|x) || p(z))                                   (1)
    loss      = -mean_batch( E_q[log p(x|z)] - beta_t KL )      beta_t: beta with linear warm-up  (2)
    IWAE_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i|x),   z_i ~ q(z|x)                  (3)
    pathwise:        z = g_phi(eps), gradients through the sample                       (4)
    score function:  grad_phi E_q[f] = E_q[(f(z) - b) grad_phi log q(z|x)]               (5)

Everything is summed over pixels (and latent dims) and averaged over the batch: nats per example.
Shapes: B batch, D = H*W pixels, L latent size, S samples per example, N categorical latents of K classes.

The code is split by concern: ``vae.base`` (what both models share: likelihood, (1) and (3) plumbing, the
surrogate of (5), save), ``vae.gaussian`` (``VAE``, with a Gaussian or a normalizing-flow posterior,
eqs. (6)-(8) there), ``vae.categorical`` (``CategoricalVAE``); this module
gathers the public names and loads checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reparam_apps import load_checkpoint
from reparam_apps.experiment import CheckpointError

from .base import (
    CHECKPOINT_KIND,
    DECODER_LOG_STD_RANGE,
    ESTIMATORS,
    KL_MODES,
    LIKELIHOODS,
    LOGVAR_RANGE,
    SF_BASELINES,
    EstimatorProblem,
    VAELossTerms,
    _BaseVAE,
)
from .categorical import CategoricalVAE, categorical_kl_uniform
from .gaussian import FLOW_HIDDEN, POSTERIORS, VAE

__all__ = ["VAE", "CategoricalVAE", "VAELossTerms", "EstimatorProblem", "load_model", "categorical_kl_uniform",
           "LOGVAR_RANGE", "DECODER_LOG_STD_RANGE", "ESTIMATORS", "SF_BASELINES", "LIKELIHOODS", "KL_MODES",
           "CHECKPOINT_KIND", "model_from_checkpoint", "POSTERIORS", "FLOW_HIDDEN"]


_MODEL_CLASSES: dict[str, type[_BaseVAE]] = {"VAE": VAE, "CategoricalVAE": CategoricalVAE}


def model_from_checkpoint(obj: dict[str, Any], source: str | Path) -> _BaseVAE:
    """Rebuild a model from a checkpoint dict (``model_class``, ``model_config``, ``model_state``)."""
    cls = _MODEL_CLASSES.get(obj.get("model_class", ""))
    if cls is None or not isinstance(obj.get("model_config"), dict) or "model_state" not in obj:
        raise CheckpointError(f"{source} does not hold a VAE model (missing class, config or weights)")
    config = dict(obj["model_config"])
    if config.get("sf_baseline") == "mean":  # checkpoints written before the rename: it meant the running mean
        config["sf_baseline"] = "running_mean"
    try:
        model = cls(**config)
        model.load_state_dict(obj["model_state"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the stored weights do not fit the stored config "
                              f"({str(err).strip().splitlines()[0]})") from None
    return model


def load_model(path: str | Path, map_location: Any = "cpu") -> _BaseVAE:
    """Load a VAE or CategoricalVAE written by ``save`` or by the training script."""
    return model_from_checkpoint(load_checkpoint(path, kind=CHECKPOINT_KIND, map_location=map_location), path)
