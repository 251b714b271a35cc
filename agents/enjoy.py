"""Evaluate a SAC checkpoint: run N episodes and print mean +- std return.

    python scripts/enjoy_sac.py runs/sac/Pendulum-v1_s0_20250101-120000 --episodes 10  # a run folder: its best.pt
    python scripts/enjoy_sac.py runs/sac/Pendulum-v1_s0      # a run name: the newest runs/sac/Pendulum-v1_s0_*
    python scripts/enjoy_sac.py CKPT.pt --render rgb_array --video pendulum.gif   # needs imageio
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

import gymnasium as gym
import numpy as np

from reparam_apps import experiment as ex

from .envs import make_env
from .evaluation import evaluate_policy
from .sac import SAC

__all__ = ["main", "entry", "build_parser", "resolve_checkpoint"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 through run_cli
        raise ex.UserError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .pt checkpoint, a run folder (its best.pt, else latest.pt), or a run name "
                                      "without its time stamp (the newest such run folder)")
    p.add_argument("--env", default=None, help="env id to check the checkpoint against (default: the checkpoint's)")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default: 10)")
    p.add_argument("--seed", type=int, default=10_000, help="episode i is reset with seed + i (default: 10000)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode (default: off)")
    p.add_argument("--render", choices=["rgb_array"], default=None,
                   help="render frames (default: off); saved to --video if imageio is installed")
    p.add_argument("--video", default="sac_episode.gif",
                   help="GIF/MP4 path for --render frames (default: sac_episode.gif)")
    p.add_argument("--device", default="cpu", help="device for the policy (default: cpu)")
    return p


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given; a run folder's best.pt (else latest.pt); for a path that does not exist, the
    newest run folder named ``<path>_<time>`` (how ``reparam-sac`` names them) that holds a checkpoint."""
    if not path.exists():
        runs = sorted(p for p in path.parent.glob(f"{path.name}_*") if p.is_dir() and _in_folder(p) is not None)
        if runs:
            print(f"using the newest run {runs[-1]}", file=sys.stderr)
            path = runs[-1]
    if path.is_dir():
        found = _in_folder(path)
        if found is None:
            raise ex.UserError(f"{path} holds no best.pt or latest.pt: pass a checkpoint file or a run folder")
        return found
    return path


def _in_folder(folder: Path) -> Path | None:
    for name in ("best.pt", "latest.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.episodes <= 0:
        raise ex.UserError(f"--episodes must be positive, got {args.episodes}")
    path = resolve_checkpoint(Path(args.checkpoint))
    model = SAC.load(path, env=args.env, device=args.device, threads=0)
    env_id = model.config.env_id
    frames: list[np.ndarray] | None = [] if args.render else None
    env = make_env(env_id, render_mode=args.render)
    try:
        returns = evaluate_policy(model, env, args.episodes, seed=args.seed, deterministic=not args.stochastic,
                                  frames=frames)
    except gym.error.DependencyNotInstalled as err:  # rendering needs e.g. pygame for classic control
        raise ex.UserError(f"--render needs an optional dependency: {str(err).strip().splitlines()[0]}") from None
    finally:
        env.close()
        model.close()
    print(f"{env_id}: {args.episodes} episodes, return {returns.mean():.1f} +- {returns.std():.1f} "
          f"(min {returns.min():.1f}, max {returns.max():.1f}; checkpoint step {model.num_timesteps})")
    if frames:
        _write_video(frames, args.video)
    return 0


def _write_video(frames: list[np.ndarray], path: str) -> None:
    try:
        import imageio.v2 as imageio
    except ImportError:
        print("--render: imageio is not installed, no video written (pip install imageio)", file=sys.stderr)
        return
    try:
        imageio.mimsave(path, frames[::2], duration=40)
        print(f"wrote {len(frames[::2])} frames to {path}")
    except Exception as err:  # e.g. .mp4 without the ffmpeg plugin
        print(f"--render: could not write {path} ({err}); try a .gif path", file=sys.stderr)


def entry() -> None:
    """Console script ``reparam-enjoy-sac``."""
    ex.run_cli(main)


if __name__ == "__main__":
    entry()
