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
                   help="device profile (repeat, or 'all' for every shipped profile, or 'random' "
                   "for a generated board and workload per episode, never a held-out one)")
    p.add_argument("--miss-budget", metavar="P1,P2,P3",
                   help="train the per-class miss budgets as constraints (Lagrangian PPO): "
                   "'default' (0.001,0.01,0.05) or three fractions (default: fixed miss weights)")
    p.add_argument("--miss-reference", choices=("schedutil",),
                   help="train the constraint 'each class misses no more than this baseline on "
                   "the same job sets' (Lagrangian PPO; the budgets, default or --miss-budget, "
                   "then only scale the multipliers' steps; default: no reference)")
    p.add_argument("--reference-per-episode", action="store_true",
                   help="with --miss-reference: constrain each episode's misses beyond the "
                   "baseline's in the same episode, not the pooled miss rates")
    p.add_argument("--scenario", action="append", metavar="NAME_OR_PATH",
                   help="scenario (repeat; default: the built-in ones)")
    p.add_argument("--algo", choices=("ppo", "maskable-ppo", "dqn"), default="maskable-ppo",
                   help="stable-baselines3 algorithm (default maskable-ppo, sb3-contrib's: it "
                   "samples among the decision's safe actions only, as the policy runs)")
    p.add_argument("--imitate-slack", type=int, default=0, metavar="DECISIONS",
                   help="warm start: first fit the network to slack's choices on this many "
                   "decisions of the training distribution (0: random start)")
    p.add_argument("--hidden", default="64,64", metavar="N,N",
                   help="hidden layer widths (default: 64,64)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="PPO learning rate, > 0")
    p.add_argument("--ent-coef", type=float, default=0.01, help="PPO entropy bonus, >= 0")
    p.add_argument("--builtin-share", type=float, default=0.5, metavar="SHARE",
                   help="with --device random: share of episodes on a shipped board and a "
                   "--scenario instead of a generated one, in [0, 1] (default: 0.5)")
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
    sw = p.add_argument_group(
        "sweeps", "--sweep trains --trials configurations drawn from a search space with Ray Tune, "
        "scores each against schedutil on validation seeds, writes the best as NAME.npz + "
        "NAME.json and every trial to NAME.sweep.json (docs/training-sweeps.md); --seed then "
        "seeds the sampler")
    sw.add_argument("--sweep", action="store_true", help="run a hyper-parameter and seed sweep")
    sw.add_argument("--sweep-config", metavar="FILE",
                    help="TOML or JSON file overriding the search space and scoring (default: the "
                    "built-in space)")
    sw.add_argument("--trials", type=int, metavar="N", help="trials in the sweep, > 0 (default: 8)")
    sw.add_argument("--cpus-per-trial", type=float, metavar="CPUS",
                    help="CPUs Ray reserves for each trial, > 0 (default: 1)")
    sw.add_argument("--ray-address", metavar="ADDRESS",
                    help="join this Ray cluster ('auto': the one 'ray start' runs here; default: "
                    "start a local Ray on this machine)")
    p.set_defaults(func=run)


TRAIN_MODULES = ("torch", "stable_baselines3")
"""What training imports from the train extra (sb3_contrib too for maskable-ppo; the progress
bar's tqdm and rich are optional)."""


def parse_miss_budget(spec: str | None) -> dict[int, float] | None:
    """``--miss-budget``: None, 'default' or 'P1,P2,P3' (fractions in [0, 1))."""
    from edgesched.errors import EdgeschedError
    from edgesched.qos import DEFAULT_BUDGETS

    if spec is None:
        return None
    if spec == "default":
        return dict(DEFAULT_BUDGETS)
    parts = spec.split(",")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0.0 <= v < 1.0 for v in values):
        raise EdgeschedError(f"--miss-budget: expected 'default' or three fractions in [0, 1) "
                             f"for priorities 1,2,3 such as 0.001,0.01,0.05, got {spec!r}")
    return {1: values[0], 2: values[1], 3: values[2]}


