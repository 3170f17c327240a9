"""``edgesched calibrate``: measure this board and write a fitted device profile.

For each cpufreq policy and each of its OPPs: set the frequency (a lease: every setting is
restored afterwards, also on Ctrl-C), pin to the cluster's CPUs, run each model ``--runs`` times
and keep the median latency, and read busy and idle power where a sensor exists. Writes the raw
rows (``--csv``) and the profile fitted to them (``--out``), printing each quantity's fit error.

Examples::

    edgesched calibrate --models models/ --board sysfs:rk3399 --out rockpro64.json --csv raw.csv
    edgesched calibrate --models models/ --board virtual:rk3399 --out check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgesched.power.cpufreq import DEFAULT_STATE_DIR


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate", help="measure latency and power at every OPP and fit a device profile",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True, metavar="DIR",
                   help="folder of .tflite models to measure with")
    p.add_argument("--board", metavar="SPEC",
                   help="virtual:PROFILE or sysfs:PROFILE (default sysfs:BASE)")
    p.add_argument("--base", metavar="PROFILE",
                   help="profile giving the clusters, device-tree voltages and what is not "
                        "measured (default: the board's profile)")
    p.add_argument("--sysfs-root", type=Path, default=None, metavar="DIR",
                   help="sysfs root for cpufreq and power sensors, for a sysfs: board (or "
                        "--power-sensor rapl) only (default /sys)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the saved cpufreq settings live (default {DEFAULT_STATE_DIR})")
    p.add_argument("--runtime-dir", type=Path, default=None, metavar="DIR",
                   help="where a virtual board keeps its tree (default: a temporary folder)")
    p.add_argument("--power-sensor", default="auto", metavar="KIND",
                   help="auto | rapl | hwmon:PATH | virtual | none (default auto: the virtual "
                        "board's model on a virtual board, else RAPL or hwmon if present)")
    p.add_argument("--power-scope", choices=("board", "cluster"), default="board",
                   help="board: one meter for the whole board (--power-sensor; default); "
                        "cluster: each cluster's own supply rail from the INA2xx/INA3221 hwmon "
                        "channels under the sysfs root (e.g. the Odroid-XU3's INA231s)")
    p.add_argument("--rail", action="append", default=[], metavar="CLUSTER=LABEL",
                   help="with --power-scope cluster: the hwmon channel label of a cluster's "
                        "rail, when its label does not name the cluster (repeatable)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model and OPP (default 5)")
    p.add_argument("--min-window-s", type=float, default=0.1,
                   help="keep running a model at an OPP until this much board time has passed "
                        "(default 0.1; at most 2000 runs)")
    p.add_argument("--warmup-runs", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--idle-s", type=float, default=0.5,
                   help="seconds of idle power reading per OPP (default 0.5)")
    p.add_argument("--num-threads", type=int, default=1,
                   help="interpreter threads (default 1: the fit assumes one busy CPU)")
    p.add_argument("--out", type=Path, required=True, metavar="PROFILE",
                   help="where to write the fitted profile (JSON)")
    p.add_argument("--csv", type=Path, metavar="OUT.csv",
                   help="also write the raw measurements (default: not written)")
    p.add_argument("--name", help="name of the fitted profile (default: the --out file stem)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least level logged")
    p.set_defaults(func=run)
    return p


def _progress(msg: str) -> None:
    print(f"calibrate: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from edgesched.calibrate import (
        AffinityPinner,
        EmulatedClock,
        TfliteWorkload,
        calibrate,
        open_meter,
        open_rail_meters,
    )
    from edgesched.cli import check_output_path, check_positive
    from edgesched.device import load_profile
    from edgesched.errors import ConfigError
    from edgesched.fit import fit_profile, format_summary, write_measurements
    from edgesched.power.backends import open_board, parse_spec
    from edgesched.server.runner import load_models

    logging.basicConfig(level=args.log_level.upper(),
                        format="edgesched calibrate: %(levelname)s %(message)s")
    log = logging.getLogger("edgesched.calibrate")
    if args.board is None and args.base is None:
        raise ConfigError("give --board SPEC (virtual:PROFILE or sysfs:PROFILE) or --base "
                          "PROFILE (then the board is sysfs:PROFILE)")
    spec = args.board or f"sysfs:{args.base}"
    kind, board_profile = parse_spec(spec)
    if kind == "null":
        raise ConfigError("a null: board has no frequency control; calibrate a virtual: or "
                          "sysfs: board")
    rails: dict[str, str] = {}
    for item in args.rail:
        cluster, sep, label = str(item).partition("=")
        if not sep or not cluster or not label:
            raise ConfigError(f"--rail {item!r}: expected CLUSTER=LABEL, e.g. --rail big=VDD_ARM")
        rails[cluster] = label
    if rails and args.power_scope != "cluster":
        raise ConfigError("--rail applies only with --power-scope cluster")
    if (args.sysfs_root is not None and kind != "sysfs" and args.power_sensor != "rapl"
            and args.power_scope != "cluster"):
        raise ConfigError(f"--sysfs-root applies only to a sysfs: board (or --power-sensor "
                          f"rapl), and the board is {spec!r}; give --board sysfs:PROFILE or drop "
                          "--sysfs-root")
    sysfs_root = args.sysfs_root if args.sysfs_root is not None else Path("/sys")
    check_positive("--runs", args.runs)
    check_positive("--num-threads", args.num_threads)
    check_positive("--warmup-runs", args.warmup_runs, zero_ok=True)
    check_positive("--min-window-s", args.min_window_s, zero_ok=True)
    check_positive("--idle-s", args.idle_s, zero_ok=True)
    check_output_path("--out", args.out)
    check_output_path("--csv", args.csv)
    base = load_profile(args.base or board_profile)

    models, errors = load_models(args.models, num_threads=args.num_threads, warmup_runs=1,
                                 measure_runs=1)
    for e in errors:
        log.warning("skipped: %s", e)
    if not models:
        raise ConfigError(f"{args.models}: no loadable .tflite models")
    workloads = [TfliteWorkload.of(m) for m in models.values()]

    runtime_dir = args.runtime_dir
    tmp: str | None = None
    if runtime_dir is None:
        tmp = tempfile.mkdtemp(prefix="edgesched-calibrate-")
        runtime_dir = Path(tmp)
    try:
        clock: Callable[[], float] = time.perf_counter
        sleep: Callable[[float], None] = time.sleep
        if kind == "virtual":
            emu = EmulatedClock()
            clock, sleep = emu.now, emu.sleep
        board = open_board(spec, sysfs_root=sysfs_root, state_dir=args.state_dir,
                           runtime_dir=runtime_dir, clock=clock, sleep=sleep, log=log)
        cluster_meters = None
        try:
            if args.power_scope == "cluster":
                cluster_meters = open_rail_meters(board.profile, sysfs_root=sysfs_root,
                                                  clock=clock, rails=rails)
                meter = None
            else:
                meter = open_meter(args.power_sensor, board, sysfs_root=sysfs_root,
                                   clock=clock, log=log)
        except BaseException:
            board.close()
            raise
        power_desc = (meter.describe() if meter is not None else
                      "; ".join(f"{board.profile.clusters[ci].name}: {m.describe()}"
                                for ci, m in cluster_meters.items())
                      if cluster_meters else "none")
        _progress(f"{board.profile.name}: {len(workloads)} models x "
                  f"{sum(len(c.opps) for c in board.profile.clusters)} OPPs x {args.runs} runs; "
                  f"power: {power_desc}")
        rows = calibrate(board, workloads, runs=args.runs, warmup_runs=args.warmup_runs,
                         meter=meter, idle_s=args.idle_s, min_window_s=args.min_window_s,
                         clock=clock, sleep=sleep, host_clock=time.perf_counter,
                         pinner=AffinityPinner(), progress=_progress, log=log,
                         cluster_meters=cluster_meters)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _progress("frequency settings restored")
    if args.csv:
        write_measurements(args.csv, rows)
        _progress(f"wrote {len(rows)} rows to {args.csv}")
    result = fit_profile(rows, base, name=args.name or args.out.stem,
                         source=str(args.csv) if args.csv else "<calibrate>",
                         meta={"board": spec, "runs": args.runs, "power_sensor": power_desc},
                         power_scope=args.power_scope)
    args.out.write_text(json.dumps(result.document(), indent=1) + "\n", encoding="utf-8")
    print(format_summary(result))
    print(f"wrote {args.out}")
    return 0
