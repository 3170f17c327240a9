"""CPU frequency control through cpufreq sysfs, as a lease that is always given back.

Reads and writes ``<root>/devices/system/cpu/cpufreq/policy*/`` where ``root`` defaults to
``/sys`` and tests point it at a fake tree (:mod:`edgesched.power.fakesysfs`). Nothing touches the file
system at import time.

Two write modes:

``userspace``
    switch the policy to the ``userspace`` governor and write ``scaling_setspeed``;
``clamp``
    keep the running governor (schedutil, ondemand, ...) and pin it with
    ``scaling_min_freq``/``scaling_max_freq``; the two writes are ordered so that
    ``min <= max`` holds after each one.

``auto`` picks ``userspace`` for a policy that offers it, ``clamp`` otherwise.

Every change is a lease (the pattern of tuned's plugins): before the first write to a policy its
original governor, min, max and setspeed are saved to a JSON state file (temp file, fsync, rename);
every write is skipped when the file already holds the value and verified by reading it back;
:meth:`Cpufreq.restore` (also ``close()`` and the context manager) puts the originals back in
reverse order and deletes the state file. :func:`recover` undoes a leftover state file at start-up
(the previous daemon was killed). Without a saved state no frequency is changed.

What the kernel does behind the files, and how the lease copes:

- **Thermal and QoS caps.** ``scaling_max_freq`` shows the *effective* limit, the least of the
  user's request and every other ``freq_qos`` request (``store_scaling_max_freq`` only updates
  the user's request; ``refresh_frequency_limits``/``cpufreq_set_policy`` compute the rest); a
  ``cpufreq_cooling`` device (``/sys/class/thermal/cooling_deviceN``, type ``cpufreq-cpuN``)
  adds one at the ``cur_state``-th frequency from the top (``get_state_freq``). Restoring a limit
  that reads back *below* what was written is therefore accepted and logged (the kernel holds the
  request and applies it when the cap lifts), and a limit that fails never stops the governor
  from being restored. At the lease, a ``scaling_max_freq`` at or above the cap of an active
  cooling device cannot be told apart from a user's own limit at that value: the saved limit is
  then ``cpuinfo_max_freq`` (the request the kernel starts with) and the state file says so in
  ``max_note``. A cap from elsewhere (another QoS request, no cooling device visible) cannot be
  seen at all: its value is saved as the user's limit.
- **Governor tunables.** Switching governors drops the old governor's tunables
  (``cpufreq_exit_governor``; the new one starts from defaults in ``sugov_init`` or
  ``cpufreq_dbs_governor_init``). The writable files of ``policyN/<governor>/`` (or
  ``cpufreq/<governor>/`` for a driver without per-policy governors) are saved with the lease and
  written back after the governor, by :meth:`Cpufreq.restore` and :func:`recover` alike.
- **A change that fails midway** (the governor became ``userspace``, then ``scaling_setspeed``
  is refused, e.g. EBUSY) gives that policy its original settings back at once, so it never
  stays pinned at one speed without a governor; the error says so.

File access goes through a :class:`SysfsIO` (plain files by default). It is the hardware edge:
:class:`edgesched.power.fakesysfs.FakeKernel` (kernel side effects) and
:class:`edgesched.power.fakesysfs.FaultInjector` (EPERM/EBUSY/EINVAL on chosen files) plug in there.
Low-level ``OSError`` is translated once, here, into the :class:`~edgesched.errors.CpufreqError`
tree.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from edgesched.errors import (
    CpufreqError,
    CpufreqModeError,
    CpufreqPermissionError,
    CpufreqPolicyGoneError,
    CpufreqRejectedError,
    CpufreqStateError,
    CpufreqUnavailableError,
    CpufreqVerifyError,
)
from edgesched.power.lease import LOCK_NAME, LeaseLock

CPUFREQ_REL = Path("devices/system/cpu/cpufreq")
STATE_FILE = "cpufreq-state.json"
STATE_FORMAT = "edgesched-cpufreq-state/1"
DEFAULT_STATE_DIR = Path("/var/lib/edgesched")
RPI_STEP_KHZ = 100_000
"""raspberrypi-cpufreq.c registers OPPs every 100 MHz from roundup(min) to roundup(max)."""
CPUFREQ_ETERNAL = 4294967295
"""``cpuinfo_transition_latency`` of a driver that does not know its latency ((unsigned)-1)."""

Mode = Literal["auto", "userspace", "clamp"]
WriteMode = Literal["userspace", "clamp"]


def permission_hint(euid: int | None = None) -> str:
    """What to do about a refused cpufreq file, for a process running as ``euid``."""
    if (os.geteuid() if euid is None else euid) != 0:
        return "run as root or through the shipped systemd unit"
    return ("the file refuses even root: a read-only sysfs mount (a container?), or a driver "
            "that does not let this attribute be written")


class SysfsIO(Protocol):
    """How cpufreq files are read and written: the hardware edge."""

    def read_text(self, path: Path) -> str:
        """The file's content (raises OSError as the kernel would)."""

    def write_text(self, path: Path, value: str) -> None:
        """Write ``value`` to an existing file (raises OSError as the kernel would)."""


