"""The HTTP side: Open Inference Protocol (KServe v2) REST endpoints on aiohttp, and the daemon's
lifecycle (sockets, readiness, watchdog, signals, drain on shutdown).

The handlers only decode, hand over to admission and the dispatcher, and encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import math
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from edgesched import __version__
from edgesched.board import Board
from edgesched.errors import AdmissionError, ConfigError, ModelError
from edgesched.policy.base import Policy
from edgesched.queue import RequestQueue
from edgesched.server import systemd
from edgesched.server.admission import check_deadline, encode_response, parse_infer
from edgesched.server.config import Config, config_to_dict
from edgesched.server.dispatcher import Dispatcher, Job, Outcome, drain_remaining
from edgesched.server.metrics import Metrics
from edgesched.server.openapi import openapi
from edgesched.server.runner import LoadedModel, load_models, shipped_models_dir

log = logging.getLogger("edgesched.server")

SERVER_NAME = "edgesched"
EXTENSIONS = ("binary_tensor_data", "schedule_policy")
HEADER_LENGTH = "Inference-Header-Content-Length"


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
    mailbox: Mailbox | None = None


STATE: web.AppKey[ServerState] = web.AppKey("edgesched_state", ServerState)


class Mailbox:
    """Hands outcomes from the dispatcher thread to the event loop.

    Outcomes that arrive while a wake-up is already pending ride on it: under load one wake-up
    of the loop delivers many answers.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Outcome], Outcome]] = []
        self._pending = False

    def put(self, fut: asyncio.Future[Outcome], out: Outcome) -> None:
        """Deliver ``out`` to ``fut`` (from any thread)."""
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


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None,
           **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status, headers=headers)


def _model(request: web.Request) -> LoadedModel:
    st = request.app[STATE]
    name = request.match_info["name"]
    model = st.models.get(name)
    if model is None:
        raise AdmissionError(404, f"unknown model {name!r} (models: {', '.join(st.models)})")
    version = request.match_info.get("version")
    if version not in (None, "", "1"):
        raise AdmissionError(404, f"model {name!r} has no version {version!r} (versions: 1)")
    return model


def _admission_response(exc: AdmissionError) -> web.Response:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return _error(exc.status, exc.reason, headers=headers)


# --------------------------------------------------------------------------------- handlers
async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    st = request.app[STATE]
    ok = st.ready and st.dispatcher.alive()
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": SERVER_NAME, "version": __version__,
                              "extensions": list(EXTENSIONS)})


async def model_metadata(request: web.Request) -> web.Response:
    try:
        model = _model(request)
    except AdmissionError as exc:
        return _admission_response(exc)
    return web.json_response(model.metadata())


async def model_ready(request: web.Request) -> web.Response:
    try:
        model = _model(request)
    except AdmissionError as exc:
        return _admission_response(exc)
    ok = request.app[STATE].ready
    return web.json_response({"name": model.name, "ready": ok}, status=200 if ok else 503)


