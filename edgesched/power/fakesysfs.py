"""Fake cpufreq sysfs trees on disk, for tests (ours and users') and for the virtual board.

A tree is a plain directory shaped like ``/sys/devices/system/cpu/cpufreq/policyN/*``; code under
test reads and writes it exactly as it would the real one (point ``sysfs_root`` at it). Shapes
copied from real boards::

    make_tree(tmp_path, "rk3399")        # big.LITTLE: policy0 (CPUs 0-3), policy4 (CPUs 4-5)
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
"""

from __future__ import annotations

import errno
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
    read_small_file,
)

SHAPES = ("rk3399", "rpi4", "no-userspace", "read-only")
ALL_GOVERNORS = ("conservative", "ondemand", "userspace", "powersave", "performance", "schedutil")
NO_USERSPACE_GOVERNORS = ("schedutil", "performance", "powersave")
WRITABLE = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")
UNSUPPORTED = "<unsupported>"


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
                 driver: str = "cpufreq-dt") -> Path:
    """Build ``root/devices/system/cpu/cpufreq/policyN`` for each cluster of ``profile``
    (N = the cluster's first CPU) with its OPP table; returns ``root``."""
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


def unplug(root: Path, policy: str) -> None:
    """Make a policy directory vanish, as when its CPUs go offline with the driver unbound."""
    shutil.rmtree(policy_dir(root, policy))


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

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.base = self.root / CPUFREQ_REL
        self.transitions: dict[str, int] = {}

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
            text = str(min(max(int(text), lo), hi))
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

    def _sync_policy(self, pdir: Path) -> None:
        gov = self._read(pdir / "scaling_governor")
        lo = int(self._read(pdir / "scaling_min_freq"))
        hi = int(self._read(pdir / "scaling_max_freq"))
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