def read_small_file(path: Path) -> str:
    """A small file's whole text (ASCII), read with plain system calls: a frequency change
    reads several attributes, and ``open()`` with its text wrapper costs several times the read
    itself. A sysfs attribute comes whole in the first read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii")


class PlainSysfsIO:
    """Reads and writes the files themselves (real sysfs or a plain fake tree)."""

    def read_text(self, path: Path) -> str:
        return read_small_file(path)

    def write_text(self, path: Path, value: str) -> None:
        # sysfs refuses a write to a file without write bits with EACCES even for root
        # (kernfs_fop_open, KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK); a plain file would let root
        # write, so a fake root's read-only files are refused here as the kernel would
        if not os.stat(path).st_mode & 0o222:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        # no O_CREAT: a vanished policy directory gives ENOENT, as sysfs does
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)


@dataclass(frozen=True)
class PolicyInfo:
    """What discovery found about one cpufreq policy (read once, at start)."""

    name: str
    path: Path
    related_cpus: tuple[int, ...]
    affected_cpus: tuple[int, ...]
    cpuinfo_min_khz: int
    cpuinfo_max_khz: int
    available_khz: tuple[int, ...]
    available_khz_derived: bool
    """True when ``scaling_available_frequencies`` is absent and the steps were derived."""
    available_governors: tuple[str, ...]
    transition_latency_ns: int | None
    """None when the driver reports CPUFREQ_ETERNAL or nothing."""
    write_mode: WriteMode

    def snap_khz(self, khz: int) -> int:
        """The lowest available frequency at or above ``khz`` (the top one if none is),
        like the kernel's CPUFREQ_RELATION_L."""
        for f in self.available_khz:
            if f >= khz:
                return f
        return self.available_khz[-1]


