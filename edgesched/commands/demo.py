"""``edgesched demo``: start the daemon on a temporary socket, drive a mixed-priority workload
against it with several client threads, print what happened per priority, stop it with SIGTERM.

With ``--policies a,b,c`` the same workload (same seed) runs once per policy and a last table
compares energy per inference. Every policy spec is checked before the first daemon starts: a
mistyped or missing one is an error that lists the valid specs (no table under a wrong name).
By default the baselines run, then the learned policy shipped for the board
(``learned:NAME``, else ``learned:generic``), found from any working directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgesched.errors import ClientError, EdgeschedError

if TYPE_CHECKING:
    from edgesched.device import DeviceProfile


@dataclass(frozen=True)
class RequestClass:
    """One kind of request in the demo workload."""

    name: str
    model: str
    priority: int
    timeout_us: int | None
    weight: float


WORKLOAD = (
    RequestClass("wake word", "okay_nabu", 1, 20_000, 0.5),
    RequestClass("face detection", "face_detection_short_range", 2, 60_000, 0.35),
    RequestClass("hand landmarks", "hand_landmark_lite", 3, 400_000, 0.15),
)


@dataclass
class Record:
    priority: int
    status: int
    outcome: str
    latency_s: float
    energy_j: float


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run the daemon against a mixed-priority workload and print the outcome",
        description=__doc__)
    p.add_argument("--duration-s", type=float, default=10.0,
                   help="workload length per policy (default 10 s)")
    p.add_argument("--clients", type=int, default=6, help="client threads")
    p.add_argument("--rate-hz", type=float, default=80.0,
                   help="offered load, requests per second over all clients")
    p.add_argument("--policies", default=None,
                   help="comma-separated policy specs, one run each (same workload and seed) "
                   "(default: performance,powersave,schedutil,slack,slack-guarded plus the "
                   "shipped learned policy for the board, learned:NAME, else learned:generic)")
    p.add_argument("--board", default="virtual:rk3399")
    p.add_argument("--models", default=None, help="models folder (default: the shipped ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                   help="also write the results as JSON (default: not written)")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------ daemon control
def start_daemon(home: Path, board: str, policy: str, models: str | None,
                 ) -> tuple[subprocess.Popen[bytes], str, Path]:
    sock = str(home / "edgesched.sock")
    cfg = home / "config.toml"
    cfg.write_text("[server]\nshutdown_timeout_s = 2.0\n", encoding="utf-8")
    log = home / "daemon.log"
    cmd = [sys.executable, "-m", "edgesched", "serve", "--config", str(cfg), "--socket", sock,
           "--board", board, "--policy", policy, "--runtime-dir", str(home / "run"),
           "--state-dir", str(home / "state"), "--log-level", "warning"]
    if models:
        cmd += ["--models", models]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    return proc, sock, log


def wait_ready(proc: subprocess.Popen[bytes], sock: str, log: Path, limit_s: float = 60.0,
               ) -> None:
    from edgesched.client import Client

    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise EdgeschedError(f"the daemon exited with {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')}")
        if os.path.exists(sock):
            try:
                with Client(sock, timeout_s=5.0) as c:
                    if c.ready():
                        return
            except ClientError:
                pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise EdgeschedError(f"the daemon was not ready after {limit_s:.0f} s")


# ------------------------------------------------------------------------------ workload
def _inputs(meta: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    from edgesched.client import DTYPES

    out: dict[str, np.ndarray] = {}
    for t in meta["inputs"]:
        dtype = DTYPES[t["datatype"]]
        if dtype.kind == "f":
            out[t["name"]] = rng.random(t["shape"]).astype(dtype)
        else:
            info = np.iinfo(dtype)
            out[t["name"]] = rng.integers(info.min, info.max, size=t["shape"], dtype=dtype)
    return out


def drive(sock: str, duration_s: float, clients: int, rate_hz: float, seed: int,
          workload: Sequence[RequestClass] = WORKLOAD) -> list[Record]:
    """Closed-loop clients with exponential think times; returns one record per request."""
    from edgesched.client import Client

    rng = np.random.default_rng(seed)
    with Client(sock) as c:
        inputs = {rc.model: _inputs(c.model_metadata(rc.model), rng) for rc in workload}
    records: list[Record] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s
    mean_think_s = clients / rate_hz
    weights = [rc.weight for rc in workload]

    def client(idx: int) -> None:
        pick = random.Random(seed * 1000 + idx)
        mine: list[Record] = []
        with Client(sock) as c:
            while True:
                time.sleep(pick.expovariate(1.0 / mean_think_s))
                if time.monotonic() >= stop_at:
                    break
                rc = pick.choices(workload, weights)[0]
                t0 = time.perf_counter()
                try:
                    res = c.infer(rc.model, inputs[rc.model], priority=rc.priority,
                                  timeout_us=rc.timeout_us)
                    rec = Record(rc.priority, 200, str(res.parameters.get("outcome", "ok")),
                                 time.perf_counter() - t0,
                                 float(res.parameters.get("energy_j", 0.0)))
                except ClientError as exc:
                    rec = Record(rc.priority, exc.status, exc.outcome or "rejected",
                                 time.perf_counter() - t0, 0.0)
                mine.append(rec)
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def summarise(records: Sequence[Record], levels: int = 3) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for prio in [*range(1, levels + 1), 0]:
        rs = [r for r in records if prio == 0 or r.priority == prio]
        ok = [r for r in rs if r.status == 200 and r.outcome == "ok"]
        late = [r for r in rs if r.outcome in ("late", "deadline_missed")]
        shed = [r for r in rs if r.outcome == "shed"]
        served = [r for r in rs if r.status == 200]
        lat_ms = sorted(r.latency_s * 1000.0 for r in served)
        energy = sum(r.energy_j for r in served)
        rows.append({
            "priority": "all" if prio == 0 else prio,
            "sent": len(rs), "ok": len(ok), "deadline_missed": len(late), "shed": len(shed),
            "rejected": len(rs) - len(ok) - len(late) - len(shed),
            "p50_ms": float(np.percentile(lat_ms, 50)) if lat_ms else math.nan,
            "p99_ms": float(np.percentile(lat_ms, 99)) if lat_ms else math.nan,
            "energy_mj_per_inference": energy / len(served) * 1000.0 if served else math.nan,
        })
    return rows


def format_rows(rows: Sequence[dict[str, Any]], title: str) -> str:
    head = ("priority", "sent", "ok", "missed", "shed", "rejected", "p50 ms", "p99 ms",
            "mJ/inf")
    lines = [title, "  ".join(f"{h:>9}" for h in head)]
    for r in rows:
        cells = (r["priority"], r["sent"], r["ok"], r["deadline_missed"], r["shed"],
                 r["rejected"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                 f"{r['energy_mj_per_inference']:.2f}")
        lines.append("  ".join(f"{c!s:>9}" for c in cells))
    return "\n".join(lines)


def run_one(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgesched-demo-") as tmp:
        proc, sock, log = start_daemon(Path(tmp), args.board, policy, args.models)
        try:
            wait_ready(proc, sock, log)
            records = drive(sock, args.duration_s, args.clients, args.rate_hz, args.seed)
            from edgesched.client import Client

            with Client(sock) as c:
                status = c.status()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc != 0:
            raise EdgeschedError(f"the daemon exited with {rc} after SIGTERM:\n"
                                 f"{log.read_text(errors='replace')}")
    return {"policy": policy, "rows": summarise(records),
            "daemon_energy_j": status["energy_j_total"],
            "daemon_requests": status["requests"]}


def short_name(spec: str) -> str:
    """``learned:/a/b/rk3399.npz`` -> ``learned:rk3399`` for the tables."""
    kind, _, arg = spec.partition(":")
    return f"{kind}:{Path(arg).stem}" if arg else spec


def board_profile(board: str) -> DeviceProfile | None:
    """The profile a ``virtual:``/``sysfs:`` board spec names; None for ``none`` or a profile
    that does not load (the daemon reports that one itself)."""
    from edgesched.device import load_profile
    from edgesched.errors import ProfileError

    kind, _, arg = board.partition(":")
    if kind not in ("virtual", "sysfs") or not arg:
        return None
    try:
        return load_profile(arg)
    except ProfileError:
        return None


def default_policies(board: str) -> str:
    """The kernel baselines, ``slack`` and ``slack-guarded``, plus the shipped
    ``learned:NAME`` for a virtual board (else ``learned:generic``) when it is installed."""
    from edgesched.policy.registry import shipped_policies

    specs = "performance,powersave,schedutil,slack,slack-guarded"
    name = board.split(":", 1)[1] if board.startswith("virtual:") else ""
    shipped = shipped_policies()
    for candidate in (name, "generic"):
        if candidate in shipped:
            return f"{specs},learned:{candidate}"
    return specs


def run(args: argparse.Namespace) -> int:
    from edgesched.policy.registry import check_specs

    if args.policies is None:
        args.policies = default_policies(args.board)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies or args.clients < 1 or args.duration_s <= 0 or args.rate_hz <= 0:
        print("edgesched demo: need a policy, clients >= 1, duration and rate > 0",
              file=sys.stderr)
        return 2
    check_specs(policies)  # before any daemon starts: PolicyError names the valid specs
    profile = board_profile(args.board)
    if profile is not None:  # learned:... and qlearn:... read the observation: refused up front
        from edgesched.observation import check_observable

        for spec in policies:
            if spec.split(":", 1)[0] in ("learned", "qlearn"):
                check_observable(profile, f"policy {spec!r}")
    from edgesched.cli import check_output_path

    check_output_path("--json", args.json)  # before the runs, not after them
    print(f"edgesched demo: board {args.board}, {args.clients} clients, "
          f"{args.rate_hz:g} req/s offered, {args.duration_s:g} s per policy")
    for rc in WORKLOAD:
        deadline = f"{rc.timeout_us / 1000:g} ms" if rc.timeout_us else "none"
        print(f"  priority {rc.priority}: {rc.name} ({rc.model}), deadline {deadline}, "
              f"{rc.weight:.0%} of requests")
    results = []
    for policy in policies:
        res = run_one(policy, args)
        results.append(res)
        print()
        print(format_rows(res["rows"], f"policy {policy}"))
    if len(results) > 1:
        print()
        base = results[0]["rows"][-1]["energy_mj_per_inference"]
        width = max(14, *(len(short_name(r["policy"])) for r in results))
        print(f"{'policy':>{width}}  {'sent':>6}  {'ok':>6}  {'missed':>6}  {'shed':>6}  "
              f"{'mJ/inf':>8}  {'vs ' + results[0]['policy']:>16}")
        for res in results:
            tot = res["rows"][-1]
            mj = tot["energy_mj_per_inference"]
            rel = f"{(mj / base - 1.0) * 100.0:+.0f}%" if base and base == base else "n/a"
            print(f"{short_name(res['policy']):>{width}}  {tot['sent']:>6}  {tot['ok']:>6}  "
                  f"{tot['deadline_missed']:>6}  {tot['shed']:>6}  {mj:>8.2f}  {rel:>16}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0
