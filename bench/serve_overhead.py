"""Serving overhead of the daemon and the floors it is measured against: prints one JSON object.

Floors (same run, same machine):

- ``floor_rtt_us``: p50 round trip of 1 byte each way between two processes over a unix socket:
  a minimal asyncio echo server (uvloop when installed) in its own process, a blocking client
  (``sendall`` + ``recv_into``) in this one.
- ``floor_hold_rtt_us``: the 1-byte round trip when the echo server keeps its CPU busy for the
  bare face_detection invoke's p50 before each answer, less that time: what a client blocked
  for as long as an inference pays to be woken (on a VM a vCPU that idles for milliseconds
  wakes slower than one that idles for microseconds).
- ``floor_payload_us``: the same with okay_nabu's request and answer sizes on the wire (HTTP head
  and body, bytes counted from a real exchange with the daemon); ``floors`` has both sizes and
  face_detection's too.

okay_nabu (``models.okay_nabu``; the top-level keys are its figures):

- ``e2e_p50_us``: end-to-end p50 of the bundled client, binary tensors, one request at a time.
- ``daemon_cpu_us_per_request``: the daemon process's CPU time (user + system, all threads, from
  ``/proc`` through psutil) over that run divided by its requests; ``client_cpu_us_per_request``:
  this process's CPU time over the same run (the client, single-threaded) divided likewise.
- ``receipt_cpu_p50_us``: the median of each answer's own ``daemon_cpu_us`` (the thread CPU time
  of the threads that handled it, as the daemon measured it).

face_detection_short_range (the figures of the earlier versions of this bench, kept):

- ``p50_us``/``p99_us``: end-to-end latency over the unix socket (binary tensors, one at a time);
  ``bare_p50_us``: set_tensor + invoke + get_tensor in this process; ``overhead_p50_us``: the
  difference of the two medians. ``daemon_overhead_p50_us``: ``daemon_us`` less ``host_us`` from
  each answer's parameters; ``transport_client_p50_us``: the rest of each round trip.
- ``models.face_detection_short_range`` has its CPU figures as for okay_nabu, and
  ``face_json``: the daemon's JSON parse of the ~1 MB request (floats written as tritonclient
  writes them) and JSON write of the answer, timed in this process (``parse_infer``,
  ``encode_response_parts``; p50 ms); ``client_request_bytes``: the same request as the bundled
  client writes it now.

``throughput_rps``: answered okay_nabu requests per second with ``--clients`` concurrent clients
(separate processes, each one keep-alive connection), and ``throughput_daemon_cpu_us_per_request``.

Usage: python bench/serve_overhead.py [--requests 2000] [--seconds 5] [--clients 8]
       [--board none] [--policy schedutil]
The daemon runs with --board none by default: the virtual board would add emulated service time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _daemon import parallel_rate, start_daemon, stop_daemon

from edgesched.client import Client, _request_head, encode_infer_pieces
from edgesched.server.admission import encode_response_parts, parse_infer
from edgesched.server.runner import load_model, shipped_models_dir

FACE = "face_detection_short_range"
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
WARMUP = 20


def _inputs(model: str) -> dict[str, np.ndarray]:
    if model == FACE:
        return {"input": np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32)}
    return {NABU_IN: np.zeros((1, 3, 40), np.int8)}


def _percentile_us(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e6, q))


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


# ------------------------------------------------------------------------------ the floors
def _echo_server(path: str, req_bytes: int, ans_bytes: int, ready: Any,
                 hold_s: float = 0.0) -> None:
    """Answers every ``req_bytes`` received with ``ans_bytes`` (a preallocated buffer), after
    keeping its CPU busy for ``hold_s`` (standing in for an inference of that length)."""
    answer = b"x" * ans_bytes
    clock = time.perf_counter

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.have = 0

        def data_received(self, data: bytes) -> None:
            self.have += len(data)
            while self.have >= req_bytes:
                self.have -= req_bytes
                if hold_s > 0:
                    end_s = clock() + hold_s
                    while clock() < end_s:
                        pass
                self.transport.write(answer)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path)
        ready.set()
        async with server:
            await server.serve_forever()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def floor_us(tmp: Path, req_bytes: int, ans_bytes: int, n: int, hold_s: float = 0.0) -> float:
    """p50 round trip (us) of ``req_bytes`` out and ``ans_bytes`` back against the echo server
    (which works ``hold_s`` before each answer: the p50 has it taken off)."""
    ctx = mp.get_context("spawn")
    path = str(tmp / f"echo-{req_bytes}-{ans_bytes}-{hold_s:g}.sock")
    ready = ctx.Event()
    server = ctx.Process(target=_echo_server, args=(path, req_bytes, ans_bytes, ready, hold_s),
                         daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise SystemExit("the echo server did not start")
        request = b"r" * req_bytes
        buf = bytearray(ans_bytes)
        view = memoryview(buf)
        out: list[float] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            for i in range(n + WARMUP):
                t0 = time.perf_counter()
                s.sendall(request)
                got = 0
                while got < ans_bytes:
                    k = s.recv_into(view[got:])
                    if not k:
                        raise SystemExit("the echo server closed the connection")
                    got += k
                if i >= WARMUP:
                    out.append(time.perf_counter() - t0)
        view.release()
        return _percentile_us(out, 50) - hold_s * 1e6
    finally:
        server.terminate()
        server.join()


def wire_sizes(sock: str, model: str) -> tuple[int, int]:
    """Bytes of one infer request and of its answer on the wire (HTTP head and body), counted
    from a real exchange with the daemon, as the bundled client sends it."""
    pieces, headers = encode_infer_pieces(_inputs(model))
    body = b"".join(bytes(p) for p in pieces)
    request = _request_head("POST", f"/v2/models/{model}/infer", len(body), headers) + body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(1 << 16)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += s.recv(1 << 16)
    return len(request), len(head) + 4 + length


# ------------------------------------------------------------------------------ the daemon
def _latency(sock: str, model: str, n: int, daemon: psutil.Process,
             ) -> tuple[list[float], list[dict[str, Any]], float, float]:
    """Round trips in seconds, each answer's parameters, and the daemon's and this process's
    CPU seconds over the measured requests."""
    x = _inputs(model)
    out: list[float] = []
    params: list[dict[str, Any]] = []
    with Client(sock) as c:
        for _ in range(WARMUP):
            c.infer(model, x)
        d0, c0 = _cpu_s(daemon), time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            res = c.infer(model, x)
            out.append(time.perf_counter() - t0)
            params.append(res.parameters)
        c1, d1 = time.process_time(), _cpu_s(daemon)
    return out, params, d1 - d0, c1 - c0


def _model_figures(sock: str, model: str, n: int, daemon: psutil.Process) -> tuple[
        dict[str, Any], list[float], list[dict[str, Any]]]:
    lat, params, daemon_s, client_s = _latency(sock, model, n, daemon)
    receipts = [float(p["daemon_cpu_us"]) for p in params if "daemon_cpu_us" in p]
    doc = {"e2e_p50_us": round(_percentile_us(lat, 50), 1),
           "e2e_p99_us": round(_percentile_us(lat, 99), 1),
           "daemon_cpu_us_per_request": round(daemon_s / n * 1e6, 1),
           "client_cpu_us_per_request": round(client_s / n * 1e6, 1),
           "receipt_cpu_p50_us": round(float(np.median(receipts)), 1) if receipts else None,
           "host_p50_us": round(float(np.median([p["host_us"] for p in params])), 1),
           "requests": n}
    return doc, lat, params


def _bare(n: int) -> list[float]:
    model = load_model(shipped_models_dir() / f"{FACE}.tflite", warmup_runs=20, measure_runs=1)
    x = _inputs(FACE)
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        model.run(x)
        out.append(time.perf_counter() - t0)
    return out


def face_json(n: int) -> dict[str, Any]:
    """The daemon's JSON parse of face_detection's JSON request and JSON write of its answer,
    in this process (p50 ms over ``n`` runs each), with the body sizes."""
    model = load_model(shipped_models_dir() / f"{FACE}.tflite", warmup_runs=1, measure_runs=1)
    x = _inputs(FACE)["input"]
    # the body as tritonclient (and this project's client before orjson) writes it: every float32
    # as the repr of its float64 value, about 1 MB
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()
    results = model.run(_inputs(FACE))
    outputs = tuple((t.name, False) for t in model.outputs)
    parse_s: list[float] = []
    write_s: list[float] = []
    size_out = 0
    for _ in range(n):
        t0 = time.perf_counter()
        parse_infer(body, None, model, 3, 0)
        t1 = time.perf_counter()
        head, _ = encode_response_parts(model, "", results, outputs, {"outcome": "ok"})
        parse_s.append(t1 - t0)
        write_s.append(time.perf_counter() - t1)
        size_out = len(head)
    pieces, _ = encode_infer_pieces({"input": x}, binary=False)
    return {"parse_p50_ms": round(float(np.median(parse_s)) * 1e3, 2),
            "write_p50_ms": round(float(np.median(write_s)) * 1e3, 2),
            "request_bytes": len(body), "answer_bytes": size_out, "runs": n,
            "client_request_bytes": sum(len(bytes(p)) for p in pieces)}


def shm_overhead(n: int, bare_p50_us: float, board: str, policy: str) -> dict[str, Any]:
    """face_detection through Triton's system shared memory (its own daemon, with
    ``server.shared_memory`` on): ``shm_p50_us`` end to end with one registered region for the
    input and the outputs (:class:`edgesched.client.SharedMemorySession`: the input written
    into it, the outputs copied out), ``shm_overhead_p50_us`` that less the bare invoke's p50
    (``main`` adds ``shm_overhead_over_hold_floor_us``: that less ``floor_hold_rtt_us``), and
    ``shm_daemon_overhead_p50_us``: ``daemon_us`` less ``host_us`` of each answer."""
    from edgesched.client import SharedMemorySession

    x = _inputs(FACE)
    lat: list[float] = []
    inner: list[float] = []
    with tempfile.TemporaryDirectory(prefix="edgesched-bench-shm-") as tmp:
        proc, sock = start_daemon(Path(tmp), config="[server]\nshared_memory = true\n",
                                  board=board, policy=policy)
        try:
            with Client(sock) as c, SharedMemorySession(c, FACE) as session:
                for _ in range(WARMUP):
                    session.infer(x)
                for _ in range(n):
                    t0 = time.perf_counter()
                    res = session.infer(x)
                    lat.append(time.perf_counter() - t0)
                    inner.append(float(res.parameters["daemon_us"]) - res.parameters["host_us"])
        finally:
            stop_daemon(proc)
    p50 = _percentile_us(lat, 50)
    return {"shm_p50_us": round(p50, 1), "shm_overhead_p50_us": round(p50 - bare_p50_us, 1),
            "shm_daemon_overhead_p50_us": round(float(np.median(inner)), 1)}


def _client_proc(sock: str, seconds: float, barrier: Any, q: Any) -> None:
    x = _inputs(NABU)
    done = 0
    with Client(sock) as c:
        for _ in range(WARMUP):  # connect and warm up
            c.infer(NABU, x)
        barrier.wait()  # every client starts together
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            c.infer(NABU, x)
            done += 1
    q.put(done)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--board", default="none")
    ap.add_argument("--policy", default="schedutil")
    ap.add_argument("--json-runs", type=int, default=20,
                    help="runs of face_detection's JSON parse and write (0: skip)")
    args = ap.parse_args()
    n = args.requests
    models: dict[str, dict[str, Any]] = {}
    floors: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgesched-bench-") as tmp:
        home = Path(tmp)
        floors["floor_rtt_us"] = round(floor_us(home, 1, 1, n), 1)
        proc, sock = start_daemon(home, config="[queue]\nmax_count = 1024\n",
                                  board=args.board, policy=args.policy)
        try:
            daemon = psutil.Process(proc.pid)
            sizes = {m: wire_sizes(sock, m) for m in (NABU, FACE)}
            models[NABU], _, _ = _model_figures(sock, NABU, n, daemon)
            models[FACE], lat, params = _model_figures(sock, FACE, n, daemon)
            d0 = _cpu_s(daemon)
            rps = parallel_rate(_client_proc, sock, args.clients, args.seconds)
            rate_cpu_s = _cpu_s(daemon) - d0
        finally:
            stop_daemon(proc)
        for m, (req_b, ans_b) in sizes.items():
            floors[m] = {"request_bytes": req_b, "answer_bytes": ans_b,
                         "floor_payload_us": round(floor_us(home, req_b, ans_b, n), 1)}
    bare = _bare(n)
    bare_p50 = _percentile_us(bare, 50)
    with tempfile.TemporaryDirectory(prefix="edgesched-bench-") as tmp:
        floors["floor_hold_rtt_us"] = round(floor_us(Path(tmp), 1, 1, n, bare_p50 / 1e6), 1)
    json_doc = face_json(args.json_runs) if args.json_runs > 0 else None
    p50 = _percentile_us(lat, 50)
    daemon_us = [float(p["daemon_us"]) for p in params]
    inner_us = [d - float(p["host_us"]) for d, p in zip(daemon_us, params, strict=True)]
    outer_us = [t * 1e6 - d for t, d in zip(lat, daemon_us, strict=True)]
    shm = shm_overhead(n, bare_p50, args.board, args.policy)
    nabu = models[NABU]
    floor_payload = floors[NABU]["floor_payload_us"]
    print(json.dumps({
        "floor_rtt_us": floors["floor_rtt_us"], "floor_payload_us": floor_payload,
        "e2e_p50_us": nabu["e2e_p50_us"],
        "e2e_over_floor_payload_us": round(nabu["e2e_p50_us"] - floor_payload, 1),
        "daemon_cpu_us_per_request": nabu["daemon_cpu_us_per_request"],
        "client_cpu_us_per_request": nabu["client_cpu_us_per_request"],
        "models": models, "floors": floors, "face_json": json_doc,
        "model": FACE, "p50_us": round(p50, 1), "p99_us": round(_percentile_us(lat, 99), 1),
        "bare_p50_us": round(bare_p50, 1), "overhead_p50_us": round(p50 - bare_p50, 1),
        **shm,
        "floor_hold_rtt_us": floors["floor_hold_rtt_us"],
        "shm_overhead_over_hold_floor_us": round(shm["shm_overhead_p50_us"]
                                                 - floors["floor_hold_rtt_us"], 1),
        "daemon_p50_us": round(float(np.median(daemon_us)), 1),
        "daemon_host_p50_us": round(float(np.median([p["host_us"] for p in params])), 1),
        "daemon_overhead_p50_us": round(float(np.median(inner_us)), 1),
        "transport_client_p50_us": round(float(np.median(outer_us)), 1),
        "throughput_rps": round(rps, 1), "throughput_model": NABU, "clients": args.clients,
        "throughput_daemon_cpu_us_per_request": (round(rate_cpu_s / (rps * args.seconds) * 1e6, 1)
                                                 if rps else None),
        "board": args.board, "policy": args.policy, "cpus": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
