#!/usr/bin/env python
"""Compare gradient estimators across domains: the same command as ``reparam-compare`` (see --help)."""

from compare.cli import entry

if __name__ == "__main__":
    entry()