async def infer(request: web.Request) -> web.Response:
    st = request.app[STATE]
    arrived_s = st.clock()  # a request's timeout runs from its arrival
    st.metrics.received()
    cfg = st.config
    model_name = request.match_info["name"]
    priority = 0
    try:
        model = _model(request)
        limit = cfg.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise AdmissionError(413, f"request body of {request.content_length} bytes exceeds "
                                 f"the limit of {limit} bytes (server.max_body_bytes)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise AdmissionError(413, f"request body exceeds the limit of {limit} bytes "
                                 "(server.max_body_bytes)") from None
        raw_len = request.headers.get(HEADER_LENGTH)
        header_length: int | None = None
        if raw_len is not None:
            try:
                header_length = int(raw_len)
            except ValueError:
                raise AdmissionError(400, f"{HEADER_LENGTH} must be an integer, got "
                                     f"{raw_len!r}") from None
        req = parse_infer(body, header_length, model, cfg.queue.levels,
                          cfg.queue.default_priority)
        priority = req.priority
        if cfg.admission.reject_infeasible_deadline:
            check_deadline(req, model.service_s, cfg.admission.deadline_margin,
                           cfg.admission.infeasible_status)
        mailbox = st.mailbox
        if mailbox is None:
            mailbox = st.mailbox = Mailbox(asyncio.get_running_loop())
        fut: asyncio.Future[Outcome] = mailbox.loop.create_future()

        def deliver(out: Outcome) -> None:
            mailbox.put(fut, out)

        deadline_s = (arrived_s + req.timeout_us / 1e6 if req.timeout_us is not None
                      else math.inf)
        st.dispatcher.submit(Job(req=req, model=model, deadline_s=deadline_s, answer=deliver))
    except AdmissionError as exc:
        known = model_name if model_name in st.models else ""
        st.metrics.count(known, priority, "rejected")
        return _admission_response(exc)
    out = await fut
    params = {**out.parameters, "outcome": out.outcome}
    if out.results is None:
        headers = None
        if out.outcome in ("shed", "shutting_down"):
            headers = {"Retry-After": str(max(1, math.ceil(cfg.server.retry_after_s)))}
        return web.json_response({"error": out.reason, "id": req.request_id, "outcome":
                                  out.outcome, "parameters": params}, status=out.status,
                                 headers=headers)
    body, head_len = encode_response(model, req.request_id, out.results, req.outputs, params)
    if head_len is None:
        return web.Response(body=body, content_type="application/json")
    return web.Response(body=body, content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(head_len)})


def _freqs(st: ServerState, cur_opps: list[int]) -> list[tuple[str, int]]:
    prof = st.board.profile
    return [(c.name, c.opps[cur_opps[i]].khz) for i, c in enumerate(prof.clusters)]


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    snap = st.dispatcher.snapshot()
    text = st.metrics.render(snap["queue_by_priority"], _freqs(st, snap["cur_opps"]),
                             [(m.name, m.service_s) for m in st.models.values()])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def status(request: web.Request) -> web.Response:
    st = request.app[STATE]
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
        "policy": {"name": st.policy.name, "spec": st.config.policy.spec,
                   "tick_s": st.policy.tick_s},
        "board": {"spec": st.config.board.spec, "profile": st.board.profile.name,
                  "clusters": [{"name": name, "freq_khz": khz, "opp": opp,
                                "util": round(util, 4)}
                               for (name, khz), opp, util in zip(
                                   _freqs(st, snap["cur_opps"]), snap["cur_opps"],
                                   snap["util_by_cluster"], strict=True)]},
        "models": models,
        "model_errors": st.model_errors,
        "requests": totals,
        "energy_j_total": totals["energy_j"],
        "co2e_g_total": totals["co2e_g"],
        "grid_gco2e_per_kwh": st.config.energy.grid_gco2e_per_kwh,
        "config": config_to_dict(st.config),
    }
    return web.json_response(doc, dumps=lambda o: json.dumps(o, default=str))


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi())


def build_app(state: ServerState) -> web.Application:
    # the body limit is enforced in the handler (JSON 413); aiohttp's own is a backstop
    app = web.Application(client_max_size=state.config.server.max_body_bytes + 1)
    app[STATE] = state
    r = app.router
    # the resolver tries resources in order: the hot path first
    r.add_post("/v2/models/{name}/infer", infer)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/models/{name}", model_metadata)
    r.add_get("/v2/models/{name}/versions/{version}", model_metadata)
    r.add_get("/v2/models/{name}/ready", model_ready)
    r.add_get("/v2/models/{name}/versions/{version}/ready", model_ready)
    r.add_post("/v2/models/{name}/versions/{version}/infer", infer)
    r.add_get("/metrics", metrics)
    r.add_get("/v2/status", status)
    r.add_get("/status", status)
    r.add_get("/v2/openapi.json", openapi_doc)
    return app


# --------------------------------------------------------------------------------- sockets
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
        raise ConfigError(f"cannot bind {path}: {exc.strerror}") from None
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
    sock.listen(128)
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------------- daemon
def _resolve_models_dir(cfg: Config) -> Path:
    return Path(cfg.models.dir) if cfg.models.dir else shipped_models_dir()