def run(args: argparse.Namespace) -> int:
    from edgesched.cli import check_positive, require_extra
    from edgesched.errors import EdgeschedError

    # checked before anything is imported or trained: a bad value must not cost a run
    check_positive("--timesteps", args.timesteps)
    check_positive("--n-envs", args.n_envs)
    check_positive("--eval-every", args.eval_every, zero_ok=True)
    check_positive("--seed", args.seed, zero_ok=True)
    check_positive("--imitate-slack", args.imitate_slack, zero_ok=True)
    check_positive("--learning-rate", args.learning_rate)
    check_positive("--ent-coef", args.ent_coef, zero_ok=True)
    if not 0.0 <= args.builtin_share <= 1.0:
        raise EdgeschedError(f"--builtin-share must be in [0, 1], got {args.builtin_share}")
    try:
        hidden = tuple(int(x) for x in args.hidden.split(","))
    except ValueError:
        hidden = ()
    if not hidden or min(hidden) <= 0:
        raise EdgeschedError(f"--hidden: expected widths such as 64,64, got {args.hidden!r}")
    budget = parse_miss_budget(args.miss_budget)
    if args.reference_per_episode and args.miss_reference is None:
        raise EdgeschedError("--reference-per-episode needs --miss-reference schedutil")
    if args.report and "random" in args.device:
        raise EdgeschedError("--report evaluates on the training devices; with --device random "
                             "evaluate on the held-out boards instead: edgesched eval --device "
                             "heldout --scenario NAME --policy learned:OUT --policy schedutil")
    if args.sweep:
        return _run_sweep(args)
    for flag, value in (("--sweep-config", args.sweep_config), ("--trials", args.trials),
                        ("--cpus-per-trial", args.cpus_per_trial),
                        ("--ray-address", args.ray_address)):
        if value is not None:
            raise EdgeschedError(f"{flag} is a sweep option; add --sweep")
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
                      eval_every=args.eval_every, miss_budget=budget, hidden=hidden,
                      learning_rate=args.learning_rate, ent_coef=args.ent_coef,
                      builtin_share=args.builtin_share, imitate_steps=args.imitate_slack,
                      miss_reference=args.miss_reference,
                      reference_per_episode=args.reference_per_episode)
    manifest = train(cfg, args.out, progress=not args.no_progress,
                     tensorboard_log=args.tensorboard)
    print(f"wrote {manifest} and its weights")
    if args.report:
        from edgesched_sim.report import write_report

        path = write_report(args.out, cfg.devices)
        print(f"wrote {path}")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    """``edgesched train --sweep``: see :mod:`edgesched_sim.sweep`."""
    from edgesched.cli import check_positive, require_extra
    from edgesched.errors import EdgeschedError

    trials = 8 if args.trials is None else args.trials
    cpus = 1.0 if args.cpus_per_trial is None else args.cpus_per_trial
    check_positive("--trials", trials)
    check_positive("--cpus-per-trial", cpus)
    for flag, used in (("--eval-every", args.eval_every), ("--tensorboard", args.tensorboard)):
        if used:
            raise EdgeschedError(f"{flag} is not available with --sweep; every trial is scored "
                                 "after training instead")
    modules = [*TRAIN_MODULES, "ray"]
    if args.algo == "maskable-ppo":
        modules.append("sb3_contrib")
    require_extra("train", modules, "edgesched train --sweep")
    if args.report:
        require_extra("plot", ["matplotlib"], "edgesched train --report")
    from edgesched_sim.scenarios import BUILTIN_NAMES
    from edgesched_sim.sweep import SweepConfig, apply_sweep_file, run_sweep
    from edgesched_sim.train import expand_devices

    cfg = SweepConfig(devices=expand_devices(args.device),
                      scenarios=args.scenario or list(BUILTIN_NAMES), algo=args.algo,
                      timesteps=args.timesteps, n_envs=args.n_envs, trials=trials,
                      cpus_per_trial=cpus, sampler_seed=args.seed,
                      miss_budget=parse_miss_budget(args.miss_budget))
    if args.sweep_config:
        cfg = apply_sweep_file(cfg, args.sweep_config)
    manifest = run_sweep(cfg, args.out, ray_address=args.ray_address)
    print(f"wrote {manifest}, its weights and {manifest.with_suffix('')}.sweep.json")
    if args.report:
        from edgesched_sim.report import write_report

        path = write_report(args.out, cfg.devices)
        print(f"wrote {path}")
    return 0
