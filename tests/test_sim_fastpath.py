"""The simulator's fast paths compute exactly what the plain forms do (bit for bit).

``ThermalState.advance`` (its no-poll branch written out) and ``advance_two`` against the RC
step of :func:`edgesched.thermal.rc_step_c` with a poll at every polling instant;
``RateMeter.events`` against ``event`` one at a time; the per-board switch and heat tables
against their formulas; the environment's per-class outcome counts against a plain count.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from edgesched.device import load_profile
from edgesched.thermal import Cooling, CoolingMap, ThermalSpec, ThermalState, Trip, rc_step_c
from edgesched.utilisation import RateMeter
from edgesched_sim.engine import MISSED, BoardTables
from edgesched_sim.env import EdgeDVFSEnv
from edgesched_sim.workloads import model_names


def _spec() -> ThermalSpec:
    # tau = 5 s and 6 W settle at 85 C: the 70 C trip is crossed both ways within the test
    return ThermalSpec(zone="cpu_thermal", ambient_c=25.0, cooling="bare",
                       coolings={"bare": Cooling(r_c_per_w=10.0, c_j_per_c=0.5)},
                       other_heat_uw=250_000.0, polling_delay_ms=1000,
                       polling_delay_passive_ms=100,
                       trips=(Trip("alert", 70.0, 2.0, "passive"),
                              Trip("crit", 95.0, 2.0, "critical")),
                       maps=(CoolingMap(trip=0, clusters=(0, 1)),))


def _plain_advance(st: ThermalState, t_s: float, power_uw: float) -> None:
    """``ThermalState.advance`` as a loop of :func:`rc_step_c` steps and polls."""
    spec = st.spec
    power_w = (power_uw + spec.other_heat_uw) * 1e-6
    while True:
        poll = st.next_poll_s <= t_s
        to_s = st.next_poll_s if poll else t_s
        dt = to_s - st.t_s
        if dt > 0:
            st.temp_c = rc_step_c(st.temp_c, spec.ambient_c, power_w, spec.active, dt)
            st.peak_temp_c = max(st.peak_temp_c, st.temp_c)
            if st.throttled:
                st.throttled_s += dt
            st.t_s = to_s
        if not poll:
            return
        st.poll()


def _state(st: ThermalState) -> tuple[object, ...]:
    return (st.t_s, st.temp_c, st.peak_temp_c, st.throttled_s, tuple(st.cap), st.next_poll_s)


def test_thermal_fast_paths_match_the_rc_steps_bit_for_bit() -> None:
    rng = random.Random(3)
    fast = ThermalState(_spec(), [5, 7], 300_000.0)
    two = ThermalState(_spec(), [5, 7], 300_000.0)
    plain = ThermalState(_spec(), [5, 7], 300_000.0)
    t = 0.0
    throttled_states = 0
    while t < 120.0:
        gap = rng.choice([0.0, rng.uniform(0.0, 0.3)])  # no switch, or a switch / idle gap
        run = rng.uniform(0.001, 0.4)
        busy_uw = rng.choice([300_000.0, 6_000_000.0, 9_000_000.0])
        fast.advance(t + gap, 300_000.0)
        fast.advance(t + gap + run, busy_uw)
        two.advance_two(t + gap, 300_000.0, t + gap + run, busy_uw)
        _plain_advance(plain, t + gap, 300_000.0)
        _plain_advance(plain, t + gap + run, busy_uw)
        assert _state(fast) == _state(plain)
        assert _state(two) == _state(plain)
        fast.advance(t, 300_000.0)  # a time already passed: nothing changes
        assert _state(fast) == _state(plain)
        throttled_states += plain.throttled
        t += gap + run
    assert throttled_states > 0 and plain.throttled_s > 0.0  # the caps were exercised
    assert plain.peak_temp_c > 70.0


def test_advance_two_with_its_times_out_of_order_is_two_advances() -> None:
    a = ThermalState(_spec(), [5, 7], 300_000.0)
    b = ThermalState(_spec(), [5, 7], 300_000.0)
    a.advance_two(2.5, 6_000_000.0, 1.0, 300_000.0)  # a poll is due before the first time only
    b.advance(2.5, 6_000_000.0)
    b.advance(1.0, 300_000.0)
    assert _state(a) == _state(b)


def test_rate_meter_events_equal_one_event_at_a_time() -> None:
    times = sorted(np.random.default_rng(5).uniform(0.0, 20.0, 500).tolist())
    times[10:10] = [times[9]] * 3  # simultaneous arrivals
    one, batch = RateMeter(), RateMeter()
    for lo, hi in [(0, 1), (1, 1), (1, 40), (40, len(times))]:
        for t in times[lo:hi]:
            one.event(t)
        batch.events(times[lo:hi])
        assert (one.acc, one.last_s) == (batch.acc, batch.last_s)
    assert one.rate_hz(25.0) == batch.rate_hz(25.0) > 0.0


def test_board_tables_switch_and_heat_entries_are_the_formulas() -> None:
    profile = load_profile("rk3399")
    t = BoardTables(profile, model_names())
    for c in range(t.n_clusters):
        for o, static_uw in enumerate(t.static_uw[c]):
            dt = t.trans_s[c]
            assert t.switch_j[c][o] == ((static_uw - t.idle_uw[c]) * dt * 1e-6, static_uw * dt * 1e-6)
            for m in range(len(t.model_names)):
                assert t.run_heat_uw[m][c][o] == t.idle_total_uw - t.idle_uw[c] + t.busy_uw[m][c][o]


def test_class_outcomes_count_each_priority_in_order_of_first_request() -> None:
    env = EdgeDVFSEnv(devices=["rk3399"], scenarios=["mixed-priority"], duration_s=20.0)
    env.reset(seed=4)
    actions = np.random.default_rng(4).integers(0, env.action_space.n, 100_000).tolist()
    info: dict[str, object] = {}
    for a in actions:
        _, _, terminated, _, info = env.step(a)
        if terminated:
            break
    assert env.engine is not None
    eng = env.engine
    expected: dict[int, list[int]] = {}
    for prio, outcome in zip(eng.job_prio, eng._outcome, strict=True):
        cell = expected.setdefault(prio, [0, 0])
        cell[0] += outcome in MISSED
        cell[1] += 1
    got = info["class_outcomes"]
    assert isinstance(got, dict)
    assert list(got.items()) == [(p, (m, n)) for p, (m, n) in expected.items()]
    assert len(got) > 1 and any(m for m, _ in got.values())  # several classes, some misses


def test_thermal_spec_copies_keep_their_own_constants() -> None:
    # the state reads the spec's constants once: a changed copy gives a changed state
    hot = dataclasses.replace(_spec(), ambient_c=40.0)
    a = ThermalState(_spec(), [5, 7], 300_000.0)
    b = ThermalState(hot, [5, 7], 300_000.0)
    a.advance(0.5, 300_000.0)
    b.advance(0.5, 300_000.0)
    assert b.temp_c - a.temp_c > 14.0
