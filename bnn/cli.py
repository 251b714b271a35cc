"""Train Bayes-by-Backprop networks (the bnn package) on three tasks.

    reparam-bnn toy                                  # Blundell's regression curve + PNG
    reparam-bnn uci --dataset boston --data-dir ../shared/data/uci
    reparam-bnn classify --dataset digits            # embedded 8x8 digits
    reparam-bnn classify --dataset mnist --data-dir ../shared/data/mnist
    reparam-bnn --out runs/bnn/classify-digits_s0_20250101-120000 --resume    # continue a stopped run

Each run writes a folder (default runs/bnn/<task>[-<dataset>]_s<seed>_<time>): config.json, metrics.csv,
speed.csv (wall clock), latest.pt (the checkpoint), log.txt, PNG plots and summary.json.

Past one process (docs/scale.md): the uci splits on N processes with --workers N; toy and classify data
parallel under torchrun (--batch-size stays the global batch; only rank 0 writes):

    reparam-bnn uci --dataset boston --data-dir ../shared/data/uci --workers 2
    torchrun --nproc-per-node 2 $(which reparam-bnn) classify --dataset mnist --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from reparam_apps import experiment as ex
from reparam_apps.experiment import distributed as D
from reparam_apps.utils import seed_everything, select_device, set_threads

from .config import TASKS, BNNConfig

__all__ = ["main", "entry", "LOG_EVERY"]

# --log-every per task, in epochs: toy trains 3000 short epochs, uci logs within each split, classify's
# epochs are long enough to test and checkpoint each one
LOG_EVERY = {"toy": 10, "uci": 10, "classify": 1}
EPILOG = textwrap.fill("--log-every (epochs between metrics rows, status lines and, for toy and classify, checkpoints) "
          "defaults to " + ", ".join(f"{t} {n}" for t, n in LOG_EVERY.items()) + ". A uci run checkpoints "
          "after each split; a resumed uci run restarts its unfinished split from that split's start.", width=100)


class _UCIResume(BNNConfig):
    """A uci run trained its finished splits for --epochs each: more epochs would mix two protocols in one
    table, so its resume takes more --splits, not more --epochs."""

    MAY_CHANGE_ON_RESUME = frozenset({"splits", "device", "threads", "workers"})


def _parse(argv: Sequence[str]) -> ex.ParsedCLI:
    """The command line, with --log-every's default taken from the typed task (so ``toy --help`` shows it)."""
    probe = [a for a in argv if a not in ("-h", "--help")]
    try:
        task = ex.parse_cli(BNNConfig, probe).given.get("task")
    except ex.UserError:
        task = None  # the real parse below reports it
    return ex.parse_cli(BNNConfig, argv, description=__doc__, epilog=EPILOG, log_every=LOG_EVERY.get(task, 1))


def _saved_task(cli: ex.ParsedCLI) -> str | None:
    """The task of the run --resume will continue: the one in --out's config.json, else the typed one
    (without --out, --resume looks for a run of the typed task's name)."""
    if cli.options.out is None:
        return ex.build_config(BNNConfig, cli.given).task
    try:
        return json.loads((Path(cli.options.out) / "config.json").read_text())["config"]["task"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # start_or_resume names what is wrong with the folder


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, open (or resume) the run folder, run the task. Returns the exit code (130 after a saved Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = _parse(argv)
    if not cli.options.resume and "task" not in cli.given:
        raise ex.UserError(f"name the task: {', '.join(TASKS)} (or continue a run with --out FOLDER --resume; "
                           "see --help)")
    task = _saved_task(cli) if cli.options.resume else cli.given["task"]
    if cli.options.resume and task == "uci":
        cli.config_cls = _UCIResume
    info, _ = D.init_distributed()  # under torchrun: join the group (one process otherwise, unchanged)
    try:
        if info.distributed and task == "uci":
            raise ex.UserError(f"uci under torchrun ({info.world_size} processes): its splits are independent "
                               "networks; run it as one command with --workers N instead")
        if not cli.options.resume:  # refused before a folder is made; the data size is checked by the Trainer
            typed = ex.build_config(BNNConfig, cli.given)
            D.check_world_size(typed.n_train if task == "toy" else None, typed.batch_size, info)
        run = ex.start_or_resume("bnn", cli, name=lambda c: c.run_name, dist_info=info)
        cfg = run.config
        seed_everything(cfg.seed)
        set_threads(cfg.threads)
        device = D.rank_device(select_device(cfg.device), info)
        from .tasks import TASK_FUNCTIONS  # here: the tasks import plotting and data code --help does not need

        code = TASK_FUNCTIONS[cfg.task](run, device, dist_info=info)
        run.close()
        if code is not None:
            return code
        if run.writable:
            print(f"run folder: {run.path}")
        return 0
    finally:
        D.shutdown(info, wait=sys.exc_info()[0] is None)


def entry() -> None:
    """The ``reparam-bnn`` console command."""
    ex.run_cli(main)