@dataclass
class SavedPolicy:
    """Original settings of one policy, as found before the first change."""

    name: str
    governor: str
    min_khz: int
    max_khz: int
    setspeed_khz: int | None
    """Only meaningful (and only restored) when the original governor is ``userspace``."""
    tunables: dict[str, str] = field(default_factory=dict)
    """The original governor's writable tunables (file name to value)."""
    tunables_dir: str | None = None
    """Where they live, relative to ``devices/system/cpu/cpufreq`` (``policy0/schedutil`` or
    ``schedutil``); None for a governor without tunables."""
    max_note: str | None = None
    """Set when ``max_khz`` is not what ``scaling_max_freq`` showed (a thermal cap was active)."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "governor": self.governor,
                               "min_khz": self.min_khz, "max_khz": self.max_khz,
                               "setspeed_khz": self.setspeed_khz}
        if self.tunables_dir is not None:
            doc["tunables"] = dict(self.tunables)
            doc["tunables_dir"] = self.tunables_dir
        if self.max_note is not None:
            doc["max_note"] = self.max_note
        return doc

    @classmethod
    def from_json(cls, d: Any, source: str) -> SavedPolicy:
        try:
            setspeed = d["setspeed_khz"]
            tunables = d.get("tunables") or {}
            tdir = d.get("tunables_dir")
            if not isinstance(tunables, dict) or (tdir is not None and (
                    not isinstance(tdir, str) or ".." in Path(tdir).parts or tdir.startswith("/"))):
                raise ValueError("tunables/tunables_dir")
            return cls(name=str(d["name"]), governor=str(d["governor"]),
                       min_khz=int(d["min_khz"]), max_khz=int(d["max_khz"]),
                       setspeed_khz=None if setspeed is None else int(setspeed),
                       tunables={str(k): str(v) for k, v in tunables.items()
                                 if "/" not in str(k)},
                       tunables_dir=tdir, max_note=d.get("max_note"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CpufreqStateError(f"state file {source} is damaged ({exc!r}); restore the "
                                    "governor and limits by hand (or reboot), then delete it",
                                    source) from None


@dataclass
class RestoreReport:
    """What a restore did: one line per action, and what it could not do."""

    actions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    state_file: Path | None = None

    @property
    def nothing_to_do(self) -> bool:
        return self.state_file is None


# ---------------------------------------------------------------------------------------------
# error translation (the one boundary)


def _translate(exc: OSError, path: Path, action: str, value: str | None = None) -> CpufreqError:
    code = exc.errno
    shown = f" {value!r}" if value is not None else ""
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CpufreqPermissionError(
            f"cannot {action} {path}: permission denied; {permission_hint()}", str(path), code)
    if code == errno.ENOENT:
        return CpufreqPolicyGoneError(
            f"cannot {action} {path}: the file is gone (CPU hotplug or the cpufreq driver was "
            "unloaded); the policy is skipped until it comes back", str(path), code)
    if code == errno.EBUSY:
        return CpufreqRejectedError(
            f"cannot {action}{shown} to {path}: device busy (EBUSY); another program or the "
            "firmware holds the clock — stop other frequency daemons and try again",
            str(path), code)
    if code == errno.EINVAL:
        return CpufreqRejectedError(
            f"the kernel rejected{shown} for {path} (EINVAL); the value is not valid for this "
            "policy now — check scaling_available_frequencies/governors", str(path), code)
    return CpufreqError(f"cannot {action} {path}: {exc.strerror or exc}", str(path), code)


def _policy_dirs(sysfs_root: Path) -> list[Path]:
    base = Path(sysfs_root) / CPUFREQ_REL
    try:
        names = [p for p in base.iterdir() if p.name.startswith("policy") and p.name[6:].isdigit()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _translate(exc, base, "list") from None
    return sorted(names, key=lambda p: int(p.name[6:]))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """CPU numbers from ``related_cpus`` ("0 1 2 3") or a range list ("0-3,5")."""
    cpus: list[int] = []
    for token in text.replace(",", " ").split():
        if "-" in token:
            lo, hi = token.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(token))
    return tuple(cpus)


def derive_steps_khz(cpuinfo_min_khz: int, cpuinfo_max_khz: int,
                     step_khz: int = RPI_STEP_KHZ) -> tuple[int, ...]:
    """Frequencies of a driver without a table, as raspberrypi-cpufreq.c registers them:
    every ``step_khz`` from roundup(min) to roundup(max), both included."""
    lo = -(-cpuinfo_min_khz // step_khz) * step_khz
    hi = -(-cpuinfo_max_khz // step_khz) * step_khz
    return tuple(range(lo, hi + 1, step_khz))


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_state(path: Path, document: dict[str, Any]) -> None:
    """Atomic write: temp file in the same directory, fsync, rename, fsync the directory."""
    data = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cpufreq-state.", suffix=".tmp", dir=path.parent)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        what = ("the disk is full" if exc.errno == errno.ENOSPC
                else "the disk quota or file size limit is reached"
                if exc.errno in (errno.EDQUOT, errno.EFBIG)
                else "permission denied" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                else exc.strerror or str(exc))
        raise CpufreqStateError(
            f"cannot save the original cpufreq settings to {path}: {what}; no frequency was "
            f"changed — free space in or fix {path.parent} (or pass another --state-dir)",
            str(path), exc.errno) from None


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CpufreqStateError(f"cannot read the saved cpufreq settings {path}: "
                                f"{exc.strerror or exc}; run `edgesched restore` as root",
                                str(path), exc.errno) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CpufreqStateError(f"state file {path} is not valid JSON ({exc.msg}); restore the "
                                "governor and limits by hand (or reboot), then delete it",
                                str(path)) from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise CpufreqStateError(f"state file {path} has an unknown format; restore the governor "
                                "and limits by hand (or reboot), then delete it", str(path))
    return doc


THERMAL_REL = Path("class/thermal")
COOLING_TYPE_PREFIX = "cpufreq-cpu"
"""``cpufreq_cooling_register`` names its device ``cpufreq-<cpu device>``, e.g. ``cpufreq-cpu4``."""


def thermal_cap_khz(sysfs_root: Path, related_cpus: Sequence[int], table_khz: Sequence[int],
                    read: Callable[[Path], str]) -> tuple[int, str] | None:
    """The lowest cap any ``cpufreq_cooling`` device puts on a policy of ``related_cpus`` now,
    and that device's name; None without an active one.

    Cooling state ``k`` is the ``k``-th frequency of the table from the top (``get_state_freq``
    in drivers/thermal/cpufreq_cooling.c); ``cpufreq_set_cur_state`` turns it into a
    FREQ_QOS_MAX request. Unreadable devices are ignored."""
    thermal = Path(sysfs_root) / THERMAL_REL
    try:
        devices = sorted(p for p in thermal.iterdir() if p.name.startswith("cooling_device"))
    except OSError:
        return None
    desc = sorted(set(table_khz), reverse=True)
    cpus = set(related_cpus)
    best: tuple[int, str] | None = None
    for cdev in devices:
        try:
            kind = read(cdev / "type").strip()
            state = int(read(cdev / "cur_state").strip())
        except (OSError, ValueError):
            continue
        cpu = kind[len(COOLING_TYPE_PREFIX):]
        if not kind.startswith(COOLING_TYPE_PREFIX) or not cpu.isdigit():
            continue
        if int(cpu) not in cpus or state <= 0 or not desc:
            continue
        khz = desc[min(state, len(desc) - 1)]
        if best is None or khz < best[0]:
            best = (khz, cdev.name)
    return best


# ---------------------------------------------------------------------------------------------
# low-level per-file operations shared by Cpufreq and recover()


class _Files:
    def __init__(self, io: SysfsIO, log: logging.Logger, dry_run: bool) -> None:
        self.io = io
        self.log = log
        self.dry_run = dry_run

    def read(self, path: Path) -> str:
        try:
            return self.io.read_text(path).strip()
        except OSError as exc:
            raise _translate(exc, path, "read") from None

    def read_khz(self, path: Path) -> int:
        text = self.read(path)
        try:
            return int(text)
        except ValueError:
            raise CpufreqError(f"{path} holds {text!r}, not a frequency in kHz; is the root a "
                               "cpufreq sysfs tree?", str(path)) from None

    def read_opt(self, path: Path) -> str | None:
        try:
            return self.io.read_text(path).strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _translate(exc, path, "read") from None

    def write(self, path: Path, value: str, *, verify: bool = True,
              capped_ok: bool = False) -> bool:
        """Write ``value`` unless the file holds it already; read back. True if written.

        ``capped_ok`` (a limit being restored): a readback below ``value`` is accepted, as the
        kernel shows the effective limit under a thermal or QoS cap and keeps the request."""
        current = self.read(path)
        if current == value:
            return False
        if self.dry_run:
            self.log.info("dry run: would write %s to %s (now %s)", value, path, current)
            return True
        try:
            self.io.write_text(path, value)
        except OSError as exc:
            raise _translate(exc, path, "write", value) from None
        if verify:
            back = self.read(path)
            if (capped_ok and back != value and back.isdigit() and value.isdigit()
                    and int(back) < int(value)):
                self.log.warning("wrote %s to %s; it reads back %s: a thermal or QoS cap holds "
                                 "the policy lower, the kernel keeps the request and applies it "
                                 "when the cap lifts", value, path, back)
            elif back != value:
                raise CpufreqVerifyError(
                    f"wrote {value!r} to {path} but it reads back {back!r}; another program "
                    "(a frequency daemon, thermal limits, firmware) is managing this policy — "
                    "stop it or use the other mode", str(path))
        self.log.debug("wrote %s to %s (was %s)", value, path, current)
        return True

    def write_limits(self, pdir: Path, min_khz: int, max_khz: int, *,
                     capped_ok: bool = False) -> list[str]:
        """Set scaling_min/max_freq keeping min <= max after each write."""
        done: list[str] = []
        cur_max = self.read_khz(pdir / "scaling_max_freq")
        order = (("scaling_max_freq", max_khz), ("scaling_min_freq", min_khz))
        if min_khz <= cur_max:
            order = (("scaling_min_freq", min_khz), ("scaling_max_freq", max_khz))
        for name, khz in order:
            if self.write(pdir / name, str(khz), capped_ok=capped_ok):
                done.append(f"{pdir.name}/{name}={khz}")
        return done

    def read_tunables(self, directory: Path) -> dict[str, str]:
        """The writable files of a governor's tunables directory (empty if there is none)."""
        try:
            names = sorted(p for p in directory.iterdir() if p.is_file())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _translate(exc, directory, "list") from None
        out: dict[str, str] = {}
        for p in names:
            try:
                if not os.stat(p).st_mode & 0o200:
                    continue  # read-only statistics, nothing to give back
            except OSError:
                continue
            try:
                value = self.read_opt(p)
            except CpufreqError as exc:
                self.log.warning("governor tunable %s not saved: %s", p, exc)
                continue
            if value is not None:
                out[p.name] = value
        return out


