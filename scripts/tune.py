"""Tune a domain's hyperparameters or evaluate one configuration over many seeds (the ``reparam-tune`` command).

    python scripts/tune.py --domain sac --n-trials 30 -- --env Pendulum-v1 --total-steps 20000

See ``python scripts/tune.py --help`` and docs/scale.md.
"""

from reparam_apps.tune_cli import entry

if __name__ == "__main__":
    entry()
