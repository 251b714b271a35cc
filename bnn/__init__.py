"""bnn: Bayes-by-Backprop layers on the reparam_apps core (Blundell et al. 2015).

    from bnn import BayesLinear, BayesConv2d
    net = nn.Sequential(BayesLinear(784, 400), nn.ReLU(), BayesLinear(400, 10))
    terms = bnn.elbo_loss(net, bnn.CategoricalLikelihood(), x, y, n_data=len(train_set))
    terms.loss.backward()          # mean NLL + KL / N: the per-example negative ELBO
    pred = bnn.predict(net, x_test, n_samples=32)   # probs, entropy, mutual information
"""

from .config import BNNConfig
from .convert import bayesianize
from .elbo import BBBLossTerms, blundell_kl_weight, elbo_loss
from .layers import (
    DEFAULT_INIT_RHO,
    KL_METHODS,
    NOISE_MODES,
    SAMPLING_MODES,
    BayesConv2d,
    BayesLayer,
    BayesLinear,
    bayes_layers,
    frozen_noise,
    inverse_softplus,
    mean_weights,
    model_kl,
    resample_frozen,
    set_noise,
    set_sampling,
)
from .likelihoods import CategoricalLikelihood, GaussianLikelihood, HeteroscedasticGaussianLikelihood, Likelihood
from .predict import (
    ClassificationPrediction,
    RegressionPrediction,
    accuracy,
    brier_score,
    categorical_nll,
    expected_calibration_error,
    gaussian_log_likelihood,
    interval_coverage,
    predict,
    prune_by_snr,
    reliability_bins,
    rmse,
)
from .priors import GaussianPrior, Prior, ScaleMixturePrior
from .train import KL_SCHEDULES, Trainer, fit, make_mlp
from .uci import UCI_DATASETS, UCISplit, load_uci_split, uci_n_splits

__all__ = [
    "BayesLayer", "BayesLinear", "BayesConv2d", "SAMPLING_MODES", "NOISE_MODES", "KL_METHODS", "DEFAULT_INIT_RHO",
    "inverse_softplus", "bayes_layers", "model_kl", "set_sampling", "set_noise", "mean_weights",
    "frozen_noise", "resample_frozen", "bayesianize",
    "Prior", "GaussianPrior", "ScaleMixturePrior",
    "Likelihood", "CategoricalLikelihood", "GaussianLikelihood", "HeteroscedasticGaussianLikelihood",
    "BBBLossTerms", "elbo_loss", "blundell_kl_weight",
    "predict", "RegressionPrediction", "ClassificationPrediction", "accuracy", "categorical_nll", "brier_score",
    "expected_calibration_error", "reliability_bins", "rmse", "gaussian_log_likelihood", "interval_coverage",
    "prune_by_snr",
    "UCI_DATASETS", "UCISplit", "load_uci_split", "uci_n_splits",
    "fit", "Trainer", "make_mlp", "KL_SCHEDULES", "BNNConfig",
]
