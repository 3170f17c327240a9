"""Triton's system shared-memory extension: tensors that cross no socket.

A local client creates a POSIX shared-memory object (``/dev/shm/<key>``), registers a region of
it under a name, and then names the region in an infer request's tensor ``parameters`` instead of
sending the data, as Triton's protocol document ``docs/protocol/extension_shared_memory.md``
defines it:

- ``POST /v2/systemsharedmemory/region/{name}/register`` with ``{"key", "offset", "byte_size"}``;
- ``POST /v2/systemsharedmemory/region/{name}/unregister``, ``POST
  /v2/systemsharedmemory/unregister`` (every region the caller may unregister);
- ``GET /v2/systemsharedmemory/status`` and ``GET /v2/systemsharedmemory/region/{name}/status``:
  a list of ``{"name", "key", "offset", "byte_size"}``;
- an input with ``shared_memory_region``, ``shared_memory_byte_size`` (and optionally
  ``shared_memory_offset``) is read from the region: numpy views the mapping, and the one copy is
  the interpreter's ``set_tensor``; a requested output with those parameters is written into the
  region, and the response's output carries the same parameters and no data.

Off by default (``server.shared_memory``). When on, any unix peer that can connect may use it, or
with ``server.shared_memory_group`` only root and that group's members. TCP peers are refused:
they carry no credentials, and every region is owned by the uid of the peer that registered it
(``SO_PEERCRED``); only that uid or root may use, see or unregister it. The shared-memory object
itself must belong to the registering uid (or the peer is root), so a daemon running as root
never maps another user's memory for a client.

Checks, as Triton does them: the region lies inside the object (offset + byte_size within the
object's size), a tensor lies inside its region and its byte size matches the model's (an output
region may be larger), a region name is registered once, the key exists. A region unregistered
while requests use it is gone for later requests at once (they get 400) but stays mapped, counted
by users, until the last running request has its answer; then it is unmapped. At shutdown every
region is unregistered and unmapped.

A client that shrinks its object below a registered region would make the daemon's next access
fault; the object's size is checked again before every use (``fstat``), which closes all but a
narrow window: enable the extension only for trusted local clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgesched.errors import AdmissionError
from edgesched.server.access import IdentityLookup, Peer, peer_of, system_identity
from edgesched.server.http1 import Request, Response, error_response, json_response

if TYPE_CHECKING:
    from edgesched.server.app import ServerState
    from edgesched.server.runner import TensorSpec

log = logging.getLogger("edgesched.server")

SHM_DIR = Path("/dev/shm")
EXTENSION = "system_shared_memory"
PARAM_REGION = "shared_memory_region"
PARAM_OFFSET = "shared_memory_offset"
PARAM_SIZE = "shared_memory_byte_size"
PARAM_KEYS = frozenset({PARAM_REGION, PARAM_OFFSET, PARAM_SIZE})
BODY_LIMIT = 64 << 10
OFF_REASON = ("system shared memory is off: set server.shared_memory = true in the daemon's "
              "configuration (and server.shared_memory_group to limit it to a group), then "
              "restart the daemon")


@dataclass(eq=False)
class Region:
    """One registered region: the mapping of ``[offset, offset + byte_size)`` of the object."""

    name: str
    key: str
    offset: int
    byte_size: int
    owner_uid: int
    fd: int
    mapping: mmap.mmap
    start: int
    """Where the region starts inside ``mapping`` (mappings start on a page boundary)."""
    users: int = 0
    registered: bool = True

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}

    def check_size(self) -> None:
        """The object still covers the region (a shrunk object would fault on access)."""
        size = os.fstat(self.fd).st_size
        if size < self.offset + self.byte_size:
            raise AdmissionError(400, f"shared memory region {self.name!r}: its object "
                                 f"{self.key!r} shrank to {size} bytes, below the registered "
                                 f"offset + byte_size {self.offset + self.byte_size}; "
                                 "unregister and register it again")

    def unmap(self) -> None:
        try:
            self.mapping.close()
        except BufferError:  # a view still exists: the mapping goes with the last view
            log.debug("shared memory region %r: unmapped when its last view is freed", self.name)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _uint(doc: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AdmissionError(400, f"{what}: {key!r} must be an integer >= 0, got {value!r}")
    return value


def _object_path(shm_dir: Path, key: Any) -> Path:
    if not isinstance(key, str) or not key.strip("/"):
        raise AdmissionError(400, f"'key' must name a POSIX shared memory object (such as "
                             f"\"/my_input\"), got {key!r}")
    name = key.lstrip("/")
    if "/" in name or name in (".", "..") or "\x00" in name:
        raise AdmissionError(400, f"key {key!r}: a shared memory object's name has no '/' "
                             "after the leading one")
    return shm_dir / name


class SharedMemoryRegistry:
    """The registered regions of one daemon (used from every event loop thread)."""

    def __init__(self, group: str = "", lookup: IdentityLookup = system_identity,
                 shm_dir: Path = SHM_DIR) -> None:
        self.group = group
        self.lookup = lookup
        self.shm_dir = shm_dir
        self._lock = threading.Lock()
        self._regions: dict[str, Region] = {}

    # ------------------------------------------------------------------------------ access
    def admit(self, peer: Peer) -> Peer:
        """``peer`` if it may use shared memory at all; else AdmissionError(403)."""
        if peer.transport != "unix":
            raise AdmissionError(403, "system shared memory needs a unix socket peer: regions "
                                 "belong to the peer's uid, and a TCP peer carries none")
        if self.group and peer.uid != 0:
            try:
                ident = self.lookup(peer.uid, peer.gid)
            except Exception as exc:  # a failing lookup must not open the door
                raise AdmissionError(403, f"cannot look up the peer's user ({exc})") from None
            if self.group not in ident.groups:
                raise AdmissionError(403, f"forbidden: user {ident.name!r} ({peer.describe()}) "
                                     f"may not use system shared memory; it is allowed to root "
                                     f"and members of group {self.group!r} "
                                     "(server.shared_memory_group)")
        return peer

    @staticmethod
    def _may(peer: Peer, region: Region) -> bool:
        return peer.uid == 0 or peer.uid == region.owner_uid

    def _owned(self, peer: Peer, name: str) -> Region:
        """The region ``name`` for ``peer`` (lock held); 404 if it is not there, 403 if it is
        another user's."""
        region = self._regions.get(name)
        if region is None:
            raise AdmissionError(404, f"no system shared memory region {name!r} is registered "
                                 "(GET /v2/systemsharedmemory/status lists them)")
        if not self._may(peer, region):
            raise AdmissionError(403, f"system shared memory region {name!r} belongs to uid "
                                 f"{region.owner_uid}; only that user or root may use it")
        return region

    # ------------------------------------------------------------------------ register etc.
    def register(self, peer: Peer, name: str, doc: Mapping[str, Any]) -> Region:
        unknown = sorted(set(doc) - {"key", "offset", "byte_size"})
        if unknown:
            raise AdmissionError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; a "
                                 "register request is {\"key\", \"offset\", \"byte_size\"}")
        path = _object_path(self.shm_dir, doc.get("key"))
        key = str(doc["key"])
        what = f"register {name!r}"
        offset = _uint(doc, "offset", what, 0)
        byte_size = _uint(doc, "byte_size", what)
        if byte_size == 0:
            raise AdmissionError(400, f"{what}: 'byte_size' must be > 0")
        with self._lock:
            if name in self._regions:
                raise AdmissionError(409, f"a system shared memory region named {name!r} is "
                                     "already registered; unregister it first or use another "
                                     "name")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise AdmissionError(400, f"{what}: no shared memory object {key!r} ({path}); "
                                 "create it first (shm_open)") from None
        except OSError as exc:
            raise AdmissionError(400, f"{what}: cannot open {path}: {exc.strerror}; the "
                                 "daemon's user needs read and write access to it") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AdmissionError(400, f"{what}: {path} is not a shared memory object")
            if peer.uid != 0 and st.st_uid != peer.uid:
                raise AdmissionError(403, f"{what}: {path} belongs to uid {st.st_uid}, not to "
                                     f"the caller (uid {peer.uid})")
            if offset + byte_size > st.st_size:
                raise AdmissionError(400, f"{what}: offset {offset} + byte_size {byte_size} is "
                                     f"past the end of {key!r} ({st.st_size} bytes)")
            base = offset - offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(fd, offset + byte_size - base, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
            except OSError as exc:
                raise AdmissionError(400, f"{what}: cannot map {path}: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        region = Region(name, key, offset, byte_size, peer.uid, fd, mapping, offset - base)
        with self._lock:
            if name in self._regions:  # registered by a concurrent request meanwhile
                region.unmap()
                raise AdmissionError(409, f"a system shared memory region named {name!r} is "
                                     "already registered")
            self._regions[name] = region
        log.info("shared memory region %r registered: %s [%d, +%d) by uid %d", name, key,
                 offset, byte_size, peer.uid)
        return region

    def unregister(self, peer: Peer, name: str | None) -> list[str]:
        """Unregister ``name`` (None: every region ``peer`` may unregister); the names."""
        with self._lock:
            if name is not None:
                gone = [self._owned(peer, name)]
            else:
                gone = [r for r in self._regions.values() if self._may(peer, r)]
            for region in gone:
                del self._regions[region.name]
                region.registered = False
                if region.users == 0:
                    region.unmap()
        for region in gone:
            log.info("shared memory region %r unregistered%s", region.name,
                     f" (mapped until {region.users} running request(s) end)"
                     if region.users else "")
        return [r.name for r in gone]

    def status(self, peer: Peer, name: str | None) -> list[dict[str, Any]]:
        with self._lock:
            if name is not None:
                return [self._owned(peer, name).status()]
            return [r.status() for r in self._regions.values() if self._may(peer, r)]

    def acquire(self, peer: Peer, name: str) -> Region:
        """Count one more user of region ``name`` (400 if it is unknown)."""
        with self._lock:
            try:
                region = self._owned(peer, name)
            except AdmissionError as exc:
                raise AdmissionError(400 if exc.status == 404 else exc.status,
                                     exc.reason) from None
            region.users += 1
            return region

    def release(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            last = region.users == 0 and not region.registered
        if last:
            region.unmap()
            log.info("shared memory region %r unmapped: its last request ended", region.name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._regions)

    def close(self) -> None:
        """Unregister and unmap every region (daemon shutdown)."""
        with self._lock:
            regions, self._regions = list(self._regions.values()), {}
            for region in regions:
                region.registered = False
                if region.users == 0:
                    region.unmap()
                else:
                    log.warning("shared memory region %r still in use at shutdown", region.name)
        if regions:
            log.info("unregistered %d shared memory region(s)", len(regions))


# ------------------------------------------------------------------------------ per request
@dataclass
class _OutputTarget:
    spec: TensorSpec
    region: Region
    offset: int
    byte_size: int
    params: dict[str, Any]


@dataclass(eq=False)
class SharedMemoryUse:
    """The regions one infer request uses: acquired while it is decoded, released (always)
    once its answer is ready."""

    registry: SharedMemoryRegistry | None
    sock: Any
    """The connection's socket: the peer's credentials are read on first use."""
    peer: Peer | None = None
    held: list[Region] = field(default_factory=list)
    outputs: list[_OutputTarget] = field(default_factory=list)

    def _region(self, params: Mapping[str, Any], what: str) -> tuple[Region, int, int]:
        registry = self.registry
        if registry is None:
            raise AdmissionError(403, f"{what}: {OFF_REASON}")
        name = params.get(PARAM_REGION)
        if not isinstance(name, str) or PARAM_SIZE not in params:
            raise AdmissionError(400, f"{what}: shared memory needs both {PARAM_REGION!r} (a "
                                 f"region name) and {PARAM_SIZE!r} ({PARAM_OFFSET!r} is "
                                 "optional)")
        offset = _uint(params, PARAM_OFFSET, what, 0)
        size = _uint(params, PARAM_SIZE, what)
        if self.peer is None:
            self.peer = registry.admit(peer_of(self.sock))
        region = registry.acquire(self.peer, name)
        checked = region in self.held
        self.held.append(region)
        if offset + size > region.byte_size:
            raise AdmissionError(400, f"{what}: {PARAM_OFFSET} {offset} + {PARAM_SIZE} {size} "
                                 f"is outside region {name!r} ({region.byte_size} bytes)")
        if not checked:  # once per region and request
            region.check_size()
        return region, offset, size

    def input(self, spec: TensorSpec, item: Mapping[str, Any],
              params: Mapping[str, Any]) -> np.ndarray:
        """Input ``spec`` as a view of its region (no copy)."""
        what = f"input {spec.name!r}"
        if "data" in item or "binary_data_size" in params:
            raise AdmissionError(400, f"{what}: give the data by shared memory or in the "
                                 "request, not both")
        region, offset, size = self._region(params, what)
        if size != spec.size_bytes:
            raise AdmissionError(400, f"{what}: {PARAM_SIZE} {size} bytes, shape "
                                 f"{list(spec.shape)} of {spec.datatype} needs "
                                 f"{spec.size_bytes}")
        return np.frombuffer(region.mapping, dtype=spec.dtype, count=spec.count,
                             offset=region.start + offset).reshape(spec.shape)

    def output(self, spec: TensorSpec, params: Mapping[str, Any]) -> None:
        """Send output ``spec`` to its region."""
        what = f"output {spec.name!r}"
        if params.get("binary_data", False) is not False:  # tritonclient sends false with them
            raise AdmissionError(400, f"{what}: 'binary_data' and shared memory exclude each "
                                 "other")
        region, offset, size = self._region(params, what)
        if size < spec.size_bytes:
            raise AdmissionError(400, f"{what}: {PARAM_SIZE} {size} bytes is too small: shape "
                                 f"{list(spec.shape)} of {spec.datatype} needs "
                                 f"{spec.size_bytes}")
        echo = {k: params[k] for k in (PARAM_REGION, PARAM_OFFSET, PARAM_SIZE) if k in params}
        self.outputs.append(_OutputTarget(spec, region, offset, size, echo))

    def write_outputs(self, results: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        """Copy the results bound for shared memory into their regions; their response docs."""
        docs: list[dict[str, Any]] = []
        for region in {id(t.region): t.region for t in self.outputs}.values():
            region.check_size()
        for t in self.outputs:
            arr = np.ascontiguousarray(results[t.spec.name])
            at = t.region.start + t.offset
            t.region.mapping[at:at + arr.nbytes] = arr.data.cast("B")
            docs.append({"name": t.spec.name, "datatype": t.spec.datatype,
                         "shape": list(arr.shape), "parameters": t.params})
        return docs

    def release(self) -> None:
        registry, held = self.registry, self.held
        self.held = []
        self.outputs = []
        if registry is not None:
            for region in held:
                registry.release(region)


def tensor_params(params: Any) -> bool:
    """Whether a tensor's ``parameters`` name shared memory."""
    return isinstance(params, dict) and not PARAM_KEYS.isdisjoint(params)


def shared_input(use: SharedMemoryUse | None, spec: TensorSpec, item: Mapping[str, Any],
                 params: Mapping[str, Any]) -> np.ndarray:
    """Admission's entry for an input by shared memory (403 when the extension is off)."""
    if use is None:
        raise AdmissionError(403, f"input {spec.name!r}: {OFF_REASON}")
    return use.input(spec, item, params)


def shared_output(use: SharedMemoryUse | None, spec: TensorSpec,
                  params: Mapping[str, Any]) -> None:
    """Admission's entry for an output by shared memory (403 when the extension is off)."""
    if use is None:
        raise AdmissionError(403, f"output {spec.name!r}: {OFF_REASON}")
    use.output(spec, params)


# ------------------------------------------------------------------------------ endpoints
def _fail(exc: AdmissionError) -> Response:
    return error_response(exc.status, exc.reason)


def _registry(st: ServerState, request: Request) -> tuple[SharedMemoryRegistry, Peer]:
    registry = st.shm
    if registry is None:
        raise AdmissionError(403, OFF_REASON)
    return registry, registry.admit(peer_of(request.peer))


def _body(request: Request, empty: bool) -> dict[str, Any]:
    raw = request.body
    if empty:
        if raw.strip():
            raise AdmissionError(400, "an unregister request has an empty body")
        return {}
    if len(raw) > BODY_LIMIT:
        raise AdmissionError(413, f"request body over {BODY_LIMIT} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AdmissionError(400, f"malformed JSON request body: {exc}") from None
    if not isinstance(doc, dict):
        raise AdmissionError(400, "the body must be {\"key\": ..., \"offset\": ..., "
                             "\"byte_size\": ...}")
    return doc


async def shm_status(st: ServerState, request: Request) -> Response:
    """GET /v2/systemsharedmemory[/region/{name}]/status"""
    try:
        registry, peer = _registry(st, request)
        return json_response(registry.status(peer, request.params.get("name")))
    except AdmissionError as exc:
        return _fail(exc)


async def shm_register(st: ServerState, request: Request) -> Response:
    """POST /v2/systemsharedmemory/region/{name}/register"""
    try:
        registry, peer = _registry(st, request)
        registry.register(peer, request.params["name"], _body(request, empty=False))
    except AdmissionError as exc:
        return _fail(exc)
    return Response(200, b"")


async def shm_unregister(st: ServerState, request: Request) -> Response:
    """POST /v2/systemsharedmemory[/region/{name}]/unregister"""
    try:
        registry, peer = _registry(st, request)
        _body(request, empty=True)
        registry.unregister(peer, request.params.get("name"))
    except AdmissionError as exc:
        return _fail(exc)
    return Response(200, b"")


ROUTES = (
    ("GET", "/v2/systemsharedmemory/status", shm_status),
    ("GET", "/v2/systemsharedmemory/region/{name}/status", shm_status),
    ("POST", "/v2/systemsharedmemory/region/{name}/register", shm_register),
    ("POST", "/v2/systemsharedmemory/region/{name}/unregister", shm_unregister),
    ("POST", "/v2/systemsharedmemory/unregister", shm_unregister),
)
"""The extension's endpoints (main socket only), answered 403 while it is off."""

__all__ = ["EXTENSION", "ROUTES", "Region", "SharedMemoryRegistry", "SharedMemoryUse",
           "shared_input", "shared_output", "tensor_params"]
