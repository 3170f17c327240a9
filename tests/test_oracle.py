"""Tests of the offline energy floor (edgesched_sim.oracle)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesched.device import DeviceProfile, Work, builtin_profiles, load_profile
from edgesched.observation import BoardView, Decision, DecisionContext
from edgesched.policy.base import StaticPolicy
from edgesched_sim.engine import BoardTables, Engine, Outcome
from edgesched_sim.evaluate import _oracle_jobs, run_policies
from edgesched_sim.oracle import Floor, OracleJob, energy_floor, power_envelope
from edgesched_sim.scenarios import generate, load_scenario
from edgesched_sim.workloads import MODELS

PROFILES = {name: load_profile(name) for name in builtin_profiles()}
RK = PROFILES["rk3399"]


def _g_points(profile: DeviceProfile, threads: int) -> list[tuple[float, float]]:
    """(speed, extra power) of every OPP, computed straight from the model formulas."""
    pts = []
    for c in profile.clusters:
        n = max(1, min(threads, len(c.cpus)))
        for o in c.opps:
            v = o.uv / 1e6
            busy = c.dynamic_power_coefficient * v * v * (o.khz / 1000) * n \
                + c.static_uw_at_1v * v ** c.static_exponent
            speed = o.khz / 1000 * c.capacity_dmips_mhz / 1024 * n
            pts.append((speed, busy - c.idle_uw))
    return pts


def _envelope_by_pairs(pts: list[tuple[float, float]], speed: np.ndarray) -> np.ndarray:
    """Lower convex envelope of idle and the points at ``speed`` (up to the top speed): the
    highest line through two of the points that no point lies below."""
    allp = [(0.0, 0.0), *pts]
    lines = []
    for (x0, y0), (x1, y1) in itertools.combinations(allp, 2):
        if x1 == x0:
            continue
        slope = (y1 - y0) / (x1 - x0)
        if all(y >= y0 + slope * (x - x0) - 1e-6 for x, y in allp):
            lines.append((slope, y0 - slope * x0))
    s = np.asarray(speed, dtype=float)
    return np.max([k * s + b for k, b in lines], axis=0)


def _runs(profile: DeviceProfile, work: Work) -> list[tuple[float, float]]:
    """(run time s, extra energy uW*s) of ``work`` at every (cluster, OPP), from the formulas."""
    out = []
    for c in profile.clusters:
        n = max(1, min(work.threads, len(c.cpus)))
        for o in c.opps:
            v = o.uv / 1e6
            busy = c.dynamic_power_coefficient * v * v * (o.khz / 1000) * n \
                + c.static_uw_at_1v * v ** c.static_exponent
            t = work.compute_mcycles / (o.khz / 1000 * c.capacity_dmips_mhz / 1024 * n) \
                + work.mem_ms * profile.mem_time_scale / 1000
            out.append((t, (busy - c.idle_uw) * t))
    return out


def _best_run_uws(profile: DeviceProfile, work: Work, window_s: float) -> float:
    """The least extra energy of ``work`` run within ``window_s``: one point, or two points
    shared so that the run takes exactly the window (every pair tried)."""
    runs = _runs(profile, work)
    best = min((e for t, e in runs if t <= window_s), default=math.inf)
    for (ta, ea), (tb, eb) in itertools.permutations(runs, 2):
        if ta < window_s < tb:
            f = (tb - window_s) / (tb - ta)
            best = min(best, f * ea + (1 - f) * eb)
    return best


# ------------------------------------------------------------------------------- hand cases


def test_single_loose_job_runs_at_critical_speed() -> None:
    little = RK.clusters[0]
    assert little.name == "little"
    # little cluster, 816 MHz at 850 mV: the most energy-efficient point of the RK3399
    v = 0.85
    speed = 816 * 485 / 1024
    extra = 100 * v * v * 816 + 60000 * v * v - 12000
    per_mcycle = extra / speed
    assert per_mcycle == pytest.approx(min(g / s for s, g in _g_points(RK, 1)), rel=1e-12)
    env = power_envelope(RK, 1)
    assert env.critical_speed_mhz == pytest.approx(speed, rel=1e-12)
    assert env.extra_uw[1] == pytest.approx(extra, rel=1e-12)

    work = Work(compute_mcycles=100.0, mem_ms=20.0)
    floor = energy_floor(RK, [OracleJob(1.0, 3.0, work)], horizon_s=10.0)
    idle = (12000 + 30000) * 10.0 * 1e-6
    mem = 0.020 * min(g for _, g in _g_points(RK, 1)) * 1e-6
    compute = 100.0 * per_mcycle * 1e-6
    assert floor.idle_j == pytest.approx(idle, rel=1e-12)
    assert floor.memory_j == pytest.approx(mem, rel=1e-12)
    assert floor.compute_j == pytest.approx(compute, rel=1e-12)
    # run alone, the job's compute and memory time go at one OPP: the per-job bound lifts the sum
    best = _best_run_uws(RK, work, 2.0) * 1e-6
    assert best > mem + compute
    assert floor.lift_j == pytest.approx(best - mem - compute, rel=1e-9)
    assert floor.energy_j == pytest.approx(idle + best, rel=1e-12)
    assert floor.infeasible_jobs == 0
    # the window is run at its density (below critical), which costs the same per megacycle
    assert floor.speeds == [(1.0, 3.0, pytest.approx(50.0))]


def test_two_overlapping_jobs() -> None:
    # B in [0.5, 1] at density 1000 is critical first; A is left alone in [0, 0.5]: 800
    jobs = [OracleJob(0.0, 1.0, Work(400.0, 0.0)), OracleJob(0.5, 1.0, Work(500.0, 0.0))]
    floor = energy_floor(RK, jobs, horizon_s=0.0)
    # envelope vertices around 800 and 1000 MHz: little 1200 MHz @ 1.0 V and big 1008 MHz @ 875 mV
    s_lo, g_lo = 1200 * 485 / 1024, 100 * 1.0 * 1200 + 60000 * 1.0 - 12000
    s_hi, g_hi = 1008.0, 436 * 0.875**2 * 1008 + 180000 * 0.875**2 - 30000
    env = power_envelope(RK, 1)
    assert (s_lo, g_lo) in [pytest.approx(p) for p in zip(env.speeds_mhz, env.extra_uw, strict=True)]
    assert (s_hi, g_hi) in [pytest.approx(p) for p in zip(env.speeds_mhz, env.extra_uw, strict=True)]

    def interp(s: float) -> float:
        return g_lo + (g_hi - g_lo) * (s - s_lo) / (s_hi - s_lo)

    expected = (interp(1000.0) * 0.5 + interp(800.0) * 0.5) * 1e-6
    assert floor.compute_j == pytest.approx(expected, rel=1e-12)
    assert floor.idle_j == 0.0 and floor.memory_j == 0.0
    got = [(a, b, s) for a, b, s in floor.speeds]
    assert got == [pytest.approx((0.0, 0.5, 800.0)), pytest.approx((0.5, 1.0, 1000.0))]


def test_identical_windows_merge() -> None:
    jobs = [OracleJob(0.0, 1.0, Work(500.0, 0.0)), OracleJob(0.0, 1.0, Work(700.0, 0.0))]
    floor = energy_floor(RK, jobs, horizon_s=0.0)
    g_1200 = 436 * 0.95**2 * 1200 + 180000 * 0.95**2 - 30000  # big 1200 MHz is a vertex
    assert floor.compute_j == pytest.approx(g_1200 * 1e-6, rel=1e-12)


def test_no_jobs_is_idle_only() -> None:
    floor = energy_floor(RK, [], horizon_s=60.0)
    assert floor == Floor(energy_j=RK.idle_power_uw * 60e-6, idle_j=RK.idle_power_uw * 60e-6,
                          memory_j=0.0, compute_j=0.0, lift_j=0.0, infeasible_jobs=0, speeds=[])


def test_infinite_deadline_costs_least_energy_per_cycle() -> None:
    env = power_envelope(RK, 1)
    job = OracleJob(5.0, math.inf, Work(250.0, 0.0))
    floor = energy_floor(RK, [job], horizon_s=1.0)
    assert floor.compute_j == pytest.approx(250.0 * env.min_uj_per_mcycle * 1e-6, rel=1e-12)
    # and the same as a finite but very long window
    long = energy_floor(RK, [OracleJob(5.0, 1e6, Work(250.0, 0.0))], horizon_s=1.0)
    assert long.compute_j == pytest.approx(floor.compute_j, rel=1e-12)
    # infinite windows never join the finite jobs' intervals
    tight = OracleJob(0.0, 0.1, Work(100.0, 0.0))
    both = energy_floor(RK, [tight, OracleJob(0.0, math.inf, Work(250.0, 0.0))], 1.0)
    alone = energy_floor(RK, [tight], 1.0)
    assert both.compute_j == pytest.approx(alone.compute_j + floor.compute_j, rel=1e-12)


def test_zero_and_short_windows_are_infeasible_and_capped() -> None:
    env = power_envelope(RK, 1)
    top = env.top_speed_mhz
    jobs = [OracleJob(1.0, 1.0, Work(90.0, 0.0)), OracleJob(3.0, 3.01, Work(90.0, 0.0)),
            OracleJob(5.0, 4.0, Work(90.0, 0.0))]
    floor = energy_floor(RK, jobs, horizon_s=0.0)
    assert floor.infeasible_jobs == 3
    # each runs alone at the top speed
    assert floor.compute_j == pytest.approx(3 * env.extra_uw[-1] * 90.0 / top * 1e-6, rel=1e-12)
    assert all(s == pytest.approx(top) for _, _, s in floor.speeds)
    # a window that exactly fits at top speed is not infeasible
    exact = OracleJob(2.0, 2.0 + 90.0 / top, Work(90.0, 0.0))
    assert energy_floor(RK, [exact], 0.0).infeasible_jobs == 0


def test_mixed_threads_rejected() -> None:
    jobs = [OracleJob(0.0, 1.0, Work(10.0, 0.0, threads=1)),
            OracleJob(0.0, 1.0, Work(10.0, 0.0, threads=2))]
    with pytest.raises(ValueError, match="same threads"):
        energy_floor(RK, jobs, 1.0)


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="horizon_s"):
        energy_floor(RK, [], -1.0)
    with pytest.raises(ValueError, match="release_s"):
        energy_floor(RK, [OracleJob(math.nan, 1.0, Work(1.0, 0.0))], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        energy_floor(RK, [OracleJob(0.0, math.nan, Work(1.0, 0.0))], 1.0)


def test_envelope_is_convex_and_below_every_point() -> None:
    for profile in PROFILES.values():
        for threads in (1, 2, 4):
            env = power_envelope(profile, threads)
            pts = _g_points(profile, threads)
            xs = np.array(env.speeds_mhz)
            ys = np.array(env.extra_uw)
            slopes = np.diff(ys) / np.diff(xs)
            assert np.all(np.diff(slopes) >= -1e-9)
            for s, g in pts:
                assert float(env.power_uw(s)) <= g + 1e-6
            probe = np.linspace(0.0, xs[-1], 97)
            assert np.allclose(env.power_uw(probe), _envelope_by_pairs(pts, probe), rtol=1e-9)
            assert env.min_extra_uw == pytest.approx(min(g for _, g in pts))


# ------------------------------------------------------------------------------- brute force


def _horn_feasible(p: Sequence[np.ndarray], rel: np.ndarray, dl: np.ndarray) -> np.ndarray:
    """Preemptive single-machine feasibility of processing times ``p`` (Horn's condition)."""
    ok = np.ones(np.shape(p[0]), dtype=bool)
    for a, b in itertools.product(rel, dl):
        if b <= a:
            continue
        load = sum((p[k] for k in range(len(p)) if rel[k] >= a and dl[k] <= b),
                   np.zeros(np.shape(p[0])))
        ok &= load <= (b - a) * (1 + 1e-12)
    return ok


def _brute_force_uws(rel: np.ndarray, dl: np.ndarray, work: np.ndarray,
                     pts: list[tuple[float, float]]) -> float:
    """Least energy over per-job processing times (each job at one speed, any order), by a
    refined grid search: an optimal schedule for a convex power function runs every job at one
    speed, and with preemption it is feasible exactly when Horn's condition holds."""
    top = max(s for s, _ in pts)
    n = len(work)
    lo = work / top
    hi = dl - rel
    size = {1: 400, 2: 120, 3: 40, 4: 16}[n]
    best = math.inf
    box_lo, box_hi = lo.copy(), hi.copy()
    for _ in range(12):
        axes = [np.unique(np.concatenate([np.linspace(box_lo[k], box_hi[k], size), [lo[k]]]))
                for k in range(n)]
        axes = [ax[(ax >= lo[k]) & (ax <= hi[k])] for k, ax in enumerate(axes)]
        grid = np.meshgrid(*axes, indexing="ij")
        energy = sum(grid[k] * _envelope_by_pairs(pts, work[k] / grid[k]) for k in range(n))
        energy = np.where(_horn_feasible(grid, rel, dl), energy, np.inf)
        idx = np.unravel_index(int(np.argmin(energy)), energy.shape)
        best = min(best, float(energy[idx]))
        centre = np.array([axes[k][idx[k]] for k in range(n)])
        step = (box_hi - box_lo) / (size - 1)
        box_lo = np.maximum(lo, centre - 2 * step)
        box_hi = np.minimum(hi, centre + 2 * step)
    return best


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4),
       name=st.sampled_from(sorted(PROFILES)))
