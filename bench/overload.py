"""Overload: 10x the sustainable request rate with mixed priorities against a real daemon.

Starts ``edgesched serve`` on the virtual board (unix socket in a temporary folder; nothing leaves
this host), measures the sustainable rate (closed loop, a few clients), then sends an open-loop
burst at ``--factor`` times that rate for ``--seconds`` and afterwards probes until latency is
back to normal. Prints one JSON object:

- ``p1_miss_rate``: priority-1 burst requests not answered "ok" in time (late, deadline missed,
  shed, refused or lost) over all priority-1 burst requests. "In time" is the daemon's verdict:
  a request's timeout runs from when its handler sees it (Triton's semantics);
- ``p1_miss_rate_client``: the same, also counting an "ok" whose round trip seen by the client
  (including time in the socket's listen backlog) exceeded its timeout;
- ``p1_outcomes``: how the priority-1 requests ended;
- ``accepted``: requests the daemon queued (everything not refused at admission);
- ``answered`` (200), ``shed`` (503 shed), ``deadline_missed`` (504), ``rejected`` (refused before
  queueing: 429 queue full, 400 infeasible deadline, or ``connect_refused``: the socket's listen
  backlog was full, so the request never reached the daemon), ``lost`` (no HTTP answer; the
  daemon's ``received`` counter shows whether such a request ever reached its handler);
- ``exactly_one_outcome``: every request the daemon received got exactly one outcome: the
  daemon's own counters (received, per outcome) agree with the client's (``metrics_agree``);
- ``server_errors``: 5xx answers other than 503 "shed" and 504 "deadline missed";
- ``peak_rss_mb``: peak resident memory of the daemon process (/proc/PID/statm, sampled every 50 ms);
- ``recovery_s``: seconds from the end of the burst until the median of 5 sequential probes is
  within 1.5x of the pre-burst median latency (null if not within ``--recovery-limit-s``); the
  probes pause 20 ms between requests before the burst and after it alike;
- ``recovery_last_probes_ms``: the latencies of the last 5 probes.

The default mix sends 5 % of the burst at priority 1, i.e. half the sustainable rate: priority 1
alone fits in what the daemon can serve, so a miss is the scheduler's doing and not arithmetic.
With ``--p1-share 0.2`` priority 1 alone is twice the sustainable rate and most of it must miss
whatever the scheduler does.

Priority-1 requests go to the daemon's priority lane (``--p1-socket lane``, the default;
``main`` sends them to the main socket with everything else), from a client process of their
own (``--p1-client separate``, the default, as from the application that sends them; ``shared``
sends them from the flood's client, whose own backlog then delays them before the daemon can see
them). The flood comes from one client process on the same machine; every client's
file-descriptor limit is raised to the hard limit, since every request in flight holds a
connection.

Usage: python bench/overload.py [--seconds 30] [--factor 10] [--board virtual:rk3399]
       [--p1-share 0.05] [--no-deadlines] [--p1-socket lane|main] [--p1-client separate|shared]
       [--policy SPEC] [--records FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _daemon import start_daemon, stop_daemon

from edgesched.client import Client, encode_infer

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
FACE = "face_detection_short_range"
PRIORITY_MIX = ((1, 0.05), (2, 0.35625), (3, 0.59375))


class RssSampler(threading.Thread):
    """Peak resident memory of ``pid``, read from one /proc/PID/statm descriptor opened up front
    (the burst can use up every free descriptor of this process)."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.every_s = every_s
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    rss = int(os.pread(self.fd, 256, 0).split()[1]) * self.page
                except (OSError, IndexError, ValueError):
                    return
                self.peak = max(self.peak, rss)
                self.stop.wait(self.every_s)
        finally:
            os.close(self.fd)


def _bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    face = np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32)
    return {NABU: encode_infer({NABU_IN: np.zeros((1, 3, 40), np.int8)}),
            FACE: encode_infer({"input": face})}


