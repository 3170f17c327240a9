"""One owner per cpufreq lease: an exclusive ``flock`` on a file in the state directory.

Two processes leasing the same cpufreq policies would each save the other's changes as
"originals" and, on exit, put the board back into whatever the other had set. The daemon,
``edgesched calibrate`` and ``edgesched restore`` therefore take this lock on their state
directory first; the second one fails at once with the holder's pid. The kernel drops the lock
when its holder dies (SIGKILL included), so a killed daemon never blocks its successor, which
then restores the state file it left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

from edgesched.errors import CpufreqBusyError

LOCK_NAME = "lease.lock"


class LeaseLock:
    """Exclusive, non-blocking lock on ``path`` (created if missing); holds the owner's pid.

    A raw descriptor: dropping the object (as a killed owner drops everything) closes it and so
    releases the lock, without a ResourceWarning.
    """

    def __init__(self, path: Path, log: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self.log = log or logging.getLogger("edgesched.power.cpufreq")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "the cpufreq lease") -> LeaseLock:
        """Take the lock; raises CpufreqBusyError when another process holds it. A lock file
        that cannot be created is logged and skipped (no second owner can then be detected)."""
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self.log.warning("cannot create the lock file %s (%s); a second edgesched process "
                             "on this directory would not be detected", self.path,
                             exc.strerror or exc)
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CpufreqBusyError(
                    f"another edgesched process (pid {holder}) holds {what} on "
                    f"{self.path.parent} ({self.path.name}); two owners would save each "
                    "other's settings as originals. Stop it first (it restores the settings "
                    "when it exits)", str(self.path), exc.errno) from None
            self.log.warning("cannot lock %s (%s); a second edgesched process on this directory "
                             "would not be detected", self.path, exc.strerror or exc)
            return self
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor drops the flock

    def __del__(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