def test_yds_matches_brute_force(seed: int, n: int, name: str) -> None:
    profile = PROFILES[name]
    rng = np.random.default_rng(seed)
    pts = _g_points(profile, 1)
    top = max(s for s, _ in pts)
    rel = np.round(rng.uniform(0.0, 1.0, n), 2)
    dl = rel + np.round(rng.uniform(0.05, 1.0, n), 2)
    work = rng.uniform(0.05, 1.0, n) * top * (dl - rel)
    while not _horn_feasible([np.array(w / top) for w in work], rel, dl):
        work *= 0.7
    jobs = [OracleJob(float(r), float(d), Work(float(w), 0.0))
            for r, d, w in zip(rel, dl, work, strict=True)]
    floor = energy_floor(profile, jobs, 0.0)
    assert floor.infeasible_jobs == 0
    brute = _brute_force_uws(rel, dl, work, pts) * 1e-6
    assert floor.compute_j <= brute * (1 + 1e-9)
    assert floor.compute_j >= brute * (1 - 2e-3)


# ------------------------------------------------------------------------------- lower bound


def _execute(profile: DeviceProfile, jobs: list[OracleJob], horizon_s: float,
             rng: np.random.Generator, edf: bool,
             fixed: tuple[int, int] | None = None) -> tuple[float, list[float]]:
    """Run ``jobs`` one at a time, non-preemptively, at random (cluster, OPP) choices (or always
    at ``fixed``). The simulator's accounting: idle power everywhere over
    [0, max(horizon, last finish)], busy power instead of idle on the running cluster,
    transitions at static power."""
    clusters = profile.clusters
    cur = [0] * len(clusters)
    extra_uws = 0.0
    now = 0.0
    finish = [math.nan] * len(jobs)
    pending = list(range(len(jobs)))
    while pending:
        ready = [j for j in pending if jobs[j].release_s <= now]
        if not ready:
            now = min(jobs[j].release_s for j in pending)
            continue
        pick_edf = min(ready, key=lambda k: (jobs[k].deadline_s, k))
        j = pick_edf if edf else ready[int(rng.integers(len(ready)))]
        if fixed is None:
            c = int(rng.integers(len(clusters)))
            o = int(rng.integers(len(clusters[c].opps)))
        else:
            c, o = fixed
        cl = clusters[c]
        if o != cur[c]:
            dt = cl.transition_latency_ns * 1e-9
            extra_uws += (cl.static_power_uw(o) - cl.idle_uw) * dt
            now += dt
            cur[c] = o
        dur = profile.latency_ms(jobs[j].work, c, o) / 1000.0
        extra_uws += (cl.busy_power_uw(o, jobs[j].work.threads) - cl.idle_uw) * dur
        now += dur
        finish[j] = now
        pending.remove(j)
    total_uws = profile.idle_power_uw * max(horizon_s, now) + extra_uws
    return total_uws * 1e-6, finish


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 8),
       name=st.sampled_from(sorted(PROFILES)), threads=st.integers(1, 4), edf=st.booleans(),
       slack=st.sampled_from([0.0, 0.05, 0.5, 5.0]), critical=st.booleans())
