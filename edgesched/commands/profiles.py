"""edgesched profiles: list the shipped device profiles or show one."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "profiles", help="list device profiles, or show one (OPPs, power, latency model)",
        description="Without PROFILE: list the shipped device profiles. With PROFILE (a shipped "
                    "name, a profile file, or a device-tree extract, whose missing numbers are "
                    "filled in and named in its sources): show its clusters, OPPs and power.")
    p.add_argument("profile", nargs="?",
                   help="built-in name, profile file or device-tree extract to show (default: "
                        "list them all)")
    p.add_argument("--json", action="store_true",
                   help="print PROFILE as a profile file (edgesched-device/1) instead, e.g. to "
                        "keep and edit what a device-tree extract was turned into")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched.device import builtin_profiles, load_profile

    if not args.profile:
        if args.json:
            from edgesched.errors import EdgeschedError

            raise EdgeschedError("--json prints one profile: name it (edgesched profiles PROFILE "
                                 "--json)")
        for name in builtin_profiles():
            prof = load_profile(name)
            clusters = " + ".join(f"{len(c.cpus)}x {c.core or c.name}" for c in prof.clusters)
            print(f"{name:12s} {clusters}  ({prof.soc})")
        return 0
    prof = load_profile(args.profile)
    if args.json:
        import json

        from edgesched.device import profile_to_dict

        print(json.dumps(profile_to_dict(prof), indent=1))
        return 0
    print(f"{prof.name}: {prof.soc}")
    print(f"board floor {prof.board_floor_uw / 1e6:.2f} W, memory-time scale {prof.mem_time_scale}")
    for ci, c in enumerate(prof.clusters):
        print(f"cluster {ci} {c.name} cpus {list(c.cpus)} capacity {prof.capacity(ci):.0f} "
              f"dpc {c.dynamic_power_coefficient:g} transition {c.transition_latency_ns} ns")
        for oi, o in enumerate(c.opps):
            print(f"  {o.khz:>8} kHz {o.uv:>8} uV  dyn/cpu {c.dynamic_power_uw(oi) / 1000:8.1f} mW"
                  f"  static {c.static_power_uw(oi) / 1000:7.1f} mW")
    return 0
