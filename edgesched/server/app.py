"""The HTTP side: Open Inference Protocol (KServe v2) REST endpoints (on the small HTTP/1.1
server of :mod:`edgesched.server.http1`), and the daemon's lifecycle (sockets, readiness,
watchdog, signals, drain on shutdown).

The handlers only decode, hand over to admission and the dispatcher, and encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import grp
import json
import logging
import math
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesched import __version__
from edgesched.errors import AdmissionError, ConfigError, EdgeschedError, ModelError, PolicyMismatchError
from edgesched.policy.base import Policy
from edgesched.power.board import Board
from edgesched.power.meters import CarbonAccount
from edgesched.qos import QosGuard
from edgesched.queue import RequestQueue
from edgesched.server import systemd
from edgesched.server.access import AdminGate, IdentityLookup, Verdict, peer_of, system_identity
from edgesched.server.admission import (
    InferRequest,
    check_deadline,
    encode_response_parts,
    parse_infer,
)
from edgesched.server.config import PRIORITY_SOCKET_AUTO, Config, config_to_dict, priority_socket_path
from edgesched.server.dispatcher import Dispatcher, Job, Outcome, drain_remaining
from edgesched.server.gate import ConnectionGate, ensure_fd_limit
from edgesched.server.holds import PolicyArbiter, create_hold, release_hold
from edgesched.server.http1 import (
    Request,
    Response,
    Router,
    Server,
    error_response,
    json_response,
)
from edgesched.server.lane import PriorityLane
from edgesched.server.metrics import Metrics, ModelStatistics, render_heat
from edgesched.server.openapi import openapi
from edgesched.server.reload import ConfigLoader, ReloadRecord, reload_config
from edgesched.server.runner import LoadedModel, load_models, shipped_models_dir
from edgesched.server.shm import EXTENSION as SHM_EXTENSION
from edgesched.server.shm import ROUTES as SHM_ROUTES
from edgesched.server.shm import SharedMemoryRegistry, SharedMemoryUse

log = logging.getLogger("edgesched.server")

SERVER_NAME = "edgesched"
EXTENSIONS = ("binary_tensor_data", "schedule_policy", "model_configuration", "statistics")
HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_KEY = HEADER_LENGTH.lower()
ADMIN_BODY_LIMIT = 64 << 10


@dataclass
class ServerState:
    config: Config
    models: dict[str, LoadedModel]
    dispatcher: Dispatcher
    metrics: Metrics
    board: Board
    policy: Policy
    clock: Callable[[], float] = time.monotonic
    started_s: float = 0.0
    model_errors: list[str] = field(default_factory=list)
    ready: bool = True
    mailboxes: dict[asyncio.AbstractEventLoop, Mailbox] = field(default_factory=dict)
    """One per event loop that serves requests (the main one, the priority lane's)."""
    lane: PriorityLane | None = None
    gate: AdminGate = field(default_factory=AdminGate)
    models_dir: Path | None = None
    admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    arbiter: PolicyArbiter = field(default_factory=PolicyArbiter)
    """Holds, the power source and which policy runs (:mod:`edgesched.server.holds`)."""
    reloads: ReloadRecord = field(default_factory=ReloadRecord)
    shm: SharedMemoryRegistry | None = None
    """The system shared-memory regions; None while ``server.shared_memory`` is off."""
    stats: ModelStatistics = field(default_factory=ModelStatistics)
    """Per-model statistics (Triton's statistics extension)."""


class Mailbox:
    """Hands outcomes from the dispatcher thread to the event loop.

    Outcomes that arrive while a wake-up is already pending ride on it: under load one wake-up
    of the loop delivers many answers.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        """The loop's thread (the mailbox is made on it)."""
        self.serving = False
        """This loop's thread has a turn of serving the queue scheduled (:func:`_serve_waiting`)."""
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Outcome], Outcome]] = []
        self._pending = False

    def put(self, fut: asyncio.Future[Outcome], out: Outcome) -> None:
        """Deliver ``out`` to ``fut`` (from any thread; from the loop's own, without a wake-up)."""
        if threading.get_ident() == self.thread:
            if not fut.done():
                fut.set_result(out)
            return
        with self._lock:
            self._items.append((fut, out))
            if self._pending:
                return
            self._pending = True
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._pending = False
        for fut, out in items:
            if not fut.done():
                fut.set_result(out)


_error = error_response


def _model(st: ServerState, request: Request) -> LoadedModel:
    name = request.params["name"]
    model = st.models.get(name)
    if model is None:
        raise AdmissionError(404, f"unknown model {name!r} (models: {', '.join(st.models)})")
    version = request.params.get("version")
    if version not in (None, "", "1"):
        raise AdmissionError(404, f"model {name!r} has no version {version!r} (versions: 1)")
    return model


def _admission_response(exc: AdmissionError) -> Response:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    extra = {"outcome": exc.outcome} if exc.outcome else {}
    return _error(exc.status, exc.reason, headers=headers, **extra)


# --------------------------------------------------------------------------------- handlers
async def live(st: ServerState, request: Request) -> Response:
    return json_response({"live": True})


async def ready(st: ServerState, request: Request) -> Response:
    ok = st.ready and st.dispatcher.alive()
    return json_response({"ready": ok}, status=200 if ok else 400)  # the spec: 4xx is false


