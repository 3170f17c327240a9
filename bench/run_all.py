"""Run every bench and gather the figures: writes DIR/results.json and PNG plots.

Each bench runs as a subprocess and prints one JSON object (sim_speed, serve_overhead,
decision_time, overload, fuzz, kill_restart, peers: an "error" entry when MLServer's venv
.venv-bench is not installed). Also measured here: the idle daemon's RSS and CPU over
``--idle-s`` seconds (virtual board, schedutil). Energy per board is measured here, not copied
from the committed reports: the evaluation (``edgesched_sim.report.device_summary`` over
``edgesched eval`` runs) of schedutil, performance, the board's learned policy
``policies/<board>.npz`` when there is one, and the oracle, on every built-in scenario for one
seed and ``--energy-s`` simulated seconds (30; 10 with ``--quick``). Per board it reports the
learned policy's ``vs_schedutil`` and ``vs_oracle`` (energy over the floor of the requests it
served in time), the same for schedutil, the misses of every class beside them, how many job sets
were feasible, and the iso-QoS verdicts per scenario.

Usage: python bench/run_all.py --out DIR [--idle-s 60] [--quick] [--boards rk3399,...]
       python bench/run_all.py --out DIR --only energy     (just the energy figures)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _daemon import start_daemon, stop_daemon

from edgesched_sim.evaluate import dumps_json
from edgesched_sim.report import provenance

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def run_json(args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a bench; its last stdout line is its JSON (an "error" key when it failed)."""
    cmd = [sys.executable, *args]
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout_s, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s: {' '.join(args)}"}
    lines = [ln for ln in out.stdout.decode(errors="replace").splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        return {"error": f"exit {out.returncode}: {out.stderr.decode(errors='replace')[-800:]}"}
    try:
        doc = dict(json.loads(lines[-1]))
    except ValueError:
        return {"error": f"not JSON: {lines[-1][:200]}"}
    doc["_seconds"] = round(time.monotonic() - t0, 1)
    return doc


def idle_daemon(seconds: float) -> dict[str, Any]:
    """RSS and CPU of an idle daemon (virtual board, schedutil) over ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="edgesched-idle-") as tmp:
        home = Path(tmp)
        try:
            proc, _ = start_daemon(home, sock_name="idle.sock")
        except SystemExit as exc:
            return {"error": str(exc)}
        try:
            p = psutil.Process(proc.pid)
            time.sleep(min(2.0, seconds))  # let start-up work settle
            cpu0 = p.cpu_times()
            t0 = time.monotonic()
            time.sleep(seconds)
            cpu1 = p.cpu_times()
            wall = time.monotonic() - t0
            used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            return {"rss_mb": round(p.memory_info().rss / 2**20, 1),
                    "idle_cpu_pct": round(100.0 * used / wall, 3), "idle_s": round(wall, 1)}
        finally:
            stop_daemon(proc, 60.0)


def energy_for(board: str, duration_s: float, seed: int) -> dict[str, Any]:
    """Energy figures of ``board`` measured by running the evaluation (see the module notes)."""
    from edgesched_sim.evaluate import evaluate
    from edgesched_sim.report import device_summary
    from edgesched_sim.scenarios import BUILTIN_NAMES

    learned = ROOT / "policies" / f"{board}.npz"
    spec = f"learned:{learned}" if learned.exists() else None
    specs = [*([spec] if spec else []), "schedutil", "performance", "oracle"]
    t0 = time.monotonic()
    try:
        runs = [evaluate(board, sc, specs, seed=seed, duration_s=duration_s)
                for sc in BUILTIN_NAMES]
    except Exception as exc:  # one board's failure must not end the whole run
        return {"vs_schedutil": None, "vs_oracle": None, "reason": f"evaluation failed: {exc}"}
    doc = device_summary(runs, {spec: "learned"} if spec else {})
    summary = doc["summary"]

    def figures(name: str) -> dict[str, Any]:
        row = summary[name]
        return {k: row[k] for k in ("vs_schedutil", "vs_oracle", "energy_per_served_j",
                                    "energy_per_received_j", "miss_rate",
                                    "miss_rate_by_priority", "runs_by_cluster")}

    out: dict[str, Any] = {
        "measured": {"scenarios": list(BUILTIN_NAMES), "seed": seed, "duration_s": duration_s,
                     "policies": specs, "seconds": round(time.monotonic() - t0, 1)},
        "feasible_sets": doc["feasible_sets"],
        "schedutil": figures("schedutil"), "performance": figures("performance"),
        "schedutil_vs_oracle": summary["schedutil"]["vs_oracle"],
        "iso_qos": {sc: {name: {"dominates": v["dominates"], "gap_closed": v["gap_closed"]}
                         for name, v in rows.items() if name != "schedutil"}
                    for sc, rows in (doc["iso_qos"] or {}).items()},
    }
    if spec:
        out.update(figures("learned"))
        out["learned"] = figures("learned")
    else:
        out.update({"vs_schedutil": None, "vs_oracle": None,
                    "reason": f"no policies/{board}.npz: no learned policy to measure"})
    return out


def plots(out: Path, results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    ov = results.get("raw", {}).get("overload", {})
    counts = {k: ov.get(k) for k in ("answered", "shed", "rejected")}
    if all(isinstance(v, int) for v in counts.values()):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.bar(list(counts), [counts[k] for k in counts], color=["tab:green", "tab:orange",
                                                                  "tab:red"])
        ax.set_ylabel("requests")
        ax.set_title(f"overload: {ov.get('factor')}x for {ov.get('seconds')} s; "
                     f"p1 miss {ov.get('p1_miss_rate')}")
        fig.tight_layout()
        fig.savefig(out / "overload.png", dpi=100)
        plt.close(fig)
        written.append("overload.png")
    serve = {k: results.get(k) for k in ("overhead_p50_us", "overhead_p99_us", "decision_us")}
    if all(isinstance(v, (int, float)) for v in serve.values()):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.bar(list(serve), [float(v) for v in serve.values()])  # type: ignore[arg-type]
        ax.set_ylabel("microseconds")
        ax.set_title("daemon overhead and policy decision time")
        fig.tight_layout()
        fig.savefig(out / "overhead.png", dpi=100)
        plt.close(fig)
        written.append("overhead.png")
    energy = {b: e.get("vs_oracle") or e.get("schedutil_vs_oracle")
              for b, e in results.get("energy", {}).items()}
    energy = {b: v for b, v in energy.items() if isinstance(v, (int, float))}
    if energy:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.bar(list(energy), list(energy.values()))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("energy / floor of the requests served in time")
        ax.set_title("learned policy (else schedutil) against the offline floor")
        fig.tight_layout()
        fig.savefig(out / "energy.png", dpi=100)
        plt.close(fig)
        written.append("energy.png")
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--idle-s", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true",
                    help="small budgets everywhere (minutes, not the full figures)")
    ap.add_argument("--overload-s", type=float, default=None)
    ap.add_argument("--boards", default="rk3399,bcm2711,exynos5422")
    ap.add_argument("--energy-s", type=float, default=None,
                    help="simulated seconds per scenario for the energy figures (30; 10 quick)")
    ap.add_argument("--energy-seed", type=int, default=1000)
    ap.add_argument("--only", choices=["energy"], default=None,
                    help="measure only this part and write DIR/energy.json")
    args = ap.parse_args()
    q = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    energy_s = args.energy_s if args.energy_s is not None else (10.0 if q else 30.0)
    boards = [b for b in args.boards.split(",") if b]
    if args.only == "energy":
        energy = {b: energy_for(b, energy_s, args.energy_seed) for b in boards}
        # no finite figure (e.g. nothing served) is null: JSON has no Infinity or NaN
        (args.out / "energy.json").write_text(dumps_json(energy) + "\n", encoding="utf-8")
        print(dumps_json(energy, indent=None))
        return 0
    overload_s = args.overload_s if args.overload_s is not None else (3.0 if q else 30.0)
    raw: dict[str, dict[str, Any]] = {}
    raw["sim_speed"] = run_json([str(BENCH / "sim_speed.py"), "--steps",
                                 "20000" if q else "200000"], 1800)
    raw["serve_overhead"] = run_json([str(BENCH / "serve_overhead.py"), "--requests",
                                      "300" if q else "2000", "--seconds", "2" if q else "5"],
                                     1800)
    raw["decision_time"] = run_json([str(BENCH / "decision_time.py"), "--n",
                                     "2000" if q else "20000"], 600)
    raw["overload"] = run_json([str(BENCH / "overload.py"), "--seconds", str(overload_s),
                                "--calibrate-s", "1" if q else "3"], 1800)
    raw["fuzz"] = run_json([str(BENCH / "fuzz.py"), "--examples", "20" if q else "200",
                            "--framing", "200" if q else "2000", "--seconds",
                            "60" if q else "600"], 1800)
    raw["kill_restart"] = run_json([str(BENCH / "kill_restart.py"), "--runs",
                                    "5" if q else "50"], 1800)
    # MLServer side by side; an "error" entry when the bench venv (.venv-bench) is not installed
    raw["peers"] = run_json([str(BENCH / "peers.py"), *(["--rounds", "1", "--requests", "100",
                             "--face-requests", "10", "--seconds", "1"] if q else [])], 1800)
    idle = idle_daemon(args.idle_s)
    so, dt, ov, fz = raw["serve_overhead"], raw["decision_time"], raw["overload"], raw["fuzz"]
    results: dict[str, Any] = {
        "overhead_p50_us": so.get("overhead_p50_us"),
        "overhead_p99_us": (round(so["p99_us"] - so["bare_p50_us"], 1)
                            if "p99_us" in so and "bare_p50_us" in so else None),
        "daemon_overhead_p50_us": so.get("daemon_overhead_p50_us"),
        "transport_client_p50_us": so.get("transport_client_p50_us"),
        "shm_overhead_p50_us": so.get("shm_overhead_p50_us"),
        "floor_hold_rtt_us": so.get("floor_hold_rtt_us"),
        "throughput_rps": so.get("throughput_rps"),
        # okay_nabu against the floors measured in the same run (bench/serve_overhead.py)
        **{k: so.get(k) for k in ("floor_rtt_us", "floor_payload_us", "e2e_p50_us",
                                  "daemon_cpu_us_per_request")},
        "peer_throughput_ratio": raw["peers"].get("peer_throughput_ratio"),
        "peer_overhead_ratio": raw["peers"].get("peer_overhead_ratio"),
        "peer_face_json_cpu_ratio": raw["peers"].get("peer_face_json_cpu_ratio"),
        "decision_us": dt.get("decision_us_p50"),
        "rss_mb": idle.get("rss_mb"),
        "idle_cpu_pct": idle.get("idle_cpu_pct"),
        "sim_steps_per_s": raw["sim_speed"].get("steps_per_s"),
        "overload": {k: ov.get(k) for k in ("p1_miss_rate", "p1_miss_rate_client", "accepted",
                                             "answered", "shed", "peak_rss_mb", "recovery_s")},
        "fuzz": {k: fz.get(k) for k in ("cases", "crashes", "server_errors")},
        "kill_restart": {k: raw["kill_restart"].get(k) for k in ("runs", "restored",
                                                                  "crash_loops")},
        "energy": {b: energy_for(b, energy_s, args.energy_seed) for b in boards},
        "run": {"quick": q, "idle_s": args.idle_s, "overload_s": overload_s,
                "cpus": os.cpu_count(), "python": sys.version.split()[0],
                **provenance(ROOT)},
        "raw": {**raw, "idle": idle},
    }
    results["plots"] = plots(args.out, results)
    (args.out / "results.json").write_text(dumps_json(results) + "\n", encoding="utf-8")
    print(dumps_json({k: v for k, v in results.items() if k != "raw"}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