def test_floor_bounds_random_schedules(seed: int, n: int, name: str, threads: int, edf: bool,
                                       slack: float, critical: bool) -> None:
    """Random non-preemptive schedules never beat the floor. With ``critical`` every job runs at
    the envelope's critical OPP without memory time, where the floor is nearly tight."""
    profile = PROFILES[name]
    rng = np.random.default_rng(seed)
    fixed = _critical_opp(profile, threads) if critical else None
    horizon = float(rng.choice([0.0, 1.0, 3.0]))
    jobs = []
    for _ in range(n):
        r = float(rng.uniform(0.0, 2.0))
        d = math.inf if rng.random() < 0.15 else r + float(rng.uniform(0.0, 0.3)) + slack
        work = Work(compute_mcycles=float(rng.choice([0.0, rng.uniform(0.0, 300.0)])),
                    mem_ms=0.0 if critical else float(rng.uniform(0.0, 50.0)),
                    threads=threads)
        jobs.append(OracleJob(r, d, work))
    energy, finish = _execute(profile, jobs, horizon, rng, edf, fixed)
    relaxed = [OracleJob(j.release_s, max(j.deadline_s, f), j.work)
               for j, f in zip(jobs, finish, strict=True)]
    floor = energy_floor(profile, relaxed, horizon)
    assert floor.infeasible_jobs == 0
    assert floor.energy_j <= energy * (1 + 1e-9)
    assert floor.energy_j == pytest.approx(floor.idle_j + floor.memory_j + floor.compute_j
                                           + floor.lift_j)
    if all(f <= j.deadline_s for j, f in zip(jobs, finish, strict=True)):
        assert energy_floor(profile, jobs, horizon).energy_j <= energy * (1 + 1e-9)
    if critical:
        # the only slack left: one transition off the lowest OPP, and idle past the horizon
        c, o = fixed if fixed is not None else (0, 0)
        cl = profile.clusters[c]
        slack_j = (cl.static_power_uw(o) - cl.idle_uw) * cl.transition_latency_ns * 1e-15
        slack_j += profile.idle_power_uw * max(0.0, max(finish, default=0.0) - horizon) * 1e-6
        assert energy - floor.energy_j <= slack_j + 1e-9 * energy


