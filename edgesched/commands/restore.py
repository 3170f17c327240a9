"""``edgesched restore``: put back the cpufreq settings a killed daemon left changed.

Reads the state file the daemon writes before its first frequency change and restores every
policy's governor, limits and setspeed. Run by the service's ``ExecStopPost=``; exits 0 when
there is nothing to do.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from edgesched.power.cpufreq import DEFAULT_STATE_DIR, recover, state_path


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "restore", help="restore cpufreq settings left changed by a killed daemon",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sysfs-root", type=Path, default=Path("/sys"), metavar="DIR",
                   help="sysfs root holding devices/system/cpu/cpufreq (default: /sys)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"directory of the state file (default: {DEFAULT_STATE_DIR})")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    log = logging.getLogger("edgesched.restore")
    report = recover(args.sysfs_root, args.state_dir, log=log)
    if report.nothing_to_do:
        print(f"nothing to restore: no state file {state_path(args.state_dir)}")
        return 0
    for action in report.actions:
        print(f"restored {action}")
    for skipped in report.skipped:
        print(f"skipped {skipped}")
    if not report.actions and not report.skipped:
        print("settings were already in place")
    print(f"removed {report.state_file}")
    return 0
