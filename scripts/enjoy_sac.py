#!/usr/bin/env python
"""Evaluate a SAC checkpoint: run N episodes and print mean +- std return (``reparam-enjoy-sac``).

    python scripts/enjoy_sac.py runs/sac/Pendulum-v1_s0 --episodes 10   # the newest Pendulum-v1_s0 run's best.pt
    python scripts/enjoy_sac.py CKPT.pt --render rgb_array --video pendulum.gif   # needs imageio
"""

from agents.enjoy import entry

if __name__ == "__main__":
    entry()