def _with_params(model: str, priority: int, timeout_us: int | None) -> tuple[bytes, dict[str, str]]:
    x = ({NABU_IN: np.zeros((1, 3, 40), np.int8)} if model == NABU else
         {"input": np.random.default_rng(priority).random((1, 128, 128, 3), dtype=np.float32)})
    return encode_infer(x, priority=priority, timeout_us=timeout_us)


PROBE_GAP_S = 0.02
"""Pause between two latency probes, before the burst and after it alike (a request after a
pause is slower than one right after another: the daemon's threads have gone to sleep)."""


def _latency_p50_s(sock: str, n: int) -> float:
    body, headers = _bodies()[NABU]
    out: list[float] = []
    with Client(sock, timeout_s=30) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            c.request("POST", f"/v2/models/{NABU}/infer", body, headers)
            out.append(time.perf_counter() - t0)
            time.sleep(PROBE_GAP_S)
    return statistics.median(out)


def _sustainable_rps(sock: str, seconds: float, clients: int, face_share: float) -> float:
    """Closed loop with ``clients`` threads over the same model mix as the burst."""
    counts = [0] * clients
    stop_at = time.perf_counter() + seconds
    bodies = _bodies()

    def run(i: int) -> None:
        rng = random.Random(i)
        with Client(sock, timeout_s=30) as c:
            while time.perf_counter() < stop_at:
                model = FACE if rng.random() < face_share else NABU
                body, headers = bodies[model]
                c.request("POST", f"/v2/models/{model}/infer", body, headers)
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


ANSWER_LIMIT_S = 120.0
CONNECT_REFUSED = (errno.EAGAIN, errno.ECONNREFUSED, errno.ENOTCONN)