def _critical_opp(profile: DeviceProfile, threads: int) -> tuple[int, int]:
    env = power_envelope(profile, threads)
    for c, cl in enumerate(profile.clusters):
        n = max(1, min(threads, len(cl.cpus)))
        for o in range(len(cl.opps)):
            if cl.speed_mhz(o) * n == pytest.approx(env.critical_speed_mhz, rel=1e-12):
                return c, o
    raise AssertionError("the critical speed is no OPP")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_floor_is_tight_for_one_job_at_the_critical_opp(name: str) -> None:
    """A lone job run at the envelope's critical point, without memory time, meets the floor."""
    profile = PROFILES[name]
    env = power_envelope(profile, 1)
    c, o = next((c, o) for c, cl in enumerate(profile.clusters) for o in range(len(cl.opps))
                if cl.speed_mhz(o) == pytest.approx(env.critical_speed_mhz, rel=1e-12))
    job = OracleJob(0.0, 10.0, Work(200.0, 0.0))
    cl = profile.clusters[c]
    dur = profile.latency_ms(job.work, c, o) / 1000.0
    energy = (profile.idle_power_uw * 10.0 + (cl.busy_power_uw(o) - cl.idle_uw) * dur) * 1e-6
    assert energy_floor(profile, [job], 10.0).energy_j == pytest.approx(energy, rel=1e-12)