async def run_daemon(cfg: Config, clock: Callable[[], float] = time.monotonic) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    from edgesched.server.boardspec import make_policy, open_board_spec

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    models_dir = _resolve_models_dir(cfg)
    models, errors = load_models(models_dir, cfg.models.num_threads, cfg.models.warmup_runs,
                                 cfg.models.measure_runs)
    for err in errors:
        log.error("skipping model: %s", err)
    if not models:
        raise ModelError(f"{models_dir}: no loadable .tflite model")
    for m in models.values():
        log.info("model %s: %d input(s), %d output(s), service %.0f us", m.name,
                 len(m.inputs), len(m.outputs), m.service_s * 1e6)

    board = open_board_spec(cfg.board.spec, sysfs_root=Path(cfg.board.sysfs_root),
                            state_dir=Path(cfg.board.state_dir),
                            runtime_dir=Path(cfg.board.runtime_dir), clock=clock)
    sock_path: Path | None = None
    runner: web.AppRunner | None = None
    dispatcher: Dispatcher | None = None
    try:
        policy = make_policy(cfg.policy.spec)
        policy.reset(board.view)
        q = cfg.queue
        queue = RequestQueue(levels=q.levels, max_count=q.max_count, max_bytes=q.max_bytes,
                             aging_s=q.aging_s, shed_lower=q.shed_lower)
        meter = Metrics(cfg.energy.grid_gco2e_per_kwh)
        dispatcher = Dispatcher(board, policy, queue, meter, clock=clock,
                                queue_full_status=cfg.server.queue_full_status,
                                retry_after_s=cfg.server.retry_after_s)
        dispatcher.start()
        state = ServerState(config=cfg, models=models, dispatcher=dispatcher, metrics=meter,
                            board=board, policy=policy, clock=clock, started_s=clock(),
                            model_errors=errors)
        runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False,
                               shutdown_timeout=cfg.server.shutdown_timeout_s + 2.0)
        await runner.setup()
        sites: list[web.BaseSite] = []
        inherited = systemd.inherited_sockets()
        for sock in inherited:
            sites.append(web.SockSite(runner, sock))
        if not inherited:
            sock_path = Path(cfg.server.socket)
            sock = bind_unix_socket(sock_path, cfg.server.socket_mode, cfg.server.socket_group)
            sites.append(web.SockSite(runner, sock))
        if cfg.server.http_port:
            sites.append(web.TCPSite(runner, cfg.server.http_host, cfg.server.http_port,
                                     reuse_address=True))
        for site in sites:
            await site.start()
        where = ", ".join(s.name for s in sites)
        log.info("serving %d model(s) on %s; board %s, policy %s", len(models), where,
                 board.profile.name, policy.name)
        systemd.notify(f"READY=1\nSTATUS=serving {len(models)} model(s) on {where}")
        ping_s = systemd.watchdog_interval_s()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=ping_s or 3600.0)
            if ping_s and dispatcher.alive():
                systemd.notify("WATCHDOG=1")
            if not dispatcher.alive():
                log.error("the dispatcher stopped; exiting")
                break
        log.info("stopping: draining the queue for up to %.1f s", cfg.server.shutdown_timeout_s)
        systemd.notify("STOPPING=1")
        state.ready = False
        dispatcher.close(cfg.server.shutdown_timeout_s)
        await runner.cleanup()  # closes the listeners, waits for in-flight answers
        runner = None
        done = await loop.run_in_executor(None, dispatcher.join,
                                          cfg.server.shutdown_timeout_s + 5.0)
        if not done:
            log.error("the running inference did not finish in time")
        return 0
    finally:
        if dispatcher is not None:
            dispatcher.close(0.0)
            drain_remaining(dispatcher)
        if runner is not None:
            await runner.cleanup()
        board.close()
        if sock_path is not None:
            with contextlib.suppress(OSError):
                sock_path.unlink()


def serve(cfg: Config) -> int:
    """Run the daemon; uses uvloop's event loop when it is installed (optional, faster)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_daemon(cfg))
    return uvloop.run(run_daemon(cfg))
