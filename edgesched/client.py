"""A small client for the daemon over its unix socket (or 127.0.0.1 TCP), on ``http.client``.

One :class:`Client` keeps one HTTP/1.1 keep-alive connection; use one client per thread::

    with Client("/run/edgesched/edgesched.sock") as c:
        result = c.infer("okay_nabu", {"input": x}, priority=1, timeout_us=50_000)
        result.outputs["output"], result.parameters["energy_j"]

Errors the daemon answers come back as :class:`~edgesched.errors.ClientError` with the HTTP
status, the daemon's reason and the outcome (``deadline_missed``, ``shed``, ...).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesched.errors import ClientError
from edgesched.tensorwire import encode_tensor

DEFAULT_SOCKET = "/run/edgesched/edgesched.sock"
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "uint16": "UINT16",
    "int32": "INT32", "uint32": "UINT32", "int64": "INT64", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
DTYPES: dict[str, np.dtype[Any]] = {v: np.dtype(k) for k, v in DATATYPES.items()}


class UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` whose transport is a unix stream socket."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class InferResult:
    model: str
    request_id: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]


def datatype_of(arr: np.ndarray) -> str:
    try:
        return DATATYPES[arr.dtype.name]
    except KeyError:
        raise ValueError(f"dtype {arr.dtype} has no Open Inference Protocol datatype") from None


def encode_infer(inputs: Mapping[str, np.ndarray], priority: int = 0,
                 timeout_us: int | None = None, binary: bool = True, request_id: str = "",
                 ) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer request."""
    params: dict[str, Any] = {}
    if priority:
        params["priority"] = int(priority)
    if timeout_us is not None:
        params["timeout"] = int(timeout_us)
    if binary:
        params["binary_data_output"] = True
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        tensors.append(encode_tensor(name, arr, datatype_of(arr), binary, blobs))
    head_doc: dict[str, Any] = {"inputs": tensors}
    if request_id:
        head_doc["id"] = request_id
    if params:
        head_doc["parameters"] = params
    head = json.dumps(head_doc, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    if not binary:
        return head, headers
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers


def decode_infer(body: bytes, header_length: int | None) -> InferResult:
    """Parse an infer response (JSON or JSON header + binary outputs)."""
    head = body if header_length is None else body[:header_length]
    doc = json.loads(head)
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
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.port is not None:
                self._conn = http.client.HTTPConnection(self.host or "127.0.0.1", self.port,
                                                        timeout=self.timeout_s)
            else:
                self._conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout_s)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None,
                ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One round trip; reconnects once if an idle keep-alive connection was closed."""
        for attempt in (0, 1):
            conn = self._connection()
            fresh = conn.sock is None
            try:
                conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt:
                    raise ClientError(0, f"the daemon closed the connection ({method} "
                                      f"{path})") from None
                continue
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                self.close()
                where = (f"127.0.0.1:{self.port}" if self.port is not None
                         else self.socket_path)
                raise ClientError(0, f"cannot reach the daemon at {where} ({exc.strerror}); "
                                  "is `edgesched serve` running?") from None
            if resp.will_close:
                self.close()
            return resp.status, resp.msg, data
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
        body, headers = encode_infer(inputs, priority, timeout_us, binary, request_id)
        status, msg, data = self.request("POST", f"/v2/models/{model}/infer", body, headers)
        if status != 200:
            try:
                doc = json.loads(data)
            except ValueError:
                doc = {"error": data.decode(errors="replace")}
            raise ClientError(status, str(doc.get("error", "")), str(doc.get("outcome", "")))
        raw_len = msg.get(HEADER_LENGTH)
        return decode_infer(data, int(raw_len) if raw_len is not None else None)
