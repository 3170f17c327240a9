"""A small HTTP/1.1 server on asyncio protocols: what the daemon's sockets speak.

The daemon answers a handful of routes to local clients, and most of its time per request went
to a general web framework's machinery. This server does only what the daemon needs:

- HTTP/1.0 and 1.1, keep-alive, pipelined requests answered in order, ``Expect: 100-continue``,
  request bodies by ``Content-Length`` or ``chunked``;
- limits checked as bytes arrive: the request head (``MAX_HEAD_BYTES``, ``MAX_HEADERS``), the
  body (``body_limit``, refused with 413 before it is read), and the time a request may take to
  arrive (``idle_timeout_s`` from the moment the connection waits for one; a connection that
  dribbles bytes does not reset it);
- every refusal is a JSON document with a reason (``{"error": ...}``); after one that ends the
  connection, what the client still sends is read and dropped for up to ``LINGER_S`` so it sees
  the answer instead of a broken pipe;
- routes with ``{param}`` segments (percent-decoded; a ``%2F`` stays inside its segment), and a
  fallback that is told which methods the path does allow.

A handler takes a :class:`Request` (the whole body read) and returns a :class:`Response`, or an
awaitable of one. A handler that can answer at once returns the Response itself: it is written
without a task (no coroutine, no task step); one that must wait (an inference queued behind
others) returns a coroutine, which runs as the connection's task. Either way the handler runs
from a callback scheduled after the request is read, so requests that arrive in the same turn
of the event loop are all read (``Server.active`` counts them) before any of them is handled.

Per request it does little beyond that: a request head seen before (the same bytes) is looked up
instead of parsed, header names seen before are looked up (checked as tokens once), a plain
``Content-Length`` is read without splitting, and an answer's status line and Content-Type come
from a small cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

MAX_HEAD_BYTES = 32 << 10
"""Request line and headers together."""
MAX_REQUEST_LINE_BYTES = 8 << 10
MAX_HEADERS = 100
MAX_METHOD_BYTES = 32
MAX_CHUNK_LINE_BYTES = 1024
LINGER_S = 5.0
"""After an answer that ends a connection, how long the client's remaining bytes are dropped."""
BIG_BODY_BYTES = 64 << 10
"""Response bodies above this are written separately from the head (not copied into it)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}

log = logging.getLogger("edgesched.server")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    """The target's path, as sent (not percent-decoded), without the query."""
    query: str
    version: str
    """``HTTP/1.0`` or ``HTTP/1.1``."""
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ``, ``."""
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    """The route's ``{param}`` segments, percent-decoded."""
    peer: Any = None
    """The connection's socket (for the peer's credentials), or None."""
    received_s: float = 0.0
    """``time.monotonic()`` when the request's first bytes were read."""
    server: Server | None = None
    """The server that read it (``server.active``: requests it is handling now)."""
    connection: Connection | None = None
    """The connection it came on (``closed_callbacks``: run when that connection ends)."""
    cpu_ns: int = 0
    """CPU time (``time.thread_time_ns``) the server's thread spent parsing its head and
    framing its body."""
    cpu_start_ns: int = 0
    """The server thread's ``time.thread_time_ns()`` as its handler was called (0: not known);
    the handler's own CPU time is counted from it."""
    seq: int = 0
    """``Server.parsed`` once this request was read."""


class Response:
    __slots__ = ("body", "close", "content_type", "headers", "parts", "status")

    def __init__(self, status: int = 200, body: bytes = b"",
                 content_type: str = "application/json; charset=utf-8",
                 headers: Mapping[str, str] | None = None, close: bool = False,
                 parts: tuple[memoryview, ...] = ()) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = close
        """End the connection after this answer."""
        self.parts = parts
        """Byte views written after ``body``, as they are (binary tensors: no copy)."""

    @property
    def length(self) -> int:
        return len(self.body) + sum(p.nbytes for p in self.parts)


def json_response(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  dumps: Callable[[Any], str] = json.dumps) -> Response:
    return Response(status, dumps(doc).encode(), headers=headers)


