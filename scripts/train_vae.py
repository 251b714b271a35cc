#!/usr/bin/env python
"""Train a VAE: the same command as ``reparam-vae`` (see ``python scripts/train_vae.py --help``)."""

from vae.cli import entry

if __name__ == "__main__":
    entry()
