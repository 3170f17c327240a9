"""The priority lane: a second listener with its own thread and event loop.

Under a flood on the main socket, every request waits twice before the queue can order it by
priority: in the socket's listen backlog, and in the event loop's turn among thousands of
connections. Neither knows a request's priority. The lane gives the clients whose work is
critical a door of their own: its backlog holds only their connections, and its loop runs on
its own thread, so it reads and answers them while the main loop is saturated. Requests from
both doors meet in the same dispatcher queue, where priority and deadline decide.

The lane thread is handed an HTTP server (a protocol factory, not yet bound to a loop); it owns
it, the connection gate and the listener from start to shutdown (an event loop's objects stay on
its thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from edgesched.server.dispatcher import set_thread_nice
from edgesched.server.gate import ConnectionGate
from edgesched.server.http1 import Server

START_LIMIT_S = 30.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where installed (a dependency on Linux), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class PriorityLane:
    """Serves with ``server`` on ``sock`` from a thread of its own.

    :meth:`start` returns once the lane listens (or raises what stopped it); :meth:`close`
    stops taking connections; :meth:`shutdown` waits for the open requests' answers, then ends
    the thread. All three may be called from any thread; close and shutdown more than once.
    """

    def __init__(self, server: Server, sock: socket.socket, *, name: str,
                 max_connections: int, retry_after_s: float,
                 shutdown_timeout_s: float, backlog: int, nice: int = 0,
                 on_refused: Callable[[], None] = lambda: None,
                 log: logging.Logger | None = None) -> None:
        self.server = server
        self.sock = sock
        self.name = name
        self.max_connections = max_connections
        self.retry_after_s = retry_after_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.backlog = backlog
        self.nice = nice
        self.on_refused = on_refused
        self.log = log or logging.getLogger("edgesched.server")
        self.thread_nice: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.on_stopped: Callable[[], None] | None = None
        """Called on the lane's thread as it ends, however it ends."""

    # --------------------------------------------------------------------------- any thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgesched-priority-lane",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_LIMIT_S):
            raise RuntimeError(f"the priority lane on {self.name} did not start within "
                               f"{START_LIMIT_S:.0f} s")
        if self._error is not None:
            raise self._error

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop accepting connections; the open ones still get their answers."""
        self._in_loop(self._close_listener)

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """End the lane (its open requests answered first); True once the thread is gone."""
        if self._stop is not None:
            self._in_loop(self._stop.set)
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(fn)

    # --------------------------------------------------------------------------- lane thread
    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _run(self) -> None:
        self.thread_nice = set_thread_nice(self.nice, "the priority lane's thread", self.log)
        loop = new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
            else:
                self.log.exception("the priority lane on %s stopped", self.name)
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            if self.on_stopped is not None:
                self.on_stopped()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            gate = ConnectionGate(self.server, self.max_connections, self.retry_after_s,
                                  on_refused=self.on_refused)
            self._listener = await asyncio.get_running_loop().create_server(
                gate, sock=self.sock, backlog=self.backlog)
            self._ready.set()
            await self._stop.wait()
            self._listener.close()
        finally:
            await self.server.shutdown(self.shutdown_timeout_s)
