"""edgesched eval: compare policies on one device and scenario, on the identical job set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "eval", help="compare policies in the simulator on the same job set",
        description="Run each policy on the same job set (device, scenario, seed) and print a "
        "table with the misses of every priority class, whether the job set is feasible at all "
        "and, with the oracle, each row's energy floor; SPEC is performance, powersave, "
        "ondemand, conservative, schedutil, qlearn, qlearn:PATH, oracle or learned:PATH.")
    p.add_argument("--device", required=True, help="built-in profile name or profile file")
    p.add_argument("--scenario", required=True, help="built-in scenario name or scenario file")
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help="policy to run (repeat for several)")
    p.add_argument("--seed", type=int, default=0, help="seed of the job set, >= 0")
    p.add_argument("--duration-s", type=float, default=None,
                   help="simulated seconds (default: the scenario's)")
    p.add_argument("--json", metavar="OUT.json",
                   help="write the results as JSON (default: not written)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="write a Pareto view per priority class (energy vs miss rate); needs "
                        "the plot extra, pip install 'edgesched[plot]' (default: not drawn)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched.cli import check_output_path, check_positive, require_extra

    # everything that can be checked is checked before the (long) run
    check_positive("--seed", args.seed, zero_ok=True)
    if args.duration_s is not None:
        check_positive("--duration-s", args.duration_s)
    check_output_path("--json", args.json)
    check_output_path("--plot", args.plot)
    if args.plot:
        require_extra("plot", ["matplotlib"], "--plot")
    from edgesched.policy.registry import check_specs

    check_specs(args.policy, builtin=("oracle", "qlearn"))  # a mistyped name is an error
    from edgesched_sim.evaluate import evaluate, format_table, plot

    doc = evaluate(args.device, args.scenario, args.policy, seed=args.seed,
                   duration_s=args.duration_s)
    print(format_table(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(doc, args.plot)
    return 0