async def server_metadata(st: ServerState, request: Request) -> Response:
    extensions = [*EXTENSIONS, SHM_EXTENSION] if st.shm is not None else list(EXTENSIONS)
    return json_response({"name": SERVER_NAME, "version": __version__,
                              "extensions": extensions})


def _model_doc(st: ServerState, request: Request,
               doc: Callable[[LoadedModel], dict[str, Any]]) -> Response:
    """``doc`` of the request's model, or the error that names why there is none."""
    try:
        model = _model(st, request)
    except AdmissionError as exc:
        return _admission_response(exc)
    return json_response(doc(model))


async def model_metadata(st: ServerState, request: Request) -> Response:
    return _model_doc(st, request, LoadedModel.metadata)


async def model_config(st: ServerState, request: Request) -> Response:
    """Triton's model configuration extension: ``GET /v2/models/{name}[/versions/1]/config``."""
    return _model_doc(st, request, LoadedModel.config)


async def model_stats(st: ServerState, request: Request) -> Response:
    """Triton's statistics extension: ``GET /v2/models[/{name}[/versions/1]]/stats``."""
    if "name" not in request.params:
        return json_response({"model_stats": [st.stats.model_stat(m) for m in st.models]})
    return _model_doc(st, request, lambda m: {"model_stats": [st.stats.model_stat(m.name)]})


async def model_ready(st: ServerState, request: Request) -> Response:
    try:
        model = _model(st, request)
    except AdmissionError as exc:
        return _admission_response(exc)
    ok = st.ready
    return json_response({"name": model.name, "ready": ok}, status=200 if ok else 400)


def infer(st: ServerState, request: Request) -> Response | Awaitable[Response]:
    """An infer request: the Response when it was answered at once (served inline, or
    refused), else a coroutine that awaits its outcome from the dispatcher thread."""
    if st.shm is None:
        return _infer(st, request, None)
    use = SharedMemoryUse(st.shm, request.peer)
    try:
        result = _infer(st, request, use)
    except BaseException:
        use.release()
        raise
    if isinstance(result, Response):
        use.release()  # _infer's frame is gone: no view of a region is left to keep it mapped
        return result
    return _released(result, use)


async def _released(pending: Awaitable[Response], use: SharedMemoryUse) -> Response:
    try:
        return await pending
    finally:  # after the answer's frames are gone: no view of a region keeps it mapped
        use.release()


def _infer(st: ServerState, request: Request,
           shm: SharedMemoryUse | None) -> Response | Awaitable[Response]:
    """The answer's parameters (its receipt) carry ``daemon_cpu_us``: the CPU time of the
    threads that handled the request (``time.thread_time_ns`` deltas), from parsing its head
    to building its answer: the server thread's, and the dispatcher's when it was queued."""
    cpu0_ns = request.cpu_start_ns or time.thread_time_ns()
    arrived_s = st.clock()  # a request's timeout runs from its arrival
    st.metrics.received()
    cfg = st.config
    model_name = request.params["name"]
    priority = 0
    try:
        model = _model(st, request)
        raw_len = request.headers.get(HEADER_LENGTH_KEY)
        header_length: int | None = None
        if raw_len is not None:
            try:
                header_length = int(raw_len)
            except ValueError:
                raise AdmissionError(400, f"{HEADER_LENGTH} must be an integer, got "
                                     f"{raw_len!r}") from None
        # the body was read whole by the server, within server.max_body_bytes
        req = parse_infer(request.body, header_length, model, cfg.queue.levels,
                          cfg.queue.default_priority, shm)
        priority = req.priority
        if req.timeout_us is None:
            deadline_s = math.inf
        else:
            if cfg.admission.reject_infeasible_deadline:
                check_deadline(req, st.dispatcher.top_service_s(model),
                               cfg.admission.deadline_margin,
                               cfg.admission.infeasible_status)
            deadline_s = arrived_s + req.timeout_us / 1e6
        done: list[Outcome] = []
        job = Job(req=req, model=model, deadline_s=deadline_s, answer=done.append)
        # inline only for a request alone on its listener: several at once go through the queue,
        # where priority and deadline order them (and a full queue refuses with 429)
        server = request.server
        if (server is None or server.active <= 1) and st.dispatcher.run_inline(job):
            return _answer_infer(st, request, model, req, done[0], cpu0_ns, shm)
        loop = asyncio.get_running_loop()  # else the queue
        mailbox = st.mailboxes.get(loop)
        if mailbox is None:
            mailbox = st.mailboxes.setdefault(loop, Mailbox(loop))
        fut: asyncio.Future[Outcome] = loop.create_future()
        job.answer = functools.partial(mailbox.put, fut)
        # requests read together: queued, so that priority and deadline order them, then served
        # on this thread in that order while they are short and nothing else runs
        here = st.dispatcher.may_run_inline(model)
        st.dispatcher.submit(job, wake=not here)
        if here and not mailbox.serving:
            mailbox.serving = True
            loop.call_soon(_serve_waiting, st, mailbox)
    except AdmissionError as exc:
        known = model_name if model_name in st.models else ""
        st.metrics.count(known, priority, "rejected")
        return _admission_response(exc)
    # other requests run on this thread meanwhile: only this one's parts are counted
    return _queued(st, request, model, req, fut, time.thread_time_ns() - cpu0_ns, shm)