def _request_bytes(model: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One whole HTTP/1.1 request on its own connection (Connection: close)."""
    lines = [f"POST /v2/models/{model}/infer HTTP/1.1", "Host: localhost",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _OneShot(asyncio.Protocol):
    """A lean client for the burst: write one request, read one Content-Length answer.

    aiohttp's client costs several times more CPU per request; at 10x the sustainable rate on
    the daemon's own machine it fell behind, piled up open connections until it ran out of file
    descriptors, and the daemon sat idle while the bench reported misses.
    """

    def __init__(self, request: bytes,
                 done: asyncio.Future[tuple[int, dict[str, str], bytes]]) -> None:
        self.request = request
        self.done = done
        self.buf = bytearray()
        self.head_end = -1
        self.status = 0
        self.headers: dict[str, str] = {}
        self.length = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        typing.cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.length = int(self.headers.get("content-length", "0"))
        if len(self.buf) - self.head_end >= self.length and not self.done.done():
            self.done.set_result((self.status, self.headers,
                                  bytes(self.buf[self.head_end:self.head_end + self.length])))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("closed before the answer"))


Plan = list[tuple[float, str, int, "int | None"]]


def _plan(rate: float, seconds: float, face_share: float, deadlines: bool,
          service_s: dict[str, float], seed: int,
          mix: tuple[tuple[int, float], ...] = PRIORITY_MIX) -> Plan:
    """The burst: (send time from the start, model, priority, timeout_us) per request."""
    rng = random.Random(seed)
    n = max(1, int(rate * seconds))
    plan: Plan = []
    for i in range(n):
        model = FACE if rng.random() < face_share else NABU
        r = rng.random()
        acc = 0.0
        prio = 3
        for p, share in mix:
            acc += share
            if r < acc:
                prio = p
                break
        timeout_us = None
        if deadlines and prio == 1:
            timeout_us = int(service_s[model] * 1e6 * 20) + 20_000
        plan.append((i / rate, model, prio, timeout_us))
    return plan


async def _send(sock: str, plan: Plan, start_at: float) -> list[dict[str, Any]]:
    """Send ``plan`` open loop from ``start_at`` (time.monotonic), one connection per request."""
    payloads = {(m, p, t): _request_bytes(m, *_with_params(m, p, t)) for _, m, p, t in plan}
    loop = asyncio.get_running_loop()
    results: list[dict[str, Any]] = []

    async def one(model: str, prio: int, timeout_us: int | None) -> None:
        rec: dict[str, Any] = {"priority": prio, "model": model, "status": None,
                               "outcome": "lost", "timeout_us": timeout_us}
        t0 = time.perf_counter()
        done: asyncio.Future[tuple[int, dict[str, str], bytes]] = loop.create_future()
        try:
            try:
                transport, _ = await loop.create_unix_connection(
                    lambda: _OneShot(payloads[(model, prio, timeout_us)], done), sock)
            except OSError as exc:
                if exc.errno not in CONNECT_REFUSED:
                    raise
                # the listen backlog was full: AF_UNIX connect fails with EAGAIN (seen here as
                # ENOTCONN once asyncio treated it as in progress) and never reaches the daemon
                rec["outcome"] = "connect_refused"
                rec["error"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                rec["latency_s"] = time.perf_counter() - t0
                results.append(rec)
                return
            try:
                status, headers, data = await asyncio.wait_for(done, ANSWER_LIMIT_S)
            finally:
                transport.close()
            rec["status"] = status
            if status == 200:
                hl = headers.get("inference-header-content-length")
                head = data[:int(hl)] if hl else data
                rec["parameters"] = json.loads(head)["parameters"]
                rec["outcome"] = rec["parameters"]["outcome"]
            else:
                try:
                    answer = json.loads(data)
                    rec["outcome"] = answer.get("outcome") or "refused"
                    rec["reason"] = answer.get("error", "")
                except ValueError:
                    rec["outcome"] = "refused"
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
                rec["outcome"] = "connect_refused"  # the connect had failed after all
        rec["latency_s"] = time.perf_counter() - t0
        results.append(rec)

    tasks: list[asyncio.Task[None]] = []
    for at, model, prio, timeout_us in plan:
        delay = start_at + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(model, prio, timeout_us)))
    await asyncio.gather(*tasks)
    return results


def _send_in_child(sock: str, plan: Plan, start_at: float, conn: Any) -> None:
    """The priority-1 client: a process of its own, like the application that sends them."""
    _raise_fd_limit()
    conn.send(asyncio.run(_send(sock, plan, start_at)))
    conn.close()


def _burst(sock: str, plan: Plan, p1_sock: str, p1_separate: bool) -> list[dict[str, Any]]:
    """Run the burst; priority-1 requests go to ``p1_sock``, from a process of their own with
    ``p1_separate`` (the flood's client then cannot hold them up)."""
    start_at = time.monotonic() + 0.5
    if not p1_separate:
        if p1_sock == sock:
            return asyncio.run(_send(sock, plan, start_at))

        async def both() -> list[dict[str, Any]]:
            a, b = await asyncio.gather(
                _send(p1_sock, [x for x in plan if x[2] == 1], start_at),
                _send(sock, [x for x in plan if x[2] != 1], start_at))
            return a + b

        return asyncio.run(both())
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_in_child,
                       args=(p1_sock, [x for x in plan if x[2] == 1], start_at + 1.5, child))
    proc.start()
    child.close()
    # the child needs a moment to start (spawn): both begin at the same instant
    rest = asyncio.run(_send(sock, [x for x in plan if x[2] != 1], start_at + 1.5))
    p1: list[dict[str, Any]] = parent.recv()
    proc.join()
    return p1 + rest


def _recovery_s(sock: str, baseline_s: float, limit_s: float,
                ) -> tuple[float | None, int, list[float]]:
    """Seconds until latency is back to normal: 5 probes in a row answered 200 with a median
    within 1.5x of the pre-burst one (None: not within ``limit_s``); how many probes reached
    the daemon's handler (a connection refused at the door never does); the last 5 probes'
    latencies."""
    body, headers = _bodies()[NABU]
    t_end = time.perf_counter()
    window: list[float] = []
    reached = 0
    with Client(sock, timeout_s=60) as c:
        while time.perf_counter() - t_end < limit_s:
            t0 = time.perf_counter()
            status, _, data = c.request("POST", f"/v2/models/{NABU}/infer", body, headers)
            took = time.perf_counter() - t0
            if not (status == 503 and b"too_many_connections" in data):
                reached += 1
            window = [*window[-4:], took] if status == 200 else []
            if len(window) == 5 and statistics.median(window) <= 1.5 * baseline_s:
                return round(time.perf_counter() - t_end, 3), reached, window
            time.sleep(PROBE_GAP_S)
    return None, reached, window


def _daemon_totals(sock: str) -> dict[str, int]:
    with Client(sock, timeout_s=30) as c:
        doc = c.status()["requests"]
    return {"received": int(doc["received"]),
            **{k: int(v) for k, v in doc["by_outcome"].items()}}


def _raise_fd_limit() -> int:
    """Soft limit on open files up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    fd_limit = _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="edgesched-overload-") as tmp:
        server = "[server]\n"
        if args.max_connections:
            server += f"max_connections = {args.max_connections}\n"
        if args.switch_interval_us:
            server += f"switch_interval_us = {args.switch_interval_us}\n"
        server += f"[board]\nvirtual_slowdown = {args.virtual_slowdown}\n"
        proc, sock = start_daemon(Path(tmp), config=server + "[models]\nwarmup_runs = 2\n"
                                  "measure_runs = 5\n",
                                  board=args.board, policy=args.policy, sock_name="overload.sock")
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            baseline_s = _latency_p50_s(sock, 100)
            sustainable = _sustainable_rps(sock, args.calibrate_s, args.clients, args.face_share)
            with Client(sock, timeout_s=30) as c:
                st = c.status()
            models = st["models"]
            lane = str(st.get("priority_socket") or "")
            if args.p1_socket == "lane" and not lane:
                raise SystemExit("the daemon has no priority lane (server.priority_socket)")
            # the board's top-speed service time: the host's, times the virtual slowdown
            service_s = {m: models[m]["service_us_startup"] / 1e6 * args.virtual_slowdown
                         for m in (NABU, FACE)}
            before = _daemon_totals(sock)
            rate = min(sustainable * args.factor, args.max_requests / args.seconds)
            rest = 1.0 - args.p1_share
            mix = ((1, args.p1_share), (2, rest * 3 / 8), (3, rest * 5 / 8))
            plan = _plan(rate, args.seconds, args.face_share, not args.no_deadlines, service_s,
                         args.seed, mix)
            results = _burst(sock, plan, lane if args.p1_socket == "lane" else sock,
                             args.p1_client == "separate")
            recovery, probes, last = _recovery_s(sock, baseline_s, args.recovery_limit_s)
            after = _daemon_totals(sock)
        finally:
            sampler.stop.set()
            sampler.join(5)
            stop_daemon(proc, 60.0)
    if args.records:
        Path(args.records).write_text(json.dumps(results))
    status = Counter(r["status"] for r in results)
    outcome = Counter(r["outcome"] for r in results)
    answered = sum(1 for r in results if r["status"] == 200)
    shed = sum(1 for r in results if r["status"] == 503 and r["outcome"] == "shed")
    missed = sum(1 for r in results if r["status"] == 504 and r["outcome"] == "deadline_missed")
    errors_500 = sum(1 for r in results if r["status"] == 500)
    rejected = sum(1 for r in results if r["status"] in (400, 429) or (
        r["status"] == 503 and r["outcome"] not in ("shed",)))
    connect_refused = sum(1 for r in results if r["outcome"] == "connect_refused")
    rejected += connect_refused
    lost = sum(1 for r in results if r["status"] is None) - connect_refused
    accepted = answered + shed + missed + errors_500
    server_errors = sum(1 for r in results if r["status"] is not None and r["status"] >= 500
                        and not (r["status"] == 503 and r["outcome"] in (
                            "shed", "too_many_connections"))
                        and not (r["status"] == 504 and r["outcome"] == "deadline_missed"))
    # the daemon's own count of queue outcomes during the burst (less the recovery probes)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    daemon_received = delta.pop("received", 0) - probes
    daemon_queued = sum(v for k, v in delta.items() if k != "rejected") - probes
    http_rejected = sum(1 for r in results if r["status"] in (400, 429))
    metrics_agree = (daemon_queued == accepted and delta.get("rejected", 0) == http_rejected
                     and daemon_received == accepted + http_rejected)
    p1 = [r for r in results if r["priority"] == 1]
    p1_miss = sum(1 for r in p1 if r["outcome"] != "ok")
    p1_miss_client = sum(1 for r in p1 if r["outcome"] != "ok" or (
        r["timeout_us"] is not None and r["latency_s"] * 1e6 > r["timeout_us"]))
    return {
        "p1_miss_rate": round(p1_miss / len(p1), 4) if p1 else 0.0,
        "p1_miss_rate_client": round(p1_miss_client / len(p1), 4) if p1 else 0.0,
        "p1_sent": len(p1),
        "p1_outcomes": dict(Counter(r["outcome"] for r in p1)),
        "accepted": accepted, "answered": answered, "shed": shed, "deadline_missed": missed,
        "rejected": rejected, "connect_refused": connect_refused, "lost": lost, "sent": len(results),
        "exactly_one_outcome": metrics_agree and accepted + rejected + lost == len(results),
        "daemon_received": daemon_received,
        "metrics_agree": metrics_agree, "server_errors": server_errors,
        "peak_rss_mb": round(sampler.peak / 2**20, 1),
        "recovery_s": recovery,
        "recovery_last_probes_ms": [round(x * 1e3, 3) for x in last],
        "sustainable_rps": round(sustainable, 1), "burst_rps": round(rate, 1),
        "factor": args.factor, "seconds": args.seconds, "baseline_p50_ms":
            round(baseline_s * 1e3, 3),
        "status_counts": {str(k): v for k, v in sorted(status.items(), key=lambda kv: str(kv[0]))},
        "outcome_counts": dict(outcome),
        "lost_errors": dict(Counter(r.get("error", "") for r in results
                                    if r["status"] is None).most_common(3)),
        "board": args.board, "policy": args.policy, "p1_share": args.p1_share,
        "client_fd_limit": fd_limit, "virtual_slowdown": args.virtual_slowdown,
        "p1_socket": args.p1_socket, "p1_client": args.p1_client,
        "switch_interval_us": args.switch_interval_us or None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the burst")
    ap.add_argument("--factor", type=float, default=10.0, help="burst rate / sustainable rate")
    ap.add_argument("--calibrate-s", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=4, help="closed-loop clients for calibration")
    ap.add_argument("--face-share", type=float, default=0.2)
    ap.add_argument("--p1-share", type=float, default=PRIORITY_MIX[0][1],
                    help="share of priority-1 requests in the burst (the rest split 3:5 "
                    "between priorities 2 and 3)")
    ap.add_argument("--board", default="virtual:rk3399")
    ap.add_argument("--policy", default="schedutil")
    ap.add_argument("--no-deadlines", action="store_true",
                    help="send no timeouts (then no 504 can happen)")
    ap.add_argument("--recovery-limit-s", type=float, default=30.0)
    ap.add_argument("--max-requests", type=int, default=200_000,
                    help="cap on burst requests (the rate is lowered to fit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--virtual-slowdown", type=float, default=1.0,
                    help="the virtual board's board.virtual_slowdown (8: the simulator's A72 "
                    "speed; sustainable is then bound by inference, not by HTTP)")
    ap.add_argument("--p1-socket", choices=("lane", "main"), default="lane",
                    help="where priority-1 requests go: the daemon's priority lane "
                         "(server.priority_socket) or the main socket with everything else")
    ap.add_argument("--p1-client", choices=("separate", "shared"), default="separate",
                    help="priority-1 requests from a client process of their own (as from the "
                         "application that sends them) or from the flood's client")
    ap.add_argument("--switch-interval-us", type=int, default=0,
                    help="the daemon's server.switch_interval_us (0: its default)")
    ap.add_argument("--records", metavar="FILE",
                    help="also write every burst request's record (priority, model, outcome, "
                         "latency, the daemon's parameters or reason) to FILE as JSON")
    ap.add_argument("--max-connections", type=int, default=0,
                    help="the daemon's server.max_connections (0: its default)")
    args = ap.parse_args()
    doc = run(args)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
