"""edgesched train: train a policy in the simulator with stable-baselines3 (needs the train extra)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "train", help="train a learned policy in the simulator (pip install 'edgesched[train]')",
        description="Train with stable-baselines3 and write NAME.npz + NAME.json (numpy weights "
        "and a manifest). Several --device values (or 'all') train one generic policy with "
        "domain randomisation.")
    p.add_argument("--device", action="append", required=True, metavar="NAME_OR_PATH",
                   help="device profile (repeat, or 'all' for every shipped profile)")
    p.add_argument("--scenario", action="append", metavar="NAME_OR_PATH",
                   help="scenario (repeat; default: the built-in ones)")
    p.add_argument("--algo", choices=("ppo", "maskable-ppo", "dqn"), default="ppo",
                   help="stable-baselines3 algorithm (maskable-ppo: sb3-contrib's)")
    p.add_argument("--timesteps", type=int, default=600_000, help="training steps, > 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the environments and the net")
    p.add_argument("--n-envs", type=int, default=4, help="vectorised environments, > 0")
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                   help="evaluate against schedutil every STEPS timesteps (0: never)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="TensorBoard log dir, if tensorboard is installed (default: no log)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true",
                   help="after training, evaluate over the built-in scenarios x 5 seeds against "
                   "every baseline and write NAME.eval.json and NAME.eval.png (needs the plot "
                   "extra too)")
    p.add_argument("--out", required=True, help="output path without suffix, e.g. policies/rk3399")
    p.set_defaults(func=run)


TRAIN_MODULES = ("torch", "stable_baselines3")
"""What training imports from the train extra (sb3_contrib too for maskable-ppo; the progress
bar's tqdm and rich are optional)."""


def run(args: argparse.Namespace) -> int:
    from edgesched.cli import check_positive, require_extra

    # checked before anything is imported or trained: a bad value must not cost a run
    check_positive("--timesteps", args.timesteps)
    check_positive("--n-envs", args.n_envs)
    check_positive("--eval-every", args.eval_every, zero_ok=True)
    check_positive("--seed", args.seed, zero_ok=True)
    modules = list(TRAIN_MODULES)
    if args.algo == "maskable-ppo":
        modules.append("sb3_contrib")
    require_extra("train", modules, "edgesched train")
    if args.report:
        require_extra("plot", ["matplotlib"], "edgesched train --report")
    from edgesched_sim.scenarios import BUILTIN_NAMES
    from edgesched_sim.train import TrainConfig, expand_devices, train

    cfg = TrainConfig(devices=expand_devices(args.device),
                      scenarios=args.scenario or list(BUILTIN_NAMES), algo=args.algo,
                      timesteps=args.timesteps, seed=args.seed, n_envs=args.n_envs,
                      eval_every=args.eval_every)
    manifest = train(cfg, args.out, progress=not args.no_progress,
                     tensorboard_log=args.tensorboard)
    print(f"wrote {manifest} and its weights")
    if args.report:
        from edgesched_sim.report import write_report

        path = write_report(args.out, cfg.devices)
        print(f"wrote {path}")
    return 0
