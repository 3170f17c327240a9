"""``edgesched eval``: run policies on the identical job set and compare them with the floor.

Figures per policy (``energy_j`` excludes the board floor, which no policy changes):

- ``energy_j``: cluster energy over the run (idle + busy + transitions);
- ``inferences``: requests that ran (in time or late); ``served``: requests answered in time;
- ``energy_per_served_j`` = energy_j / served and ``energy_per_received_j`` = energy_j / all
  requests: one denominator rule for every row, the oracle's included;
  ``energy_per_inference_j`` is the same number as ``energy_per_served_j`` (older readers);
- ``runs_by_cluster``: share of the requests that ran on each cluster, in profile order (sums
  to 1 when any ran; ``None`` for the oracle, which is a relaxation and borrows any cluster);
- ``deadline_miss_rate``: requests not answered in time (late, expired in the queue, shed or
  rejected) over all requests; ``miss_rate_by_priority`` and ``misses_by_priority`` (counts)
  per class;
- ``p99_latency_ms``: 99th percentile of completion - arrival over the requests that ran;
- ``mean_busy_khz``: time-weighted mean frequency while running requests (0 for the oracle);
- ``floor_j``: with ``oracle`` among the policies, the energy floor (:func:`energy_floor`) of
  exactly the requests this row served in time, a bound its own schedule provably respects
  (``energy_j >= floor_j`` always), and ``vs_oracle = energy_j / floor_j``; both ``None``
  without an oracle.

The document carries ``feasible`` and ``demand`` (:func:`~edgesched_sim.oracle.demand_test`:
whether any schedule can serve every request, memory-bound time at the top speed included).

The ``oracle`` row is the Yao-Demers-Shenker floor (:mod:`edgesched_sim.oracle`) for all the
requests with their deadlines. On a feasible set it is a floor for every schedule that serves
every request in time (``is_floor: true``, 0 misses, ``p99_latency_ms`` the deadline bound). On
an infeasible set no schedule serves every request: the row says ``is_floor: false``, its
energy bounds nothing, its ``vs_oracle`` and per-served figures are ``None``, and its miss
columns are a proven lower bound on the requests no schedule can serve
(``misses_lower_bound: true``; per class, each class's own bound, and overall the larger of the
overall bound and their sum).

Miss budgets (``miss_budget``: the scenario's, :mod:`edgesched.qos`): every row carries
``within_budget``, per class whether its miss rate stayed at or below the class's budget. The
learned policies and ``slack`` run behind the run-time guard (:class:`edgesched.qos.QosGuard`)
with those budgets unless ``guard=False``; ``guarded`` lists the rows that did. The kernel
baselines are never guarded.

JSON has no infinity or NaN: a figure with no finite value (energy per request served when
none was, a p99 latency when nothing ran, an unbounded demand) is written as ``null``
(:func:`json_safe`, :func:`dumps_json`); in memory it stays the float.

Iso-QoS (``iso_qos``, when ``schedutil`` ran): per row whether it dominates schedutil (energy
lower, misses no higher in every class) and, on a feasible set with an oracle, the share of the
schedutil-to-floor energy gap it closes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesched.device import DeviceProfile, load_profile
from edgesched.observation import check_policy_board
from edgesched.policy.base import Policy
from edgesched.qos import MissBudget, QosGuard, guardable
from edgesched_sim.engine import MISSED, Engine, Outcome, QueueConfig, RunStats
from edgesched_sim.oracle import Demand, OracleJob, demand_test, energy_floor
from edgesched_sim.scenarios import JobSet, Scenario, generate, load_scenario
from edgesched_sim.workloads import MODELS

REFERENCE = "schedutil"
"""The baseline the iso-QoS figures compare with."""


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    energy_j: float
    inferences: int
    energy_per_inference_j: float | None
    deadline_miss_rate: float
    miss_rate_by_priority: dict[str, float]
    p99_latency_ms: float
    board_floor_j: float = 0.0
    mean_busy_khz: float = 0.0
    served: int = 0
    received: int = 0
    energy_per_served_j: float | None = None
    energy_per_received_j: float | None = None
    runs_by_cluster: list[float] | None = None
    misses_by_priority: dict[str, int] = field(default_factory=dict)
    floor_j: float | None = None
    vs_oracle: float | None = None
    is_floor: bool | None = None
    """Only for the oracle row: whether its energy is a floor for this job set."""
    misses_lower_bound: bool = False
    """The miss columns are a lower bound (the oracle row on an infeasible set)."""
    throttled_s: float | None = None
    """Time the thermal throttling capped a cluster (None: no heat model, or the oracle)."""
    peak_temp_c: float | None = None
    """Highest thermal-zone temperature of the run (None: no heat model, or the oracle)."""

    def to_json(self) -> dict[str, Any]:
        doc = {
            "policy": self.policy, "energy_j": self.energy_j, "inferences": self.inferences,
            "served": self.served, "received": self.received,
            "energy_per_inference_j": self.energy_per_inference_j,
            "energy_per_served_j": self.energy_per_served_j,
            "energy_per_received_j": self.energy_per_received_j,
            "runs_by_cluster": self.runs_by_cluster,
            "deadline_miss_rate": self.deadline_miss_rate,
            "miss_rate_by_priority": self.miss_rate_by_priority,
            "misses_by_priority": self.misses_by_priority,
            "p99_latency_ms": self.p99_latency_ms,
            "mean_busy_khz": self.mean_busy_khz,
            "floor_j": self.floor_j, "vs_oracle": self.vs_oracle,
            "throttled_s": self.throttled_s, "peak_temp_c": self.peak_temp_c,
        }
        if self.is_floor is not None:
            doc["is_floor"] = self.is_floor
            doc["misses_lower_bound"] = self.misses_lower_bound
        return doc


def _per(energy_j: float, count: int) -> float:
    return energy_j / count if count else math.inf


def _oracle_jobs(jobs: JobSet, keep: np.ndarray | None = None) -> list[OracleJob]:
    idx = range(len(jobs)) if keep is None else np.flatnonzero(keep).tolist()
    return [OracleJob(float(jobs.release_s[i]), float(jobs.deadline_s[i]), MODELS[jobs.model[i]].work)
            for i in idx]


def service_s(profile: DeviceProfile, jobs: JobSet) -> np.ndarray:
    """Each request's service time (s) at the board's top speed, memory-bound time included."""
    top_ms = {m: profile.min_latency_ms(MODELS[m].work) for m in set(jobs.model)}
    return np.array([top_ms[m] for m in jobs.model], dtype=float) / 1000.0


def feasibility(profile: DeviceProfile, jobs: JobSet) -> Demand:
    """The processor-demand test of ``jobs`` on ``profile`` (see :func:`demand_test`)."""
    return demand_test(jobs.release_s, jobs.deadline_s, service_s(profile, jobs))


def summarise(name: str, jobs: JobSet, stats: RunStats, profile: DeviceProfile | None = None,
              floor: bool = False, duration_s: float | None = None,
              coldest_c: float | None = None) -> PolicyResult:
    """One policy's row; with ``floor`` (needs ``profile`` and ``duration_s``) its own floor
    (``coldest_c``: :func:`energy_floor`'s)."""
    outcome = stats.outcome
    ran = (outcome == Outcome.OK) | (outcome == Outcome.LATE)
    ok = outcome == Outcome.OK
    missed = np.isin(outcome, [int(o) for o in MISSED])
    n = len(jobs)
    by_prio: dict[str, float] = {}
    counts: dict[str, int] = {}
    for p in sorted(set(jobs.priority.tolist())):
        sel = jobs.priority == p
        by_prio[str(p)] = float(missed[sel].mean()) if sel.any() else 0.0
        counts[str(p)] = int(missed[sel].sum())
    lat_ms = (stats.finish_s[ran] - jobs.release_s[ran]) * 1000.0
    inferences = int(ran.sum())
    served = int(ok.sum())
    energy = float(stats.total_energy_j)
    n_clusters = len(profile.clusters) if profile is not None else int(stats.cluster.max()) + 1
    runs = np.bincount(stats.cluster[ran].astype(np.int64), minlength=max(n_clusters, 0))
    floor_j = vs = None
    if floor:
        if profile is None or duration_s is None:
            raise ValueError("summarise(floor=True) needs the profile and duration_s")
        floor_j = energy_floor(profile, _oracle_jobs(jobs, ok), duration_s, coldest_c).energy_j
        vs = energy / floor_j if floor_j > 0 else None
    return PolicyResult(
        policy=name, energy_j=energy, inferences=inferences,
        energy_per_inference_j=_per(energy, served),
        deadline_miss_rate=float(missed.mean()) if n else 0.0, miss_rate_by_priority=by_prio,
        p99_latency_ms=float(np.percentile(lat_ms, 99)) if inferences else math.inf,
        board_floor_j=float(stats.board_floor_j), mean_busy_khz=float(stats.mean_busy_khz),
        served=served, received=n, energy_per_served_j=_per(energy, served),
        energy_per_received_j=_per(energy, n),
        runs_by_cluster=[float(x) / inferences for x in runs] if inferences else
        [0.0] * n_clusters,
        misses_by_priority=counts, floor_j=floor_j, vs_oracle=vs,
        throttled_s=None if math.isnan(stats.peak_temp_c) else float(stats.throttled_s),
        peak_temp_c=None if math.isnan(stats.peak_temp_c) else float(stats.peak_temp_c))


def _class_bounds(profile: DeviceProfile, jobs: JobSet, demand: Demand) -> tuple[int, dict[str, int]]:
    """Proven lower bounds on misses, overall and per class (each class tested on its own)."""
    p_s = service_s(profile, jobs)
    by_class: dict[str, int] = {}
    for p in sorted(set(jobs.priority.tolist())):
        sel = jobs.priority == p
        by_class[str(p)] = demand_test(jobs.release_s[sel], jobs.deadline_s[sel], p_s[sel]).min_misses
    return max(demand.min_misses, sum(by_class.values())), by_class


def oracle_result(profile: DeviceProfile, jobs: JobSet, duration_s: float,
                  demand: Demand | None = None, coldest_c: float | None = None) -> PolicyResult:
    """The oracle row: the floor of all requests, or, on an infeasible set, no floor (see the
    module notes; ``coldest_c``: :func:`energy_floor`'s)."""
    demand = feasibility(profile, jobs) if demand is None else demand
    floor = energy_floor(profile, _oracle_jobs(jobs), duration_s, coldest_c)
    n = len(jobs)
    prios = sorted(set(jobs.priority.tolist()))
    sizes = {str(p): int((jobs.priority == p).sum()) for p in prios}
    if demand.feasible:
        misses, by_class = 0, {str(p): 0 for p in prios}
    else:
        misses, by_class = _class_bounds(profile, jobs, demand)
    window_ms = (jobs.deadline_s - jobs.release_s) * 1000.0
    bound_ms = np.maximum(window_ms, service_s(profile, jobs) * 1000.0)
    e = floor.energy_j
    ok = demand.feasible
    return PolicyResult(
        policy="oracle", energy_j=e, inferences=n - misses,
        energy_per_inference_j=_per(e, n) if ok else None,
        deadline_miss_rate=misses / n if n else 0.0,
        miss_rate_by_priority={k: by_class[k] / sizes[k] for k in by_class},
        p99_latency_ms=float(np.percentile(bound_ms, 99)) if n else math.inf,
        board_floor_j=profile.board_floor_uw * duration_s * 1e-6,
        served=n - misses, received=n,
        energy_per_served_j=_per(e, n) if ok else None,
        energy_per_received_j=_per(e, n) if ok else None,
        runs_by_cluster=None, misses_by_priority=by_class,
        floor_j=e if ok else None, vs_oracle=1.0 if ok else None,
        is_floor=ok, misses_lower_bound=not ok)


def dominates(row: Mapping[str, Any], ref: Mapping[str, Any]) -> bool:
    """Whether ``row`` dominates ``ref`` at iso-QoS: less energy, misses no higher in any class.

    Rows are result dicts of the same job set (``energy_j``, ``miss_rate_by_priority``); a row
    whose misses are only a lower bound (the oracle on an infeasible set) dominates nothing.
    """
    if row.get("misses_lower_bound"):
        return False
    mine, theirs = row["miss_rate_by_priority"], ref["miss_rate_by_priority"]
    classes = set(mine) | set(theirs)
    return bool(row["energy_j"] < ref["energy_j"]
                and all(mine.get(c, 0.0) <= theirs.get(c, 0.0) for c in classes))


def gap_closed(energy_j: float, ref_j: float, floor_j: float) -> float | None:
    """Share of the gap from ``ref_j`` (schedutil) down to the floor that ``energy_j`` closes."""
    gap = ref_j - floor_j
    return (ref_j - energy_j) / gap if gap > 0 else None


def iso_qos(results: Sequence[Mapping[str, Any]], feasible: bool,
            reference: str = REFERENCE) -> dict[str, Any] | None:
    """Per row, dominance over ``reference`` and the share of its gap to the floor closed."""
    rows = {r["policy"]: r for r in results}
    ref = rows.get(reference)
    if ref is None:
        return None
    oracle = rows.get("oracle")
    floor_j = oracle["energy_j"] if oracle is not None and feasible else None
    out: dict[str, Any] = {}
    for name, r in rows.items():
        if name in (reference, "oracle"):
            continue
        out[name] = {"dominates": dominates(r, ref),
                     "gap_closed": gap_closed(r["energy_j"], ref["energy_j"], floor_j)
                     if floor_j is not None else None}
    return {"reference": reference, "rows": out}


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
             queue: QueueConfig | None = None, guard: bool = True) -> dict[str, Any]:
    """Run every policy on the same job set; returns the ``edgesched eval`` JSON document."""
    return run_policies(device, scenario, {}, policies, seed, duration_s, queue, guard=guard)


