"""Serving overhead of the daemon: prints one JSON object.

- ``p50_us``/``p99_us``: end-to-end latency of face_detection_short_range over the unix socket
  (bundled client, binary tensors, one request at a time).
- ``bare_p50_us``: the same model's set_tensor + invoke + get_tensor in this process, same run.
- ``overhead_p50_us``: the difference of the two medians.
- ``daemon_overhead_p50_us``: what the daemon itself adds, from each answer's parameters: the
  time from the request's first bytes read to its answer ready to write (``daemon_us``) less the
  inference as the daemon timed it (``host_us``); ``transport_client_p50_us``: the rest of each
  round trip (the client's encoding and decoding, the socket, the wake-ups on both sides).
- ``throughput_rps``: answered requests per second for the smallest model (okay_nabu) with
  ``--clients`` concurrent clients (separate processes, each one keep-alive connection).

Usage: python bench/serve_overhead.py [--requests 2000] [--seconds 5] [--clients 8]
       [--board none] [--policy schedutil]
The daemon runs with --board none by default: the virtual board would add emulated service time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _daemon import parallel_rate, start_daemon, stop_daemon

from edgesched.client import Client
from edgesched.server.runner import load_model, shipped_models_dir

FACE = "face_detection_short_range"
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"


def _percentile_us(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e6, q))


def _latency(sock: str, n: int) -> tuple[list[float], list[dict[str, Any]]]:
    """Round trips in seconds, and each answer's parameters."""
    x = np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32)
    out: list[float] = []
    params: list[dict[str, Any]] = []
    with Client(sock) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            res = c.infer(FACE, {"input": x})
            if i >= 20:
                out.append(time.perf_counter() - t0)
                params.append(res.parameters)
    return out, params


def _bare(n: int) -> list[float]:
    model = load_model(shipped_models_dir() / f"{FACE}.tflite", warmup_runs=20, measure_runs=1)
    x = {"input": np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32)}
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        model.run(x)
        out.append(time.perf_counter() - t0)
    return out


def _client_proc(sock: str, seconds: float, barrier: Any, q: Any) -> None:
    x = {NABU_IN: np.zeros((1, 3, 40), np.int8)}
    done = 0
    with Client(sock) as c:
        for _ in range(20):  # connect and warm up
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesched-bench-") as tmp:
        proc, sock = start_daemon(Path(tmp), config="[queue]\nmax_count = 1024\n",
                                  board=args.board, policy=args.policy)
        try:
            lat, params = _latency(sock, args.requests)
            bare = _bare(args.requests)
            rps = parallel_rate(_client_proc, sock, args.clients, args.seconds)
        finally:
            stop_daemon(proc)
    p50 = _percentile_us(lat, 50)
    bare_p50 = _percentile_us(bare, 50)
    daemon_us = [float(p["daemon_us"]) for p in params]
    inner_us = [d - float(p["host_us"]) for d, p in zip(daemon_us, params, strict=True)]
    outer_us = [t * 1e6 - d for t, d in zip(lat, daemon_us, strict=True)]
    print(json.dumps({
        "model": FACE, "p50_us": round(p50, 1), "p99_us": round(_percentile_us(lat, 99), 1),
        "bare_p50_us": round(bare_p50, 1), "overhead_p50_us": round(p50 - bare_p50, 1),
        "daemon_p50_us": round(float(np.median(daemon_us)), 1),
        "daemon_host_p50_us": round(float(np.median([p["host_us"] for p in params])), 1),
        "daemon_overhead_p50_us": round(float(np.median(inner_us)), 1),
        "transport_client_p50_us": round(float(np.median(outer_us)), 1),
        "throughput_rps": round(rps, 1), "throughput_model": NABU, "clients": args.clients,
        "board": args.board, "policy": args.policy, "cpus": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
