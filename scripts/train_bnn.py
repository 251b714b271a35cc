#!/usr/bin/env python
"""Train Bayes-by-Backprop networks on three tasks (the same as the ``reparam-bnn`` command; see --help).

    python scripts/train_bnn.py toy
    python scripts/train_bnn.py uci --dataset boston --data-dir ../shared/data/uci
    python scripts/train_bnn.py classify --dataset digits
"""

from bnn.cli import entry

if __name__ == "__main__":
    entry()
