"""The connection gate: a bound on open HTTP connections, enforced where connections are accepted.

Every accepted connection costs the event loop a request handler, a parser and a task before the
request can even be refused, and the connections a client opens while the daemon is saturated
otherwise pile up without limit (each one a file descriptor and, with its body, up to
``server.max_body_bytes`` of memory). Past ``server.max_connections`` open connections, a new one
gets a fixed 503 answer written straight to the socket, its incoming bytes are read and dropped
so the client sees the answer instead of a broken pipe, and it is closed when the client is done
or after ``linger_s``. This keeps memory bounded under a flood and lets the daemon return to
normal latency as soon as the flood stops.

A connection counts against the limit from the moment the gate hands it its protocol, not from
``connection_made``: an event loop may accept a whole burst from the listen backlog and make
every protocol of it before it tells any of them that it is connected (asyncio's does), and the
burst would otherwise be served whole however far past the limit it goes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import resource
import typing
import weakref
from collections.abc import Callable

from edgesched.server.http1 import Connection, Server

REFUSED_OUTCOME = "too_many_connections"
FD_RESERVE = 256
"""Descriptors kept for everything but connections (models, listeners, sysfs, logs)."""
REFUSED_LINGER_S = 1.0
"""How long a refused connection stays open for the client to read its answer (the default of
:class:`ConnectionGate`'s ``linger_s``)."""


def _refusal(limit: int, retry_after_s: float) -> bytes:
    body = json.dumps({
        "error": f"too many connections: the daemon already has {limit} open connections "
                 "(server.max_connections); retry later",
        "outcome": REFUSED_OUTCOME}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Retry-After: {max(1, math.ceil(retry_after_s))}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


class _Refused(asyncio.Protocol):
    """Writes the fixed answer, drops what the client sends, closes on EOF or after linger_s.

    At most ``gate.limit`` refused connections linger at a time; past that one is closed right
    after its answer, so a flood cannot run the daemon out of file descriptors."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        typing.cast(asyncio.WriteTransport, transport).write(self.gate.answer)
        if self.gate.lingering >= self.gate.limit:
            transport.close()
            return
        self.gate.lingering += 1
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(self.gate.linger_s, transport.close)

    def data_received(self, data: bytes) -> None:
        del data  # the request is not read: it was refused before it arrived

    def eof_received(self) -> bool:
        return False  # close our side as well

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._counted:
            self._counted = False
            self.gate.lingering -= 1


class ConnectionGate:
    """Protocol factory in front of the HTTP server: hands out its connections up to ``limit``
    open ones, a :class:`_Refused` protocol past it."""

    def __init__(self, server: Server, limit: int, retry_after_s: float,
                 on_refused: Callable[[], None] = lambda: None,
                 linger_s: float | None = None) -> None:
        self.server = server
        self.limit = limit
        self.linger_s = REFUSED_LINGER_S if linger_s is None else linger_s
        self.on_refused = on_refused
        self.lingering = 0
        self.answer = _refusal(limit, retry_after_s)
        self._pending: weakref.WeakSet[Connection] = weakref.WeakSet()
        """Connections handed out whose ``connection_made`` has not run yet (weak: one the loop
        drops without connecting it stops counting)."""

    def open_connections(self) -> int:
        """The connections counted against the limit: open ones and those handed out but not
        yet connected."""
        pending = self._pending
        if pending:
            # connected ones (a transport) are in server.connections now, or already gone
            pending.difference_update([c for c in pending if c.transport is not None])
        return len(self.server.connections) + len(pending)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open_connections() >= self.limit:
            self.on_refused()
            return _Refused(self)
        conn = self.server()
        self._pending.add(conn)
        conn.closed_callbacks.append(lambda: self._pending.discard(conn))
        return conn


def ensure_fd_limit(max_connections: int, log: logging.Logger) -> int:
    """Raise the soft open-file limit to what ``max_connections`` needs (admitted and lingering
    refused connections, plus models, listeners and sysfs files), up to the hard limit; returns
    the soft limit in effect. A service manager's default soft limit is often 1,024."""
    need = 2 * max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return int(soft)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        target = soft
    if target < need:
        log.warning("open-file limit %d is below the %d that server.max_connections = %d "
                    "needs; raise LimitNOFILE or lower server.max_connections", target, need,
                    max_connections)
    return int(target)
