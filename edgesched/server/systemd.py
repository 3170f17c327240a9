"""The two pieces of the systemd protocol the daemon speaks, with plain sockets (no dependency).

- Socket activation (sd_listen_fds(3)): ``LISTEN_PID`` names this process and ``LISTEN_FDS``
  counts the inherited listening sockets, starting at fd 3.
- Readiness and watchdog (sd_notify(3)): datagrams such as ``READY=1`` or ``WATCHDOG=1`` sent to
  the ``NOTIFY_SOCKET`` address (a path, or ``@name`` in the abstract namespace).

The watchdog vouches for the dispatcher, not only for the event loop: :class:`Watchdog` sends
``WATCHDOG=1`` only while the dispatcher thread's heartbeat (``Dispatcher.heartbeat_s``, set on
every turn of its loop, and at least every ``idle_wait_s`` while it waits for work) is younger
than ``stale_after_s`` (by default the ping interval, half of ``WatchdogSec``). A dispatcher
stuck in one inference or command longer than that stops the pings, and systemd restarts the
daemon ``WatchdogSec`` after the last one. So ``WatchdogSec`` must exceed twice the longest
single inference on the board (the shipped unit's 30 s leaves 15 s).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

SD_LISTEN_FDS_START = 3


def listen_fds(env: Mapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """File descriptors passed by socket activation (empty when not activated)."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        if int(env.get("LISTEN_PID", "")) != pid:
            return []
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, count)))


def inherited_sockets(env: Mapping[str, str] | None = None) -> list[socket.socket]:
    """Socket objects for the activation fds, marked close-on-exec as sd_listen_fds does."""
    out: list[socket.socket] = []
    for fd in listen_fds(env):
        os.set_inheritable(fd, False)
        out.append(socket.socket(fileno=fd))
    return out


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to the service manager; False when there is none (or it is gone)."""
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None,
                        ) -> float | None:
    """Half the ``WATCHDOG_USEC`` period (how often to ping), or None when not requested."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and wpid.isdigit() and int(wpid) != pid:
        return None
    return usec / 2e6 if usec > 0 else None


class Watchdog:
    """Pings the service manager's watchdog while a heartbeat is recent (see the module
    docstring). ``clock`` must be the heartbeat's clock."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
                 stale_after_s: float | None = None, env: Mapping[str, str] | None = None,
                 log: logging.Logger | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"watchdog interval must be > 0 s, got {interval_s!r}")
        self.interval_s = interval_s
        self.stale_after_s = interval_s if stale_after_s is None else stale_after_s
        self.clock = clock
        self.env = env
        self.log = log or logging.getLogger("edgesched.server")
        self.stalled = False
        """True while the heartbeat is stale (no pings are sent)."""
        self.pings = 0

    def beat(self, heartbeat_s: float) -> bool:
        """Ping if ``heartbeat_s`` is recent; True when a ping was sent."""
        age_s = self.clock() - heartbeat_s
        if age_s > self.stale_after_s:
            if not self.stalled:
                self.log.error("the dispatcher has not turned for %.1f s (limit %.1f s); no more "
                               "watchdog pings: the service manager will restart the daemon",
                               age_s, self.stale_after_s)
            self.stalled = True
            return False
        if self.stalled:
            self.log.warning("the dispatcher turns again; watchdog pings resume")
            self.stalled = False
        sent = notify("WATCHDOG=1", self.env)
        self.pings += sent
        return sent