def budget_verdict(row: Mapping[str, Any], budget: MissBudget) -> dict[str, bool]:
    """Per class of ``row``: whether its miss rate stayed at or below the class's budget."""
    return {p: float(rate) <= budget.of(int(p)) + 1e-12
            for p, rate in row["miss_rate_by_priority"].items()}


def run_policies(device: str | DeviceProfile, scenario: str | Scenario,
                 objects: Mapping[str, Policy], specs: Sequence[str], seed: int = 0,
                 duration_s: float | None = None,
                 queue: QueueConfig | None = None, guard: bool = True) -> dict[str, Any]:
    """Like :func:`evaluate`, with ready policy objects (named by their keys) run first."""
    profile = device if isinstance(device, DeviceProfile) else load_profile(device)
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    dur = sc.duration_s if duration_s is None else float(duration_s)
    jobs = generate(sc, seed, dur)
    demand = feasibility(profile, jobs)
    floors = "oracle" in specs
    # every policy is made (a bare qlearn trained) and checked against the board before any run:
    # one that reads the observation is refused on a board with more clusters than it shows
    made = {spec: resolve_policy(spec, profile) for spec in dict.fromkeys(specs) if spec != "oracle"}
    for policy in (*objects.values(), *made.values()):
        check_policy_board(policy, profile)
    results: list[PolicyResult] = []
    thermal = (profile.thermal.with_conditions(**sc.thermal)
               if profile.thermal is not None and sc.thermal else None)
    engine = Engine(profile, jobs, dur, queue, thermal=thermal)
    # leakage that follows the heat model is never below its value at the ambient
    coldest_c = engine.thermal.ambient_c if engine.leak_heat and engine.thermal else None
    budget = sc.miss_budget
    guarded: list[str] = []

    def guard_of(name: str, policy: Policy) -> QosGuard | None:
        if not (guard and guardable(policy)):
            return None
        guarded.append(name)
        return QosGuard(budget)

    for name, policy in objects.items():
        stats = engine.run(policy, seed, guard_of(name, policy))
        results.append(summarise(name, jobs, stats, profile, floors, dur, coldest_c))
    for spec in specs:
        if spec == "oracle":
            results.append(oracle_result(profile, jobs, dur, demand, coldest_c))
            continue
        policy = made[spec]
        stats = engine.run(policy, seed, guard_of(spec, policy))
        results.append(summarise(spec, jobs, stats, profile, floors, dur, coldest_c))
    rows = [r.to_json() for r in results]
    for row in rows:
        row["within_budget"] = budget_verdict(row, budget)
    return {"device": profile.name, "scenario": sc.name, "seed": seed, "duration_s": dur,
            "jobs": len(jobs), "feasible": demand.feasible,
            "demand": {"max_load": demand.max_load, "max_excess_s": demand.max_excess_s,
                       "min_misses": demand.min_misses},
            "clusters": [c.name for c in profile.clusters], "results": rows,
            "iso_qos": iso_qos(rows, demand.feasible),
            "board_floor_j": profile.board_floor_uw * dur * 1e-6,
            "miss_budget": budget.as_dict(), "guarded": guarded}


