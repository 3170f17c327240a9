"""A small client for the daemon over its unix socket (or TCP), on a lean HTTP/1.1 connection.

One :class:`Client` keeps one HTTP/1.1 keep-alive connection; use one client per thread::

    with Client("/run/edgesched/edgesched.sock") as c:
        result = c.infer("okay_nabu", {"input": x}, priority=1, timeout_us=50_000)
        result.outputs["output"], result.parameters["energy_j"]

Errors the daemon answers come back as :class:`~edgesched.errors.ClientError` with the HTTP
status, the daemon's reason and the outcome (``deadline_missed``, ``shed``, ...).

The wire code (:class:`Connection`) is written here on a plain socket rather than taken from
``http.client``: clients run on the same small boards as the daemon, and ``http.client`` spends
about as much CPU per small request as the daemon itself (``email`` header parsing, buffered
file objects). A request is one ``sendall`` (head and a small body together), or one
``sendmsg`` of the head and the tensors' own memory for a large one; the answer is read with
``recv`` into one buffer and parsed in place.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edgesched.errors import ClientError
from edgesched.tensorwire import encode_tensor, json_bytes

DEFAULT_SOCKET = "/run/edgesched/edgesched.sock"
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "uint16": "UINT16",
    "int32": "INT32", "uint32": "UINT32", "int64": "INT64", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
DTYPES: dict[str, np.dtype[Any]] = {v: np.dtype(k) for k, v in DATATYPES.items()}
_DATATYPE_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items()}  # dtype.name is slow

MAX_HEAD_BYTES = 64 * 1024  # status line and headers (and, apart, a chunked body's trailers)
SMALL_BODY_BYTES = 64 * 1024  # up to this, head and body go out in one sendall (one copy)
_RECV_BYTES = 64 * 1024

Body = bytes | bytearray | memoryview | Sequence[bytes | memoryview]
"""A request body: bytes, or pieces sent one after the other without joining them."""
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # Content-Length: 0 when sent without body
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # in a method or a request target
_HEADER_NAME = re.compile(r"[^:\s][^:\r\n]*")  # what a request may carry (as http.client)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # what a response's field name must be
_HEX = frozenset(b"0123456789abcdefABCDEF")


# ------------------------------------------------------------------------------ HTTP/1.1 wire
class Headers(Mapping[str, str]):
    """The header fields of a response: a read-only mapping, case-insensitive in its names.

    A name sent more than once maps to its first value (:meth:`get_all` has every one);
    iteration yields each name once, as the server spelled it first."""

    __slots__ = ("_fields", "_values")

    def __init__(self, fields: list[tuple[str, str]] | None = None) -> None:
        self._fields = fields or []
        self._values: dict[str, tuple[str, str]] = {}
        for name, value in self._fields:
            self._values.setdefault(name.lower(), (name, value))

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._values.values())

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in the order they came."""
        key = name.lower()
        return [v for n, v in self._fields if n.lower() == key]

    def get_content_type(self) -> str:
        """``type/subtype`` of Content-Type, lower case, without parameters ("text/plain" when
        absent or invalid, as ``email.message.Message.get_content_type``)."""
        ctype = self.get("Content-Type", "").partition(";")[0].strip().lower()
        return ctype if ctype.count("/") == 1 else "text/plain"


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: Headers
    body: bytes
    will_close: bool  # the connection is closed after this response
    trailers: Headers | None = None  # a chunked body's trailer fields, if it had any


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection before sending any byte of a response."""


class Connection:
    """One HTTP/1.1 connection over a unix stream socket (``socket_path``) or TCP (``port``),
    kept alive across requests and opened again after the server closed it.

    :meth:`request` raises OSError as the socket does (FileNotFoundError,
    ConnectionRefusedError, BrokenPipeError, TimeoutError, ...), :class:`RemoteDisconnected`
    when the server closes the connection before answering, and ClientError (status 0) for a
    malformed answer or one cut short. After any error the connection is closed."""

    def __init__(self, socket_path: str | None = None, *, host: str | None = None,
                 port: int | None = None, timeout: float | None = None) -> None:
        if socket_path is None and port is None:
            raise ValueError("Connection needs a socket path or a TCP port")
        self.socket_path = socket_path
        self.host = host or "127.0.0.1"
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""  # received, not yet consumed from self._pos on
        self._pos = 0
        self._what = ""  # "METHOD PATH" of the request in progress, for messages

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> socket.socket:
        self.close()
        if self.port is not None:
            sock = socket.create_connection((self.host, self.port), self.timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                raise
        else:
            assert self.socket_path is not None  # checked in __init__
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        return sock

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._buf, self._pos = b"", 0
        if sock is not None:
            sock.close()

    def request(self, method: str, path: str, body: Body | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """Send one request and read its response (connecting first if need be)."""
        pieces = [memoryview(p).cast("B") for p in (
            [body] if isinstance(body, (bytes, bytearray, memoryview)) else body or ())]
        length = sum(p.nbytes for p in pieces) if body is not None else None
        head = _request_head(method, path, length, headers)
        self._what = f"{method} {path}"
        try:
            sock = self.sock or self.connect()
            if not length:
                sock.sendall(head)
            elif length <= SMALL_BODY_BYTES:
                sock.sendall(b"".join((head, *pieces)))
            else:
                _send_pieces(sock, [memoryview(head), *pieces])
            resp = self._read_response(method == "HEAD")
        except BaseException:
            self.close()
            raise
        if self._pos < len(self._buf):  # bytes past the answer: out of step, start afresh
            resp.will_close = True
        if resp.will_close:
            self.close()
        return resp

    # -------------------------------------------------------------------------- reading
    def _malformed(self, why: str) -> ClientError:
        return ClientError(0, f"malformed response from the daemon ({self._what}): {why}")

    def _cut_short(self) -> ClientError:
        return ClientError(0, f"the daemon closed the connection in the middle of its answer "
                              f"({self._what})")

    def _fill(self) -> None:
        """Receive more bytes into the buffer; EOF here cuts an answer short."""
        assert self.sock is not None
        data = self.sock.recv(_RECV_BYTES)
        if not data:
            raise self._cut_short()
        self._buf = self._buf[self._pos:] + data if self._pos else self._buf + data
        self._pos = 0

    def _read_response(self, head_only: bool) -> Response:
        if self._pos == len(self._buf):  # EOF or a reset before any byte: the idle-close case
            assert self.sock is not None
            data = self.sock.recv(_RECV_BYTES)
            if not data:
                raise RemoteDisconnected("the server closed the connection")
            self._buf, self._pos = data, 0
        try:
            return self._parse_response(head_only)
        except ConnectionResetError:
            raise self._cut_short() from None

    def _parse_response(self, head_only: bool) -> Response:
        while True:
            status, reason, version, headers = self._read_head()
            if status >= 200:
                break
            if status == 101:
                raise self._malformed("101 Switching Protocols was not asked for")
            # an interim answer (100 Continue, 103 Early Hints): the real one follows
        tokens = _tokens(headers.get("Connection"))
        will_close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
        trailers = None
        if head_only or status in (204, 304):
            body = b""
        elif "Transfer-Encoding" in headers:
            if _tokens(headers["Transfer-Encoding"])[-1:] == ["chunked"]:
                body, trailers = self._read_chunked()
            else:
                body, will_close = self._read_to_close(), True
        elif "Content-Length" in headers:
            values = {v.strip() for v in ",".join(headers.get_all("Content-Length")).split(",")}
            raw = values.pop()
            if values or not (raw.isascii() and raw.isdigit()):
                raise self._malformed(f"Content-Length {headers['Content-Length']!r}")
            body = self._read_exact(int(raw))
        else:
            body, will_close = self._read_to_close(), True
        return Response(status, reason, version, headers, body, will_close, trailers)

    def _read_head(self) -> tuple[int, str, str, Headers]:
        scan = self._pos
        while True:
            end = self._buf.find(b"\r\n\r\n", scan)
            if end >= 0:
                break
            if len(self._buf) - self._pos > MAX_HEAD_BYTES:
                raise self._malformed(f"no end of the header block within {MAX_HEAD_BYTES} bytes")
            scan = max(len(self._buf) - 3, self._pos) - self._pos
            self._fill()
        if end - self._pos > MAX_HEAD_BYTES:
            raise self._malformed(f"header block longer than {MAX_HEAD_BYTES} bytes")
        lines = self._buf[self._pos:end].decode("latin-1").split("\r\n")
        self._pos = end + 4
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if (len(version) != 8 or not version.startswith("HTTP/1.") or version[7] not in "0123456789"
                or len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] == "0"):
            raise self._malformed(f"status line {lines[0][:80]!r}")
        return int(code), reason.strip(), version, self._fields(lines[1:])

    def _fields(self, lines: list[str]) -> Headers:
        fields: list[tuple[str, str]] = []
        for line in lines:
            if line[:1] in (" ", "\t") and fields:  # obsolete line folding
                name, value = fields[-1]
                fields[-1] = (name, value + " " + line.strip(" \t"))
                continue
            name, sep, value = line.partition(":")
            if not sep or _TOKEN.fullmatch(name) is None:
                raise self._malformed(f"header line {line[:80]!r}")
            fields.append((name, value.strip(" \t")))
        return Headers(fields)

    def _read_exact(self, n: int) -> bytes:
        have = len(self._buf) - self._pos
        if have >= n:
            start, self._pos = self._pos, self._pos + n
            return self._buf[start:self._pos]
        out = bytearray(n)
        view = memoryview(out)
        view[:have] = memoryview(self._buf)[self._pos:]
        self._buf, self._pos = b"", 0
        assert self.sock is not None
        while have < n:
            got = self.sock.recv_into(view[have:])
            if not got:
                raise self._cut_short()
            have += got
        view.release()
        return bytes(out)

    def _read_line(self, limit: int) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                break
            if len(self._buf) - self._pos > limit:
                raise self._malformed("chunk size or trailer line too long")
            self._fill()
        line, self._pos = self._buf[self._pos:end], end + 2
        return line

    def _read_chunked(self) -> tuple[bytes, Headers | None]:
        parts: list[bytes] = []
        while True:
            line = self._read_line(1024)
            size = line.partition(b";")[0].strip(b" \t")
            if not size or not _HEX.issuperset(size):
                raise self._malformed(f"chunk size line {line[:80]!r}")
            n = int(size, 16)
            if n == 0:
                break
            parts.append(self._read_exact(n))
            if self._read_exact(2) != b"\r\n":
                raise self._malformed("chunk data not followed by CRLF")
        lines: list[str] = []
        budget = MAX_HEAD_BYTES
        while line := self._read_line(budget):
            budget -= len(line) + 2
            if budget < 0:
                raise self._malformed(f"trailers longer than {MAX_HEAD_BYTES} bytes")
            lines.append(line.decode("latin-1"))
        return b"".join(parts), (self._fields(lines) if lines else None)

    def _read_to_close(self) -> bytes:
        assert self.sock is not None
        parts = [self._buf[self._pos:]]
        self._buf, self._pos = b"", 0
        while data := self.sock.recv(_RECV_BYTES):
            parts.append(data)
        return b"".join(parts)


def _send_pieces(sock: socket.socket, views: list[memoryview]) -> None:
    """``sendall`` of the byte views one after the other, with as few system calls as the kernel
    takes them in (``sendmsg``), without joining them."""
    views = [v for v in views if v.nbytes]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= views[0].nbytes:
                sent -= views.pop(0).nbytes
            else:
                views[0] = views[0][sent:]
                sent = 0


def _tokens(value: str | None) -> list[str]:
    """The comma-separated tokens of a header value, lower case."""
    return [t.strip().lower() for t in value.split(",")] if value else []


def _request_head(method: str, path: str, length: int | None,
                  headers: Mapping[str, str] | None) -> bytes:
    if not method or _BAD_TARGET.search(method) or _BAD_TARGET.search(path):
        raise ValueError(f"invalid method or path: {method!r} {path!r}")
    lines = [f"{method} {path or '/'} HTTP/1.1\r\n"]
    given = {name.lower() for name in headers} if headers else set()
    if "host" not in given:
        lines.append("Host: localhost\r\n")
    if "content-length" not in given:
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif method in _BODY_METHODS:
            lines.append("Content-Length: 0\r\n")
    if headers:
        for name, value in headers.items():
            value = str(value)
            if _HEADER_NAME.fullmatch(name) is None or "\r" in value or "\n" in value:
                raise ValueError(f"invalid header {name!r}: {value!r}")
            lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


@dataclass(frozen=True)
class InferResult:
    model: str
    request_id: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]


def datatype_of(arr: np.ndarray) -> str:
    name = _DATATYPE_OF_DTYPE.get(arr.dtype)
    if name is not None:
        return name
    try:
        return DATATYPES[arr.dtype.name]  # the same type in the other byte order
    except KeyError:
        raise ValueError(f"dtype {arr.dtype} has no Open Inference Protocol datatype") from None


def encode_infer(inputs: Mapping[str, np.ndarray], priority: int = 0,
                 timeout_us: int | None = None, binary: bool = True, request_id: str = "",
                 ) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer request."""
    pieces, headers = encode_infer_pieces(inputs, priority, timeout_us, binary, request_id)
    return b"".join(pieces), headers