def _restore_policy(files: _Files, pdir: Path, saved: SavedPolicy) -> list[str]:
    """Put one policy back: limits first (so any governor starts inside them), then the
    governor, then its tunables (a new governor starts from defaults), then setspeed if the
    original governor was userspace.

    A limit held lower by a cap is accepted (see the module docstring); a limit that fails
    otherwise does not stop the governor and tunables from being restored: the first error is
    raised after every step was tried."""
    done: list[str] = []
    errors: list[CpufreqError] = []
    try:
        done += files.write_limits(pdir, saved.min_khz, saved.max_khz, capped_ok=True)
    except CpufreqPolicyGoneError:
        raise
    except CpufreqError as exc:
        errors.append(exc)
    governor_back = False
    try:
        if files.write(pdir / "scaling_governor", saved.governor):
            done.append(f"{pdir.name}/scaling_governor={saved.governor}")
        governor_back = True
    except CpufreqPolicyGoneError:
        raise
    except CpufreqError as exc:
        errors.append(exc)
    if saved.tunables_dir is not None and governor_back:
        tdir = pdir.parent / saved.tunables_dir
        for name, value in saved.tunables.items():
            try:
                if files.write(tdir / name, value):
                    done.append(f"{saved.tunables_dir}/{name}={value}")
            except CpufreqError as exc:
                errors.append(exc)
    if (saved.governor == "userspace" and saved.setspeed_khz is not None and governor_back
            and files.write(pdir / "scaling_setspeed", str(saved.setspeed_khz))):
        done.append(f"{pdir.name}/scaling_setspeed={saved.setspeed_khz}")
    if errors:
        raise errors[0]
    return done


