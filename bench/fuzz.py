"""Fuzz a real daemon with a larger budget than the tests: schemathesis on the served OpenAPI
description (over 127.0.0.1 TCP) and random binary-framed infer requests (over the unix socket).

Prints one JSON object: {"cases": int, "crashes": int, "server_errors": int, ...}. A crash is a
case after which the daemon no longer answers /v2/health/live (it is restarted to go on); a
server error is any 5xx answer.

Usage: python bench/fuzz.py [--examples 200] [--framing 2000] [--seconds 300]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _daemon import start_daemon, stop_daemon

from edgesched.client import Client, encode_infer

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"


class Daemon:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.n = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = ""
        self.port = 0

    def start(self) -> None:
        self.n += 1
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc, self.sock = start_daemon(
            self.home, config=f"[server]\nhttp_port = {self.port}\n[models]\nwarmup_runs = 1\n"
            "measure_runs = 3\n", board="none", sock_name=f"fuzz{self.n}.sock", log_level="error")

    def live(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with Client(self.sock, timeout_s=30) as c:
                return c.live()
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_daemon(self.proc)


class Tally:
    def __init__(self, daemon: Daemon, deadline: float) -> None:
        self.daemon = daemon
        self.deadline = deadline
        self.cases = 0
        self.crashes = 0
        self.server_errors = 0
        self.examples: list[str] = []

    def record(self, status: int | None, what: str) -> None:
        self.cases += 1
        if status is not None and status >= 500:
            self.server_errors += 1
            if len(self.examples) < 10:
                self.examples.append(f"{status}: {what}")
        if not self.daemon.live():
            self.crashes += 1
            if len(self.examples) < 10:
                self.examples.append(f"crash after: {what}")
            self.daemon.stop()
            self.daemon.start()

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


def fuzz_openapi(d: Daemon, tally: Tally, examples: int) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    api = schemathesis.openapi.from_url(f"http://127.0.0.1:{d.port}/v2/openapi.json")
    for result in api.get_all_operations():
        ok = getattr(result, "ok", None)
        if ok is None:  # schemathesis' Err: the served description has a broken operation
            raise SystemExit(f"invalid operation in /v2/openapi.json: {result}")
        op = ok()

        @given(op.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def one(case: Any) -> None:
            if tally.out_of_time():
                return
            try:
                status: int | None = case.call(base_url=f"http://127.0.0.1:{d.port}",
                                               timeout=60).status_code
            except Exception:
                status = None
            tally.record(status, f"{case.method} {case.formatted_path}")

        one()


def _garble(rng: random.Random, data: bytes) -> bytes:
    if not data or rng.random() < 0.5:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) + data[i + 1:]


def fuzz_framing(d: Daemon, tally: Tally, n: int, seed: int) -> None:
    import numpy as np

    rng = random.Random(seed)
    base, _ = encode_infer({NABU_IN: np.zeros((1, 3, 40), np.int8)})
    head_len = len(base) - 120
    for _ in range(n):
        if tally.out_of_time():
            return
        head = _garble(rng, base[:head_len])
        if rng.random() < 0.3:
            head = head.replace(b'"binary_data_size":120',
                                b'"binary_data_size":%d' % rng.choice([-1, 0, 119, 121, 2**40]))
        tail = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 119, 120, 121, 500])))
        choice = rng.random()
        if choice < 0.4:
            hlen = str(len(head))
        elif choice < 0.7:
            hlen = str(len(head) + rng.randint(-60, 60))
        else:
            hlen = rng.choice(["", "x", "-1", "1e3", "0x10", str(2**70), " 5", "1_0"])
        headers = {"Inference-Header-Content-Length": hlen} if rng.random() < 0.9 else {}
        status: int | None
        try:
            with Client(d.sock, timeout_s=60) as c:
                status, _, _ = c.request("POST", f"/v2/models/{NABU}/infer", head + tail,
                                         headers)
        except Exception:
            status = None
        tally.record(status, f"framing header-length {hlen!r}, {len(head)}+{len(tail)} bytes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="schemathesis cases per operation")
    ap.add_argument("--framing", type=int, default=2000, help="binary framing cases")
    ap.add_argument("--seconds", type=float, default=300.0, help="overall time budget")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesched-fuzz-") as tmp:
        d = Daemon(Path(tmp))
        d.start()
        tally = Tally(d, time.monotonic() + args.seconds)
        t0 = time.monotonic()
        try:
            try:
                fuzz_openapi(d, tally, args.examples)
                openapi = "schemathesis"
            except ImportError:
                openapi = "skipped: pip install schemathesis"
            fuzz_framing(d, tally, args.framing, args.seed)
        finally:
            d.stop()
    print(json.dumps({"cases": tally.cases, "crashes": tally.crashes,
                      "server_errors": tally.server_errors, "examples": tally.examples,
                      "openapi": openapi, "seconds": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
