"""The experiment spine every domain uses: config -> CLI, the run folder, checkpoints, progress, guards.

An entry point is a few lines::

    cli = parse_cli(MyConfig, argv, description=__doc__)
    run = start_or_resume("mydomain", cli, name=lambda c: f"{c.task}_s{c.seed}")
    state = run.load_checkpoint("mydomain")  # None for a fresh run
    ...  # train; run.log(row); run.save_checkpoint(state, "mydomain", step, check=[model])
"""

from . import distributed
from .checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint, previous_path, save_checkpoint
from .cli import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli
from .config import (
    ParsedCLI,
    RunOptions,
    TrainConfig,
    build_config,
    build_parser,
    config_from_dict,
    config_to_dict,
    field_docs,
    flag_name,
    parse_cli,
)
from .distributed import DistInfo, init_distributed
from .errors import CheckpointError, DivergenceError, UserError
from .guard import check_finite_parameters, check_finite_values
from .metrics import MetricsCSV
from .plotting import plot_curves, save_figure, subplots
from .progress import Progress, format_duration
from .run import CHECKPOINT, Run, command_line, start_or_resume

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "load_checkpoint", "save_checkpoint", "previous_path",
    "run_cli", "EXIT_USER_ERROR", "EXIT_DIVERGED", "EXIT_INTERRUPTED",
    "ParsedCLI", "RunOptions", "TrainConfig", "build_config", "build_parser", "config_from_dict", "config_to_dict",
    "field_docs", "flag_name", "parse_cli",
    "CheckpointError", "DivergenceError", "UserError",
    "check_finite_parameters", "check_finite_values",
    "MetricsCSV", "plot_curves", "save_figure", "subplots", "Progress", "format_duration",
    "CHECKPOINT", "Run", "command_line", "start_or_resume", "DistInfo", "init_distributed", "distributed",
]
