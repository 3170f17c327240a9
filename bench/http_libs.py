"""HTTP server libraries for the daemon, measured on the same job: prints one JSON object.

Each server runs in its own process on a unix socket with uvloop (when installed) and answers
``POST /v2/models/m/infer`` the way the daemon's thin transport does: read the body, parse it as
JSON, answer a small JSON document. Clients use the bundled client's lean HTTP/1.1
:class:`~edgesched.client.Connection` (raw socket, one keep-alive connection each), so that the
figures are mostly the server's.

- ``edgesched``: the daemon's own HTTP/1.1 server (:mod:`edgesched.server.http1`), one route.
- ``aiohttp``: ``web.Application`` with one handler (the daemon's server before its own).
- ``uvicorn`` (httptools parser) with a bare ASGI callable: the usual fast alternative.

Figures per library: ``p50_us``/``p99_us`` of one client sending requests one at a time, and
``throughput_rps`` with ``--clients`` client processes.

Usage: python bench/http_libs.py [--requests 3000] [--seconds 4] [--clients 8]
(``aiohttp`` and ``uvicorn httptools`` are measured when installed, skipped otherwise)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _daemon import parallel_rate

from edgesched.client import Connection
from edgesched.errors import ClientError

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 120], "datatype": "INT8",
                               "data": [0] * 120}], "parameters": {"priority": 1}}).encode()
PATH = "/v2/models/m/infer"


def _answer(doc: dict[str, Any]) -> bytes:
    return json.dumps({"model_name": "m", "outputs": [{"name": "y", "shape": [1, 1],
                                                       "datatype": "UINT8", "data": [len(doc)]}]},
                      separators=(",", ":")).encode()


# ------------------------------------------------------------------------------ servers
def serve_edgesched(sock_path: str) -> None:
    import asyncio

    from edgesched.server.http1 import Request, Response, Router, Server, error_response

    async def infer(request: Request) -> Response:
        return Response(200, _answer(json.loads(request.body)), content_type="application/json")

    async def fallback(request: Request, allowed: set[str]) -> Response:
        return error_response(405 if allowed else 404, "no such route")

    async def run() -> None:
        router = Router(fallback)
        router.add("POST", PATH, infer)
        server = await asyncio.get_running_loop().create_unix_server(
            Server(router, body_limit=1 << 20, idle_timeout_s=60.0), sock_path)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def serve_aiohttp(sock_path: str) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        return web.Response(body=_answer(doc), content_type="application/json")

    app = web.Application()
    app.router.add_post(PATH, infer)
    web.run_app(app, path=sock_path, print=None, access_log=None)


def serve_uvicorn(sock_path: str) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = _answer(json.loads(b"".join(chunks)))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, uds=sock_path, log_level="warning", access_log=False, http="httptools",
                loop="uvloop" if _has("uvloop") else "asyncio", lifespan="off")


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


SERVERS = {"edgesched": serve_edgesched, "aiohttp": serve_aiohttp, "uvicorn": serve_uvicorn}


# ------------------------------------------------------------------------------ clients
def _round_trip(conn: Connection) -> None:
    resp = conn.request("POST", PATH, body=BODY, headers={"Content-Type": "application/json"})
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")


def _latency(sock: str, n: int) -> list[float]:
    conn = Connection(sock)
    out: list[float] = []
    for i in range(n + 100):
        t0 = time.perf_counter()
        _round_trip(conn)
        if i >= 100:
            out.append(time.perf_counter() - t0)
    conn.close()
    return out


def _client(sock: str, seconds: float, barrier: Any, q: Any) -> None:
    conn = Connection(sock)
    done = 0
    for _ in range(50):  # connect and warm up
        _round_trip(conn)
    barrier.wait()  # every client starts together
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        _round_trip(conn)
        done += 1
    conn.close()
    q.put(done)


def _wait_socket(sock: str, proc: subprocess.Popen[bytes]) -> None:
    limit = time.monotonic() + 30
    while time.monotonic() < limit and proc.poll() is None:
        if os.path.exists(sock):
            try:
                with Connection(sock, timeout=5) as conn:
                    _round_trip(conn)
                return
            except (OSError, ClientError):
                pass
        time.sleep(0.05)
    raise SystemExit(f"server did not start (exit {proc.poll()})")


def measure(lib: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgesched-http-") as tmp:
        sock = str(Path(tmp) / "s.sock")
        proc = subprocess.Popen([sys.executable, __file__, "--serve", lib, "--socket", sock],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_socket(sock, proc)
            lat = np.asarray(_latency(sock, args.requests)) * 1e6
            rps = parallel_rate(_client, sock, args.clients, args.seconds)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"p50_us": round(float(np.percentile(lat, 50)), 1),
            "p99_us": round(float(np.percentile(lat, 99)), 1), "throughput_rps": round(rps, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--libs", default="edgesched,aiohttp,uvicorn")
    ap.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    ap.add_argument("--socket", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        if _has("uvloop"):
            import uvloop

            uvloop.install()
        SERVERS[args.serve](args.socket)
        return 0
    out: dict[str, Any] = {"clients": args.clients, "cpus": os.cpu_count(),
                           "uvloop": _has("uvloop"), "results": {}}
    for lib in args.libs.split(","):
        if lib == "uvicorn" and not (_has("uvicorn") and _has("httptools")):
            out["results"][lib] = {"skipped": "pip install uvicorn httptools"}
            continue
        if lib == "aiohttp" and not _has("aiohttp"):
            out["results"][lib] = {"skipped": "pip install aiohttp"}
            continue
        out["results"][lib] = measure(lib, args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
