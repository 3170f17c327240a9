"""The connection gate: a bound on open HTTP connections, enforced where connections are accepted.

Every accepted connection costs the event loop a request handler, a parser and a task before the
request can even be refused, and the connections a client opens while the daemon is saturated
otherwise pile up without limit (each one a file descriptor and, with its body, up to
``server.max_body_bytes`` of memory). Past ``server.max_connections`` open connections, a new one
gets a fixed 503 answer written straight to the socket, its incoming bytes are read and dropped
so the client sees the answer instead of a broken pipe, and it is closed when the client is done
or after ``linger_s``. This keeps memory bounded under a flood and lets the daemon return to
normal latency as soon as the flood stops.
"""

from __future__ import annotations

import asyncio
import json
import math
import typing
from collections.abc import Callable

from aiohttp import web

REFUSED_OUTCOME = "too_many_connections"


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
    """Writes the fixed answer, drops what the client sends, closes on EOF or after linger_s."""

    def __init__(self, answer: bytes, linger_s: float) -> None:
        self.answer = answer
        self.linger_s = linger_s
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        typing.cast(asyncio.WriteTransport, transport).write(self.answer)
        self._timer = asyncio.get_running_loop().call_later(self.linger_s, transport.close)

    def data_received(self, data: bytes) -> None:
        del data  # the request is not read: it was refused before it arrived

    def eof_received(self) -> bool:
        return False  # close our side as well

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ConnectionGate:
    """Protocol factory in front of aiohttp's server: hands out request handlers up to ``limit``
    open connections, a :class:`_Refused` protocol past it."""

    def __init__(self, server: web.Server, limit: int, retry_after_s: float,
                 on_refused: Callable[[], None] = lambda: None, linger_s: float = 1.0) -> None:
        self.server = server
        self.limit = limit
        self.linger_s = linger_s
        self.on_refused = on_refused
        self.refused = 0
        self._answer = _refusal(limit, retry_after_s)

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.limit:
            self.refused += 1
            self.on_refused()
            return _Refused(self._answer, self.linger_s)
        return self.server()
