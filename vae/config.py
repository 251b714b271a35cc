"""The VAE run's settings: one typed config, from which ``reparam-vae`` builds its flags, help and defaults.

Every field is a flag (``latent_dim`` -> ``--latent-dim``); ``--resume`` refuses a change of any field but
those in ``MAY_CHANGE_ON_RESUME`` (more epochs, another device or thread count, the final IWAE evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reparam_apps import experiment as ex

from .data import BINARIZE_MODES
from .model import KL_MODES, LIKELIHOODS, POSTERIORS, SF_BASELINES
from .nets import ARCHS

__all__ = ["VAEConfig", "MODELS", "DATASETS"]

MODELS = ("gaussian", "categorical")
DATASETS = ("digits", "mnist")
ESTIMATOR_CHOICES = ("pathwise", "score-function")


def _choices(choices: tuple[str, ...], **meta: Any) -> dict[str, Any]:
    """Field metadata for a string flag with these choices (shown as {a,b} in --help)."""
    return {"choices": choices, "metavar": "{" + ",".join(choices) + "}", **meta}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class VAEConfig(ex.TrainConfig):
    """Settings of one VAE training run (data, model, estimator, optimisation, final evaluation)."""

    dataset: str = field(default="digits", metadata=_choices(DATASETS))
    """'digits': scikit-learn's bundled 8x8 digits (offline); 'mnist': the IDX files in --data-dir."""
    data_dir: str | None = field(default=None, metadata={"metavar": "DIR"})
    """Folder with the MNIST IDX files (the four standard ones, or only the two t10k files, then split 8k/2k
    with a fixed seed)."""
    binarize: str = field(default="dynamic", metadata=_choices(
        BINARIZE_MODES, shown_default="dynamic; none with --likelihood gaussian"))
    """Pixel binarisation: dynamic (resampled every epoch), static (once) or none (grey levels)."""
    model: str = field(default="gaussian", metadata=_choices(MODELS))
    """Latent variables: gaussian, or categorical (Gumbel-Softmax relaxation for the pathwise estimator)."""
    posterior: str = field(default="gaussian", metadata=_choices(POSTERIORS))
    """q(z|x) of the Gaussian-latent model: a diagonal Gaussian, or that Gaussian pushed through --flow-steps
    normalizing-flow steps (planar, iaf, affine or spline coupling) conditioned on the encoder's last hidden
    layer; a flow has no closed-form KL, so it trains with --kl mc."""
    flow_steps: int = 2
    """Steps K of a flow --posterior (at least 1)."""
    estimator: str = field(default="pathwise", metadata=_choices(ESTIMATOR_CHOICES))
    """Encoder gradient: pathwise (reparameterized / Gumbel-Softmax) or score-function (REINFORCE with
    --sf-baseline)."""
    latent_dim: int = 20
    """Gaussian latent size; with --model categorical, the number of categorical latents."""
    n_classes: int = 10
    """Classes per categorical latent."""
    hidden: tuple[int, ...] = field(default=(400,), metadata={"metavar": "WIDTH"})
    """Hidden layer widths of the MLP encoder (the decoder mirrors them), e.g. --hidden 400 200; with
    --arch conv the first is the width of the dense layer."""
    arch: str = field(default="mlp", metadata=_choices(ARCHS))
    """Encoder/decoder: an MLP or a small convolutional net."""
    likelihood: str = field(default="bernoulli", metadata=_choices(LIKELIHOODS))
    """Decoder p(x|z): Bernoulli logits or a Gaussian."""
    decoder_std: float | None = None
    """Fixed standard deviation of the Gaussian decoder (none: learned per pixel)."""
    kl: str = field(default="analytic", metadata=_choices(KL_MODES, shown_default="analytic; mc with a flow posterior"))
    """KL term in training: closed form, or a Monte Carlo estimate on the drawn sample."""
    temperature: float = 1.0
    """Initial Gumbel-Softmax temperature tau_0 (categorical)."""
    temperature_min: float = 0.5
    """Floor of the annealed temperature: tau_t = max(tau_min, tau_0 exp(-rate t)) at step t."""
    anneal_rate: float = 1e-4
    """Temperature annealing rate per gradient step."""
    hard: bool = False
    """Straight-through Gumbel-Softmax (one-hot forward pass, relaxed gradient)."""
    sf_samples: int = 4
    """Latent samples per example for the score-function estimator."""
    sf_baseline: str = field(default="loo", metadata=_choices(SF_BASELINES))
    """Score-function baseline: loo (leave-one-out mean over the samples of the same example, needs
    --sf-samples >= 2), running_mean (over batches) or none."""
    train_samples: int = 1
    """Latent samples per example for pathwise training."""
    epochs: int = 20
    """Total epochs (with --resume: the new total)."""
    batch_size: int = 100
    """Minibatch size."""
    lr: float = 1e-3
    """Adam learning rate."""
    beta: float = 1.0
    """Weight of the KL term in the loss (beta-VAE); the reported ELBO always uses 1."""
    warmup: float = 0.0
    """Epochs of linear KL warm-up from 0 to --beta (0: none)."""
    iwae_k: int = 5000
    """Importance samples of the final IWAE bound (0: skip it)."""
    iwae_n: int = 200
    """Test examples the final IWAE bound is computed on (the first N of the test set)."""

    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"epochs", "device", "threads", "iwae_k", "iwae_n"})

    @classmethod
    def contextual_defaults(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Grey levels for the Gaussian decoder, binarised pixels for the Bernoulli one; --kl mc with a flow
        --posterior (which has no closed-form KL)."""
        defaults = {"binarize": "none"} if given.get("likelihood") == "gaussian" else {}
        if given.get("posterior", "gaussian") != "gaussian":  # a flow posterior has no closed-form KL
            defaults["kl"] = "mc"
        return defaults

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, choices in (("dataset", DATASETS), ("binarize", BINARIZE_MODES), ("model", MODELS),
                              ("estimator", ESTIMATOR_CHOICES), ("arch", ARCHS), ("likelihood", LIKELIHOODS),
                              ("kl", KL_MODES), ("sf_baseline", SF_BASELINES), ("posterior", POSTERIORS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("latent_dim", "n_classes", "sf_samples", "train_samples", "epochs", "batch_size", "iwae_n"):
            _positive_int(name, getattr(self, name))
        if self.model == "categorical" and self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {self.n_classes}")
        self.hidden = tuple(self.hidden)
        if not self.hidden or any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive integers, got {self.hidden!r}")
        for name in ("lr", "temperature", "temperature_min"):
            if not (_finite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        if self.temperature_min > self.temperature:
            raise ValueError(f"temperature_min ({self.temperature_min}) must not exceed temperature "
                             f"({self.temperature})")
        for name in ("beta", "warmup", "anneal_rate"):
            if not (_finite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.iwae_k, int) or isinstance(self.iwae_k, bool) or self.iwae_k < 0:
            raise ValueError(f"iwae_k must be an integer >= 0, got {self.iwae_k!r}")
        if self.decoder_std is not None and not (_finite(self.decoder_std) and self.decoder_std > 0):
            raise ValueError(f"decoder_std must be a positive number (or none: learned), got {self.decoder_std!r}")
        if self.estimator == "score-function" and self.sf_baseline == "loo" and self.sf_samples < 2:
            raise ValueError("sf_baseline 'loo' (leave-one-out) needs sf_samples >= 2: raise --sf-samples or pick "
                             "--sf-baseline running_mean")
        if self.model == "categorical" and self.hard and self.kl == "mc" and self.estimator == "pathwise":
            raise ValueError("hard (straight-through) samples have no Concrete density for kl 'mc': pass --kl analytic "
                             "with --hard")
        if self.posterior != "gaussian":
            if self.model != "gaussian":
                raise ValueError(f"posterior {self.posterior!r} is a flow on Gaussian latents: use --model gaussian "
                                 "or drop --posterior")
            _positive_int("flow_steps", self.flow_steps)
            if self.kl == "analytic":
                raise ValueError(f"posterior {self.posterior!r} has no closed-form KL: use --kl mc (its default)")
            if self.estimator == "score-function" and self.posterior == "planar":
                raise ValueError("posterior 'planar' cannot train with the score function (its inverse carries no "
                                 "gradient): use --posterior iaf, affine or spline")
        if self.dataset == "mnist" and not self.data_dir:
            raise ValueError("dataset 'mnist' needs data_dir: pass --data-dir with the MNIST IDX files")

    @property
    def run_name(self) -> str:
        """The run folder's name without its time stamp: runs/vae/<model>[-<flow>]-<dataset>_s<seed>_<time>."""
        flow = f"-{self.posterior}" if self.posterior != "gaussian" else ""
        return f"{self.model}{flow}-{self.dataset}_s{self.seed}"
