"""An honest measuring stick: feasibility of a job set, an oracle row that says what it bounds,
one denominator for every row, per-row floors, iso-QoS verdicts and the Pareto plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesched.device import load_profile
from edgesched_sim.engine import Engine, Outcome
from edgesched_sim.evaluate import (
    dominates,
    evaluate,
    feasibility,
    gap_closed,
    iso_qos,
    oracle_result,
    service_s,
    summarise,
)
from edgesched_sim.oracle import OracleJob, demand_test, energy_floor
from edgesched_sim.report import evaluate_policy, iso_qos_summary
from edgesched_sim.scenarios import JobSet, generate, load_scenario
from edgesched_sim.workloads import MODELS

MOBILENET = MODELS["mobilenet_v1"].work


def _jobs(release_s: list[float], deadline_s: list[float], model: str = "mobilenet_v1",
          priority: list[int] | None = None) -> JobSet:
    n = len(release_s)
    return JobSet(release_s=np.array(release_s, dtype=float), model=(model,) * n,
                  priority=np.array(priority or [2] * n), deadline_s=np.array(deadline_s))


# --------------------------------------------------------------------------------- feasibility

def test_memory_bound_time_decides_feasibility() -> None:
    rk = load_profile("rk3399")
    top_s = rk.min_latency_ms(MOBILENET) / 1000.0  # 112 ms: 57 ms compute + 55 ms memory
    compute_s = MOBILENET.compute_mcycles / rk.max_speed_mhz
    assert top_s == pytest.approx(0.112, abs=1e-3) and compute_s < top_s / 1.9
    # two MobileNets released together, due together: compute alone fits 0.2 s, service does not
    tight = _jobs([0.0, 0.0], [0.2, 0.2])
    loose = _jobs([0.0, 0.0], [0.25, 0.25])
    no_mem = demand_test(tight.release_s, tight.deadline_s, np.full(2, compute_s))
    assert no_mem.feasible  # what a compute-only view (the old oracle's) concludes
    floor = energy_floor(rk, [OracleJob(0.0, 0.2, MOBILENET)] * 2, 1.0)
    assert floor.infeasible_jobs == 0
    d = feasibility(rk, tight)
    assert not d.feasible
    assert d.max_load == pytest.approx(2 * top_s / 0.2)
    assert d.min_misses == 1
    ok = feasibility(rk, loose)
    assert ok.feasible and ok.min_misses == 0 and ok.max_load == pytest.approx(2 * top_s / 0.25)


def test_demand_test_windows_and_lower_bound() -> None:
    # windows [r_i, d_j] that are not any single job's window decide it
    rel = np.array([0.0, 0.1, 0.2])
    dl = np.array([1.0, 0.5, 0.6])
    assert demand_test(rel, dl, np.array([0.4, 0.25, 0.25])).feasible
    d = demand_test(rel, dl, np.array([0.4, 0.25, 0.26]))  # [0.1, 0.6] holds 0.51 s
    assert not d.feasible and d.max_excess_s == pytest.approx(0.01) and d.min_misses == 1
    # a job alone in too short a window counts apart from the crowded window
    d = demand_test(np.array([0.0, 0.0, 0.0, 5.0]), np.array([1.0, 1.0, 1.0, 5.1]),
                    np.array([0.5, 0.5, 0.5, 0.2]))
    assert d.min_misses == 2
    # two overloaded bursts apart: their bounds add up
    d = demand_test(np.array([0.0, 0.0, 3.0, 3.0]), np.array([1.0, 1.0, 4.0, 4.0]),
                    np.full(4, 0.6))
    assert d.min_misses == 2 and d.max_load == pytest.approx(1.2)
    # jobs without a deadline constrain nothing; empty sets are feasible
    assert demand_test(np.array([0.0]), np.array([math.inf]), np.array([9.0])).feasible
    assert demand_test(np.array([]), np.array([]), np.array([])).feasible
    with pytest.raises(ValueError, match="same length"):
        demand_test(np.array([0.0]), np.array([1.0, 2.0]), np.array([0.1]))


def test_demand_lower_bound_is_never_above_what_a_policy_misses() -> None:
    for seed in (12, 1000, 1002):
        doc = evaluate("rk3399", "bursty", ["performance", "oracle"], seed=seed, duration_s=20.0)
        perf, oracle = doc["results"]
        assert sum(oracle["misses_by_priority"].values()) <= sum(perf["misses_by_priority"].values())
        assert oracle["deadline_miss_rate"] <= perf["deadline_miss_rate"]


def test_demand_test_is_fast_for_thousands_of_requests() -> None:
    rk = load_profile("rk3399")
    jobs = generate(load_scenario("steady-heavy"), 5, 200.0)
    assert len(jobs) > 3000
    d = feasibility(rk, jobs)  # about n^2/2 window sums; would take minutes in pure Python
    assert d.max_load > 0.0


# --------------------------------------------------------------------------------- the oracle row

def test_cli_says_infeasible_and_oracle_claims_no_zero_misses(tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesched", "eval", "--device", "rk3399", "--scenario", "bursty",
         "--duration-s", "10", "--seed", "12", "--policy", "performance", "--policy", "oracle",
         "--json", str(out)], capture_output=True, text=True, check=True)
    assert "feasible: NO" in proc.stdout and "oracle (no floor)" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["feasible"] is False and doc["demand"]["max_load"] > 1.0
    oracle = doc["results"][1]
    assert oracle["is_floor"] is False and oracle["misses_lower_bound"] is True
    assert oracle["deadline_miss_rate"] > 0.0
    assert oracle["vs_oracle"] is None and oracle["floor_j"] is None
    assert oracle["energy_per_served_j"] is None


def test_feasible_oracle_row_is_a_floor_with_the_same_denominators() -> None:
    doc = evaluate("rk3399", "mixed-priority", ["performance", "oracle"], seed=1, duration_s=20.0)
    assert doc["feasible"] is True
    perf, oracle = doc["results"]
    assert oracle["is_floor"] is True and oracle["deadline_miss_rate"] == 0.0
    assert oracle["served"] == oracle["received"] == doc["jobs"]
    assert oracle["energy_per_served_j"] == pytest.approx(oracle["energy_j"] / doc["jobs"])
    assert oracle["vs_oracle"] == 1.0 and oracle["floor_j"] == oracle["energy_j"]
    # policies: served counts requests answered in time, received every request
    assert perf["energy_per_served_j"] == pytest.approx(perf["energy_j"] / perf["served"])
    assert perf["energy_per_received_j"] == pytest.approx(perf["energy_j"] / doc["jobs"])
    assert perf["energy_per_inference_j"] == perf["energy_per_served_j"]


def test_infeasible_oracle_counts_unservable_requests_by_class() -> None:
    rk = load_profile("rk3399")
    # three MobileNets of class 1 due in 0.25 s (two fit), one of class 3 with room to spare
    jobs = _jobs([0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 5.0], priority=[1, 1, 1, 3])
    row = oracle_result(rk, jobs, 5.0)
    assert row.is_floor is False and row.misses_lower_bound
    assert row.misses_by_priority == {"1": 1, "3": 0}
    assert row.deadline_miss_rate == pytest.approx(0.25)
    assert row.served == 3 and row.energy_per_served_j is None


# --------------------------------------------------------------------------------- vs_oracle

def test_no_vs_oracle_without_an_oracle() -> None:
    doc = evaluate("rk3399", "steady-light", ["performance", "schedutil"], seed=2, duration_s=5.0)
    assert all(r["vs_oracle"] is None and r["floor_j"] is None for r in doc["results"])
    rep = evaluate_policy("performance", ["rk3399"], scenarios=("steady-light",), seeds=(2,),
                          baselines=("schedutil",), duration_s=5.0)
    summary = rep["devices"]["rk3399"]["summary"]
    assert summary["learned"]["vs_oracle"] is None and summary["schedutil"]["vs_oracle"] is None
    assert summary["schedutil"]["vs_schedutil"] == 1.0
    assert rep["devices"]["rk3399"]["iso_qos"]["steady-light"]["learned"]["gap_closed"] is None


def test_report_is_feasible_only_when_every_job_set_is() -> None:
    rep = evaluate_policy("performance", ["rk3399"], scenarios=("mixed-priority", "bursty"),
                          seeds=(12,), baselines=("schedutil", "oracle"), duration_s=10.0)
    dev = rep["devices"]["rk3399"]
    assert [r["feasible"] for r in dev["runs"]] == [True, False]
    assert rep["feasible"] is False and dev["feasible_sets"] == [1, 2]
    # the oracle's summary is over the feasible set only; the others over both
    assert dev["summary"]["oracle"]["job_sets"] == 1 and dev["summary"]["learned"]["job_sets"] == 2
    assert dev["iso_qos"]["bursty"]["learned"]["gap_closed"] is None


# --------------------------------------------------------------------------------- floors per row

SETS = [("rk3399", "steady-heavy", 1000), ("rk3399", "bursty", 1001),
        ("exynos5422", "bursty", 1001), ("exynos5422", "mixed-priority", 1002),
        ("bcm2711", "steady-heavy", 1000), ("bcm2711", "bursty", 1001)]


@pytest.mark.parametrize(("device", "scenario", "seed"), SETS)
def test_no_row_beats_its_floor(device: str, scenario: str, seed: int) -> None:
    doc = evaluate(device, scenario, ["performance", "powersave", "ondemand", "conservative",
                                      "schedutil", "oracle"], seed=seed, duration_s=30.0)
    rows = {r["policy"]: r for r in doc["results"]}
    oracle = rows.pop("oracle")
    for name, r in rows.items():
        assert r["floor_j"] <= r["energy_j"], name
        assert r["vs_oracle"] == pytest.approx(r["energy_j"] / r["floor_j"])
        if doc["feasible"]:
            # the floor of a subset is at most the floor of the whole set
            assert r["floor_j"] <= oracle["energy_j"] * (1 + 1e-12), name
            if r["served"] == doc["jobs"]:
                assert oracle["energy_j"] <= r["energy_j"], name


def test_a_dropping_policy_can_go_below_the_oracle_but_not_below_its_own_floor() -> None:
    # bcm2711 steady-heavy is feasible, yet powersave drops a third of the requests and spends
    # less than serving all of them could: the reason every row carries its own floor
    doc = evaluate("bcm2711", "steady-heavy", ["powersave", "oracle"], seed=1000, duration_s=30.0)
    ps, oracle = doc["results"]
    assert doc["feasible"] and ps["deadline_miss_rate"] > 0.2
    assert ps["energy_j"] < oracle["energy_j"]
    assert ps["floor_j"] <= ps["energy_j"]


# --------------------------------------------------------------------------------- runs_by_cluster

@pytest.mark.parametrize("spec", ["performance", "powersave", "learned:policies/rk3399.npz"])
def test_runs_by_cluster_is_the_share_of_requests_that_ran(spec: str) -> None:
    rk = load_profile("rk3399")
    doc = evaluate(rk, "mixed-priority", [spec], seed=4, duration_s=10.0, guard=False)
    row = doc["results"][0]
    shares = row["runs_by_cluster"]
    assert len(shares) == len(rk.clusters) and doc["clusters"] == [c.name for c in rk.clusters]
    assert sum(shares) == pytest.approx(1.0)
    # the same run again, counted by hand from its per-request clusters
    from edgesched_sim.evaluate import resolve_policy

    jobs = generate(load_scenario("mixed-priority"), 4, 10.0)
    stats = Engine(rk, jobs, 10.0).run(resolve_policy(spec, rk), 4)
    ran = (stats.outcome == Outcome.OK) | (stats.outcome == Outcome.LATE)
    assert shares == pytest.approx([float(np.mean(stats.cluster[ran] == c))
                                    for c in range(len(rk.clusters))])


def test_runs_by_cluster_counts_late_requests_and_not_dropped_ones() -> None:
    from edgesched.policy.registry import make_policy

    rk = load_profile("rk3399")
    jobs = generate(load_scenario("bursty"), 12, 10.0)
    stats = Engine(rk, jobs, 10.0).run(make_policy("powersave"), 12)
    stats.cluster[:] = -1
    ran = np.flatnonzero((stats.outcome == Outcome.OK) | (stats.outcome == Outcome.LATE))
    assert (stats.outcome == Outcome.EXPIRED).any() and (stats.outcome == Outcome.LATE).any()
    stats.cluster[ran[: len(ran) // 4]] = 0
    stats.cluster[ran[len(ran) // 4:]] = 1
    row = summarise("x", jobs, stats, rk)
    assert row.runs_by_cluster == pytest.approx([(len(ran) // 4) / len(ran),
                                                 1 - (len(ran) // 4) / len(ran)])
    assert row.inferences == len(ran) and row.served == int((stats.outcome == Outcome.OK).sum())


# --------------------------------------------------------------------------------- iso-QoS

def _row(name: str, energy_j: float, misses: dict[str, float], received: int = 100) -> dict[str, Any]:
    return {"policy": name, "energy_j": energy_j, "miss_rate_by_priority": misses,
            "misses_by_priority": {k: round(v * received) for k, v in misses.items()},
            "received": received}


def test_domination_verdicts_on_hand_made_rows() -> None:
    ref = _row("schedutil", 10.0, {"1": 0.01, "2": 0.05})
    assert dominates(_row("a", 9.0, {"1": 0.01, "2": 0.04}), ref)
    assert dominates(_row("a", 9.0, {"1": 0.0, "2": 0.05}), ref)  # equal misses are no higher
    assert not dominates(_row("b", 9.0, {"1": 0.02, "2": 0.0}), ref)  # worse in one class
    assert not dominates(_row("c", 10.0, {"1": 0.0, "2": 0.0}), ref)  # energy not lower
    assert not dominates(_row("d", 5.0, {"1": 0.0, "2": 0.0, "3": 0.01}), ref)  # a class ref lacks
    assert not dominates({**_row("oracle", 1.0, {"1": 0.0}), "misses_lower_bound": True}, ref)
    assert gap_closed(8.0, 10.0, 6.0) == pytest.approx(0.5)
    assert gap_closed(11.0, 10.0, 6.0) == pytest.approx(-0.25)
    assert gap_closed(8.0, 6.0, 6.0) is None
    rows = [ref, _row("a", 8.0, {"1": 0.0, "2": 0.05}), _row("oracle", 6.0, {"1": 0.0, "2": 0.0})]
    verdict = iso_qos(rows, feasible=True)
    assert verdict == {"reference": "schedutil",
                       "rows": {"a": {"dominates": True, "gap_closed": pytest.approx(0.5)}}}
    assert iso_qos(rows, feasible=False)["rows"]["a"]["gap_closed"] is None  # type: ignore[index]
    assert iso_qos(rows[1:], feasible=True) is None


def test_iso_qos_summary_sums_over_seeds_and_uses_feasible_sets_only() -> None:
    def run(feasible: bool, sched: float, a: float, a_miss: float, floor: float) -> dict[str, Any]:
        return {"scenario": "s", "feasible": feasible,
                "results": [_row("schedutil", sched, {"1": 0.02}), _row("a", a, {"1": a_miss}),
                            _row("oracle", floor, {"1": 0.0})]}

    # seed 1: a saves 2 J at equal misses; seed 2 (infeasible): a saves 1 J but misses more
    out = iso_qos_summary([run(True, 10.0, 8.0, 0.02, 6.0), run(False, 10.0, 9.0, 0.03, 7.0)])
    assert out is not None
    a = out["s"]["a"]
    assert a["energy_j"] == 17.0 and a["misses_by_priority"] == {"1": 5}
    assert a["dominates"] is False  # 5 misses against schedutil's 4 over both seeds
    assert a["gap_closed"] == pytest.approx(0.5) and a["feasible_sets"] == 1
    assert out["s"]["schedutil"]["dominates"] is False


# --------------------------------------------------------------------------------- the plot

def test_pareto_plot_per_class_from_zero(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgesched_sim.evaluate import pareto_axes, plot

    fig, axes = plt.subplots(1, 2)
    points = [("a", 5.0, {"1": 0.1, "2": 0.0}), ("b", 3.0, {"1": 0.2, "2": 0.3}),
              ("c", 6.0, {"1": 0.3, "2": 0.3})]
    pareto_axes(list(axes), points, ["1", "2"], "J")
    for ax in axes:
        assert ax.get_xlim()[0] == 0.0 and ax.get_ylim()[0] == 0.0
        assert not ax.texts  # names go to a legend, never onto overlapping annotations
    # class 1: a and b are on the front, c is beaten by both
    front = axes[0].lines[0].get_xydata()
    assert [tuple(p) for p in front] == [(pytest.approx(10.0), 5.0), (pytest.approx(20.0), 3.0)]
    plt.close(fig)
    doc = evaluate("rk3399", "mixed-priority", ["performance", "oracle"], seed=1, duration_s=5.0)
    plot(doc, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_service_times_include_memory_time() -> None:
    rk = load_profile("rk3399")
    jobs = _jobs([0.0], [1.0])
    assert service_s(rk, jobs)[0] == pytest.approx(rk.latency_ms(MOBILENET, rk.fastest_cluster,
                                                                 len(rk.clusters[rk.fastest_cluster]
                                                                     .opps) - 1) / 1000.0)


def test_report_plot_and_document(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from edgesched_sim.report import plot_report

    rep = evaluate_policy("powersave", ["rk3399", "bcm2711"], scenarios=("mixed-priority",),
                          seeds=(3,), baselines=("schedutil", "performance", "oracle"),
                          duration_s=5.0)
    plot_report(rep, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    for dev in ("rk3399", "bcm2711"):
        d = rep["devices"][dev]
        assert set(d["summary"]) == {"learned", "schedutil", "performance", "oracle"}
        iso = d["iso_qos"]["mixed-priority"]
        assert set(iso) == {"learned", "schedutil", "performance"}
        assert {"dominates", "gap_closed", "energy_j", "misses_by_priority"} <= set(iso["learned"])
        assert sum(d["summary"]["performance"]["runs_by_cluster"]) == pytest.approx(1.0)
    json.dumps(rep)