def encode_infer_pieces(inputs: Mapping[str, np.ndarray], priority: int = 0,
                        timeout_us: int | None = None, binary: bool = True,
                        request_id: str = "",
                        ) -> tuple[list[bytes | memoryview], dict[str, str]]:
    """The body of an infer request as pieces (the JSON header, then byte views of the input
    arrays, which must not change until they are sent), and its headers."""
    params: dict[str, Any] = {}
    if priority:
        params["priority"] = int(priority)
    if timeout_us is not None:
        params["timeout"] = int(timeout_us)
    if binary:
        params["binary_data_output"] = True
    tensors: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        tensors.append(encode_tensor(name, arr, datatype_of(arr), binary, blobs))
    head_doc: dict[str, Any] = {"inputs": tensors}
    if request_id:
        head_doc["id"] = request_id
    if params:
        head_doc["parameters"] = params
    head = json_bytes(head_doc)  # JSON tensor data written from the arrays by orjson
    headers = {"Content-Type": "application/json"}
    if not binary:
        return [head], headers
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return [head, *blobs], headers


def decode_infer(body: bytes, header_length: int | None) -> InferResult:
    """Parse an infer response (JSON or JSON header + binary outputs)."""
    head = body if header_length is None else memoryview(body)[:header_length]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:  # what orjson refuses (NaN, UTF-16): the standard library
        doc = json.loads(bytes(head))
    outputs: dict[str, np.ndarray] = {}
    offset = header_length or 0
    for out in doc.get("outputs", []):
        dtype = DTYPES[out["datatype"]]
        shape = tuple(out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        else:
            arr = np.asarray(out["data"], dtype=dtype)
        outputs[out["name"]] = arr.reshape(shape)
    return InferResult(model=doc.get("model_name", ""), request_id=doc.get("id", ""),
                       outputs=outputs, parameters=doc.get("parameters") or {})


class Client:
    """Blocking client; not thread-safe (one per thread)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, host: str | None = None,
                 port: int | None = None, timeout_s: float | None = 60.0) -> None:
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._conn: Connection | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> Connection:
        if self._conn is None:
            if self.port is not None:
                self._conn = Connection(host=self.host, port=self.port, timeout=self.timeout_s)
            else:
                self._conn = Connection(self.socket_path, timeout=self.timeout_s)
        return self._conn

    def request(self, method: str, path: str, body: Body | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, Headers, bytes]:
        """One round trip; reconnects once if an idle keep-alive connection was closed."""
        for attempt in (0, 1):
            conn = self._connection()
            fresh = conn.sock is None
            try:
                resp = conn.request(method, path, body, headers)
            except (BrokenPipeError, ConnectionResetError):  # incl. RemoteDisconnected
                self.close()
                if fresh or attempt:
                    raise ClientError(0, f"the daemon closed the connection ({method} "
                                      f"{path})") from None
                continue
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                self.close()
                where = (f"{self.host or '127.0.0.1'}:{self.port}" if self.port is not None
                         else self.socket_path)
                raise ClientError(0, f"cannot reach the daemon at {where} ({exc.strerror}); "
                                  "is `edgesched serve` running?") from None
            return resp.status, resp.headers, resp.body
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, ok: tuple[int, ...] = (200,)) -> Any:
        status, _, data = self.request(method, path)
        doc = json.loads(data) if data else {}
        if status not in ok:
            raise ClientError(status, doc.get("error", data.decode(errors="replace")),
                              doc.get("outcome", ""))
        return doc

    # ---------------------------------------------------------------------------- endpoints
    def live(self) -> bool:
        status, _, _ = self.request("GET", "/v2/health/live")
        return status == 200

    def ready(self) -> bool:
        status, _, _ = self.request("GET", "/v2/health/ready")
        return status == 200

    def server_metadata(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v2"))

    def model_metadata(self, model: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v2/models/{model}"))

    def status(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v2/status"))

    def metrics(self) -> str:
        status, _, data = self.request("GET", "/metrics")
        if status != 200:
            raise ClientError(status, data.decode(errors="replace"))
        return data.decode()

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], priority: int = 0,
              timeout_us: int | None = None, binary: bool = True, request_id: str = "",
              ) -> InferResult:
        """Run ``model``; raises ClientError for any non-200 answer (with its outcome)."""
        body, headers = encode_infer_pieces(inputs, priority, timeout_us, binary, request_id)
        status, msg, data = self.request("POST", f"/v2/models/{model}/infer", body, headers)
        if status != 200:
            try:
                doc = json.loads(data)
            except ValueError:
                doc = {"error": data.decode(errors="replace")}
            raise ClientError(status, str(doc.get("error", "")), str(doc.get("outcome", "")))
        raw_len = msg.get(HEADER_LENGTH)
        return decode_infer(data, int(raw_len) if raw_len is not None else None)

    # ------------------------------------------------------------------ system shared memory
    def _call(self, method: str, path: str, body: bytes = b"") -> bytes:
        headers = {"Content-Type": "application/json"} if body else None
        status, _, data = self.request(method, path, body, headers)
        if status != 200:
            try:
                reason = str(json.loads(data).get("error", ""))
            except (ValueError, AttributeError):
                reason = data.decode(errors="replace")
            raise ClientError(status, reason)
        return data

    def register_system_shared_memory(self, name: str, key: str, byte_size: int,
                                      offset: int = 0) -> None:
        """Register ``[offset, offset + byte_size)`` of the POSIX shared memory object ``key``
        as region ``name`` (Triton's system shared-memory extension)."""
        body = json.dumps({"key": key, "offset": offset, "byte_size": byte_size}).encode()
        self._call("POST", f"/v2/systemsharedmemory/region/{name}/register", body)

    def unregister_system_shared_memory(self, name: str = "") -> None:
        """Unregister region ``name`` ("": every region of this user)."""
        where = f"/region/{name}" if name else ""
        self._call("POST", f"/v2/systemsharedmemory{where}/unregister")

    def get_system_shared_memory_status(self, name: str = "") -> list[dict[str, Any]]:
        where = f"/region/{name}" if name else ""
        return list(json.loads(self._call("GET", f"/v2/systemsharedmemory{where}/status")))

    def infer_shm(self, model: str, inputs: Mapping[str, np.ndarray], priority: int = 0,
                  timeout_us: int | None = None, request_id: str = "") -> InferResult:
        """One request through system shared memory: create an object, register it, infer,
        read the outputs, unregister and unlink (also on errors)."""
        with SharedMemorySession(self, model) as session:
            return session.infer(inputs, priority, timeout_us, request_id)


SHM_DIR = "/dev/shm"
_JSON_HEADERS = {"Content-Type": "application/json"}


def _shm_params(region: str, offset: int, size: int) -> dict[str, Any]:
    return {"shared_memory_region": region, "shared_memory_offset": offset,
            "shared_memory_byte_size": size}


class SharedMemorySession:
    """One POSIX shared memory object, registered with the daemon, that holds a model's inputs
    and outputs for many requests::

        with Client(sock) as c, SharedMemorySession(c, "okay_nabu") as s:
            result = s.infer({"input": x})

    The object is created under ``/dev/shm`` (what ``shm_open`` does on Linux) with mode 0600;
    closing the session unregisters the region and unlinks the object, also after an error.
    """

    def __init__(self, client: Client, model: str, shm_dir: str = SHM_DIR) -> None:
        self.client = client
        self.model = model
        meta = client.model_metadata(model)
        self._layout: dict[str, tuple[str, int, tuple[int, ...], np.dtype[Any]]] = {}
        offset = 0
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                dtype = DTYPES[t["datatype"]]
                shape = tuple(int(d) for d in t["shape"])
                self._layout[f"{kind}:{t['name']}"] = (t["datatype"], offset, shape, dtype)
                offset += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.inputs = [t["name"] for t in meta["inputs"]]
        self.outputs = [t["name"] for t in meta["outputs"]]
        self.byte_size = offset
        self.key = f"/edgesched-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.name = self.key.lstrip("/")
        self.path = f"{shm_dir}/{self.name}"
        self._mapping: Any = None
        self._registered = False
        self._views: dict[str, np.ndarray] = {}
        """Arrays viewing the mapping, per tensor (dropped before it is unmapped)."""
        self._heads: dict[tuple[Any, ...], bytes] = {}
        """Request bodies by input names, priority, timeout and id (the same for every
        request with the same ones: the data is in the region)."""
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.byte_size)
            self._mapping = mmap.mmap(fd, self.byte_size)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        try:
            self.client.register_system_shared_memory(self.name, self.key, self.byte_size)
            self._registered = True
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SharedMemorySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _array(self, kind: str, name: str) -> np.ndarray:
        key = f"{kind}:{name}"
        view = self._views.get(key)
        if view is None:
            _, offset, shape, dtype = self._layout[key]
            count = int(np.prod(shape, dtype=np.int64))
            view = np.frombuffer(self._mapping, dtype=dtype, count=count,
                                 offset=offset).reshape(shape)
            self._views[key] = view
        return view

    def _body(self, names: tuple[str, ...], priority: int, timeout_us: int | None,
              request_id: str) -> bytes:
        key = (names, priority, timeout_us, request_id)
        body = self._heads.get(key)
        if body is not None:
            return body
        tensors = []
        for name in names:
            datatype, offset, shape, dtype = self._layout[f"inputs:{name}"]
            tensors.append({"name": name, "datatype": datatype, "shape": list(shape),
                            "parameters": _shm_params(self.name, offset,
                                                      dtype.itemsize * int(np.prod(shape)))})
        outs = []
        for name in self.outputs:
            _, offset, shape, dtype = self._layout[f"outputs:{name}"]
            outs.append({"name": name, "parameters": _shm_params(
                self.name, offset, dtype.itemsize * int(np.prod(shape)))})
        params: dict[str, Any] = {}
        if priority:
            params["priority"] = int(priority)
        if timeout_us is not None:
            params["timeout"] = int(timeout_us)
        doc: dict[str, Any] = {"inputs": tensors, "outputs": outs}
        if request_id:
            doc["id"] = request_id
        if params:
            doc["parameters"] = params
        body = json_bytes(doc)
        if len(self._heads) < 64:
            self._heads[key] = body
        return body

    def infer(self, inputs: Mapping[str, np.ndarray], priority: int = 0,
              timeout_us: int | None = None, request_id: str = "") -> InferResult:
        """Write ``inputs`` into the region, run the model, return copies of the outputs."""
        for name, value in inputs.items():
            key = f"inputs:{name}"
            if key not in self._layout:
                raise ValueError(f"model {self.model!r} has no input {name!r} "
                                 f"(inputs: {', '.join(self.inputs)})")
            _, _, shape, dtype = self._layout[key]
            self._array("inputs", name)[...] = np.asarray(value, dtype=dtype).reshape(shape)
        body = self._body(tuple(inputs), priority, timeout_us, request_id)
        status, _, data = self.client.request(
            "POST", f"/v2/models/{self.model}/infer", body, _JSON_HEADERS)
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:  # what orjson refuses (NaN, UTF-16): the standard library
            try:
                answer = json.loads(data)
            except ValueError:
                answer = {"error": data.decode(errors="replace")}
        if not isinstance(answer, dict):
            answer = {"error": data.decode(errors="replace")}
        if status != 200:
            raise ClientError(status, str(answer.get("error", "")), str(answer.get("outcome", "")))
        outputs = {o["name"]: self._array("outputs", o["name"]).copy()
                   for o in answer.get("outputs", [])}
        return InferResult(model=answer.get("model_name", ""), request_id=answer.get("id", ""),
                           outputs=outputs, parameters=answer.get("parameters") or {})

    def close(self) -> None:
        """Unregister the region and unlink the object (errors of the daemon are ignored: the
        daemon unregisters every region at shutdown anyway)."""
        if self._registered:
            self._registered = False
            with contextlib.suppress(ClientError, OSError):
                self.client.unregister_system_shared_memory(self.name)
        self._views.clear()  # no view of the mapping is left to keep it mapped
        if self._mapping is not None:
            mapping, self._mapping = self._mapping, None
            with contextlib.suppress(BufferError):
                mapping.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