def _serve_waiting(st: ServerState, mailbox: Mailbox) -> None:
    """Serve the head of the queue on this loop's thread (one per turn of the loop, so that
    requests read meanwhile join the queue first); the dispatcher thread takes over when the
    head cannot be served here."""
    served = False
    try:
        served = st.dispatcher.serve_waiting_inline()
    finally:
        if served and len(st.dispatcher.queue):
            mailbox.loop.call_soon(_serve_waiting, st, mailbox)
        else:
            mailbox.serving = False
            if not served:
                st.dispatcher.wake()


async def _queued(st: ServerState, request: Request, model: LoadedModel, req: InferRequest,
                  fut: asyncio.Future[Outcome], spent_ns: int,
                  shm: SharedMemoryUse | None) -> Response:
    out = await fut
    cpu0_ns = time.thread_time_ns() - spent_ns - out.cpu_ns
    return _answer_infer(st, request, model, req, out, cpu0_ns, shm)


def _answer_infer(st: ServerState, request: Request, model: LoadedModel, req: InferRequest,
                  out: Outcome, cpu0_ns: int, shm: SharedMemoryUse | None) -> Response:
    params = out.parameters
    params["outcome"] = out.outcome
    params["daemon_us"] = daemon_us = round((time.monotonic() - request.received_s) * 1e6)
    params["daemon_cpu_us"] = round((request.cpu_ns + time.thread_time_ns() - cpu0_ns) / 1e3)
    queue_us = params.get("queue_wait_us")
    service_us = params.get("service_us") if out.results is not None else None
    st.stats.record(model.name, out.results is not None, daemon_us * 1000,
                    None if queue_us is None else queue_us * 1000,
                    None if service_us is None else service_us * 1000)
    if out.results is None:
        headers = None
        if out.outcome in ("shed", "shutting_down"):
            headers = {"Retry-After": str(max(1, math.ceil(st.config.server.retry_after_s)))}
        return json_response({"error": out.reason, "id": req.request_id, "outcome":
                              out.outcome, "parameters": params}, status=out.status,
                             headers=headers)
    try:
        shared = shm.write_outputs(out.results) if shm is not None and shm.outputs else None
    except AdmissionError as exc:  # the region's object shrank meanwhile
        return _admission_response(exc)
    head, blobs = encode_response_parts(model, req.request_id, out.results, req.outputs, params,
                                        shared)
    if not blobs:
        return Response(200, head)
    return Response(200, head, "application/octet-stream", {HEADER_LENGTH: str(len(head))},
                    parts=tuple(blobs))


def _freqs(st: ServerState, cur_opps: list[int]) -> list[tuple[str, int]]:
    prof = st.board.profile
    return [(c.name, c.opps[cur_opps[i]].khz) for i, c in enumerate(prof.clusters)]


async def metrics(st: ServerState, request: Request) -> Response:
    snap = st.dispatcher.snapshot()
    text = st.metrics.render(snap["queue_by_priority"], _freqs(st, snap["cur_opps"]),
                             [(m.name, m.service_s) for m in st.models.values()],
                             now_s=st.dispatcher.clock())
    heat = _heat(st)
    if heat is not None:
        text += render_heat(heat)
    return Response(200, text.encode(), "text/plain; charset=utf-8",
                    {"X-Content-Type-Options": "nosniff"})


def _heat(st: ServerState) -> dict[str, Any] | None:
    """The board's thermal zones, caps and throttled time now (None: no sysfs root to read)."""
    monitor = st.dispatcher.heat
    if monitor is None:
        return None
    refresh = getattr(st.board, "refresh_heat", None)
    if refresh is not None:
        refresh()  # a virtual board counts the idle time since its last run
    return monitor.sample()


