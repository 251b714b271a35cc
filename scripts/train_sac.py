#!/usr/bin/env python
"""Train Soft Actor-Critic on a gymnasium env with a continuous action space (``reparam-sac``).

    python scripts/train_sac.py --env Pendulum-v1                       # RL-zoo defaults, 20k steps
    python scripts/train_sac.py --env Pendulum-v1 --out runs/p0 --resume  # continue an interrupted run
    python scripts/train_sac.py --help                                   # every option with its default

Everything else, the run folder included, is described in ``agents/cli.py`` and by ``--help``.
"""

from agents.cli import entry

if __name__ == "__main__":
    entry()
