"""``edgesched eval``: run policies on the identical job set and compare them with the floor.

Figures per policy (``energy_j`` excludes the board floor, which no policy changes):

- ``energy_j``: cluster energy over the run (idle + busy + transitions);
- ``inferences``: requests that ran; ``energy_per_inference_j`` = energy_j / inferences;
- ``deadline_miss_rate``: requests not answered in time (late, expired in the queue, shed or
  rejected) over all requests, also by priority;
- ``p99_latency_ms``: 99th percentile of completion - arrival over the requests that ran;
- ``mean_busy_khz``: time-weighted mean frequency while running requests (0 for the oracle).

The ``oracle`` row is the Yao-Demers-Shenker floor (:mod:`edgesched_sim.oracle`) for all the
requests with their deadlines; its ``p99_latency_ms`` is the deadline bound (it finishes every
feasible request by its deadline) and its misses are the requests no speed can serve in time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesched.device import DeviceProfile, load_profile
from edgesched.policy.base import Policy
from edgesched_sim.engine import MISSED, Engine, Outcome, QueueConfig, RunStats
from edgesched_sim.scenarios import JobSet, Scenario, generate, load_scenario
from edgesched_sim.workloads import MODELS


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    energy_j: float
    inferences: int
    energy_per_inference_j: float
    deadline_miss_rate: float
    miss_rate_by_priority: dict[str, float]
    p99_latency_ms: float
    board_floor_j: float = 0.0
    mean_busy_khz: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "energy_j": self.energy_j, "inferences": self.inferences,
            "energy_per_inference_j": self.energy_per_inference_j,
            "deadline_miss_rate": self.deadline_miss_rate,
            "miss_rate_by_priority": self.miss_rate_by_priority,
            "p99_latency_ms": self.p99_latency_ms,
            "mean_busy_khz": self.mean_busy_khz,
        }


def summarise(name: str, jobs: JobSet, stats: RunStats) -> PolicyResult:
    outcome = stats.outcome
    ran = (outcome == Outcome.OK) | (outcome == Outcome.LATE)
    missed = np.isin(outcome, [int(o) for o in MISSED])
    n = len(jobs)
    by_prio: dict[str, float] = {}
    for p in sorted(set(jobs.priority.tolist())):
        sel = jobs.priority == p
        by_prio[str(p)] = float(missed[sel].mean()) if sel.any() else 0.0
    lat_ms = (stats.finish_s[ran] - jobs.release_s[ran]) * 1000.0
    inferences = int(ran.sum())
    return PolicyResult(
        policy=name, energy_j=float(stats.total_energy_j), inferences=inferences,
        energy_per_inference_j=float(stats.total_energy_j / inferences) if inferences else math.inf,
        deadline_miss_rate=float(missed.mean()) if n else 0.0, miss_rate_by_priority=by_prio,
        p99_latency_ms=float(np.percentile(lat_ms, 99)) if inferences else math.inf,
        board_floor_j=float(stats.board_floor_j), mean_busy_khz=float(stats.mean_busy_khz))


def oracle_result(profile: DeviceProfile, jobs: JobSet, duration_s: float) -> PolicyResult:
    from edgesched_sim.oracle import OracleJob, energy_floor

    works = [MODELS[m].work for m in jobs.model]
    floor = energy_floor(profile, [OracleJob(float(r), float(d), w) for r, d, w in
                                   zip(jobs.release_s, jobs.deadline_s, works, strict=False)], duration_s)
    top_ms = np.array([profile.min_latency_ms(w) for w in works])
    window_ms = (jobs.deadline_s - jobs.release_s) * 1000.0
    infeasible = top_ms > window_ms
    by_prio = {str(p): float(infeasible[jobs.priority == p].mean())
               for p in sorted(set(jobs.priority.tolist()))}
    n = len(jobs)
    bound_ms = np.maximum(window_ms, top_ms)
    return PolicyResult(
        policy="oracle", energy_j=floor.energy_j, inferences=n,
        energy_per_inference_j=floor.energy_j / n if n else math.inf,
        deadline_miss_rate=float(infeasible.mean()) if n else 0.0, miss_rate_by_priority=by_prio,
        p99_latency_ms=float(np.percentile(bound_ms, 99)) if n else math.inf,
        board_floor_j=profile.board_floor_uw * duration_s * 1e-6)


PolicyFactory = Callable[[str, DeviceProfile], Policy]


def resolve_policy(spec: str, profile: DeviceProfile) -> Policy:
    """A runnable policy for ``spec`` (everything but ``oracle``)."""
    from edgesched.policy.registry import make_policy

    if spec == "qlearn" or spec.startswith("qlearn:"):
        from edgesched_sim.qlearn import qlearn_policy

        return qlearn_policy(spec, profile)
    return make_policy(spec)


def evaluate(device: str | DeviceProfile, scenario: str | Scenario, policies: Sequence[str],
             seed: int = 0, duration_s: float | None = None,
             queue: QueueConfig | None = None) -> dict[str, Any]:
    """Run every policy on the same job set; returns the ``edgesched eval`` JSON document."""
    return run_policies(device, scenario, {}, policies, seed, duration_s, queue)


def run_policies(device: str | DeviceProfile, scenario: str | Scenario,
                 objects: Mapping[str, Policy], specs: Sequence[str], seed: int = 0,
                 duration_s: float | None = None,
                 queue: QueueConfig | None = None) -> dict[str, Any]:
    """Like :func:`evaluate`, with ready policy objects (named by their keys) run first."""
    profile = device if isinstance(device, DeviceProfile) else load_profile(device)
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    dur = sc.duration_s if duration_s is None else float(duration_s)
    jobs = generate(sc, seed, dur)
    results: list[PolicyResult] = []
    engine = Engine(profile, jobs, dur, queue)
    for name, policy in objects.items():
        results.append(summarise(name, jobs, engine.run(policy, seed)))
    for spec in specs:
        if spec == "oracle":
            results.append(oracle_result(profile, jobs, dur))
            continue
        stats = engine.run(resolve_policy(spec, profile), seed)
        results.append(summarise(spec, jobs, stats))
    return {"device": profile.name, "scenario": sc.name, "seed": seed, "duration_s": dur,
            "jobs": len(jobs), "results": [r.to_json() for r in results],
            "board_floor_j": profile.board_floor_uw * dur * 1e-6}


def format_table(doc: dict[str, Any]) -> str:
    head = (f"{doc['device']} / {doc['scenario']} / seed {doc['seed']}: {doc['jobs']} requests "
            f"over {doc['duration_s']:g} s (board floor {doc['board_floor_j']:.1f} J, not included)")
    prios = sorted({p for r in doc["results"] for p in r["miss_rate_by_priority"]})
    cols = ["policy", "energy J", "inferences", "mJ/inference", "miss %"] + [
        f"miss p{p} %" for p in prios] + ["p99 ms"]
    rows = [cols]
    for r in doc["results"]:
        rows.append([r["policy"], f"{r['energy_j']:.3f}", str(r["inferences"]),
                     f"{r['energy_per_inference_j'] * 1000:.2f}",
                     f"{r['deadline_miss_rate'] * 100:.2f}"]
                    + [f"{r['miss_rate_by_priority'].get(p, 0.0) * 100:.2f}" for p in prios]
                    + [f"{r['p99_latency_ms']:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [head] + ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                                enumerate(zip(row, widths, strict=False))) for row in rows]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out: str) -> None:
    """Energy per inference against deadline-miss rate, one point per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in doc["results"]:
        x = r["deadline_miss_rate"] * 100
        y = r["energy_per_inference_j"] * 1000
        ax.scatter([x], [y], s=40)
        ax.annotate(r["policy"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("deadline-miss rate (%)")
    ax.set_ylabel("energy per inference (mJ)")
    ax.set_title(f"{doc['device']} / {doc['scenario']} / seed {doc['seed']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
