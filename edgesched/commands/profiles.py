"""edgesched profiles: list the shipped device profiles or show one."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "profiles", help="list device profiles, or show one (OPPs, power, latency model)",
        description="Without PROFILE: list the shipped device profiles. With PROFILE (a shipped "
                    "name or a profile file): show its clusters, OPPs and power.")
    p.add_argument("profile", nargs="?",
                   help="built-in name or profile file to show (default: list them all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched.device import builtin_profiles, load_profile

    if not args.profile:
        for name in builtin_profiles():
            prof = load_profile(name)
            clusters = " + ".join(f"{len(c.cpus)}x {c.core or c.name}" for c in prof.clusters)
            print(f"{name:12s} {clusters}  ({prof.soc})")
        return 0
    prof = load_profile(args.profile)
    print(f"{prof.name}: {prof.soc}")
    print(f"board floor {prof.board_floor_uw / 1e6:.2f} W, memory-time scale {prof.mem_time_scale}")
    for ci, c in enumerate(prof.clusters):
        print(f"cluster {ci} {c.name} cpus {list(c.cpus)} capacity {prof.capacity(ci):.0f} "
              f"dpc {c.dynamic_power_coefficient:g} transition {c.transition_latency_ns} ns")
        for oi, o in enumerate(c.opps):
            print(f"  {o.khz:>8} kHz {o.uv:>8} uV  dyn/cpu {c.dynamic_power_uw(oi) / 1000:8.1f} mW"
                  f"  static {c.static_power_uw(oi) / 1000:7.1f} mW")
    return 0