def _restore_all(files: _Files, sysfs_root: Path, saved: Sequence[SavedPolicy],
                 report: RestoreReport) -> list[CpufreqError]:
    failures: list[CpufreqError] = []
    for s in reversed(saved):
        pdir = Path(sysfs_root) / CPUFREQ_REL / s.name
        if not pdir.is_dir():
            msg = f"{s.name}: policy directory {pdir} is gone (CPU hotplug); skipped"
            files.log.warning(msg)
            report.skipped.append(msg)
            continue
        try:
            report.actions.extend(_restore_policy(files, pdir, s))
        except CpufreqPolicyGoneError as exc:
            files.log.warning("%s", exc)
            report.skipped.append(f"{s.name}: {exc}")
        except CpufreqError as exc:
            files.log.error("restoring %s failed: %s", s.name, exc)
            failures.append(exc)
    return failures


def recover(sysfs_root: Path = Path("/sys"), state_dir: Path = DEFAULT_STATE_DIR, *,
            io: SysfsIO | None = None, log: logging.Logger | None = None) -> RestoreReport:
    """Restore the settings saved in a leftover state file (the previous run was killed).

    Returns a report; ``report.nothing_to_do`` when there is no state file. The state file is
    deleted only when every policy still present was restored; otherwise the error is raised and
    the file kept so that ``edgesched restore`` can try again.
    """
    log = log or logging.getLogger("edgesched.power.cpufreq")
    lock = LeaseLock(Path(state_dir) / LOCK_NAME, log)
    if state_path(state_dir).exists():
        lock.acquire("the cpufreq lease (its settings are live, not left over)")
    try:
        return _recover_locked(sysfs_root, state_dir, io, log)
    finally:
        lock.release()


def _recover_locked(sysfs_root: Path, state_dir: Path, io: SysfsIO | None,
                    log: logging.Logger) -> RestoreReport:
    path = state_path(state_dir)
    doc = _read_state(path)
    report = RestoreReport()
    if doc is None:
        return report
    report.state_file = path
    recorded = str(doc.get("sysfs_root", ""))
    if recorded and os.path.realpath(recorded) != os.path.realpath(sysfs_root):
        raise CpufreqStateError(
            f"state file {path} was written for sysfs root {recorded}, not {sysfs_root}; run "
            f"`edgesched restore --sysfs-root {recorded} --state-dir {state_dir}`", str(path))
    raw = doc.get("policies")
    if not isinstance(raw, list):
        raise CpufreqStateError(f"state file {path} lists no policies; delete it", str(path))
    saved = [SavedPolicy.from_json(d, str(path)) for d in raw]
    files = _Files(io or PlainSysfsIO(), log, dry_run=False)
    failures = _restore_all(files, Path(sysfs_root), saved, report)
    if failures:
        raise failures[0]
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CpufreqStateError(f"restored the settings but cannot delete {path}: "
                                f"{exc.strerror or exc}; delete it by hand", str(path)) from None
    log.info("restored cpufreq settings from %s: %s", path, ", ".join(report.actions) or "none "
             "needed")
    return report


