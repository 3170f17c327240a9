"""How a learned policy holds up off its training set: prints one JSON object.

Runs ``edgesched eval`` (``edgesched_sim.evaluate.evaluate``, miss-budget guard on as in
``edgesched eval``) of the policy, schedutil (with EAS and util_est), performance, slack,
slack-guarded and the oracle on every shipped board and every held-out generated board
(``edgesched_sim.randomise``, never drawn in training), over the four built-in scenarios and
``azure-conv``, with seeds that training does not use (default 5001 and 5002; training draws
its job sets from a seeded generator over 0..2^31, so a collision is possible but improbable).
Per run it records:

- ``misses_no_more``: the policy misses no more than schedutil in any priority class;
- ``budget_kept_where_performance_keeps``: in every class where ``performance`` stays inside the
  scenario's miss budget, the policy does too;
- ``gap_closed``: on feasible job sets, the share of the schedutil-to-floor energy gap the
  policy closes ((E_schedutil - E_policy) / (E_schedutil - E_oracle));
- ``vs_slack``: energy over slack's, and whether the policy misses no more than slack in any
  class; ``vs_slack_guarded`` the same against ``slack-guarded``.

``summary`` has, per board, the means of those figures, and overall the share of runs with no
more misses than schedutil, the share inside the budgets where performance is, the boards'
mean gap closed (mean and least over boards) and the boards where the policy spends less than
slack (``slack-guarded``) at no more misses on the mean. Nothing is compared with a fixed
figure: the verdicts are computed from this run.

Usage: python bench/generalisation.py [--policy learned:generic] [--seeds 5001,5002]
       [--duration-s 60] [--boards shipped,heldout] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from typing import Any

import numpy as np

from edgesched.device import builtin_profiles, load_profile
from edgesched_sim.evaluate import dumps_json, evaluate
from edgesched_sim.randomise import heldout_boards
from edgesched_sim.scenarios import BUILTIN_NAMES

TRACE = "azure-conv"
REFERENCES = {"slack": "slack", "slack-guarded": "slack_guarded"}
"""The analytic policies every run is compared with, and their keys in the output."""


def _no_more(row: dict[str, Any], ref: dict[str, Any]) -> bool:
    mine, theirs = row["miss_rate_by_priority"], ref["miss_rate_by_priority"]
    return all(mine.get(c, 0.0) <= theirs.get(c, 0.0) + 1e-12 for c in set(mine) | set(theirs))


def run_one(device: Any, scenario: str, seed: int, policy: str,
            duration_s: float | None) -> dict[str, Any]:
    specs = list(dict.fromkeys([policy, "schedutil", "performance", *REFERENCES, "oracle"]))
    doc = evaluate(device, scenario, specs, seed=seed, duration_s=duration_s)
    rows = {r["policy"]: r for r in doc["results"]}
    mine, su, perf, sl = rows[policy], rows["schedutil"], rows["performance"], rows["slack"]
    floor_j = rows["oracle"]["energy_j"] if doc["feasible"] else None
    gap = (None if floor_j is None or su["energy_j"] - floor_j <= 0
           else (su["energy_j"] - mine["energy_j"]) / (su["energy_j"] - floor_j))
    kept = all(mine["within_budget"].get(c, True) for c, ok in perf["within_budget"].items() if ok)
    run = {
        "board": doc["device"], "scenario": scenario, "seed": seed, "feasible": doc["feasible"],
        "energy_j": mine["energy_j"], "schedutil_j": su["energy_j"], "slack_j": sl["energy_j"],
        "floor_j": floor_j,
        "miss_rate_by_priority": mine["miss_rate_by_priority"],
        "schedutil_miss_rate_by_priority": su["miss_rate_by_priority"],
        "slack_miss_rate_by_priority": sl["miss_rate_by_priority"],
        "misses_no_more": _no_more(mine, su),
        "budget_kept_where_performance_keeps": kept,
        "gap_closed": gap,
        "vs_schedutil": mine["energy_j"] / su["energy_j"],
    }
    for ref, key in REFERENCES.items():
        run[f"vs_{key}"] = mine["energy_j"] / rows[ref]["energy_j"]
        run[f"misses_no_more_than_{key}"] = _no_more(mine, rows[ref])
    return run


def _mean(xs: list[float]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    boards: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["board"] for r in runs):
        mine = [r for r in runs if r["board"] == name]
        board: dict[str, Any] = {
            "runs": len(mine),
            "misses_no_more_share": float(np.mean([r["misses_no_more"] for r in mine])),
            "budget_kept_share": float(np.mean([r["budget_kept_where_performance_keeps"]
                                                for r in mine])),
            "gap_closed_mean": _mean([r["gap_closed"] for r in mine]),
            "feasible_runs": sum(r["feasible"] for r in mine),
            "vs_schedutil_mean": _mean([r["vs_schedutil"] for r in mine]),
        }
        for key in REFERENCES.values():
            ratio = _mean([r[f"vs_{key}"] for r in mine])
            no_more = [r[f"misses_no_more_than_{key}"] for r in mine]
            board[f"vs_{key}_mean"] = ratio
            board[f"misses_no_more_than_{key}_share"] = float(np.mean(no_more))
            board[f"beats_{key}"] = bool(ratio is not None and ratio < 1.0 and all(no_more))
        boards[name] = board
    gaps = [b["gap_closed_mean"] for b in boards.values() if b["gap_closed_mean"] is not None]
    return {
        "runs": len(runs),
        "misses_no_more_share": float(np.mean([r["misses_no_more"] for r in runs])),
        "budget_kept_share": float(np.mean([r["budget_kept_where_performance_keeps"]
                                            for r in runs])),
        "board_gap_closed_mean": float(np.mean(gaps)) if gaps else None,
        "board_gap_closed_min": float(np.min(gaps)) if gaps else None,
        **{f"boards_beating_{key}": [n for n, b in boards.items() if b[f"beats_{key}"]]
           for key in REFERENCES.values()},
        "boards": boards,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="learned:generic")
    ap.add_argument("--seeds", default="5001,5002")
    ap.add_argument("--duration-s", type=float, default=60.0,
                    help="simulated seconds of the built-in scenarios (azure-conv runs whole)")
    ap.add_argument("--boards", default="shipped,heldout")
    ap.add_argument("--out", help="also write the document here")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    devices: list[Any] = []
    for group in args.boards.split(","):
        if group == "shipped":
            devices += [load_profile(n) for n in builtin_profiles()]
        elif group == "heldout":
            devices += heldout_boards()
        else:
            devices.append(load_profile(group))
    t0 = time.perf_counter()
    runs = []
    for dev, sc, seed in itertools.product(devices, [*BUILTIN_NAMES, TRACE], seeds):
        runs.append(run_one(dev, sc, seed, args.policy,
                            None if sc == TRACE else args.duration_s))
        print(f"{dev.name} {sc} {seed}", file=sys.stderr, flush=True)
    doc = {"policy": args.policy, "seeds": seeds, "duration_s": args.duration_s,
           "scenarios": [*BUILTIN_NAMES, TRACE], "summary": summarise(runs), "runs": runs,
           "elapsed_s": time.perf_counter() - t0}
    text = dumps_json(doc)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(json.dumps(doc["summary"], indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
