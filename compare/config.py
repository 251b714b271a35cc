"""The comparison's settings: one typed config, from which ``reparam-compare`` builds its flags and help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from reparam_apps import experiment as ex

__all__ = ["CompareConfig", "DOMAINS", "QUICK_REPEATS", "QUICK_CURVE_STEPS"]

DOMAINS = ("toy", "discrete", "vae", "bnn", "sac", "flows")
QUICK_REPEATS, QUICK_CURVE_STEPS = 120, 300  # --quick caps --repeats and --curve-steps at these


@dataclass
class CompareConfig(ex.TrainConfig):
    """Settings of one comparison run: which domains, how many estimates, how long the learning curves."""

    device: str = field(default="cpu", metadata={"cli": False})
    """Always the CPU: the compared tensors are small, and the timings compare estimators, not devices."""
    threads: int = 2
    """torch intra-op CPU threads (0: torch's default); the per-estimate timings depend on it."""
    quick: bool = False
    """Small budgets everywhere (--repeats at most 120, --curve-steps at most 300, shorter pre-training): a
    smoke run in about a minute on 2 CPU cores."""
    domains: tuple[str, ...] = field(default=DOMAINS, metadata={"metavar": "DOMAIN"})
    """Domains to measure, in the order given: toy, discrete, vae, bnn, sac, flows (the learning curves come
    with toy and vae)."""
    repeats: int = 400
    """Independent gradient estimates per estimator (the variance and bias are computed over them)."""
    n_samples: int = 4
    """Monte Carlo samples per gradient estimate, the same for every estimator (>= 2: leave-one-out
    baselines need two)."""
    reference_factor: int = 4
    """The reference gradient uses this many times more pathwise estimates where no exact one is known."""
    curve_steps: int = 1500
    """Optimisation steps of each VAE learning curve (whole epochs: rounded up); the toy curve uses 300."""

    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"threads"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.device != "cpu":
            raise ValueError(f"device must be 'cpu' for the comparison, got {self.device!r}")
        self.domains = tuple(self.domains)
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"domains must be one or more of {', '.join(DOMAINS)}, got {' '.join(self.domains)}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must not repeat, got {' '.join(self.domains)}")
        for name, low in (("repeats", 10), ("n_samples", 2), ("reference_factor", 1), ("curve_steps", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def scaled(self) -> CompareConfig:
        """The budgets actually used: --quick caps the repeats and the curve steps."""
        if self.quick:
            return dataclasses.replace(self, repeats=min(self.repeats, QUICK_REPEATS),
                                       curve_steps=min(self.curve_steps, QUICK_CURVE_STEPS))
        return self

    @property
    def run_name(self) -> str:
        """The run folder's name without its time stamp: runs/compare/<name>_s<seed>_<time>."""
        name = "all" if set(self.domains) == set(DOMAINS) else "-".join(self.domains)
        return f"{name}{'-quick' if self.quick else ''}_s{self.seed}"
