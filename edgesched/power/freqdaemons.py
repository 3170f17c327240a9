"""Find other programs that set CPU frequencies, so the daemon can warn before it fights them.

Looks at ``<proc_root>/[0-9]*/comm`` (and ``cmdline`` for interpreters), at systemd's unit state
under ``<root>`` (``etc/systemd/system/*.wants/NAME.service`` links: enabled;
``run/systemd/units/invocation:NAME.service``: started in this boot), and, given a sysfs root,
at policies pinned with ``scaling_min_freq == scaling_max_freq`` (what ``jetson_clocks`` leaves).
No subprocess, no shell; every root is injected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgesched.power.cpufreq import CPUFREQ_REL


@dataclass(frozen=True)
class FreqDaemon:
    name: str
    comms: tuple[str, ...]
    units: tuple[str, ...]
    conflicts: bool
    advice: str


KNOWN: tuple[FreqDaemon, ...] = (
    FreqDaemon("power-profiles-daemon", ("power-profiles-", "power-profiles-daemon"),
               ("power-profiles-daemon.service",), True,
               "it switches governors/EPP with the power profile; stop and mask it "
               "(systemctl mask --now power-profiles-daemon)"),
    FreqDaemon("tuned", ("tuned", "tuned-ppd"), ("tuned.service", "tuned-ppd.service"), True,
               "its cpu plugin sets governors and limits; stop it (systemctl disable --now tuned) "
               "or use a profile without [cpu]"),
    FreqDaemon("auto-cpufreq", ("auto-cpufreq",), ("auto-cpufreq.service",), True,
               "it rewrites governors and turbo continuously; stop it "
               "(systemctl disable --now auto-cpufreq)"),
    FreqDaemon("cpufreqd", ("cpufreqd",), ("cpufreqd.service",), True,
               "it switches governors by rules; stop it"),
    FreqDaemon("tlp", (), ("tlp.service",), False,
               "it sets governors at boot and on power-source changes; set "
               "CPU_SCALING_GOVERNOR_ON_AC/BAT empty in /etc/tlp.conf"),
    FreqDaemon("jetson_clocks", ("jetson_clocks",), ("jetson_clocks.service",), True,
               "it pins CPU clocks at their maximum; run `jetson_clocks --restore` and disable "
               "any unit that runs it at boot"),
    FreqDaemon("nvpmodel", (), ("nvpmodel.service",), False,
               "it caps frequencies per power mode at boot (fine; edgesched works inside the cap)"),
)
HARMLESS = ("thermald",)
"""Daemons that only lower limits under thermal pressure; edgesched works inside them."""
INTERPRETERS = ("python", "python3", "perl", "sh", "bash")


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def running_comms(proc_root: Path) -> dict[str, int]:
    """Process names (comm, and the script name for interpreters) -> a pid running them."""
    names: dict[str, int] = {}
    try:
        entries = list(Path(proc_root).iterdir())
    except OSError:
        return names
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        comm = _read(entry / "comm")
        if comm is None:
            continue  # the process exited meanwhile
        comm = comm.strip()
        names.setdefault(comm, pid)
        if comm.rstrip("0123456789.") in INTERPRETERS:
            cmdline = _read(entry / "cmdline") or ""
            for arg in cmdline.split("\0")[1:3]:
                if arg and not arg.startswith("-"):
                    names.setdefault(Path(arg).name, pid)
                    break
    return names


def unit_states(root: Path, units: Iterable[str]) -> dict[str, str]:
    """'enabled' / 'started' for the units systemd's state files under ``root`` show."""
    states: dict[str, str] = {}
    root = Path(root)
    for unit in units:
        if (root / "run/systemd/units" / f"invocation:{unit}").is_symlink():
            states[unit] = "started"
            continue
        wants = root / "etc/systemd/system"
        if wants.is_dir():
            for d in wants.glob("*.wants"):
                if (d / unit).is_symlink() or (d / unit).exists():
                    states[unit] = "enabled"
                    break
    return states


def pinned_policies(sysfs_root: Path) -> list[str]:
    """Policies whose scaling_min_freq equals scaling_max_freq below/at the top (pinned)."""
    pinned: list[str] = []
    base = Path(sysfs_root) / CPUFREQ_REL
    if not base.is_dir():
        return pinned
    for pdir in sorted(base.glob("policy*")):
        lo, hi = _read(pdir / "scaling_min_freq"), _read(pdir / "scaling_max_freq")
        if lo and hi and lo.strip() == hi.strip():
            pinned.append(f"{pdir.name} at {hi.strip()} kHz")
    return pinned


def detect_frequency_daemons(proc_root: Path = Path("/proc"), *, root: Path = Path("/"),
                             sysfs_root: Path | None = None) -> list[str]:
    """Warnings (one string each) about programs that also set CPU frequencies.

    ``sysfs_root`` enables the pinned-policy check; call it before edgesched changes anything
    (edgesched's own clamp mode pins policies too).
    """
    comms = running_comms(proc_root)
    states = unit_states(root, [u for d in KNOWN for u in d.units])
    warnings: list[str] = []
    for d in KNOWN:
        pid = next((comms[c] for c in d.comms if c in comms), None)
        unit_state = next(((u, states[u]) for u in d.units if u in states), None)
        if pid is None and unit_state is None:
            continue
        where = []
        if pid is not None:
            where.append(f"running as pid {pid}")
        if unit_state is not None:
            where.append(f"{unit_state[0]} is {unit_state[1]}")
        kind = "conflicts with edgesched" if d.conflicts else "also sets CPU frequencies"
        warnings.append(f"{d.name} ({', '.join(where)}) {kind}: {d.advice}")
    if sysfs_root is not None:
        pinned = pinned_policies(sysfs_root)
        if pinned:
            warnings.append(f"cpufreq policies pinned before edgesched started "
                            f"({'; '.join(pinned)}), as jetson_clocks or a manual setting leaves "
                            "them; edgesched saves and restores them, but check nothing else "
                            "re-pins them")
    return warnings