def error_response(status: int, reason: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> Response:
    return json_response({"error": reason, **extra}, status, headers)


Handler = Callable[[Request], Response | Awaitable[Response]]
"""Answers at once (a Response) or later (an awaitable of one)."""
Fallback = Callable[[Request, set[str]], Response | Awaitable[Response]]
"""Called when no route matches; gets the methods the path does allow (empty: no such path)."""


MATCHED_MAX = 256
"""Routed (method, path) pairs a Router remembers."""
MATCHED_PATH = 512
"""Longer paths are routed every time."""


class Router:
    """Routes by method and path; tried in the order added (the hot path first). A (method,
    path) that matched before is looked up, not matched again."""

    def __init__(self, fallback: Fallback) -> None:
        self.fallback = fallback
        self._routes: list[tuple[str, list[str | None], list[str], Handler]] = []
        self._matched: dict[tuple[str, str], tuple[Handler, dict[str, str]]] = {}
        """(method, path) seen before that matched a route: its handler and parameters."""

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """``pattern`` like ``/v2/models/{name}/infer``; a ``{param}`` matches one non-empty
        segment. GET routes answer HEAD as well."""
        parts = pattern.split("/")
        literal = [None if p.startswith("{") else p for p in parts]
        names = [p[1:-1] for p in parts if p.startswith("{")]
        self._routes.append((method, literal, names, handler))
        self._matched.clear()

    async def dispatch(self, request: Request) -> Response:
        """The handler's answer, awaited if need be."""
        result = self.route(request)
        return result if isinstance(result, Response) else await result

    def route(self, request: Request) -> Response | Awaitable[Response]:
        """Call the handler of ``request`` (or the fallback); what it returns."""
        matched = self._matched.get((request.method, request.path))
        if matched is not None:
            request.params = matched[1].copy()
            return matched[0](request)
        parts = request.path.split("/")
        allowed: set[str] = set()
        decoded: list[str] | None = None
        for method, literal, names, handler in self._routes:
            if len(literal) != len(parts):
                continue
            if decoded is None:
                decoded = [unquote(p) if "%" in p else p for p in parts]
            params = []
            for want, got in zip(literal, decoded, strict=True):
                if want is None:
                    if not got:
                        break
                    params.append(got)
                elif want != got:
                    break
            else:
                if method == request.method or (method == "GET" and request.method == "HEAD"):
                    request.params = dict(zip(names, params, strict=True))
                    if len(self._matched) < MATCHED_MAX and len(request.path) <= MATCHED_PATH:
                        self._matched[(request.method, request.path)] = (
                            handler, request.params.copy())
                    return handler(request)
                allowed.add(method)
                if method == "GET":
                    allowed.add("HEAD")
        return self.fallback(request, allowed)


class _Refusal(Exception):
    """A request that cannot be read: answered with ``status`` and ``reason``, then the
    connection ends."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_HEAD_STARTS: dict[tuple[int, str], bytes] = {}
"""The fixed start of an answer's head (status line, Content-Type), per status and type."""
_HEAD_STARTS_MAX = 64
_HEAD_ENDS: dict[tuple[tuple[tuple[str, str], ...], bool, bool], bytes] = {}
"""The end of an answer's head (its headers after Content-Length), per headers and ending."""


def _head_bytes(status: int, content_type: str, length: int,
                headers: Mapping[str, str] | None, close: bool, keep_alive_10: bool) -> bytes:
    start = _HEAD_STARTS.get((status, content_type))
    if start is None:
        start = (f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}\r\n"
                 f"Content-Type: {content_type}\r\n").encode("latin-1")
        if len(_HEAD_STARTS) < _HEAD_STARTS_MAX:
            _HEAD_STARTS[(status, content_type)] = start
    end = b"Server: edgesched\r\n\r\n"
    if headers or close or keep_alive_10:
        key = (tuple(headers.items()) if headers else (), close, keep_alive_10)
        cached = _HEAD_ENDS.get(key)
        if cached is not None:
            return b"%sContent-Length: %d\r\n%s" % (start, length, cached)
        lines = ["Server: edgesched\r\n"]
        if headers:
            lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if close:
            lines.append("Connection: close\r\n")
        elif keep_alive_10:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        end = "".join(lines).encode("latin-1")
        if len(_HEAD_ENDS) < _HEAD_STARTS_MAX:
            _HEAD_ENDS[key] = end
    return b"%sContent-Length: %d\r\n%s" % (start, length, end)