def _least_energy_point(profile: DeviceProfile, work: Work) -> tuple[int, int]:
    runs = [(e, (c, o)) for (c, o), (_, e) in zip(
        ((c, o) for c, cl in enumerate(profile.clusters) for o in range(len(cl.opps))),
        _runs(profile, work), strict=True)]
    return min(runs)[1]


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("model", ["face_detection_short_range", "mobilenet_v1"])
def test_floor_is_exact_for_a_lone_job_with_memory_time(name: str, model: str) -> None:
    """A lone job with memory-bound time, its window loose, run at its least-energy point: the
    floor is exactly what the run spends."""
    profile = PROFILES[name]
    work = MODELS[model].work
    job = OracleJob(0.5, 10.0, work)
    c, o = _least_energy_point(profile, work)
    energy, finish = _execute(profile, [job], 10.0, np.random.default_rng(0), True, (c, o))
    cl = profile.clusters[c]
    switch_j = (cl.static_power_uw(o) - cl.idle_uw) * cl.transition_latency_ns * 1e-15 if o else 0.0
    floor = energy_floor(profile, [job], 10.0)
    assert finish[0] <= job.deadline_s
    assert floor.energy_j == pytest.approx(energy - switch_j, rel=1e-12)
    # the YDS part charges memory time at the least power of any OPP: below the run wherever
    # the least-energy point is not also the least-power one
    if cl.busy_power_uw(o, work.threads) - cl.idle_uw > power_envelope(profile, 1).min_extra_uw:
        assert floor.lift_j > 1e-6 * floor.energy_j


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_per_job_bound_shares_two_points_in_a_tight_window(name: str) -> None:
    """A window between two runs' times: the bound is the cheapest pair of points shared to fill
    it exactly (brute force over all pairs), and a window shorter than the fastest run costs the
    fastest run."""
    profile = PROFILES[name]
    work = MODELS["hand_landmark_lite"].work
    runs = sorted(_runs(profile, work))
    fastest_s, slowest_s = runs[0][0], runs[-1][0]
    for window in (fastest_s * 1.1, (fastest_s + slowest_s) / 2, fastest_s * 0.5):
        floor = energy_floor(profile, [OracleJob(0.0, window, work)], 0.0)
        want = _best_run_uws(profile, work, max(window, fastest_s)) * 1e-6
        assert floor.energy_j == pytest.approx(max(want, floor.memory_j + floor.compute_j),
                                               rel=1e-9)
        assert floor.energy_j >= floor.memory_j + floor.compute_j


