"""Leakage that follows the heat model's temperature, in the simulator and on the virtual board.

A copy of ``rk3399`` with ``static_temp_coeff_per_c`` = 0.03 on both clusters, in the
``hot-sustained`` scenario's conditions (35 C ambient, bare board), against the same copy with
k_T = 0 (and against the shipped profile, which must run number for number as before).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import BoardTime

from edgesched.device import DeviceProfile, load_profile, parse_profile, profile_to_dict
from edgesched.observation import Decision
from edgesched.policy.base import PerformanceBig
from edgesched.policy.registry import make_policy
from edgesched.power.backends import VirtualBoard
from edgesched.thermal import idle_temp_c
from edgesched_sim.engine import BoardTables, Engine, RunStats
from edgesched_sim.scenarios import JobSet, generate, load_scenario
from edgesched_sim.workloads import MODELS

K_T = 0.03


def rk3399_at(k_t: float) -> DeviceProfile:
    """rk3399 with leakage coefficient ``k_t`` on both clusters, in 35 C air without cooling."""
    doc = copy.deepcopy(profile_to_dict(load_profile("rk3399")))
    for c in doc["clusters"]:
        c["static_temp_coeff_per_c"] = k_t
    doc["thermal"]["ambient_c"] = 35.0
    doc["thermal"]["cooling"] = "none"
    return parse_profile(doc, f"rk3399-kt{k_t}")


def one_job() -> JobSet:
    return JobSet(release_s=np.zeros(1), model=("mobilenet_v1",),
                  priority=np.full(1, 3, dtype=np.int64), deadline_s=np.full(1, 10.0))


def fields(s: RunStats) -> tuple[object, ...]:
    return (s.outcome.tobytes(), s.finish_s.tobytes(), s.start_s.tobytes(), s.cluster.tobytes(),
            s.opp.tobytes(), s.energy_j.tobytes(), s.total_energy_j, s.idle_energy_j,
            s.transition_energy_j, s.horizon_s, s.transitions, s.busy_s, s.mean_busy_khz,
            s.throttled_s, s.peak_temp_c)


def test_one_run_is_priced_at_the_temperature_it_starts_at() -> None:
    hot_p, cold_p = rk3399_at(K_T), rk3399_at(0.0)
    hot = Engine(hot_p, one_job(), 1.0).run(PerformanceBig())
    cold = Engine(cold_p, one_job(), 1.0).run(PerformanceBig())
    # the board starts at its idle steady state: 35 C + (idle 12000 + 30000 uW + other heat
    # 800000 uW) x 19 K/W = 35 + 0.842 W x 19 K/W = 50.998 C
    assert hot_p.thermal is not None
    t_start_c = idle_temp_c(hot_p.thermal, hot_p.idle_power_uw)
    assert t_start_c == pytest.approx(50.998, abs=1e-9)
    # the big cluster's leakage at its top OPP (1.2 V) at 25 C: 180000 uW x 1.2^2 = 259200 uW;
    # at 50.998 C it is exp(0.03 x 25.998) = 2.18134 times that: 306204 uW more
    big = hot_p.clusters[1]
    top = len(big.opps) - 1
    assert big.leakage_uw(top) == pytest.approx(259_200.0)
    extra_uw = 259_200.0 * (math.exp(K_T * (50.998 - 25.0)) - 1.0)
    assert extra_uw == pytest.approx(306_204, abs=1)
    dt_s = hot_p.latency_ms(MODELS["mobilenet_v1"].work, 1, top) / 1000.0
    assert hot.energy_j[0] - cold.energy_j[0] == pytest.approx(extra_uw * dt_s * 1e-6, rel=1e-9)
    assert hot.energy_j[0] == pytest.approx(big.busy_power_uw(top, 1, t_start_c) * dt_s * 1e-6,
                                            rel=1e-12)
    # the switch to the top OPP (40 us at the static power) pays the same extra leakage
    switch_s = big.transition_latency_ns * 1e-9
    assert hot.transition_energy_j - cold.transition_energy_j == pytest.approx(
        extra_uw * switch_s * 1e-6, rel=1e-9)
    assert hot.total_energy_j - cold.total_energy_j == pytest.approx(
        extra_uw * (dt_s + switch_s) * 1e-6, rel=1e-9)
    # idle power has no temperature term; the extra leakage heats the node
    assert hot.idle_energy_j == cold.idle_energy_j
    assert hot.peak_temp_c > cold.peak_temp_c


def hot_sustained(profile: DeviceProfile, policy: str, duration_s: float = 300.0) -> RunStats:
    sc = load_scenario("hot-sustained")
    jobs = generate(sc, 5, duration_s)
    assert profile.thermal is not None
    thermal = profile.thermal.with_conditions(**sc.thermal)
    return Engine(profile, jobs, duration_s, thermal=thermal).run(make_policy(policy), 0)


@pytest.mark.parametrize("policy", ["performance", "schedutil"])
def test_a_hot_sustained_run_charges_leakage_at_the_temperatures_it_runs_at(policy: str) -> None:
    hot_p, cold_p = rk3399_at(K_T), rk3399_at(0.0)
    hot, cold = hot_sustained(hot_p, policy), hot_sustained(cold_p, policy)
    assert hot.total_energy_j > cold.total_energy_j
    assert hot.peak_temp_c > cold.peak_temp_c   # leakage heats, heat raises leakage
    assert hot.throttled_s >= cold.throttled_s  # and may cross the trip sooner
    for s in (hot, cold):  # idle power has no temperature term
        assert s.idle_energy_j == hot_p.idle_power_uw * s.horizon_s * 1e-6
    if policy == "performance":  # one OPP per run: each run's price says what it was priced at
        assert hot_p.thermal is not None
        floor_c = idle_temp_c(hot_p.thermal.with_conditions(ambient_c=35.0), hot_p.idle_power_uw)
        jobs = generate(load_scenario("hot-sustained"), 5, 300.0)
        ran = np.flatnonzero(hot.cluster >= 0)
        assert len(ran) > 100
        for i in ran:
            c, o = int(hot.cluster[i]), int(hot.opp[i])
            cl = hot_p.clusters[c]
            work = MODELS[jobs.model[i]].work
            dt_s = hot_p.latency_ms(work, c, o) / 1000.0
            leak_j = (hot.energy_j[i] / (dt_s * 1e-6) - cl.busy_power_uw(o, work.threads))
            temp_c = cl.default_temp_c + math.log1p(leak_j / cl.leakage_uw(o)) / K_T
            assert floor_c - 1e-6 <= temp_c <= hot.peak_temp_c + 1e-6


@pytest.mark.parametrize("policy", ["performance", "schedutil", "slack"])
def test_without_a_temperature_term_runs_are_number_for_number_the_shipped_profiles(
        policy: str) -> None:
    shipped = load_profile("rk3399")
    assert all(c.static_temp_coeff_per_c == 0.0 for c in shipped.clusters)
    copy_p = parse_profile(profile_to_dict(shipped), "rk3399-copy")
    assert fields(hot_sustained(copy_p, policy, 120.0)) == fields(
        hot_sustained(shipped, policy, 120.0))


def test_tables_priced_at_another_temperature_still_follow_the_heat() -> None:
    prof = rk3399_at(K_T)
    sc = load_scenario("hot-sustained")
    jobs = generate(sc, 1, 60.0)
    assert prof.thermal is not None
    thermal = prof.thermal.with_conditions(**sc.thermal)
    plain = Engine(prof, jobs, 60.0, thermal=thermal).run(make_policy("schedutil"), 0)
    at_45 = BoardTables(prof, jobs.model, temp_c=45.0)
    other = Engine(prof, jobs, 60.0, tables=at_45, thermal=thermal).run(make_policy("schedutil"), 0)
    assert other.total_energy_j == pytest.approx(plain.total_energy_j, rel=1e-9)
    assert other.peak_temp_c == pytest.approx(plain.peak_temp_c, rel=1e-9)
    assert np.array_equal(other.opp, plain.opp)




def virtual_runs(profile: DeviceProfile, tmp_path: Path, runs: int) -> tuple[list[float], float]:
    """Energy per emulated second of ``runs`` back-to-back runs on the big cluster's top OPP, and
    the zone's temperature after them."""
    clock = BoardTime()
    board = VirtualBoard(profile, runtime_dir=tmp_path, clock=clock, sleep=clock.sleep,
                         slowdown=1000.0)
    try:
        big = profile.fastest_cluster
        decision = Decision(big, len(profile.clusters[big].opps) - 1)
        board.apply(decision)  # the switch's time is waited out, not priced
        per_s = []
        for _ in range(runs):
            started = clock()
            cost = board.settle(decision, 0.002, started)
            per_s.append(cost.energy_j / board.emulated_s(decision.cluster, decision.opp, 0.002))
        assert board.heat is not None
        return per_s, board.heat.temp_c
    finally:
        board.close()