async def status(st: ServerState, request: Request) -> Response:
    snap = st.dispatcher.snapshot()
    models: dict[str, Any] = {}
    for m in st.models.values():
        recent = sorted(m.recent_s)
        models[m.name] = {
            "path": str(m.path),
            "service_us_startup": round(m.service_s * 1e6, 1),
            "service_us_p50_recent": round(recent[len(recent) // 2] * 1e6, 1) if recent else None,
            "runs": m.runs,
        }
    totals = st.metrics.totals()
    doc = {
        "name": SERVER_NAME, "version": __version__,
        "uptime_s": round(st.clock() - st.started_s, 3),
        "ready": st.ready,
        "queue": {"depth": snap["queue_len"], "bytes": snap["queue_bytes"],
                  "by_priority": {str(k): v for k, v in snap["queue_by_priority"].items()},
                  "backlog_ms": snap["backlog_ms"], "max_count": st.config.queue.max_count},
        "arrival_rate_hz": snap["arrival_rate_hz"],
        "arrival_dispersion": round(snap["arrival_dispersion"], 3),
        "policy": {"name": st.policy.name, "spec": st.config.policy.spec,
                   "tick_s": st.policy.tick_s},
        "board": {"spec": st.config.board.spec, "profile": st.board.profile.name,
                  # who sets frequencies (leased, hands_off, disabled) and per-policy failures
                  "control": getattr(st.board, "control", None),
                  "clusters": [{"name": name, "freq_khz": khz, "opp": opp,
                                "util": round(util, 4)}
                               for (name, khz), opp, util in zip(
                                   _freqs(st, snap["cur_opps"]), snap["cur_opps"],
                                   snap["util_by_cluster"], strict=True)]},
        "thermal": _heat(st),
        "models": models,
        "model_errors": st.model_errors,
        "requests": totals,
        "energy_j_total": totals["energy_j"],
        "co2e_g_total": totals["co2e_g"],
        "grid_gco2e_per_kwh": st.config.energy.grid_gco2e_per_kwh,
        "renewable_fraction": st.config.energy.renewable_fraction,
        "config": config_to_dict(st.config),
        "switch_interval_us": round(sys.getswitchinterval() * 1e6),
        "dispatcher_nice": st.dispatcher.thread_nice,
        "served_inline": st.dispatcher.inlined,
        "priority_socket": st.lane.name.removeprefix("unix:") if st.lane else None,
        "priority_lane_nice": st.lane.thread_nice if st.lane else None,
        **st.arbiter.status(),  # holds, power source, where the running policy comes from
        "reloads": st.reloads.to_dict(),
    }
    return json_response(doc, dumps=lambda o: json.dumps(o, default=str))


async def openapi_doc(st: ServerState, request: Request) -> Response:
    return json_response(openapi())


async def not_found(request: Request, allowed: set[str]) -> Response:
    """No route: a JSON 404 (or 405 with Allow) that says where to look."""
    return _no_route(request, allowed, "the API is described at GET /v2/openapi.json")


async def lane_not_found(request: Request, allowed: set[str]) -> Response:
    """The priority lane's: what is not inference or health is on the main socket."""
    return _no_route(request, allowed, "the priority socket serves inference, health and model "
                     "metadata only; status, metrics and admin are on the main socket")


def _no_route(request: Request, allowed: set[str], hint: str) -> Response:
    where = f"{request.method} {request.path[:200]}"
    if allowed:
        return _error(405, f"method not allowed: {where}; allowed: {', '.join(sorted(allowed))}",
                      headers={"Allow": ", ".join(sorted(allowed))})
    return _error(404, f"no endpoint {where}; {hint}")


# --------------------------------------------------------------------------------- admin
def _admin_verdict(st: ServerState, request: Request) -> Verdict:
    verdict = st.gate.check(peer_of(request.peer))
    log.info("admin %s %s by %s: %s", request.method, request.path, verdict.who,
             "allowed" if verdict.allowed else "refused")
    return verdict


def _admin_body(request: Request) -> dict[str, Any]:
    """The JSON object of an admin request (an empty body is an empty object)."""
    raw = request.body
    if len(raw) > ADMIN_BODY_LIMIT:
        raise AdmissionError(413, f"admin request body over {ADMIN_BODY_LIMIT} bytes")
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AdmissionError(400, f"malformed JSON request body: {exc}") from None
    if not isinstance(doc, dict):
        raise AdmissionError(400, "the request body must be a JSON object")
    return doc


StateHandler = Callable[[ServerState, Request], Response | Awaitable[Response]]
AdminHandler = Callable[[Request, ServerState, Verdict, dict[str, Any]], Awaitable[Response]]


def _admin(no_params: str | None = None) -> Callable[[AdminHandler], StateHandler]:
    """An admin endpoint: the peer's credentials are checked first (403 with the reason), then
    the JSON body is read (empty: ``{}``). ``no_params``: the endpoint takes no parameters, and
    this is the 400 reason when the body has some."""

    def wrap(fn: AdminHandler) -> StateHandler:
        @functools.wraps(fn)
        async def handler(st: ServerState, request: Request) -> Response:
            verdict = _admin_verdict(st, request)
            if not verdict.allowed:
                return _error(403, verdict.reason)
            try:
                doc = _admin_body(request)
                if doc and no_params is not None:
                    raise AdmissionError(400, no_params)
            except AdmissionError as exc:
                return _admission_response(exc)
            return await fn(request, st, verdict, doc)

        return handler

    return wrap


def _policy_spec_over_http(spec: str, policy_dir: str) -> str:
    """``spec`` with any policy file resolved inside ``policy.dir`` (a shipped ``learned:NAME``
    needs no folder); refuses paths that leave it."""
    if "\x00" in spec or not spec.strip():
        raise AdmissionError(400, f"invalid policy spec {spec!r}")
    kind, sep, arg = spec.partition(":")
    if not sep:
        return spec
    if kind not in ("learned", "qlearn"):
        raise AdmissionError(400, f"policy {kind!r} takes no argument (got {spec!r})")
    if kind == "learned":
        from edgesched.policy.registry import shipped_policies

        if arg in shipped_policies():  # a policy shipped with the package, by name
            return spec
    if not policy_dir:
        raise AdmissionError(403, "loading policy files over HTTP is off: set policy.dir to the "
                             "folder of trusted policy files")
    base = Path(policy_dir).resolve()
    target = (base / arg).resolve()
    if not target.is_relative_to(base):
        raise AdmissionError(403, f"policy file {arg!r} is outside policy.dir ({base}); only "
                             "files in that folder can be loaded over HTTP")
    return f"{kind}:{target}"


@_admin()
async def admin_policy(request: Request, st: ServerState, verdict: Verdict,
                       doc: dict[str, Any]) -> Response:
    """POST /v2/admin/policy {"policy": SPEC}: switch the policy on the dispatcher thread."""
    try:
        spec = doc.get("policy")
        if not isinstance(spec, str):
            raise AdmissionError(400, "body must be {\"policy\": SPEC} with SPEC a string such "
                                 "as \"schedutil\"")
        unknown = sorted(set(doc) - {"policy"})
        if unknown:
            raise AdmissionError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                 "expected only 'policy'")
        resolved = _policy_spec_over_http(spec, st.config.policy.dir)
        from edgesched.policy.registry import make_policy

        loop = asyncio.get_running_loop()
        try:
            policy: Policy = await loop.run_in_executor(None, make_policy, resolved)
        except EdgeschedError as exc:
            raise AdmissionError(400, f"cannot use policy {spec!r}: {exc}") from None
        disp = st.dispatcher
        async with st.admin_lock:
            old = st.policy.name
            try:
                await asyncio.wrap_future(disp.call(lambda: disp.set_policy(policy)))
            except AdmissionError:
                raise
            except Exception as exc:  # reset() refusing the board (mismatch), or similar
                raise AdmissionError(400, f"policy {spec!r} cannot run on this board: "
                                     f"{exc}") from None
            st.policy = policy
            st.config = dataclasses.replace(
                st.config, policy=dataclasses.replace(st.config.policy, spec=spec))
            st.arbiter.adopted(st, spec, policy)  # a hold in force wins again
    except AdmissionError as exc:
        return _admission_response(exc)
    log.warning("policy switched from %s to %s by %s", old, policy.name, verdict.who)
    return json_response({"policy": policy.name, "spec": spec, "previous": old,
                              "tick_s": policy.tick_s})


@_admin(no_params="models/reload takes no parameters: it reloads the configured models "
                  "folder (models.dir)")
async def admin_reload(request: Request, st: ServerState, verdict: Verdict,
                       doc: dict[str, Any]) -> Response:
    """POST /v2/admin/models/reload: load the models folder again (no path comes from the request)."""
    folder = st.models_dir or _resolve_models_dir(st.config)
    m = st.config.models
    loop = asyncio.get_running_loop()
    async with st.admin_lock:
        try:
            models, errors = await loop.run_in_executor(
                None, load_models, folder, m.num_threads, m.warmup_runs, m.measure_runs,
                st.dispatcher.host_clock)
        except ModelError as exc:
            return _error(409, f"reload failed, the loaded models stay: {exc}")
        if not models:
            return _error(409, f"{folder}: no loadable .tflite model; the {len(st.models)} "
                          "loaded model(s) stay", model_errors=errors)
        disp = st.dispatcher
        try:
            await asyncio.wrap_future(disp.call(disp.models_changed))
        except AdmissionError as exc:
            return _admission_response(exc)
        before = set(st.models)
        st.models = models
        st.model_errors = errors
        st.stats.reset()
    log.warning("models reloaded from %s by %s: %s", folder, verdict.who, ", ".join(models))
    return json_response({"models": sorted(models), "added": sorted(set(models) - before),
                              "removed": sorted(before - set(models)),
                              "model_errors": errors})


def _restore_board(board: Board) -> list[str] | None:
    """Put the cpufreq settings found at start back; None when the board changes nothing."""
    restore = getattr(board, "restore", None)
    if not callable(restore):
        cpufreq = getattr(board, "cpufreq", None)
        restore = getattr(cpufreq, "restore", None)
        if not callable(restore):
            return None
    report = restore()
    return list(getattr(report, "actions", []) or [])


@_admin(no_params="restore takes no parameters")
async def admin_restore(request: Request, st: ServerState, verdict: Verdict,
                        doc: dict[str, Any]) -> Response:
    """POST /v2/admin/restore: restore the original cpufreq settings (on the dispatcher thread)."""
    try:
        disp = st.dispatcher
        async with st.admin_lock:
            actions = await asyncio.wrap_future(disp.call(lambda: _restore_board(st.board)))
    except AdmissionError as exc:
        return _admission_response(exc)
    except EdgeschedError as exc:
        log.error("admin restore failed: %s", exc)
        return _error(500, f"restore failed: {exc}; the state file is kept, run "
                      "`edgesched restore`")
    log.warning("cpufreq settings restored by %s", verdict.who)
    if actions is None:
        return json_response({"restored": False, "actions": [],
                                  "reason": "this board changes no cpufreq setting"})
    return json_response({"restored": True, "actions": actions,
                              "note": "the policy sets frequencies again at the next request"})


def build_app(state: ServerState, *, lane: bool = False) -> Router:
    """The routes of the main socket, or with ``lane`` the priority lane's: inference, health
    and model metadata only (status, metrics and admin stay on the main socket)."""
    r = Router(lane_not_found if lane else not_found)

    def add(method: str, path: str, fn: StateHandler) -> None:
        r.add(method, path, functools.partial(fn, state))

    # tried in order: the hot path first
    add("POST", "/v2/models/{name}/infer", infer)
    add("GET", "/v2/health/live", live)
    add("GET", "/v2/health/ready", ready)
    add("GET", "/v2", server_metadata)
    add("GET", "/v2/", server_metadata)  # the path as the protocol's OpenAPI document spells it
    add("GET", "/v2/models/stats", model_stats)  # before a model named "stats", as in Triton
    add("GET", "/v2/models/{name}", model_metadata)
    add("GET", "/v2/models/{name}/versions/{version}", model_metadata)
    add("GET", "/v2/models/{name}/ready", model_ready)
    add("GET", "/v2/models/{name}/versions/{version}/ready", model_ready)
    add("GET", "/v2/models/{name}/config", model_config)
    add("GET", "/v2/models/{name}/versions/{version}/config", model_config)
    add("GET", "/v2/models/{name}/stats", model_stats)
    add("GET", "/v2/models/{name}/versions/{version}/stats", model_stats)
    add("POST", "/v2/models/{name}/versions/{version}/infer", infer)
    if lane:
        return r
    add("GET", "/metrics", metrics)
    add("GET", "/v2/status", status)
    add("GET", "/status", status)
    add("GET", "/v2/openapi.json", openapi_doc)
    add("POST", "/v2/admin/policy", admin_policy)
    add("POST", "/v2/admin/models/reload", admin_reload)
    add("POST", "/v2/admin/restore", admin_restore)
    add("POST", "/v2/admin/holds", _admin()(create_hold))
    add("DELETE", "/v2/admin/holds/{id}", _admin()(release_hold))
    for method, path, fn in SHM_ROUTES:
        add(method, path, fn)
    return r


def http_server(state: ServerState, *, lane: bool = False) -> Server:
    """The HTTP server (a protocol factory) of one event loop, for the main socket or the lane."""
    cfg = state.config.server
    return Server(build_app(state, lane=lane), body_limit=cfg.max_body_bytes,
                  idle_timeout_s=cfg.idle_timeout_s, log_=log)


# --------------------------------------------------------------------------------- sockets
LISTEN_BACKLOG = 1024
"""Pending connections the kernel holds per listening socket (capped by net.core.somaxconn).
At 128 a 10x burst lost connections at connect before any handler saw them."""


def _listener_name(sock: socket.socket) -> str:
    addr = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{addr.decode() if isinstance(addr, bytes) else addr}"
    return f"http://{addr[0]}:{addr[1]}"


def bind_unix_socket(path: Path, mode: int, group: str) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` (and ``group``) set before listen."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the socket directory {path.parent}: {exc.strerror}; "
                          "pass --socket or --runtime-dir to a writable place") from None
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; remove it or choose another "
                              "--socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a daemon that is gone
        else:
            raise ConfigError(f"{path}: another daemon is already listening there")
        finally:
            probe.close()
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"server.socket_group: no group named {group!r}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    try:
        os.chmod(path, mode)
        if gid >= 0:
            os.chown(path, -1, gid)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot set mode/group of {path}: {exc.strerror}; run as root or "
                          "as a member of the group") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _socket_file_id(path: Path) -> tuple[Path, int, int]:
    """``path`` with the device and inode of the socket file just bound there."""
    st = path.lstat()
    return path, st.st_dev, st.st_ino


def _remove_own_socket(path: Path, dev: int, ino: int) -> None:
    """Unlink ``path`` if it is still the socket file this daemon bound (same device and
    inode); a file another daemon bound there since is left alone."""
    with contextlib.suppress(OSError):
        st = path.lstat()
        if (st.st_dev, st.st_ino) == (dev, ino):
            path.unlink()


def _lane_socket(cfg: Config, inherited: list[socket.socket]) -> tuple[socket.socket | None,
                                                                        Path | None]:
    """The priority lane's listening socket and the path to unlink at exit (None if inherited).

    Under socket activation the lane is the inherited socket at its path (taken out of
    ``inherited``), or there is none. Otherwise it is bound here; with ``auto`` a failure only
    costs the lane (logged), with an explicit path it stops the daemon."""
    path = priority_socket_path(cfg.server)
    if path is None:
        return None, None
    if inherited:
        for sock in inherited:
            if _listener_name(sock) == f"unix:{path}":
                inherited.remove(sock)
                return sock, None
        log.info("no priority lane: socket activation passed no socket at %s", path)
        return None, None
    group = cfg.server.priority_socket_group or cfg.server.socket_group
    try:
        return bind_unix_socket(path, cfg.server.socket_mode, group), path
    except ConfigError as exc:
        if cfg.server.priority_socket != PRIORITY_SOCKET_AUTO:
            raise ConfigError(f"server.priority_socket: {exc}") from None
        log.warning("no priority lane: %s (set server.priority_socket to a path, or to \"\" "
                    "to turn the lane off)", exc)
        return None, None


# --------------------------------------------------------------------------------- daemon
def _resolve_models_dir(cfg: Config) -> Path:
    return Path(cfg.models.dir) if cfg.models.dir else shipped_models_dir()


async def run_daemon(cfg: Config, clock: Callable[[], float] = time.monotonic,
                     identity_lookup: IdentityLookup = system_identity,
                     host_clock: Callable[[], float] = time.perf_counter,
                     reload: ConfigLoader | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status.

    ``reload`` reads the configuration again on SIGHUP (:mod:`edgesched.server.reload`).

    ``host_clock`` times the models' runs on the host (start-up measurement and each request's
    ``host_us``); tests inject one that does not depend on the machine's load.
    ``identity_lookup`` maps a unix peer's uid/gid to a user and its groups for the admin
    endpoints (tests inject one; the default asks the user database).
    """
    from edgesched.policy.registry import open_policy
    from edgesched.power.spec import open_board_spec

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # what can be refused fast comes before the seconds of loading models: the policy spec, the
    # board spec, the sockets (a second daemon on a live socket is refused at once)
    policy = open_policy(cfg.policy.spec, cfg.policy.fallback)
    hands_off = bool(getattr(policy, "hands_off", False))  # `kernel`: no lease on a real board
    board = open_board_spec(cfg.board.spec, sysfs_root=Path(cfg.board.sysfs_root),
                            state_dir=Path(cfg.board.state_dir),
                            runtime_dir=Path(cfg.board.runtime_dir), clock=clock,
                            virtual_slowdown=cfg.board.virtual_slowdown, hands_off=hands_off)
    if hands_off and getattr(board, "hands_off", False):
        policy.measure_only()  # type: ignore[attr-defined]  # KernelPolicy: the kernel decides
    owned: list[tuple[Path, int, int]] = []  # the socket files this daemon created
    unserved: list[socket.socket] = []  # bound, not yet handed to a listener
    lane: PriorityLane | None = None
    server: Server | None = None
    dispatcher: Dispatcher | None = None
    arbiter: PolicyArbiter | None = None
    shm: SharedMemoryRegistry | None = None
    old_switch_s = sys.getswitchinterval()
    sys.setswitchinterval(cfg.server.switch_interval_us / 1e6)
    try:
        try:
            policy.reset(board.view)
        except PolicyMismatchError as exc:  # e.g. learned:... on a board with more clusters
            if not cfg.policy.fallback:
                raise
            from edgesched.policy.registry import make_policy

            log.warning("%s; falling back to %s", exc, cfg.policy.fallback)
            policy = make_policy(cfg.policy.fallback)
            policy.reset(board.view)
        inherited = systemd.inherited_sockets()
        if not inherited:
            sock_path = Path(cfg.server.socket)
            unserved.append(bind_unix_socket(sock_path, cfg.server.socket_mode,
                                             cfg.server.socket_group))
            owned.append(_socket_file_id(sock_path))
        socks = list(unserved)
        lane_sock, lane_path = _lane_socket(cfg, inherited)  # takes the lane's from inherited
        socks.extend(inherited)
        unserved.extend(inherited)
        if lane_sock is not None:
            unserved.append(lane_sock)
        if lane_path is not None:
            owned.append(_socket_file_id(lane_path))
        models_dir = _resolve_models_dir(cfg)
        models, errors = load_models(models_dir, cfg.models.num_threads, cfg.models.warmup_runs,
                                     cfg.models.measure_runs, host_clock)
        for err in errors:
            log.error("skipping model: %s", err)
        if not models:
            raise ModelError(f"{models_dir}: no loadable .tflite model")
        for m in models.values():
            log.info("model %s: %d input(s), %d output(s), service %.0f us", m.name,
                     len(m.inputs), len(m.outputs), m.service_s * 1e6)
        q = cfg.queue
        queue = RequestQueue(levels=q.levels, max_count=q.max_count, max_bytes=q.max_bytes,
                             aging_s=q.aging_s, shed_lower=q.shed_lower)
        meter = Metrics(CarbonAccount(cfg.energy.grid_gco2e_per_kwh,
                                      cfg.energy.renewable_fraction))
        dispatcher = Dispatcher(board, policy, queue, meter, clock=clock,
                                queue_full_status=cfg.server.queue_full_status,
                                retry_after_s=cfg.server.retry_after_s,
                                nice=cfg.server.dispatcher_nice,
                                inline_max_s=cfg.server.inline_max_us / 1e6,
                                host_clock=host_clock,
                                qos_guard=QosGuard(cfg.qos.miss_budget, cfg.qos.guard_config())
                                if cfg.qos.guard else None)
        # a thread that ends while the daemon serves wakes the main loop at once (no polling)
        ended: list[str] = []

        def thread_ended(name: str) -> None:
            if not stop.is_set():
                ended.append(name)
                with contextlib.suppress(RuntimeError):  # the loop has already closed
                    loop.call_soon_threadsafe(stop.set)

        dispatcher.on_stopped = functools.partial(thread_ended, "the dispatcher")
        dispatcher.start()
        state = ServerState(config=cfg, models=models, dispatcher=dispatcher, metrics=meter,
                            board=board, policy=policy, clock=clock, started_s=clock(),
                            model_errors=errors, models_dir=models_dir,
                            gate=AdminGate(cfg.server.admin_group, cfg.server.admin_over_tcp,
                                           identity_lookup))
        if cfg.server.shared_memory:
            state.shm = shm = SharedMemoryRegistry(cfg.server.shared_memory_group,
                                                   identity_lookup)
        state.arbiter = arbiter = PolicyArbiter(policy, cfg.policy.spec, clock)
        arbiter.start(state)  # the power source now and every power_source.poll_s
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, state, reload)
        if cfg.server.admin_group:
            try:
                grp.getgrnam(cfg.server.admin_group)
            except KeyError:
                log.warning("server.admin_group: no group named %r; only root may call the "
                            "admin endpoints", cfg.server.admin_group)
        server = http_server(state)
        listeners: list[asyncio.AbstractServer] = []
        names: list[str] = []
        ensure_fd_limit(cfg.server.max_connections * (2 if lane_sock else 1), log)
        gate = ConnectionGate(server, cfg.server.max_connections,
                              cfg.server.retry_after_s, on_refused=meter.connection_refused)
        lane_name = ""
        if lane_sock is not None:  # first: the daemon is ready once every door is open
            unserved.remove(lane_sock)
            lane = PriorityLane(
                http_server(state, lane=True), lane_sock, name=_listener_name(lane_sock),
                max_connections=cfg.server.max_connections,
                retry_after_s=cfg.server.retry_after_s,
                shutdown_timeout_s=cfg.server.shutdown_timeout_s + 2.0, backlog=LISTEN_BACKLOG,
                nice=cfg.server.dispatcher_nice,
                on_refused=functools.partial(meter.connection_refused, "priority"), log=log)
            lane.on_stopped = functools.partial(thread_ended, "the priority lane")
            try:
                await loop.run_in_executor(None, lane.start)
            except BaseException:
                lane_sock.close()  # never listened on
                raise
            state.lane = lane
            lane_name = f"{lane.name} (priority lane)"
        for sock in socks:
            unserved.remove(sock)
            listeners.append(await loop.create_server(gate, sock=sock, backlog=LISTEN_BACKLOG))
            names.append(_listener_name(sock))
        if cfg.server.http_port:
            try:
                listeners.append(await loop.create_server(
                    gate, cfg.server.http_host, cfg.server.http_port, reuse_address=True,
                    backlog=LISTEN_BACKLOG))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {cfg.server.http_host}:{cfg.server.http_port}: "
                    f"{exc.strerror or exc}; choose another --http-port (server.http_port) or "
                    "stop what holds it") from exc
            names.append(f"http://{cfg.server.http_host}:{cfg.server.http_port}")
        where = ", ".join([*names, lane_name] if lane_name else names)
        log.info("serving %d model(s) on %s; board %s, policy %s", len(models), where,
                 board.profile.name, policy.name)
        systemd.notify(f"READY=1\nSTATUS=serving {len(models)} model(s) on {where}")
        ping_s = systemd.watchdog_interval_s()
        watchdog = systemd.Watchdog(ping_s, clock=clock) if ping_s else None
        status = 0
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=ping_s or 3600.0)
            if ended:  # a failure exit: the service manager restarts the daemon
                log.error("%s stopped; exiting", ended[0])
                status = 1
                break
            if watchdog is not None:  # only while the dispatcher's heartbeat is recent
                watchdog.beat(dispatcher.heartbeat_s)
        log.info("stopping: draining the queue for up to %.1f s", cfg.server.shutdown_timeout_s)
        systemd.notify("STOPPING=1")
        state.ready = False
        dispatcher.close(cfg.server.shutdown_timeout_s)
        for listener in listeners:  # no new connections; the open ones still get their answers
            listener.close()
        if lane is not None:
            lane.close()
        # every queued request is served or answered before the HTTP side shuts down, however
        # long the running inference takes (the answers reach their handlers through the mailbox)
        done = await loop.run_in_executor(None, dispatcher.join,
                                          cfg.server.shutdown_timeout_s + 5.0)
        if not done:
            log.error("the running inference did not finish in time")
        await server.shutdown(cfg.server.shutdown_timeout_s + 2.0)  # those answers written
        server = None
        if lane is not None:
            await loop.run_in_executor(None, lane.shutdown, cfg.server.shutdown_timeout_s + 5.0)
        return status
    finally:
        sys.setswitchinterval(old_switch_s)
        if dispatcher is not None:
            dispatcher.close(0.0)
            drain_remaining(dispatcher)
        if server is not None:
            await server.shutdown(0.0)
        if lane is not None:
            lane.shutdown(5.0)
        if arbiter is not None:
            arbiter.close()
            loop.remove_signal_handler(signal.SIGHUP)
        if shm is not None:  # every region unregistered and unmapped
            shm.close()
        board.close()
        for sock in unserved:
            sock.close()
        for path, dev, ino in owned:  # only the files bound here: never another daemon's
            _remove_own_socket(path, dev, ino)


def _on_sighup(st: ServerState, reload: ConfigLoader | None) -> None:
    if reload is None:
        log.warning("SIGHUP: this daemon was started without a configuration to reload")
        return
    st.arbiter.spawn(reload_config(st, reload))


def serve(cfg: Config, reload: ConfigLoader | None = None) -> int:
    """Run the daemon on uvloop's event loop (a dependency on Linux), else on asyncio's.
    ``reload``: how SIGHUP reads the configuration again."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_daemon(cfg, reload=reload))
    return uvloop.run(run_daemon(cfg, reload=reload))