def test_per_job_bound_counts_each_component_and_each_job_without_deadline() -> None:
    """Jobs far apart are separate components: each is lifted alone; a job without a deadline
    is bounded by its least-energy run; together they add up."""
    work = MODELS["face_detection_short_range"].work
    apart = [OracleJob(0.0, 1.0, work), OracleJob(5.0, 6.0, work)]
    loose = OracleJob(2.0, math.inf, work)
    one = energy_floor(RK, apart[:1], 0.0)
    both = energy_floor(RK, [*apart, loose], 0.0)
    c, o = _least_energy_point(RK, work)
    least = _runs(RK, work)[sum(len(cl.opps) for cl in RK.clusters[:c]) + o][1] * 1e-6
    assert one.lift_j > 0
    assert both.energy_j == pytest.approx(2 * one.energy_j + least, rel=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 10),
       name=st.sampled_from(sorted(PROFILES)), spread_s=st.sampled_from([0.2, 2.0, 20.0]))
def test_least_energy_runs_never_beat_the_floor(seed: int, n: int, name: str,
                                                spread_s: float) -> None:
    """Every job at its own least-energy point, EDF, non-preemptive (the schedule the per-job
    bound is closest to), windows relaxed to the finishes: never below the floor; with the
    jobs far apart, within the transitions of it."""
    profile = PROFILES[name]
    rng = np.random.default_rng(seed)
    models = sorted(MODELS)
    jobs = [OracleJob(float(rng.uniform(0.0, spread_s * n)), math.inf,
                      MODELS[models[int(rng.integers(len(models)))]].work) for _ in range(n)]
    jobs.sort(key=lambda j: j.release_s)
    energy_uws = 0.0
    now, finish, switches_uws = 0.0, [], 0.0
    cur = [0] * len(profile.clusters)
    for j in jobs:
        c, o = _least_energy_point(profile, j.work)
        cl = profile.clusters[c]
        now = max(now, j.release_s)
        if o != cur[c]:
            dt = cl.transition_latency_ns * 1e-9
            switches_uws += (cl.static_power_uw(o) - cl.idle_uw) * dt
            now += dt
            cur[c] = o
        dur = profile.latency_ms(j.work, c, o) / 1000.0
        energy_uws += (cl.busy_power_uw(o, j.work.threads) - cl.idle_uw) * dur
        now += dur
        finish.append(now)
    horizon = max(finish)
    energy_j = (energy_uws + switches_uws + profile.idle_power_uw * horizon) * 1e-6
    relaxed = [OracleJob(j.release_s, f, j.work) for j, f in zip(jobs, finish, strict=True)]
    floor = energy_floor(profile, relaxed, horizon)
    assert floor.energy_j <= energy_j * (1 + 1e-9)
    if spread_s == 20.0 and all(a.deadline_s < b.release_s for a, b in itertools.pairwise(relaxed)):
        assert energy_j - floor.energy_j <= switches_uws * 1e-6 + 1e-9 * energy_j


