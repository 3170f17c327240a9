"""Fake cpufreq sysfs trees on disk, for tests (ours and users') and for the virtual board.

A tree is a plain directory shaped like ``/sys/devices/system/cpu/cpufreq/policyN/*``; code under
test reads and writes it exactly as it would the real one (point ``sysfs_root`` at it). Shapes
copied from real boards::

    make_tree(tmp_path, "rk3399")        # big.LITTLE: policy0 (CPUs 0-3), policy4 (CPUs 4-5)
    make_tree(tmp_path, "rk3588")        # three domains: policy0 (0-3), policy4 (4-5), policy6 (6-7)
    make_tree(tmp_path, "rpi4")          # one policy, no scaling_available_frequencies
    make_tree(tmp_path, "no-userspace")  # governors schedutil performance powersave only
    make_tree(tmp_path, "read-only")     # writable attributes chmod 0444
    from_profile(tmp_path, profile)      # any DeviceProfile

A plain directory has no kernel behind it, so the kernel's reactions live in the writer, at the
hardware edge (:class:`~edgesched.power.cpufreq.SysfsIO`):

:class:`FakeKernel`
    a ``SysfsIO`` that checks each write as the kernel would (EACCES for a file without write
    bits even for root, as kernfs does; EINVAL for an unknown governor, a setspeed without the
    userspace governor, min above max) and then applies the side effects (:meth:`FakeKernel.sync`:
    performance runs at max, powersave at min, userspace at setspeed, others inside the limits).
:class:`FaultInjector`
    a ``SysfsIO`` wrapper that raises ``OSError(EPERM/EBUSY/EINVAL/...)`` for chosen files and
    records every write. Tests run as root here, where ``chmod 0444`` stops nothing on a plain
    file; this is the deterministic way to make writes fail.

``Cpufreq`` knows neither: they are passed to it as ``io=``.

Limits as the kernel keeps them (drivers/cpufreq/cpufreq.c): ``store_scaling_max_freq`` and
``store_scaling_min_freq`` only update the user's ``freq_qos`` request; ``cpufreq_set_policy``
(through ``refresh_frequency_limits``) then sets the policy's limits from the aggregate of every
request, and ``scaling_max_freq`` shows that effective value. The thermal framework's
``cpufreq_cooling`` device adds its own FREQ_QOS_MAX request: cooling state ``k`` caps the policy
at the ``k``-th frequency from the top of its table (``cpufreq_set_cur_state``). So under a cap
``scaling_max_freq`` reads back ``min(user request, cap)`` and goes back to the request when the
cap lifts. :class:`FakeKernel` keeps the user's requests outside the tree (in
``ROOT/.fake-kernel/``, invisible to cpufreq code) and :func:`add_cpufreq_cooling` adds cooling
devices ``class/thermal/cooling_deviceN`` (``type`` ``cpufreq-cpuN``, ``cur_state``,
``max_state``); :meth:`FakeKernel.set_cooling_state` is the thermal governor.

Governor tunables as ``cpufreq_set_policy`` treats them: switching governors exits the old one
(``cpufreq_exit_governor``: its ``policyN/<governor>/`` directory, or ``cpufreq/<governor>/`` for a
driver without per-policy governors, goes away with the values written there) and the new one
starts from its defaults (``sugov_init``, ``cpufreq_dbs_governor_init``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgesched.device import DeviceProfile, load_profile
from edgesched.power.cpufreq import (
    CPUFREQ_REL,
    PlainSysfsIO,
    SysfsIO,
    derive_steps_khz,
    parse_cpu_list,
    read_small_file,
    thermal_cap_khz,
)

SHAPES = ("rk3399", "rk3588", "rpi4", "no-userspace", "read-only")
ALL_GOVERNORS = ("conservative", "ondemand", "userspace", "powersave", "performance", "schedutil")
NO_USERSPACE_GOVERNORS = ("schedutil", "performance", "powersave")
WRITABLE = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")
UNSUPPORTED = "<unsupported>"
KERNEL_STATE_DIR = ".fake-kernel"
"""Under the fake root: what the kernel keeps in memory (the user's freq_qos requests)."""
THERMAL_REL = Path("class/thermal")
DBS_DEFAULTS = {"up_threshold": "80", "sampling_down_factor": "1", "ignore_nice_load": "0"}
"""drivers/cpufreq/cpufreq_governor.h and cpufreq_ondemand.c/cpufreq_conservative.c defaults."""


def governor_defaults(governor: str, transition_latency_ns: int) -> dict[str, str]:
    """The tunables a governor starts with (empty for governors without any).

    ``rate_limit_us`` and ``sampling_rate`` follow ``cpufreq_policy_transition_delay_us``: the
    transition latency in us times LATENCY_MULTIPLIER (1000), at most 2 ms, 1 ms without a
    latency."""
    latency_us = transition_latency_ns // 1000
    delay_us = min(latency_us * 1000, 2000) if latency_us else 1000
    if governor == "schedutil":
        return {"rate_limit_us": str(delay_us)}
    if governor == "ondemand":
        return {**DBS_DEFAULTS, "sampling_rate": str(delay_us), "io_is_busy": "0",
                "powersave_bias": "0"}
    if governor == "conservative":
        return {**DBS_DEFAULTS, "sampling_rate": str(delay_us), "down_threshold": "20",
                "freq_step": "5"}
    return {}


def tunables_dir(root: Path, policy: str, governor: str, per_policy: bool = True) -> Path:
    """Where ``governor``'s tunables of ``policy`` live: ``policyN/<governor>`` or, for a driver
    without per-policy governors, ``cpufreq/<governor>``."""
    base = Path(root) / CPUFREQ_REL
    return base / policy / governor if per_policy else base / governor


def _make_tunables(path: Path, values: dict[str, str]) -> None:
    if not values or path.is_dir():
        return
    path.mkdir(parents=True)
    for name, value in values.items():
        _put(path / name, value)


def _put(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="ascii")
    os.chmod(path, mode)


def _store(path: Path, text: str) -> None:
    """Replace a small file's content in place: write at offset 0, then cut the file to length.

    Not ``open(path, "w")``: truncating a file to zero and writing it again frees and reallocates
    its block, which on ext4 costs about 0.4 ms a file against 15 us in place, and a virtual
    board writes several files per frequency change."""
    data = text.encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _force_write(path: Path, text: str) -> None:
    """Write a file the kernel itself updates (scaling_cur_freq), whatever its mode."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & stat.S_IWUSR:
        os.chmod(path, mode | stat.S_IWUSR)
        try:
            _store(path, text + "\n")
        finally:
            os.chmod(path, mode)
    else:
        _store(path, text + "\n")


def from_profile(root: Path, profile: DeviceProfile, *,
                 governors: Iterable[str] = ALL_GOVERNORS, governor: str = "schedutil",
                 available_frequencies: bool = True, read_only: bool = False,
                 driver: str = "cpufreq-dt", tunables: bool = False,
                 per_policy_governors: bool = True) -> Path:
    """Build ``root/devices/system/cpu/cpufreq/policyN`` for each cluster of ``profile``
    (N = the cluster's first CPU) with its OPP table; returns ``root``. With ``tunables`` the
    initial governor's tunables directory is made too (:func:`tunables_dir`, in ``policyN/``
    or, without ``per_policy_governors``, in ``cpufreq/``)."""
    root = Path(root)
    base = root / CPUFREQ_REL
    base.mkdir(parents=True, exist_ok=True)
    govs = tuple(governors)
    if governor not in govs:
        raise ValueError(f"initial governor {governor!r} is not among {govs}")
    cpu_dir = root / "devices/system/cpu"
    all_cpus = sorted(c for cl in profile.clusters for c in cl.cpus)
    _put(cpu_dir / "online", _ranges(all_cpus))
    _put(cpu_dir / "possible", _ranges(all_cpus))
    for cl in profile.clusters:
        pdir = base / f"policy{min(cl.cpus)}"
        pdir.mkdir(exist_ok=True)
        cpus = " ".join(str(c) for c in sorted(cl.cpus))
        lo, hi = cl.min_khz, cl.max_khz
        _put(pdir / "related_cpus", cpus, 0o444)
        _put(pdir / "affected_cpus", cpus, 0o444)
        _put(pdir / "cpuinfo_min_freq", str(lo), 0o444)
        _put(pdir / "cpuinfo_max_freq", str(hi), 0o444)
        _put(pdir / "cpuinfo_transition_latency", str(cl.transition_latency_ns), 0o444)
        if available_frequencies:
            _put(pdir / "scaling_available_frequencies",
                 " ".join(str(o.khz) for o in cl.opps) + " ", 0o444)
        _put(pdir / "scaling_available_governors", " ".join(govs), 0o444)
        _put(pdir / "scaling_driver", driver, 0o444)
        _put(pdir / "scaling_cur_freq", str(hi if governor == "performance" else lo), 0o444)
        wmode = 0o444 if read_only else 0o644
        _put(pdir / "scaling_governor", governor, wmode)
        _put(pdir / "scaling_min_freq", str(lo), wmode)
        _put(pdir / "scaling_max_freq", str(hi), wmode)
        _put(pdir / "scaling_setspeed",
             str(lo) if governor == "userspace" else UNSUPPORTED, wmode)
        if tunables:
            _make_tunables(tunables_dir(root, pdir.name, governor, per_policy_governors),
                           governor_defaults(governor, cl.transition_latency_ns))
        for cpu in cl.cpus:
            cdir = cpu_dir / f"cpu{cpu}"
            cdir.mkdir(exist_ok=True)
            link = cdir / "cpufreq"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(Path("..") / "cpufreq" / pdir.name)
    return root


def _ranges(cpus: list[int]) -> str:
    parts: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], -2]:
        if c != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = c
        prev = c
    return ",".join(parts)


def make_tree(root: Path, shape: str) -> Path:
    """Build one of :data:`SHAPES` under ``root``; returns ``root``."""
    if shape == "rk3399":
        return from_profile(root, load_profile("rk3399"))
    if shape == "rk3588":
        return from_profile(root, load_profile("rk3588"))
    if shape == "rpi4":
        return from_profile(root, load_profile("bcm2711"), available_frequencies=False)
    if shape == "no-userspace":
        return from_profile(root, load_profile("rk3399"), governors=NO_USERSPACE_GOVERNORS)
    if shape == "read-only":
        return from_profile(root, load_profile("rk3399"), read_only=True)
    raise ValueError(f"unknown fake sysfs shape {shape!r}; one of {', '.join(SHAPES)}")


def policy_dir(root: Path, policy: str) -> Path:
    return Path(root) / CPUFREQ_REL / policy


def read_attr(root: Path, policy: str, name: str) -> str:
    """A file of the fake tree, stripped (for assertions)."""
    return (policy_dir(root, policy) / name).read_text(encoding="ascii").strip()


LEASED_ATTRS = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")
"""What a lease saves and restores per policy (``scaling_setspeed`` only under userspace)."""


def leased_values(root: Path) -> dict[str, dict[str, str]]:
    """Per policy directory of the tree: the values a lease saves and must put back.

    ``scaling_setspeed`` is left out unless the governor is ``userspace``: under any other
    governor the kernel shows ``<unsupported>`` there and edgesched neither saves nor restores it.
    """
    out: dict[str, dict[str, str]] = {}
    base = Path(root) / CPUFREQ_REL
    for pdir in sorted(base.glob("policy*")):
        view = {name: read_attr(root, pdir.name, name) for name in LEASED_ATTRS}
        if view["scaling_governor"] != "userspace":
            del view["scaling_setspeed"]
        out[pdir.name] = view
    return out


def add_cpufreq_cooling(root: Path) -> list[Path]:
    """A thermal cooling device per policy of the tree, as ``cpufreq_cooling_register`` makes
    them: ``type`` ``cpufreq-cpuN`` (N the policy's first CPU), ``max_state`` the number of
    frequencies less one, ``cur_state`` 0 (no cap). Returns the device directories."""
    base = Path(root) / CPUFREQ_REL
    thermal = Path(root) / THERMAL_REL
    thermal.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    n = len(list(thermal.glob("cooling_device*")))
    for pdir in sorted(base.glob("policy*"), key=lambda p: int(p.name[6:])):
        first = min(int(c) for c in read_small_file(pdir / "related_cpus").split())
        cdev = thermal / f"cooling_device{n}"
        cdev.mkdir()
        _put(cdev / "type", f"cpufreq-cpu{first}", 0o444)
        _put(cdev / "max_state", str(len(_table_khz(pdir)) - 1), 0o444)
        _put(cdev / "cur_state", "0")
        made.append(cdev)
        n += 1
    return made


def _table_khz(pdir: Path) -> list[int]:
    """The policy's frequencies, ascending."""
    avail = pdir / "scaling_available_frequencies"
    if avail.exists():
        return sorted({int(t) for t in read_small_file(avail).split()})
    return list(derive_steps_khz(int(read_small_file(pdir / "cpuinfo_min_freq")),
                                 int(read_small_file(pdir / "cpuinfo_max_freq"))))


def cooling_cap_khz(root: Path, pdir: Path) -> tuple[int, str] | None:
    """The cap a ``cpufreq_cooling`` device puts on the policy in ``pdir`` now, and the
    device's name (see :func:`edgesched.power.cpufreq.thermal_cap_khz`)."""
    try:
        cpus = parse_cpu_list(read_small_file(pdir / "related_cpus"))
    except (OSError, ValueError):
        return None
    return thermal_cap_khz(root, cpus, _table_khz(pdir), read_small_file)


def unplug(root: Path, policy: str) -> None:
    """Make a policy directory vanish, as when its CPUs go offline with the driver unbound."""
    shutil.rmtree(policy_dir(root, policy))


def power_supply(root: Path, name: str, **attrs: object) -> Path:
    """A ``class/power_supply/NAME`` folder under ``root`` with one file per attribute, as
    :mod:`edgesched.power.supply` reads it: ``power_supply(root, "AC", type="Mains",
    online=1)``, ``power_supply(root, "BAT0", type="Battery", status="Discharging",
    energy_now=30_000_000, power_now=10_000_000)`` (units as the kernel's: uWh, uW, uAh, uA,
    uV). Calling it again for the same name updates the given attributes (a cable pulled)."""
    folder = root / "class" / "power_supply" / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in attrs.items():
        _put(folder / key, str(value))
    return folder


# ---------------------------------------------------------------------------------------------


def _err(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


class FakeKernel:
    """A :class:`~edgesched.power.cpufreq.SysfsIO` over a fake tree that behaves like the kernel.

    Writes are checked (see the module docstring) and followed by :meth:`sync`, which updates
    ``scaling_cur_freq`` and ``scaling_setspeed`` of every policy from its governor and limits.
    Call :meth:`sync` yourself after editing the tree's files directly. ``transitions`` counts
    frequency changes per policy.

    min/max checks follow the older kernels' strict rule (a write that would put min above max is
    EINVAL); newer kernels clamp instead. Code that passes under the strict rule works on both.
    """

    def __init__(self, root: Path, *, per_policy_governors: bool = True) -> None:
        self.root = Path(root)
        self.base = self.root / CPUFREQ_REL
        self.per_policy_governors = per_policy_governors
        self.transitions: dict[str, int] = {}

    # the user's freq_qos requests (kept by the kernel, not shown in sysfs)
    def _requests_path(self, pdir: Path) -> Path:
        return self.root / KERNEL_STATE_DIR / f"{pdir.name}.json"

    def _requests(self, pdir: Path) -> dict[str, int]:
        """The user's min/max requests and the effective values last shown. A file edited
        behind the kernel's back (a test setting up a tree) counts as a new user request."""
        try:
            req = json.loads(self._requests_path(pdir).read_text(encoding="ascii"))
        except (FileNotFoundError, ValueError):
            req = {}
        for name in ("min", "max"):
            shown = int(self._read(pdir / f"scaling_{name}_freq"))
            if req.get(f"shown_{name}") != shown:
                req[name] = req[f"shown_{name}"] = shown
        return req

    def _save_requests(self, pdir: Path, req: dict[str, int]) -> None:
        path = self._requests_path(pdir)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(req), encoding="ascii")

    def set_cooling_state(self, cooling_device: str, state: int) -> None:
        """What the thermal governor does: set a cooling device's state, then let the kernel
        apply the cap (``cpufreq_set_cur_state``)."""
        cdev = self.root / THERMAL_REL / cooling_device
        top = int(self._read(cdev / "max_state"))
        if not 0 <= state <= top:
            raise ValueError(f"{cooling_device}: state {state} outside 0..{top}")
        _force_write(cdev / "cur_state", str(state))
        self.sync()

    def _switch_governor(self, pdir: Path, old: str, new: str) -> None:
        """``cpufreq_exit_governor`` then ``cpufreq_init_governor``: the old governor's tunables
        go (a system-wide directory when no other policy uses it), the new one's come with
        their defaults."""
        if old == new:
            return
        per = self.per_policy_governors
        others = [self._read(p / "scaling_governor") for p in self.base.glob("policy*")
                  if p.is_dir() and p != pdir]
        old_dir = tunables_dir(self.root, pdir.name, old, per)
        if old_dir.is_dir() and (per or old not in others):
            shutil.rmtree(old_dir)
        latency = int(self._read(pdir / "cpuinfo_transition_latency") or "0")
        _make_tunables(tunables_dir(self.root, pdir.name, new, per),
                       governor_defaults(new, latency))

    # SysfsIO
    def read_text(self, path: Path) -> str:
        return read_small_file(path)

    def write_text(self, path: Path, value: str) -> None:
        path = Path(path)
        pdir = path.parent
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise _err(errno.ENOENT, path) from None
        mode = stat.S_IMODE(st.st_mode)
        if pdir.name in ALL_GOVERNORS and mode & 0o222:  # a governor's tunable: a number
            if not value.strip().isdigit():
                raise _err(errno.EINVAL, path)
            _force_write(path, value.strip())
            return
        if not mode & 0o222 or path.name not in WRITABLE:
            raise _err(errno.EACCES, path)  # kernfs refuses even root without write bits
        text = value.strip()
        name = path.name
        if name == "scaling_governor":
            govs = self._read(pdir / "scaling_available_governors").split()
            if text not in govs:
                raise _err(errno.EINVAL, path)
        else:
            if not text.isdigit():
                raise _err(errno.EINVAL, path)
            khz = int(text)
            if name == "scaling_setspeed":
                if self._read(pdir / "scaling_governor") != "userspace":
                    raise _err(errno.EINVAL, path)
            elif name == "scaling_min_freq":
                if khz > int(self._read(pdir / "scaling_max_freq")):
                    raise _err(errno.EINVAL, path)
            elif name == "scaling_max_freq" and khz < int(self._read(pdir / "scaling_min_freq")):
                raise _err(errno.EINVAL, path)
        if name in ("scaling_min_freq", "scaling_max_freq"):
            lo = int(self._read(pdir / "cpuinfo_min_freq"))
            hi = int(self._read(pdir / "cpuinfo_max_freq"))
            req = self._requests(pdir)
            req[name[8:11]] = min(max(int(text), lo), hi)  # freq_qos_update_request
            self._save_requests(pdir, req)
        elif name == "scaling_governor":
            old = self._read(path)
            _force_write(path, text)
            self._switch_governor(pdir, old, text)
        else:
            _force_write(path, text)
        self._sync_policy(pdir)

    # kernel side effects
    def sync(self) -> None:
        """Apply the kernel's reactions to the current files of every policy."""
        if not self.base.is_dir():
            return
        for pdir in sorted(self.base.iterdir()):
            if pdir.name.startswith("policy") and pdir.is_dir():
                self._sync_policy(pdir)

    def _read(self, path: Path) -> str:
        return read_small_file(path).strip()

    def _available(self, pdir: Path) -> list[int]:
        avail = pdir / "scaling_available_frequencies"
        if avail.exists():
            return sorted(int(t) for t in self._read(avail).split())
        return list(derive_steps_khz(int(self._read(pdir / "cpuinfo_min_freq")),
                                     int(self._read(pdir / "cpuinfo_max_freq"))))

    def _limits(self, pdir: Path) -> tuple[int, int]:
        """``refresh_frequency_limits``: the effective limits from the user's requests and the
        cooling device's cap (min never above max, as ``cpufreq_verify_within_limits``)."""
        req = self._requests(pdir)
        before = dict(req)
        hi = req["max"]
        cap = cooling_cap_khz(self.root, pdir)
        if cap is not None:
            hi = min(hi, cap[0])
        lo = min(req["min"], hi)
        for name, khz in (("min", lo), ("max", hi)):
            if req[f"shown_{name}"] != khz:
                _force_write(pdir / f"scaling_{name}_freq", str(khz))
                req[f"shown_{name}"] = khz
        if req != before or not self._requests_path(pdir).exists():
            self._save_requests(pdir, req)
        return lo, hi

    def _sync_policy(self, pdir: Path) -> None:
        gov = self._read(pdir / "scaling_governor")
        lo, hi = self._limits(pdir)
        cur = int(self._read(pdir / "scaling_cur_freq"))
        inside = [f for f in self._available(pdir) if lo <= f <= hi] or [lo]
        sp = self._read(pdir / "scaling_setspeed")
        if gov == "performance":
            new = inside[-1]
        elif gov == "powersave":
            new = inside[0]
        elif gov == "userspace":
            want = int(sp) if sp.isdigit() else cur
            new = next((f for f in inside if f >= want), inside[-1])
        else:
            new = next((f for f in inside if f >= cur), inside[-1])
        if new != cur:
            self.transitions[pdir.name] = self.transitions.get(pdir.name, 0) + 1
            _force_write(pdir / "scaling_cur_freq", str(new))
        setspeed = str(new) if gov == "userspace" else UNSUPPORTED
        if sp != setspeed:
            _force_write(pdir / "scaling_setspeed", setspeed)


# ---------------------------------------------------------------------------------------------


@dataclass
class Fault:
    match: str
    """A path suffix: ``"scaling_setspeed"`` or ``"policy4/scaling_setspeed"``."""
    errno_code: int
    on: str = "write"
    times: int | None = None
    """How many times to fail (None: always)."""


@dataclass
class FaultInjector:
    """A :class:`~edgesched.power.cpufreq.SysfsIO` wrapper that fails chosen files and records writes.

    >>> faults = FaultInjector(FakeKernel(root))                     # doctest: +SKIP
    >>> faults.fail("policy4/scaling_setspeed", errno.EBUSY, times=1)
    >>> Cpufreq(root, state_dir=d, io=faults)
    """

    inner: SysfsIO = field(default_factory=PlainSysfsIO)
    faults: list[Fault] = field(default_factory=list)
    writes: list[tuple[str, str]] = field(default_factory=list)
    """(path, value) of every write that reached the inner writer."""
    reads: int = 0
    """Reads that reached the inner reader."""

    def fail(self, match: str, errno_code: int, *, on: str = "write",
             times: int | None = None) -> None:
        if on not in ("write", "read"):
            raise ValueError("on must be 'write' or 'read'")
        self.faults.append(Fault(match, errno_code, on, times))

    def clear(self) -> None:
        self.faults.clear()

    def _check(self, path: Path, on: str) -> None:
        p = str(path)
        for fault in self.faults:
            if fault.on == on and (p == fault.match or p.endswith("/" + fault.match)):
                if fault.times is not None:
                    if fault.times <= 0:
                        continue
                    fault.times -= 1
                raise _err(fault.errno_code, path)

    def read_text(self, path: Path) -> str:
        self._check(path, "read")
        self.reads += 1
        return self.inner.read_text(path)

    def write_text(self, path: Path, value: str) -> None:
        self._check(path, "write")
        self.inner.write_text(path, value)
        self.writes.append((str(path), value))


def add_thermal_zone(root: Path, zone_type: str, temp_c: float,
                     trips: Iterable[tuple[float, str]] = (), policy: str = "step_wise") -> Path:
    """A ``class/thermal/thermal_zoneN`` as thermal_sysfs.c shows it: ``type``, ``temp`` and
    ``trip_point_K_temp``/``_type`` in millidegrees Celsius, ``policy`` (the governor), ``mode``.
    Returns the zone's directory; :func:`set_zone_temp` is the sensor."""
    thermal = Path(root) / THERMAL_REL
    thermal.mkdir(parents=True, exist_ok=True)
    n = len(list(thermal.glob("thermal_zone*")))
    zdir = thermal / f"thermal_zone{n}"
    zdir.mkdir()
    _put(zdir / "type", zone_type, 0o444)
    _put(zdir / "policy", policy)
    _put(zdir / "mode", "enabled")
    for k, (t_c, kind) in enumerate(trips):
        _put(zdir / f"trip_point_{k}_temp", str(round(t_c * 1000)), 0o444)
        _put(zdir / f"trip_point_{k}_type", kind, 0o444)
    _put(zdir / "temp", str(round(temp_c * 1000)), 0o444)
    return zdir


def set_zone_temp(zone_dir: Path, temp_c: float) -> None:
    """What the sensor reports: the zone's ``temp`` (millidegrees Celsius)."""
    _force_write(Path(zone_dir) / "temp", str(round(temp_c * 1000)))
