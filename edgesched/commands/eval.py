"""edgesched eval: compare policies on one device and scenario, on the identical job set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "eval", help="compare policies in the simulator on the same job set",
        description="Run each policy on the same job set (device, scenario, seed) and print a "
        "table with the misses of every priority class, whether the job set is feasible at all "
        "and, with the oracle, each row's energy floor; SPEC is performance, powersave, "
        "ondemand, conservative, schedutil, qlearn, qlearn:PATH, oracle or learned:PATH.")
    p.add_argument("--device", required=True,
                   help="built-in profile name or profile file; random:SEED for a generated board "
                   "(edgesched_sim.randomise), heldout for the 20 held-out generated boards in "
                   "turn (never used in training)")
    p.add_argument("--scenario", required=True, help="built-in scenario name or scenario file")
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help="policy to run (repeat for several)")
    p.add_argument("--seed", type=int, default=0, help="seed of the job set, >= 0")
    p.add_argument("--duration-s", type=float, default=None,
                   help="simulated seconds (default: the scenario's)")
    p.add_argument("--no-guard", action="store_true",
                   help="run the learned policies and slack without the miss-budget guard "
                   "(default: guarded with the scenario's qos.miss_budget)")
    p.add_argument("--json", metavar="OUT.json",
                   help="write the results as JSON (default: not written)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="write a Pareto view per priority class (energy vs miss rate); needs "
                        "the plot extra, pip install 'edgesched[plot]' (default: not drawn)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched.cli import check_output_path, check_positive, require_extra
    from edgesched.errors import EdgeschedError, PolicyMismatchError

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
    from edgesched_sim.evaluate import dumps_json, evaluate, format_table, json_safe, plot
    from edgesched_sim.randomise import HELDOUT, resolve_devices

    boards = resolve_devices(args.device)
    if args.plot and len(boards) > 1:
        raise EdgeschedError("--plot draws one board; with --device heldout use --json")
    docs = []
    skipped: list[dict[str, str]] = []
    for board in boards:
        try:
            # figures with no finite value (nothing served, ...) become None: "-" in the table,
            # null in the JSON
            doc = json_safe(evaluate(board, args.scenario, args.policy, seed=args.seed,
                                     duration_s=args.duration_s, guard=not args.no_guard))
        except PolicyMismatchError as exc:
            if len(boards) == 1:
                raise
            # a policy whose observation cannot show this board: the other boards still run
            skipped.append({"device": board.name, "reason": str(exc)})
            print(f"{board.name}: skipped ({exc})\n")
            continue
        docs.append(doc)
        print(format_table(doc))
        if len(boards) > 1:
            print()
    if len(boards) > 1:
        print(heldout_summary(docs, len(boards)))
    if args.json:
        out: Any = (docs[0] if args.device != HELDOUT else
                    {"device": HELDOUT, "runs": docs, "skipped": skipped})
        Path(args.json).write_text(dumps_json(out) + "\n", encoding="utf-8")
    if args.plot:
        plot(docs[0], args.plot)
    return 0


def heldout_summary(docs: list[dict[str, Any]], boards: int) -> str:
    """Per policy over the boards that ran: mean energy vs schedutil (when it ran) and on how
    many boards it stayed inside every class's miss budget."""
    if not docs:
        return f"no board of {boards} could run every policy"
    names = [r["policy"] for r in docs[0]["results"] if r["policy"] != "oracle"]
    lines = [f"over {len(docs)} of {boards} boards (the others skipped, see above):"
             if len(docs) < boards else f"over {len(docs)} boards:"]
    for name in names:
        rows = [next(r for r in d["results"] if r["policy"] == name) for d in docs]
        inside = sum(all(r["within_budget"].values()) for r in rows)
        ratio = ""
        if name != "schedutil" and all(any(r["policy"] == "schedutil" for r in d["results"])
                                       for d in docs):
            refs = [next(r for r in d["results"] if r["policy"] == "schedutil") for d in docs]
            vals = [r["energy_j"] / s["energy_j"] for r, s in zip(rows, refs, strict=True)
                    if s["energy_j"] > 0]
            ratio = f", energy {sum(vals) / len(vals):.3f}x schedutil (mean)" if vals else ""
        lines.append(f"  {name}: inside every miss budget on {inside}/{len(docs)} boards{ratio}")
    return "\n".join(lines)
