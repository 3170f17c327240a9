"""``edgesched fit``: fit a device profile to a measurements CSV (no board needed).

For measurements from an external meter or a published table, in the CSV shape ``edgesched
calibrate --csv`` writes (columns cluster, freq_khz, model, latency_ms, busy_power_w,
idle_power_w; see ``edgesched/fit.py``). With ``--holdout`` a fraction of each (cluster, model)
group's rows is left out of the fit and predicted, and the prediction error is reported.

``--power-scope board`` (the default): the power columns are the whole board's (a meter on the
supply). ``--power-scope cluster``: they are each row's cluster's own rail (an INA231 on the
Odroid-XU3's A15 and A7 supplies), so idle readings are that cluster's leakage at the OPP and the
leakage's voltage dependence is fitted. ``--json OUT`` writes the fitted numbers and the RMS
relative error per quantity over fitted and held-out rows (``holdout_rms``: latency,
busy_power, idle_power, active_power) and the measured and fitted active power per frequency.

Example (rows shipped in ``edgesched/data/measurements/``)::

    edgesched fit --measurements edgesched/data/measurements/xu3_rails.csv --base exynos5422 \\
        --power-scope cluster --holdout 0.2 --out xu3.json --json xu3-fit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

POWER_SCOPES = ("board", "cluster")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fit", help="fit a device profile to a measurements CSV",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measurements", type=Path, required=True, metavar="CSV",
                   help="measurements (cluster, freq_khz, model, latency_ms, busy_power_w, "
                        "idle_power_w)")
    p.add_argument("--base", required=True, metavar="PROFILE",
                   help="built-in name or profile file: clusters, device-tree voltages and "
                        "whatever the measurements do not cover")
    p.add_argument("--out", type=Path, required=True, metavar="PROFILE",
                   help="where to write the fitted profile (JSON)")
    p.add_argument("--power-scope", choices=POWER_SCOPES, default="board",
                   help="board: power columns are the whole board's (default); cluster: they "
                        "are each row's cluster rail")
    p.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="also write the fitted numbers and the RMS relative error per quantity "
                        "(holdout_rms) as JSON (default: none)")
    p.add_argument("--holdout", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of rows to hold out and predict (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the hold-out draw, >= 0 (default 0)")
    p.add_argument("--name", help="name of the fitted profile (default: the --out file stem)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from edgesched.cli import check_output_path, check_positive
    from edgesched.device import load_profile
    from edgesched.fit import fit_profile, format_summary, read_measurements, split_holdout

    check_positive("--seed", args.seed, zero_ok=True)
    check_output_path("--out", args.out)
    if args.json is not None:
        check_output_path("--json", args.json)
    base = load_profile(args.base)
    rows = read_measurements(args.measurements)
    train, held = split_holdout(rows, args.holdout, args.seed)
    result = fit_profile(train, base, name=args.name or args.out.stem,
                         source=str(args.measurements), holdout=held,
                         meta={"holdout_fraction": args.holdout, "seed": args.seed},
                         power_scope=args.power_scope)
    args.out.write_text(json.dumps(result.document(), indent=1) + "\n", encoding="utf-8")
    print(format_summary(result))
    print(f"wrote {args.out}")
    if args.json is not None:
        report = {**result.report(), "measurements": str(args.measurements),
                  "base": args.base, "holdout_fraction": args.holdout, "seed": args.seed}
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