def _within_limits(info: PolicyInfo, khz: int, lo: int, hi: int) -> int:
    """What the kernel resolves ``khz`` to under scaling_min/max_freq (CPUFREQ_RELATION_L)."""
    inside = [f for f in info.available_khz if lo <= f <= hi]
    if not inside:
        return min(max(khz, lo), hi)
    for f in inside:
        if f >= khz:
            return f
    return inside[-1]


# ---------------------------------------------------------------------------------------------


class Cpufreq:
    """Frequency control of every cpufreq policy under ``sysfs_root``, as a lease.

    >>> with Cpufreq(root, state_dir=tmp) as cf:           # doctest: +SKIP
    ...     cf.set_khz("policy4", 1_416_000)

    One owner per ``state_dir``: the lease's lock (:mod:`edgesched.power.lease`) is taken at the
    first change, or at once with ``claim`` (the daemon and ``edgesched calibrate`` claim at
    start, so a second one fails before doing anything); :class:`CpufreqBusyError` names the
    holder's pid.
    """

    def __init__(self, sysfs_root: Path = Path("/sys"), *, state_dir: Path,
                 mode: Mode = "auto", dry_run: bool = False,
                 log: logging.Logger | None = None, io: SysfsIO | None = None,
                 claim: bool = False) -> None:
        if mode not in ("auto", "userspace", "clamp"):
            raise CpufreqModeError(f"unknown cpufreq mode {mode!r}; use auto, userspace or clamp")
        self.sysfs_root = Path(sysfs_root)
        self.state_dir = Path(state_dir)
        self.mode = mode
        self.dry_run = dry_run
        self.log = log or logging.getLogger("edgesched.power.cpufreq")
        self.io: SysfsIO = io or PlainSysfsIO()
        self._files = _Files(self.io, self.log, dry_run)
        self._saved: dict[str, SavedPolicy] = {}
        self._gone: set[str] = set()
        self._lock = LeaseLock(self.state_dir / LOCK_NAME, self.log)
        leftover = not dry_run and state_path(self.state_dir).exists()
        if leftover or (claim and not dry_run):
            self._lock.acquire()
        if leftover:
            self.log.warning("found cpufreq settings left by a previous run in %s; restoring "
                             "them first", state_path(self.state_dir))
            _recover_locked(self.sysfs_root, self.state_dir, self.io, self.log)
        self.policies: dict[str, PolicyInfo] = self._discover()

    # -- discovery ------------------------------------------------------------------------

    def _discover(self) -> dict[str, PolicyInfo]:
        dirs = _policy_dirs(self.sysfs_root)
        if not dirs:
            raise CpufreqUnavailableError(
                f"no cpufreq policies under {self.sysfs_root / CPUFREQ_REL}; the kernel has no "
                "cpufreq driver for this CPU, or --sysfs-root is wrong (use a virtual: board to "
                "run without one)", str(self.sysfs_root / CPUFREQ_REL))
        found: dict[str, PolicyInfo] = {}
        for pdir in dirs:
            try:
                found[pdir.name] = self._read_policy(pdir)
            except CpufreqPolicyGoneError as exc:
                self.log.warning("skipping %s: %s", pdir.name, exc)
        if not found:
            raise CpufreqUnavailableError(f"every cpufreq policy under {self.sysfs_root} vanished "
                                          "while reading it; try again", str(self.sysfs_root))
        return found

    def _read_policy(self, pdir: Path) -> PolicyInfo:
        f = self._files
        related = parse_cpu_list(f.read(pdir / "related_cpus"))
        affected_text = f.read_opt(pdir / "affected_cpus")
        affected = parse_cpu_list(affected_text) if affected_text is not None else related
        lo = f.read_khz(pdir / "cpuinfo_min_freq")
        hi = f.read_khz(pdir / "cpuinfo_max_freq")
        avail_text = f.read_opt(pdir / "scaling_available_frequencies")
        if avail_text:
            avail = tuple(sorted({int(t) for t in avail_text.split()}))
            derived = False
        else:
            avail = derive_steps_khz(lo, hi)
            derived = True
        govs = tuple((f.read_opt(pdir / "scaling_available_governors") or "").split())
        lat_text = f.read_opt(pdir / "cpuinfo_transition_latency")
        latency: int | None = None
        if lat_text and lat_text.isdigit() and int(lat_text) != CPUFREQ_ETERNAL:
            latency = int(lat_text)
        if self.mode == "clamp":
            wmode: WriteMode = "clamp"
        elif "userspace" in govs:
            wmode = "userspace"
        elif self.mode == "userspace":
            raise CpufreqModeError(
                f"{pdir.name} has no userspace governor (available: {' '.join(govs) or 'none'}); "
                "use mode clamp (or auto)", str(pdir / "scaling_available_governors"))
        else:
            wmode = "clamp"
        return PolicyInfo(name=pdir.name, path=pdir, related_cpus=related,
                          affected_cpus=affected, cpuinfo_min_khz=lo, cpuinfo_max_khz=hi,
                          available_khz=avail, available_khz_derived=derived,
                          available_governors=govs, transition_latency_ns=latency,
                          write_mode=wmode)

    def policy_for_cpu(self, cpu: int) -> PolicyInfo:
        for p in self.policies.values():
            if cpu in p.related_cpus:
                return p
        raise CpufreqUnavailableError(
            f"no cpufreq policy under {self.sysfs_root} lists CPU {cpu} in related_cpus; the "
            "device profile does not match this board — pick the right profile",
            str(self.sysfs_root / CPUFREQ_REL))

    # -- reading --------------------------------------------------------------------------

    def _policy(self, name: str) -> PolicyInfo:
        try:
            info = self.policies[name]
        except KeyError:
            raise CpufreqUnavailableError(f"no cpufreq policy {name!r} under {self.sysfs_root}; "
                                          f"known: {', '.join(self.policies)}") from None
        if not info.path.is_dir():
            if name not in self._gone:
                self.log.warning("%s vanished (CPU hotplug); skipping it until it returns", name)
            self._gone.add(name)
            raise CpufreqPolicyGoneError(
                f"{info.path} is gone (CPU hotplug); {name} is skipped until it comes back",
                str(info.path), errno.ENOENT)
        if name in self._gone:
            self.log.info("%s is back", name)
            self._gone.discard(name)
        return info

    def cur_khz(self, name: str) -> int:
        """``scaling_cur_freq`` of a policy."""
        info = self._policy(name)
        return self._files.read_khz(info.path / "scaling_cur_freq")

    def governor(self, name: str) -> str:
        return self._files.read(self._policy(name).path / "scaling_governor")

    def limits_khz(self, name: str) -> tuple[int, int]:
        """(scaling_min_freq, scaling_max_freq) of a policy."""
        p = self._policy(name).path
        return self._files.read_khz(p / "scaling_min_freq"), self._files.read_khz(
            p / "scaling_max_freq")

    @property
    def gone(self) -> frozenset[str]:
        """Policies found vanished (CPU hotplug) at the last access."""
        return frozenset(self._gone)

    @property
    def touched(self) -> tuple[str, ...]:
        """Policies whose original settings are saved (in the order they were first changed)."""
        return tuple(self._saved)

    # -- the lease ------------------------------------------------------------------------

    def _snapshot(self, info: PolicyInfo) -> SavedPolicy:
        f = self._files
        gov = f.read(info.path / "scaling_governor")
        setspeed: int | None = None
        if gov == "userspace":
            text = f.read_opt(info.path / "scaling_setspeed")
            setspeed = int(text) if text and text.isdigit() else None
        max_khz = f.read_khz(info.path / "scaling_max_freq")
        note: str | None = None
        cap = thermal_cap_khz(self.sysfs_root, info.related_cpus, info.available_khz,
                              self.io.read_text)
        if cap is not None and cap[0] <= max_khz < info.cpuinfo_max_khz:
            note = (f"scaling_max_freq read {max_khz} kHz under the cap of {cap[1]} "
                    f"({cap[0]} kHz); the user's own limit is not visible under a cap, "
                    f"cpuinfo_max_freq {info.cpuinfo_max_khz} kHz saved")
            self.log.warning("%s: %s", info.name, note)
            max_khz = info.cpuinfo_max_khz
        tdir: str | None = None
        tunables: dict[str, str] = {}
        base = self.sysfs_root / CPUFREQ_REL
        for rel in (f"{info.name}/{gov}", gov):
            tunables = f.read_tunables(base / rel)
            if tunables:
                tdir = rel
                break
        return SavedPolicy(name=info.name, governor=gov,
                           min_khz=f.read_khz(info.path / "scaling_min_freq"),
                           max_khz=max_khz, setspeed_khz=setspeed, tunables=tunables,
                           tunables_dir=tdir, max_note=note)

    def _lease(self, info: PolicyInfo) -> None:
        """Save ``info``'s originals before its first change; raises if they cannot be saved."""
        if info.name in self._saved or self.dry_run:
            return
        self._lock.acquire()  # one owner per state directory (see edgesched.power.lease)
        snap = self._snapshot(info)
        saved = [*self._saved.values(), snap]
        _write_state(state_path(self.state_dir), {
            "format": STATE_FORMAT, "sysfs_root": str(self.sysfs_root), "pid": os.getpid(),
            "policies": [s.to_json() for s in saved]})
        self._saved[info.name] = snap

    def set_khz(self, name: str, khz: int) -> int:
        """Run policy ``name`` at ``khz`` (snapped to the lowest available frequency at or above
        it); returns the frequency now set. Raises a :class:`CpufreqError` subclass on failure
        (the policy keeps whatever the kernel has)."""
        info = self._policy(name)
        target = info.snap_khz(int(khz))
        self._lease(info)
        f = self._files
        try:
            if info.write_mode == "userspace":
                if f.write(info.path / "scaling_governor", "userspace"):
                    self.log.info("%s: governor set to userspace", name)
                lo, hi = self.limits_khz(name)
                limited = _within_limits(info, target, lo, hi)
                if limited != target:
                    self.log.debug("%s: %d kHz limited to %d by scaling_min/max_freq", name,
                                   target, limited)
                    target = limited
                try:
                    f.write(info.path / "scaling_setspeed", str(target))
                except CpufreqPolicyGoneError:
                    raise
                except CpufreqError as exc:
                    raise self._roll_back(info, exc) from None
            else:
                cap = thermal_cap_khz(self.sysfs_root, info.related_cpus, info.available_khz,
                                      self.io.read_text)
                if cap is not None and target > cap[0]:
                    self.log.debug("%s: %d kHz held to %d by %s", name, target, cap[0], cap[1])
                    target = cap[0]  # a pin above the cap would read back as the cap
                try:
                    f.write_limits(info.path, target, target)
                except CpufreqPolicyGoneError:
                    raise
                except CpufreqError as exc:  # one limit may be written, the other not
                    raise self._roll_back(info, exc) from None
        except CpufreqPolicyGoneError:
            self._gone.add(name)
            self.log.warning("%s vanished while being set (CPU hotplug); skipped", name)
            raise
        return target

    def _roll_back(self, info: PolicyInfo, exc: CpufreqError) -> CpufreqError:
        """After a change failed midway (the governor is ``userspace`` but the speed was
        refused, or one of the two clamp limits was written): give the policy its original
        settings back, so that it is not left at one speed with no governor. Returns the error
        to raise, saying what was done."""
        saved = self._saved.get(info.name)
        if saved is None or self.dry_run:
            return exc
        try:
            _restore_policy(self._files, info.path, saved)
        except CpufreqError as again:
            self.log.error("%s: rolling back after a failed change failed too: %s", info.name,
                           again)
            return type(exc)(f"{exc}; giving {info.name} back its governor {saved.governor} "
                             f"failed too ({again}); run `edgesched restore`", exc.path,
                             exc.errno_code)
        self.log.warning("%s: %s; rolled back to governor %s", info.name, exc, saved.governor)
        return type(exc)(f"{exc}; {info.name} was rolled back to its governor "
                         f"{saved.governor}", exc.path, exc.errno_code)

    def restore(self) -> RestoreReport:
        """Give every touched policy its original settings back (reverse order), then delete
        the state file. Policies that vanished are skipped (logged). Idempotent."""
        report = RestoreReport()
        if not self._saved:
            return report
        report.state_file = state_path(self.state_dir)
        failures = _restore_all(self._files, self.sysfs_root, list(self._saved.values()), report)
        if failures:
            raise failures[0]
        self._saved.clear()
        with contextlib.suppress(FileNotFoundError):
            state_path(self.state_dir).unlink()
        self.log.info("cpufreq settings restored: %s", ", ".join(report.actions) or "unchanged")
        return report

    def close(self) -> None:
        """Restore, then give up the lease's lock (also when restoring failed: the state file
        stays for ``edgesched restore`` or the next start)."""
        try:
            self.restore()
        finally:
            self._lock.release()

    def __enter__(self) -> Cpufreq:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __iter__(self) -> Iterator[PolicyInfo]:
        return iter(self.policies.values())