# ------------------------------------------------------------------------------- scale


def test_speed_profile_is_disjoint_and_accounts_for_the_compute_energy() -> None:
    rng = np.random.default_rng(7)
    rel = np.sort(rng.uniform(0.0, 30.0, 400))
    jobs = [OracleJob(float(r), float(r + rng.uniform(0.02, 2.0)),
                      Work(float(rng.uniform(1.0, 120.0)), 0.0)) for r in rel]
    floor = energy_floor(RK, jobs, 30.0)
    env = power_envelope(RK, 1)
    starts = np.array([a for a, _, _ in floor.speeds])
    ends = np.array([b for _, b, _ in floor.speeds])
    assert np.all(ends > starts)
    assert np.all(starts[1:] >= ends[:-1] - 1e-9)
    pieces_j = sum(float(env.power_uw(s)) * (b - a) for a, b, s in floor.speeds) * 1e-6
    assert pieces_j == pytest.approx(floor.compute_j, rel=1e-9)


def test_poisson_3000_jobs_runs() -> None:
    rng = np.random.default_rng(2024)
    duration = 300.0
    classes = [("okay_nabu", 0.02), ("face_detection_short_range", 0.12),
               ("hand_landmark_lite", 0.25), ("mobilenet_v1", 2.0)]
    rel = np.sort(rng.uniform(0.0, duration, 3000))
    picks = rng.integers(0, len(classes), len(rel))
    jobs = [OracleJob(float(r), float(r + classes[k][1]), MODELS[classes[k][0]].work)
            for r, k in zip(rel, picks, strict=True)]
    floor = energy_floor(RK, jobs, duration)
    assert floor.energy_j > floor.idle_j > 0
    assert floor.compute_j > 0 and floor.memory_j > 0


