"""The two pieces of the systemd protocol the daemon speaks, with plain sockets (no dependency).

- Socket activation (sd_listen_fds(3)): ``LISTEN_PID`` names this process and ``LISTEN_FDS``
  counts the inherited listening sockets, starting at fd 3.
- Readiness and watchdog (sd_notify(3)): datagrams such as ``READY=1`` or ``WATCHDOG=1`` sent to
  the ``NOTIFY_SOCKET`` address (a path, or ``@name`` in the abstract namespace).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

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