class Server:
    """The protocol factory for one event loop's listeners, and its open connections."""

    def __init__(self, router: Router, *, body_limit: int, idle_timeout_s: float,
                 log_: logging.Logger | None = None) -> None:
        self.router = router
        self.body_limit = body_limit
        self.idle_timeout_s = idle_timeout_s
        self.log = log_ or log
        self.connections: set[Connection] = set()
        self.closing = False
        self.active = 0
        """Requests read whole and not yet answered, this one's handler included."""
        self.parsed = 0
        """Requests read whole so far."""

    def __call__(self) -> Connection:
        return Connection(self)

    async def shutdown(self, timeout_s: float) -> None:
        """End every connection: idle ones now, the others once their request is answered
        (or after ``timeout_s``)."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()
        await asyncio.sleep(0)  # requests read and not yet handled: their handlers start
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        for conn in list(self.connections):
            conn.abort()


class Connection(asyncio.Protocol):
    """One client connection: reads requests, runs them one at a time, writes the answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        """The request's task while its answer is awaited (or written out slowly)."""
        self._busy = False
        """A request was read and is not answered yet (its handler is scheduled or runs)."""
        self._buf = bytearray()
        self._head: tuple[str, str, str, dict[str, str]] | None = None
        self._body_end = 0
        """Content-Length framing: the buffer offset where the body ends (0: not known)."""
        self._chunked: _Chunked | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        """When the connection began waiting for its next request; None while one is handled."""
        self._lingering = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._read_paused = False
        self._eof = False
        self._peer: Any = None
        self._received_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        """The connection's event loop (asked once: each ``asyncio.get_running_loop()`` is a
        getpid system call)."""
        self.closed_callbacks: list[Callable[[], None]] = []
        """Run (on the event loop) when the connection ends, however it ends."""

    # ------------------------------------------------------------------------- asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._peer = transport.get_extra_info("socket")
        self.server.connections.add(self)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_timer()
        callbacks, self.closed_callbacks = self.closed_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one failing callback must not skip the clean-up below
                self.server.log.exception("connection close callback failed")
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.transport = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def eof_received(self) -> bool:
        self._eof = True
        if not self._busy and not self._lingering and (self._buf or self._head is not None):
            self._refuse(400, "the connection ended in the middle of a request")
        return self._busy  # a request in progress is answered, then the end

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if not self._buf and self._head is None:  # the first bytes of the next request
            self._received_s = time.monotonic()
        self._buf += data
        if not self._busy:
            self._advance()
        elif len(self._buf) > self.server.body_limit + MAX_HEAD_BYTES and not self._read_paused:
            self._read_paused = True  # pipelined requests pile up behind a slow one
            assert self.transport is not None
            self.transport.pause_reading()

    # ------------------------------------------------------------------------- requests
    def _advance(self) -> None:
        """Parse what the buffer holds; start the handler once a whole request is there."""
        cpu0_ns = time.thread_time_ns()
        try:
            request = self._parse()
        except _Refusal as exc:
            self._refuse(exc.status, exc.reason)
            return
        if request is None:
            return
        cpu1_ns = time.thread_time_ns()
        request.cpu_ns = cpu1_ns - cpu0_ns
        request.cpu_start_ns = cpu1_ns
        self.server.parsed += 1
        request.seq = self.server.parsed
        self._waiting_since = None  # the timer stays; it finds nothing to do
        self.server.active += 1
        self._busy = True
        # after every request read in this turn of the loop (they count in server.active)
        (self._loop or asyncio.get_running_loop()).call_soon(self._handle, request)

    def _parse(self) -> Request | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._check_partial_head()
                return None
            if end + 4 > MAX_HEAD_BYTES:
                raise _Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
            raw = bytes(buf[:end])
            parsed = _HEADS.get(raw)
            if parsed is None:
                parsed = _parse_head(raw)
                if len(raw) <= HEAD_CACHE_BYTES and len(_HEADS) < _HEADS_MAX:
                    _HEADS[raw] = parsed
            # each request its own headers: a handler may change them
            self._head = (parsed[0], parsed[1], parsed[2], parsed[3].copy())
            del buf[:end + 4]
            self._frame()
        method, target, version, headers = self._head
        if self._chunked is not None:
            body = self._chunked.feed(buf, self.server.body_limit)
            if body is None:
                return None
        else:
            n = self._body_end
            if len(buf) < n:
                return None
            if len(buf) == n:  # the usual case, nothing pipelined behind it: one copy, not two
                body = bytes(buf)
                buf.clear()
            else:
                with memoryview(buf) as view:
                    body = bytes(view[:n])
                del buf[:n]
        self._head = None
        self._chunked = None
        self._body_end = 0
        path, _, query = target.partition("?")
        return Request(method, path, query, version, headers, body, peer=self._peer,
                       received_s=self._received_s, server=self.server, connection=self)

    def _check_partial_head(self) -> None:
        buf = self._buf
        if len(buf) > MAX_HEAD_BYTES:
            raise _Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
        line_end = buf.find(b"\r\n", 0, MAX_REQUEST_LINE_BYTES + 2)
        if line_end < 0 and len(buf) > MAX_REQUEST_LINE_BYTES:
            raise _Refusal(414, f"request line over {MAX_REQUEST_LINE_BYTES} bytes")
        # what is not HTTP (TLS, garbage) is refused without waiting for a blank line
        line = bytes(buf[:line_end] if line_end >= 0 else buf[:MAX_METHOD_BYTES + 1])
        method = line.split(b" ", 1)[0]
        if len(method) > MAX_METHOD_BYTES or (line and not _TOKEN.fullmatch(method)):
            raise _Refusal(400, "malformed request line: expected METHOD TARGET HTTP/1.1")
        if line_end >= 0:
            _parse_request_line(line)

    def _frame(self) -> None:
        """How the body of the request just parsed is delimited; refuses bodies over the limit
        before reading them."""
        assert self._head is not None
        _, _, version, headers = self._head
        limit = self.server.body_limit
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if coding is not None:
            if length is not None:
                raise _Refusal(400, "both Content-Length and Transfer-Encoding were sent")
            if coding.strip().lower() != "chunked" or version == "HTTP/1.0":
                raise _Refusal(400, f"unsupported Transfer-Encoding {coding!r} (only chunked, "
                               "in HTTP/1.1)")
            self._chunked = _Chunked()
        elif length is not None:
            if length.isdigit() and length.isascii():  # the usual case: one plain number
                n = int(length)
            else:
                values = {v.strip() for v in length.split(",")}
                if len(values) != 1 or not all(v.isdigit() and v.isascii() for v in values):
                    raise _Refusal(400, f"invalid Content-Length {length!r}")
                n = int(values.pop())
            if n > limit:
                raise _Refusal(413, f"request body of {n} bytes exceeds the limit of {limit} "
                               "bytes (server.max_body_bytes)")
            self._body_end = n
        waiting = self._chunked is not None or len(self._buf) < self._body_end
        if (waiting and not self._buf and headers.get("expect", "").lower() == "100-continue"
                and self.transport is not None):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _handle(self, request: Request) -> None:
        """Run the request's handler: an answer given at once is written here, one to await
        becomes the connection's task."""
        if request.seq != self.server.parsed:  # others were read since: not theirs to count
            request.cpu_start_ns = time.thread_time_ns()
        try:
            result = self.server.router.route(request)
        except Exception as exc:
            result = self._failed(request, exc)
        if isinstance(result, Response):
            waiting = False
            try:
                self._answer(request, result)
                waiting = self._write_paused and self.transport is not None
            finally:
                if not waiting:
                    self._busy = False
                    self.server.active -= 1
            if not waiting:
                self._next()
                return
            pending = None  # answered: the task only waits until the answer is written
        else:
            pending = result
        self.task = asyncio.get_running_loop().create_task(self._run(request, pending))

    def _failed(self, request: Request, exc: Exception) -> Response:
        self.server.log.exception("%s %s failed", request.method, request.path,
                                  exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}")

    async def _run(self, request: Request, pending: Awaitable[Response] | None) -> None:
        """Await the answer of ``request`` (None: it was written already), then wait until the
        transport has taken it."""
        try:
            if pending is not None:
                try:
                    response = await pending
                except Exception as exc:
                    response = self._failed(request, exc)
                self._answer(request, response)
            if self._write_paused and self.transport is not None:
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
                self._drained = None
        finally:
            self.task = None
            self._busy = False
            self.server.active -= 1
        self._next()

    def _next(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self._buf:
            self._advance()
        if not self._busy and not self._lingering:
            if self.server.closing or self._eof:
                self.transport.close()
            else:
                self._arm_timer()

    def _answer(self, request: Request, response: Response) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        conn = request.headers.get("connection", "").lower()
        keep_10 = request.version == "HTTP/1.0" and "keep-alive" in conn
        close = (response.close or self.server.closing or "close" in conn
                 or (request.version == "HTTP/1.0" and not keep_10))
        head = _head_bytes(response.status, response.content_type, response.length,
                           response.headers, close, keep_10)
        if request.method == "HEAD":
            self.transport.write(head)
        elif response.parts or len(response.body) > BIG_BODY_BYTES:
            self.transport.writelines([head, response.body, *response.parts])
        else:
            self.transport.write(head + response.body)
        if close:
            self.transport.close()

    # ------------------------------------------------------------------------- endings
    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` with ``reason``, then drop what still arrives and end the
        connection once the client stops sending (or after LINGER_S)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = json.dumps({"error": reason}).encode()
        transport.write(_head_bytes(status, "application/json; charset=utf-8", len(body), None,
                                    True, False) + body)
        self._buf.clear()
        self._head = None
        self._chunked = None
        self._lingering = True
        if self._eof:
            transport.close()
            return
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            transport.write_eof()
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def close_if_idle(self) -> None:
        if not self._busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _arm_timer(self) -> None:
        """Start the time for the next request (one timer per connection, not per request)."""
        loop = self._loop or asyncio.get_running_loop()
        self._waiting_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.server.idle_timeout_s, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._waiting_since is None or self.transport is None or self._lingering:
            return
        loop = asyncio.get_running_loop()
        left_s = self._waiting_since + self.server.idle_timeout_s - loop.time()
        if left_s > 0:
            self._timer = loop.call_later(left_s, self._timed_out)
            return
        if self._buf or self._head is not None:  # a request started and did not finish
            self._refuse(408, f"the request did not arrive within {self.server.idle_timeout_s:g} "
                         "s (server.idle_timeout_s)")
        else:
            self.transport.close()


_HEADER_NAMES: dict[bytes, str] = {}
"""Header field names seen before (checked as tokens), each with its lower-case key."""
_HEADER_NAMES_MAX = 256
_HEADS: dict[bytes, tuple[str, str, str, dict[str, str]]] = {}
"""Request heads seen before (request line and headers, byte for byte) and what they parse to:
a client sends the same head for every request of the same kind."""
_HEADS_MAX = 256
HEAD_CACHE_BYTES = 2048
"""Longer heads are parsed every time."""


def _parse_head(raw: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers; raises _Refusal when they are not HTTP/1.x."""
    lines = raw.split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise _Refusal(431, f"more than {MAX_HEADERS} request headers")
    method, target, version = _parse_request_line(lines[0])
    headers: dict[str, str] = {}
    names = _HEADER_NAMES
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        key = names.get(name) if sep else None
        if key is None:
            if not sep or not _TOKEN.fullmatch(name):
                raise _Refusal(400, "malformed request header line")
            key = name.decode("ascii").lower()
            if len(names) < _HEADER_NAMES_MAX:
                names[name] = key
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return method, target, version, headers


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _Refusal(400, "malformed request line: expected METHOD TARGET HTTP/1.1")
    if len(line) > MAX_REQUEST_LINE_BYTES:
        raise _Refusal(414, f"request line over {MAX_REQUEST_LINE_BYTES} bytes")
    version = parts[2].decode("latin-1")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refusal(400, f"unsupported protocol {version[:20]!r}: this server speaks "
                       "HTTP/1.0 and HTTP/1.1")
    target = parts[1].decode("latin-1")
    if not target.startswith("/"):
        raise _Refusal(400, "the request target must be a path starting with /")
    return parts[0].decode("ascii"), target, version


class _Chunked:
    """Decodes a chunked body as it arrives (consuming the connection's buffer)."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.left = -1
        """Bytes left in the current chunk; -1: a size line comes next."""
        self.trailers = False

    def feed(self, buf: bytearray, limit: int) -> bytes | None:
        """The whole body once the last chunk and trailers are in, else None."""
        while True:
            if self.trailers:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise _Refusal(431, "chunked trailers too long")
                    return None
                del buf[:end + 2]
                if end == 0:
                    return bytes(self.body)
                continue
            if self.left < 0:
                end = buf.find(b"\r\n", 0, MAX_CHUNK_LINE_BYTES)
                if end < 0:
                    if len(buf) >= MAX_CHUNK_LINE_BYTES:
                        raise _Refusal(400, "malformed chunk size line")
                    return None
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF"
                                                         for c in size):
                    raise _Refusal(400, "malformed chunk size line")
                del buf[:end + 2]
                self.left = int(size, 16)
                if self.left == 0:
                    self.trailers = True
                    continue
                if len(self.body) + self.left > limit:
                    raise _Refusal(413, f"request body exceeds the limit of {limit} bytes "
                                   "(server.max_body_bytes)")
            if len(buf) < self.left + 2:
                return None
            if buf[self.left:self.left + 2] != b"\r\n":
                raise _Refusal(400, "malformed chunk: no CRLF after its data")
            self.body += buf[:self.left]
            del buf[:self.left + 2]
            self.left = -1