def test_the_virtual_board_prices_each_run_at_the_temperature_it_starts_at(tmp_path: Path) -> None:
    hot_p, cold_p = rk3399_at(K_T), rk3399_at(0.0)
    hot, hot_end_c = virtual_runs(hot_p, tmp_path / "hot", 5)
    cold, cold_end_c = virtual_runs(cold_p, tmp_path / "cold", 5)
    big = hot_p.clusters[1]
    top = len(big.opps) - 1
    # the first run starts at the idle steady state, 50.998 C (see above): its busy power is
    # 306204 uW above the k_T = 0 board's
    extra_uw = 259_200.0 * (math.exp(K_T * (50.998 - 25.0)) - 1.0)
    assert hot[0] - cold[0] == pytest.approx(extra_uw * 1e-6, rel=1e-9)
    assert cold[0] == pytest.approx(big.busy_power_uw(top, 1) * 1e-6, rel=1e-12)
    # the k_T = 0 board prices every run alike; the leaky one dearer as it heats, and it heats more
    assert all(x == cold[0] for x in cold)
    assert all(b > a for a, b in itertools.pairwise(hot))
    assert hot_end_c > cold_end_c


def test_the_engine_shares_the_power_functions_of_the_profile() -> None:
    prof = rk3399_at(K_T)
    eng = Engine(prof, one_job(), 1.0)
    for c, cl in enumerate(prof.clusters):
        for o in range(len(cl.opps)):
            for temp_c in (20.0, 50.998, 80.0):
                assert eng.static_uw[c][o] + eng.leak_extra_uw(c, o, temp_c) == pytest.approx(
                    cl.static_power_uw(o, temp_c), rel=1e-12)
    assert dataclasses.replace(prof.clusters[0], static_temp_coeff_per_c=0.0).leakage_uw(0, 80.0) \
        == eng.tables.leak_uw[0][0]
