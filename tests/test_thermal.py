"""The heat model (edgesched.thermal): RC node, step_wise throttling, and the simulator's use."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, BoardTime

from edgesched.device import load_profile, parse_profile, profile_to_dict
from edgesched.errors import ConfigError, ProfileError
from edgesched.policy.base import Performance
from edgesched.policy.registry import make_policy
from edgesched.power.backends import VirtualBoard
from edgesched.power.fakesysfs import add_thermal_zone, from_profile
from edgesched.power.meters import CarbonAccount
from edgesched.queue import RequestQueue
from edgesched.server.admission import InferRequest
from edgesched.server.dispatcher import Dispatcher, Job, Outcome
from edgesched.server.metrics import Metrics, render_heat
from edgesched.server.runner import load_model
from edgesched.thermal import (
    FIRMWARE_THROTTLED_REL,
    NO_TARGET,
    Cooling,
    CoolingMap,
    HeatMonitor,
    ThermalSpec,
    ThermalState,
    Trip,
    rc_step_c,
    read_zones,
)
from edgesched_sim.engine import Engine
from edgesched_sim.evaluate import evaluate
from edgesched_sim.scenarios import JobSet, load_scenario, parse_scenario


def _spec(**kw: object) -> ThermalSpec:
    base = ThermalSpec(zone="cpu_thermal", ambient_c=25.0, cooling="bare",
                       coolings={"bare": Cooling(r_c_per_w=10.0, c_j_per_c=5.0)},
                       other_heat_uw=0.0, polling_delay_ms=1000, polling_delay_passive_ms=100,
                       trips=(Trip("alert", 70.0, 2.0, "passive"), Trip("crit", 95.0, 2.0,
                                                                           "critical")),
                       maps=(CoolingMap(trip=0, clusters=(0,)),))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_rc_step_response_matches_the_hand_worked_solution() -> None:
    # R = 10 K/W, C = 5 J/K: tau = 50 s; 2 W from ambient 25 C settles at 45 C.
    # After one tau: 25 + 20 * (1 - 1/e) = 37.6424 C; after three: 25 + 20 * (1 - e^-3) = 44.0043 C
    cooling = Cooling(r_c_per_w=10.0, c_j_per_c=5.0)
    assert rc_step_c(25.0, 25.0, 2.0, cooling, 50.0) == pytest.approx(37.6424, abs=1e-4)
    assert rc_step_c(25.0, 25.0, 2.0, cooling, 150.0) == pytest.approx(44.0043, abs=1e-4)
    # cooling back down from 45 C with no power: 25 + 20 / e after one tau
    assert rc_step_c(45.0, 25.0, 0.0, cooling, 50.0) == pytest.approx(32.3576, abs=1e-4)
    # the state integrates the same curve in pieces, polls on the way included
    state = ThermalState(_spec(), n_opps=[5], idle_uw=0.0)
    assert state.temp_c == pytest.approx(25.0)
    for t in (3.3, 17.0, 50.0):
        state.advance(t, 2_000_000.0)
    assert state.temp_c == pytest.approx(37.6424, abs=1e-4)
    assert state.peak_temp_c == pytest.approx(37.6424, abs=1e-4)
    assert state.throttled_s == 0.0 and state.cap == [4]


def test_step_wise_raises_and_lowers_the_cap_by_the_kernel_rule() -> None:
    state = ThermalState(_spec(), n_opps=[5], idle_uw=0.0)
    gov = state.governor
    seen = []
    for temp in (65.0, 71.0, 72.0, 72.0, 71.0, 69.0, 68.0, 67.0, 67.0):
        state.temp_c = temp
        state.poll()
        seen.append((gov.state[0], state.cap[0], gov.target[0], gov.delay_s()))
    assert seen == [
        (0, 4, NO_TARGET, 1.0),   # below the trip, never throttled: no target, normal polling
        (1, 3, 1, 0.1),           # first crossing: one step at once, passive polling
        (2, 2, 2, 0.1),           # above and rising: one more step
        (2, 2, 2, 0.1),           # above, stable: stays
        (2, 2, 2, 0.1),           # above, dropping: stays (step_wise only steps down below)
        (1, 3, 1, 0.1),           # below and dropping: one step down
        (0, 4, 0, 0.1),           # again
        (0, 4, NO_TARGET, 1.0),   # at the lower limit: the instance is released
        (0, 4, NO_TARGET, 1.0),
    ]


def test_polls_follow_the_injected_time_and_count_throttled_time() -> None:
    # ambient above the trip: the first poll (t = 1 s) throttles, then polls every 100 ms rise
    state = ThermalState(_spec(ambient_c=80.0), n_opps=[5], idle_uw=0.0)
    state.advance(0.99, 1_000_000.0)
    assert state.cap == [4] and state.throttled_s == 0.0
    state.advance(1.0, 1_000_000.0)
    assert state.cap == [3]
    state.advance(1.35, 1_000_000.0)  # polls at 1.1, 1.2, 1.3: still rising each time
    assert state.cap == [0]
    assert state.throttled_s == pytest.approx(0.35)


def test_map_limits_clamp_the_state() -> None:
    spec = _spec(maps=(CoolingMap(trip=0, clusters=(0,), lower=4),))  # the Pi's full throttle
    state = ThermalState(spec, n_opps=[5], idle_uw=0.0)
    state.temp_c = 90.0
    state.poll()
    assert state.cap == [0]


def test_profiles_carry_the_device_tree_zones_and_old_profiles_load() -> None:
    rk = load_profile("rk3399")
    assert rk.thermal is not None
    assert [(t.name, t.temp_c, t.kind) for t in rk.thermal.trips] == [
        ("cpu_alert0", 70.0, "passive"), ("cpu_alert1", 75.0, "passive"),
        ("cpu_crit", 95.0, "critical")]
    assert rk.thermal.polling_delay_passive_ms == 100
    assert [m.clusters for m in rk.thermal.maps] == [(1,), (0, 1)]
    assert set(rk.thermal.coolings) >= {"none", "heatsink", "fan"}
    assert parse_profile(profile_to_dict(rk), "again").thermal == rk.thermal
    pi = load_profile("bcm2711")
    assert pi.thermal is not None and pi.thermal.passive_trip_c() == 80.0
    doc = profile_to_dict(rk)
    del doc["thermal"]
    assert parse_profile(doc, "old").thermal is None


def test_a_bad_thermal_section_is_a_clear_error() -> None:
    doc = profile_to_dict(load_profile("rk3399"))
    doc["thermal"]["cooling_maps"][0]["clusters"] = ["huge"]
    with pytest.raises(ProfileError, match="cluster names"):
        parse_profile(doc, "bad")
    doc = profile_to_dict(load_profile("rk3399"))
    doc["thermal"]["coolings"]["none"]["r_c_per_w"] = 0
    with pytest.raises(ProfileError, match="thermal resistance"):
        parse_profile(doc, "bad")
    with pytest.raises(ProfileError, match="cooling"):
        load_profile("rk3399").thermal.with_conditions(cooling="liquid")  # type: ignore[union-attr]


def _jobs(n: int, gap_s: float) -> JobSet:
    release = np.arange(n) * gap_s
    return JobSet(release_s=release, model=("mobilenet_v1",) * n,
                  priority=np.full(n, 3, dtype=np.int64), deadline_s=release + 5.0)


def test_the_engine_caps_the_opp_any_policy_asks_for() -> None:
    rk = load_profile("rk3399")
    assert rk.thermal is not None
    hot = rk.thermal.with_conditions(ambient_c=90.0)  # above the trips from the start
    jobs = _jobs(40, 0.5)
    stats = Engine(rk, jobs, 20.0, thermal=hot).run(make_policy("performance"))
    top = np.array([len(rk.clusters[c].opps) - 1 for c in stats.cluster])
    assert stats.opp[0] == top[0]                   # before the first poll: uncapped
    assert stats.opp[-1] < top[-1]                  # later: the cap holds it down
    assert stats.throttled_s > 10.0 and stats.peak_temp_c > 90.0
    cool = Engine(rk, jobs, 20.0, thermal=rk.thermal.with_conditions(cooling="fan"))
    stats = cool.run(make_policy("performance"))
    top = np.array([len(rk.clusters[c].opps) - 1 for c in stats.cluster])
    assert (stats.opp == top).all() and stats.throttled_s == 0.0


def test_no_thermal_section_means_no_heat_figures() -> None:
    xu3 = load_profile("exynos5422")
    assert xu3.thermal is None
    stats = Engine(xu3, _jobs(5, 0.5), 5.0).run(make_policy("performance"))
    assert math.isnan(stats.peak_temp_c) and stats.throttled_s == 0.0


def test_scenario_thermal_conditions_are_checked() -> None:
    sc = load_scenario("hot-sustained")
    assert sc.thermal == {"ambient_c": 35.0, "cooling": "none"}
    doc = {"arrivals": {"process": "poisson", "rate_hz": 1.0},
           "classes": [{"model": "okay_nabu", "deadline_ms": 100.0}],
           "thermal": {"ambient": 35}}
    with pytest.raises(ConfigError, match="ambient_c"):
        parse_scenario(doc, "x", "x.toml", None)


def test_eval_rows_carry_heat_and_performance_throttles_in_hot_sustained() -> None:
    doc = evaluate("rk3399", "hot-sustained", ["performance", "oracle"])
    perf = next(r for r in doc["results"] if r["policy"] == "performance")
    assert perf["throttled_s"] > 0.0
    assert perf["peak_temp_c"] >= 70.0
    oracle = next(r for r in doc["results"] if r["policy"] == "oracle")
    assert "throttled_s" in oracle and oracle["peak_temp_c"] is None
    cool = evaluate("exynos5422", "steady-light", ["performance"], duration_s=5.0)
    assert cool["results"][0]["throttled_s"] is None and cool["results"][0]["peak_temp_c"] is None


# ------------------------------------------------------------------------------ the daemon side


def test_zones_firmware_flags_and_throttled_time_of_a_fake_tree(tmp_path: Path) -> None:
    tree = from_profile(tmp_path / "sys", load_profile("bcm2711"))
    add_thermal_zone(tree, "cpu-thermal", 61.5, [(90.0, "critical")])
    clock = BoardTime()
    monitor = HeatMonitor(tree, clock=clock)
    doc = monitor.sample()
    assert doc["zones"] == [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 61.5,
                             "trips": [{"temp_c": 90.0, "type": "critical"}]}]
    assert doc["firmware_throttled"] is None and "vcgencmd" in doc["firmware_note"]
    fw = tree / FIRMWARE_THROTTLED_REL
    fw.parent.mkdir(parents=True)
    fw.write_text("0x20006\n", encoding="ascii")  # capped and throttled now, capped before
    clock.now_s = 5.0
    doc = monitor.sample()
    assert doc["throttled"] and doc["throttled_s"] == 0.0
    assert doc["firmware_throttled"]["throttled"] and doc["firmware_throttled"]["arm_freq_capped"]
    assert not doc["firmware_throttled"]["under_voltage"]
    assert doc["firmware_throttled"]["arm_freq_capped_occurred"]
    clock.now_s = 7.5
    fw.write_text("0x20000\n", encoding="ascii")
    assert monitor.sample()["throttled_s"] == pytest.approx(2.5)  # 5.0 -> 7.5 was throttled
    clock.now_s = 20.0
    assert monitor.sample()["throttled_s"] == pytest.approx(2.5)
    text = render_heat(monitor.sample())
    assert 'edgesched_temperature_celsius{zone="thermal_zone0",type="cpu-thermal"} 61.5' in text
    assert "edgesched_throttled_seconds_total 2.5" in text


def test_the_lowest_passive_trip_reaches_the_decision_context(tmp_path: Path) -> None:
    """``HeatMonitor.trip_c`` (the dispatcher's ``DecisionContext.trip_c``): the lowest passive
    trip of any zone; critical trips do not count; inf without a passive one."""
    tree = from_profile(tmp_path / "sys", load_profile("bcm2711"))
    add_thermal_zone(tree, "cpu-thermal", 61.5, [(90.0, "critical")])
    monitor = HeatMonitor(tree, clock=BoardTime())
    assert monitor.current()[0] == 61.5 and monitor.trip_c() == math.inf
    add_thermal_zone(tree, "soc-thermal", 50.0, [(75.0, "passive"), (70.0, "passive"),
                                                 (95.0, "critical")])
    assert monitor.current(max_age_s=0.0)[0] == 61.5 and monitor.trip_c() == 70.0


def _serve(board: VirtualBoard, clock: BoardTime, n: int) -> list[Outcome]:
    model = load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)
    model.service_s = 30e-6  # the emulated board's time comes from this reference time
    disp = Dispatcher(board, Performance(), RequestQueue(levels=3, max_count=8),
                      Metrics(CarbonAccount(500.0)), clock=clock, pin_threads=False,
                      idle_wait_s=0.01)
    answers: list[Outcome] = []
    answered = threading.Condition()

    def answer(out: Outcome) -> None:
        with answered:
            answers.append(out)
            answered.notify_all()

    disp.start()
    try:
        for i in range(n):
            req = InferRequest(model=model.name, request_id=str(i),
                               inputs={"serving_default_input_audio:0":
                                       np.zeros((1, 3, 40), np.int8)},
                               outputs=(("StatefulPartitionedCall:0", True),), priority=2,
                               timeout_us=None, size_bytes=200)
            disp.submit(Job(req=req, model=model, deadline_s=math.inf, answer=answer))
            with answered:
                assert answered.wait_for(lambda n=i + 1: len(answers) == n, 30)
        assert disp.heat is not None
        answers[-1].parameters["status"] = disp.heat.sample()
    finally:
        disp.close(0.0)
        assert disp.join(30)
    return answers


def test_the_virtual_board_heats_under_load_and_receipts_and_status_show_it(
        tmp_path: Path) -> None:
    clock = BoardTime()
    # 100000 times slower than the host: each run lasts seconds on the emulated board
    board = VirtualBoard(load_profile("rk3399"), runtime_dir=tmp_path, clock=clock,
                         sleep=clock.sleep, slowdown=1e5)
    try:
        start_c = read_zones(board.sysfs_root)[0].temp_c
        answers = _serve(board, clock, 20)
        temps = [a.parameters["temp_c"] for a in answers]
        assert all(b >= a for a, b in itertools.pairwise(temps))
        assert temps[-1] > start_c + 5.0
        status = answers[-1].parameters["status"]
        assert status["zones"][0]["type"] == "cpu_thermal"
        assert status["zones"][0]["temp_c"] == pytest.approx(temps[-1], abs=0.01)
        assert not status["throttled"] and status["throttled_s"] == 0.0
    finally:
        board.close()


def test_the_virtual_board_throttles_through_its_cooling_devices(tmp_path: Path) -> None:
    rk = load_profile("rk3399")
    assert rk.thermal is not None
    hot = dataclasses.replace(rk, thermal=rk.thermal.with_conditions(ambient_c=80.0))
    clock = BoardTime()
    board = VirtualBoard(hot, runtime_dir=tmp_path, clock=clock, sleep=clock.sleep, slowdown=1e5)
    try:
        answers = _serve(board, clock, 12)
        top = {c.name: c.max_khz for c in hot.clusters}
        first, last = answers[0].parameters, answers[-1].parameters
        assert first["freq_khz"] == top[first["cluster_name"]]  # before the first poll
        assert last["freq_khz"] < top[last["cluster_name"]]     # the cooling device's cap
        status = answers[-1].parameters["status"]
        assert status["throttled"] and status["throttled_s"] > 0.0
        big = status["policies"][1]
        assert big["thermal_cap_khz"] is not None and big["capped_below_top"]
    finally:
        board.close()


def test_slack_plans_within_the_thermal_cap() -> None:
    rk = load_profile("rk3399")
    jobs = dataclasses.replace(_jobs(3, 0.5), deadline_s=np.arange(3) * 0.5 + 0.15)
    engine = Engine(rk, jobs, 5.0)
    head = engine.next_head()
    assert head is not None
    ctx = engine.context(head)
    assert ctx.cap_opp == [5, 7] and 35.0 < ctx.temp_c < 70.0
    slack = make_policy("slack")
    slack.reset(engine.view)
    free = slack.decide(engine.view, ctx)
    assert free.cluster == 1 and free.opp > 2  # a tight deadline: the big cluster, fast
    capped = slack.decide(engine.view, dataclasses.replace(ctx, cap_opp=[2, 2]))
    assert capped.opp <= 2  # what the kernel would let it run at, not more
