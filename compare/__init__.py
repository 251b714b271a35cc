"""compare: the reparameterization trick against the score function, measured on every domain's real objective.

    reparam-compare --quick          # or: python scripts/compare_domains.py --quick

Modules: ``config`` (CompareConfig), ``stats`` (bias z-test, variance, SNR against a reference),
``domains`` (toy, discrete, bnn, sac), ``digits_vae`` (the VAE domain and its learning curves), ``flows``
(the flow-posterior VAE and the flow policy), ``curves``, ``report`` (table, figures, reading a run back),
``cli`` (the entry point).
"""

from .config import DOMAINS, CompareConfig
from .report import read_curves, read_rows
from .stats import Row

__all__ = ["CompareConfig", "DOMAINS", "Row", "read_rows", "read_curves"]