def json_safe(doc: Any) -> Any:
    """``doc`` (dicts, lists, tuples, numbers) with every non-finite float (inf, -inf, NaN: no
    figure) replaced by ``None``, so that it can be written as JSON, which has neither."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, Mapping):
        return {k: json_safe(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [json_safe(v) for v in doc]
    return doc


def dumps_json(doc: Any, indent: int | None = 1) -> str:
    """``doc`` as JSON text, non-finite numbers as ``null`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(doc), indent=indent, allow_nan=False)


def _fmt(x: float | None, scale: float = 1.0, spec: str = ".2f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x * scale, spec)


def format_table(doc: dict[str, Any]) -> str:
    """The printed table: energy always beside the misses of every class."""
    demand = doc.get("demand", {})
    feasible = doc.get("feasible")
    verdict = ("" if feasible is None else
               f"; feasible: {'yes' if feasible else 'NO'} (peak demand "
               f"{_fmt(demand.get('max_load', 0.0))}x the top speed"
               + ("" if feasible else f", at least {demand.get('min_misses', 0)} requests "
                  "unservable") + ")")
    head = (f"{doc['device']} / {doc['scenario']} / seed {doc['seed']}: {doc['jobs']} requests "
            f"over {doc['duration_s']:g} s (board floor {doc['board_floor_j']:.1f} J, not "
            f"included){verdict}")
    prios = sorted({p for r in doc["results"] for p in r["miss_rate_by_priority"]})
    clusters = doc.get("clusters", [])
    cols = (["policy", "energy J", "served", "mJ/served", "mJ/received", "miss %"]
            + [f"miss p{p} %" for p in prios] + ["p99 ms", "floor J", "vs floor"]
            + [f"on {c} %" for c in clusters])
    heat = any(r.get("peak_temp_c") is not None for r in doc["results"])
    if heat:
        cols += ["throttled s", "peak C"]
    rows = [cols]
    for r in doc["results"]:
        low = ">=" if r.get("misses_lower_bound") else ""
        name = r["policy"] + (" (no floor)" if r.get("is_floor") is False else "")
        shares = r.get("runs_by_cluster") or [None] * len(clusters)
        rows.append([name, f"{r['energy_j']:.3f}", str(r.get("served", r["inferences"])),
                     _fmt(r.get("energy_per_served_j"), 1000),
                     _fmt(r.get("energy_per_received_j"), 1000),
                     low + f"{r['deadline_miss_rate'] * 100:.2f}"]
                    + [low + f"{r['miss_rate_by_priority'].get(p, 0.0) * 100:.2f}" for p in prios]
                    + [_fmt(r.get("p99_latency_ms"), 1, ".1f"), _fmt(r.get("floor_j"), 1, ".3f"),
                       _fmt(r.get("vs_oracle"), 1, ".3f")]
                    + [_fmt(x, 100, ".1f") for x in shares[:len(clusters)]]
                    + ([_fmt(r.get("throttled_s"), 1, ".1f"), _fmt(r.get("peak_temp_c"), 1, ".1f")]
                       if heat else []))
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [head] + ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                                enumerate(zip(row, widths, strict=False))) for row in rows]
    iso = doc.get("iso_qos")
    if iso and iso["rows"]:
        parts = []
        for name, v in iso["rows"].items():
            gap = v["gap_closed"]
            parts.append(f"{name} {'dominates' if v['dominates'] else 'does not dominate'}"
                         + ("" if gap is None else f", closes {gap * 100:.0f}% of the gap to the "
                            "floor"))
        lines.append(f"vs {iso['reference']} (energy lower, misses no higher in every class): "
                     + "; ".join(parts))
    budget = doc.get("miss_budget")
    if budget:
        over = [f"{r['policy']} (p{', p'.join(p for p, ok in r['within_budget'].items() if not ok)})"
                for r in doc["results"] if not all(r.get("within_budget", {}).values())]
        lines.append("miss budgets " + ", ".join(f"p{p} {v * 100:g}%" for p, v in budget.items())
                     + (f" (guarded: {', '.join(doc['guarded'])})" if doc.get("guarded") else "")
                     + ": " + ("every policy inside" if not over else "over budget: "
                               + "; ".join(over)))
    return "\n".join(lines)


def pareto_axes(axes: Sequence[Any], points: Sequence[tuple[str, float, Mapping[str, float]]],
                classes: Sequence[str], ylabel: str) -> None:
    """One Pareto view per class: energy against that class's miss rate, axes from zero.

    ``points`` are ``(label, energy, {class: miss rate})``. Each policy keeps one marker and
    colour in every panel and is named in a legend (labels never overlap); the policies no other
    policy beats in both energy and misses are joined by the Pareto front (the oracle, a floor
    rather than a policy, is drawn but left out of the front).
    """
    markers = "os^vD<>Pp*hX"
    for ax, cls in zip(axes, classes, strict=True):
        xy = [(label, rates.get(cls, 0.0) * 100, energy) for label, energy, rates in points]
        for k, (label, x, y) in enumerate(xy):
            ax.scatter([x], [y], s=42, marker=markers[k % len(markers)], color=f"C{k % 10}",
                       label=label, zorder=3, clip_on=False)
        pol = [(x, y) for label, x, y in xy if not label.startswith("oracle")]
        front = sorted((x, y) for x, y in pol
                       if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in pol))
        if len(front) > 1:
            ax.plot([f[0] for f in front], [f[1] for f in front], color="0.6", lw=1, zorder=2)
        xmax = max((x for _, x, _ in xy), default=0.0)
        ymax = max((y for _, _, y in xy), default=0.0)
        ax.set_xlim(0.0, xmax * 1.1 if xmax > 0 else 1.0)
        ax.set_ylim(0.0, ymax * 1.1 if ymax > 0 else 1.0)
        ax.set_xlabel(f"priority {cls} miss rate (%)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)


def plot(doc: dict[str, Any], out: str) -> None:
    """Pareto view per priority class: the run's energy against the class's miss rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prios = sorted({p for r in doc["results"] for p in r["miss_rate_by_priority"]})
    fig, axes = plt.subplots(1, len(prios), figsize=(4.2 * len(prios) + 1.8, 4.2), squeeze=False)
    points = [(r["policy"] + (" (no floor, misses >=)" if r.get("is_floor") is False else ""),
               r["energy_j"], r["miss_rate_by_priority"]) for r in doc["results"]]
    pareto_axes(list(axes[0]), points, prios, "energy over the run (J)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"{doc['device']} / {doc['scenario']} / seed {doc['seed']}"
                 + ("" if doc.get("feasible", True) else " (infeasible job set)"))
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.7 / fig.get_figwidth(), 1.0))
    fig.savefig(out, dpi=110)
    plt.close(fig)
