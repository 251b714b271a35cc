#!/usr/bin/env python
"""Evaluate a SAC checkpoint: run N episodes and print mean +- std return.

    python scripts/enjoy_sac.py runs/sac/Pendulum-v1_s0/best.pt --episodes 10
    python scripts/enjoy_sac.py runs/sac/Pendulum-v1_s0            # a run folder: uses its best.pt
    python scripts/enjoy_sac.py CKPT --render rgb_array --video pendulum.gif   # needs imageio
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.sac import SAC, evaluate, make_env  # noqa: E402
from reparam_apps import UserError, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run a trained SAC policy and report its return.")
    p.add_argument("checkpoint", help="a .pt checkpoint, or a run folder (its best.pt, else latest.pt)")
    p.add_argument("--env", default=None, help="env id to check the checkpoint against (default: the checkpoint's)")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default: 10)")
    p.add_argument("--seed", type=int, default=10_000, help="episode i is reset with seed + i (default: 10000)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode (default: off)")
    p.add_argument("--render", choices=["rgb_array"], default=None,
                   help="render frames (default: off); saved to --video if imageio is installed")
    p.add_argument("--video", default="sac_episode.gif",
                   help="GIF/MP4 path for --render frames (default: sac_episode.gif)")
    p.add_argument("--device", default="cpu", help="device for the policy (default: cpu)")
    args = p.parse_args(argv)
    if args.episodes <= 0:
        raise UserError(f"--episodes must be positive, got {args.episodes}")
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "latest.pt"
    model = SAC.load(path, env=args.env, device=args.device, threads=0)
    env_id = model.config.env_id
    frames: list[np.ndarray] | None = [] if args.render else None
    env = make_env(env_id, render_mode=args.render)
    try:
        returns = evaluate(model, env, args.episodes, seed=args.seed, deterministic=not args.stochastic,
                           frames=frames)
    except gym.error.DependencyNotInstalled as err:  # rendering needs e.g. pygame for classic control
        raise UserError(f"--render needs an optional dependency: {str(err).strip().splitlines()[0]}") from None
    finally:
        env.close()
    print(f"{env_id}: {args.episodes} episodes, return {returns.mean():.1f} +- {returns.std():.1f} "
          f"(min {returns.min():.1f}, max {returns.max():.1f}; checkpoint step {model.num_timesteps})")
    if frames:
        try:
            import imageio.v2 as imageio
        except ImportError:
            print("--render: imageio is not installed, no video written (pip install imageio)", file=sys.stderr)
        else:
            try:
                imageio.mimsave(args.video, frames[::2], duration=40)
                print(f"wrote {len(frames[::2])} frames to {args.video}")
            except Exception as err:  # e.g. .mp4 without the ffmpeg plugin
                print(f"--render: could not write {args.video} ({err}); try a .gif path", file=sys.stderr)
    model.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