class _LeastEnergyRuns(StaticPolicy):
    """Every request at its least-energy point (at the profile's default temperature)."""

    name = "least-energy"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        return Decision(*_least_energy_point(view.profile, ctx.head_work))


def test_floor_prices_leakage_at_the_coldest_temperature_of_the_run() -> None:
    """A profile whose leakage grows with temperature, in a scenario whose ambient is below the
    profile's default temperature: runs at their least-energy points leak less than at the
    default, and the floor (priced at the ambient) stays below what they spend; a floor priced
    at the default temperature would not."""
    leaky = dataclasses.replace(RK, clusters=tuple(
        dataclasses.replace(c, static_temp_coeff_per_c=0.02, default_temp_c=60.0)
        for c in RK.clusters))
    sc = dataclasses.replace(load_scenario("steady-light"), thermal={"ambient_c": 5.0})
    doc = run_policies(leaky, sc, {"least-energy": _LeastEnergyRuns()}, ["oracle"], seed=3,
                       duration_s=20.0, guard=False)
    row = doc["results"][0]
    assert row["policy"] == "least-energy" and row["peak_temp_c"] < 60.0
    # the same run again, to price the requests it served both ways
    jobs = generate(sc, 3, 20.0)
    assert leaky.thermal is not None
    stats = Engine(leaky, jobs, 20.0, thermal=leaky.thermal.with_conditions(ambient_c=5.0)).run(
        _LeastEnergyRuns(), 3)
    assert stats.total_energy_j == pytest.approx(row["energy_j"], rel=1e-12)
    served = _oracle_jobs(jobs, stats.outcome == Outcome.OK)
    assert energy_floor(leaky, served, 20.0, 5.0).energy_j == pytest.approx(row["floor_j"],
                                                                           rel=1e-12)
    assert row["energy_j"] >= row["floor_j"]
    assert row["energy_j"] < energy_floor(leaky, served, 20.0).energy_j  # at 60 C: not a floor
    # so cold that static power would fall below idle power: both price it at idle power
    cold = Engine(leaky, jobs, 20.0, thermal=leaky.thermal.with_conditions(ambient_c=-60.0))
    cold_stats = cold.run(_LeastEnergyRuns(), 3)
    little = leaky.clusters[0]
    assert little.static_power_uw(0, cold_stats.peak_temp_c) < little.idle_uw
    assert cold.leak_extra_uw(0, 0, -60.0) == pytest.approx(
        little.idle_uw - little.static_power_uw(0), rel=1e-12)
    cold_served = _oracle_jobs(jobs, cold_stats.outcome == Outcome.OK)
    assert cold_stats.total_energy_j >= energy_floor(leaky, cold_served, 20.0, -60.0).energy_j


def test_tables_priced_cold_never_go_below_idle_power() -> None:
    leaky = dataclasses.replace(RK, clusters=tuple(
        dataclasses.replace(c, static_temp_coeff_per_c=0.02, default_temp_c=60.0)
        for c in RK.clusters))
    jobs = generate(load_scenario("steady-light"), 0, 5.0)
    cold = BoardTables(leaky, jobs.model, temp_c=-60.0)
    for c, cl in enumerate(leaky.clusters):
        for o in range(len(cl.opps)):
            assert cold.static_uw[c][o] == pytest.approx(
                max(cl.idle_uw, cl.static_power_uw(o, -60.0)), rel=1e-12)
    engine = Engine(leaky, jobs, 5.0, tables=cold)
    for t in (-60.0, 20.0, 60.0, 90.0):  # what a run at t is priced at, over the tables
        for c, cl in enumerate(leaky.clusters):
            for o in range(len(cl.opps)):
                want = max(cl.idle_uw, cl.static_power_uw(o, t))
                got = cold.static_uw[c][o] + engine.leak_extra_uw(c, o, t)
                assert got == pytest.approx(want, rel=1e-9), (t, c, o)

