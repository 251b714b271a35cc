"""The three experiments of ``reparam-bnn``, each a function of an open ``Run`` and the device."""

from .classify import run_classify
from .toy import run_toy, toy_curve, toy_data
from .uci import run_uci

TASK_FUNCTIONS = {"toy": run_toy, "uci": run_uci, "classify": run_classify}

__all__ = ["run_toy", "run_uci", "run_classify", "toy_curve", "toy_data", "TASK_FUNCTIONS"]
