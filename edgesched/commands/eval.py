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
        "table; SPEC is performance, powersave, ondemand, conservative, schedutil, qlearn, "
        "qlearn:PATH, oracle or learned:PATH.")
    p.add_argument("--device", required=True, help="built-in profile name or profile file")
    p.add_argument("--scenario", required=True, help="built-in scenario name or scenario file")
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help="policy to run (repeat for several)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration-s", type=float, default=None,
                   help="simulated seconds (default: the scenario's)")
    p.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write energy/inference vs miss rate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched_sim.evaluate import evaluate, format_table, plot

    doc = evaluate(args.device, args.scenario, args.policy, seed=args.seed,
                   duration_s=args.duration_s)
    print(format_table(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(doc, args.plot)
    return 0
