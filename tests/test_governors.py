"""Kernel governor baselines against hand-computed kernel values, and the policy registry."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesched.device import Work, load_profile
from edgesched.errors import PolicyError
from edgesched.observation import BoardView, Decision, DecisionContext
from edgesched.policy.base import Policy
from edgesched.policy.governors import (
    Conservative,
    ConservativeBig,
    Ondemand,
    OndemandBig,
    Performance,
    PerformanceBig,
    Powersave,
    PowersaveBig,
    Schedutil,
    SchedutilBig,
    dbs_sampling_rate_us,
    resolve_khz,
    tick_ns,
    transition_delay_us,
)
from edgesched.policy.registry import FACTORIES, make_policy, register, valid_specs

VIEWS = {name: BoardView.of(load_profile(name)) for name in ("rk3399", "exynos5422", "bcm2711")}
RK = VIEWS["rk3399"]
EXY = VIEWS["exynos5422"]
BIG = 1  # rk3399 / exynos5422 big cluster index
MHZ = 1000


def khz(view: BoardView, cluster: int, opp: int) -> int:
    return view.profile.clusters[cluster].opps[opp].khz


def opp_of(view: BoardView, cluster: int, mhz: int) -> int:
    return [o.khz for o in view.profile.clusters[cluster].opps].index(mhz * MHZ)


def ctx(view: BoardView, now_s: float, util: float, cur_opp: int) -> DecisionContext:
    n = view.n_clusters
    return DecisionContext(
        now_s=now_s, head_priority=1, head_deadline_s=now_s + 1.0,
        head_work=Work(compute_mcycles=10.0, mem_ms=1.0), levels=3, queue_len=1,
        urgent_waiting=0, backlog_ms=0.0, earliest_deadline_s=now_s + 1.0,
        cur_opp=[cur_opp] * n, arrival_rate_hz=1.0, utilisation=util,
        util_by_cluster=[util] * n, busy_fraction_by_cluster=[0.5] * n)


# ---------------------------------------------------------------------------------------------
# kernel helpers


def test_tick_and_default_delays() -> None:
    assert tick_ns(250) == 4_000_000
    assert tick_ns(100) == 10_000_000
    # 6.12 cpufreq_policy_transition_delay_us: latency_us * 1.5, 1 ms when unknown
    assert transition_delay_us(40_000) == 60
    assert transition_delay_us(140_000) == 210
    assert transition_delay_us(500_000) == 750
    assert transition_delay_us(0) == 1000
    assert transition_delay_us(999) == 1000  # below 1 us rounds to 0 -> fallback
    # DBS sampling rate: max(2 ticks, transition delay)
    assert dbs_sampling_rate_us(40_000) == 8000
    assert dbs_sampling_rate_us(500_000) == 8000
    assert dbs_sampling_rate_us(10_000_000) == 15_000
    assert dbs_sampling_rate_us(40_000, hz=100) == 20_000


def test_relations() -> None:
    table = (408_000, 600_000, 816_000, 1_008_000)
    assert resolve_khz(table, 700_000, "L") == 2
    assert resolve_khz(table, 600_000, "L") == 1
    assert resolve_khz(table, 700_000, "H") == 1
    assert resolve_khz(table, 700_000, "C") == 1  # 100 MHz below vs 116 MHz above
    assert resolve_khz(table, 720_000, "C") == 2
    assert resolve_khz(table, 708_000, "C") == 1  # exact tie goes to the lower OPP
    assert resolve_khz(table, 5_000_000, "L") == 3  # clamped to the table
    assert resolve_khz(table, 1, "H") == 0
    with pytest.raises(ValueError):
        resolve_khz(table, 1, "X")


# ---------------------------------------------------------------------------------------------
# schedutil


def test_schedutil_half_util_on_rk3399_big() -> None:
    gov = Schedutil()
    gov.reset(RK)
    # 1.25 * 1800 MHz * 0.5 = 1125 MHz -> lowest OPP at or above: 1200 MHz
    assert gov.raw_next_freq_khz(RK, BIG, 0.5) == 1_125_000
    assert khz(RK, BIG, gov.target_opp(RK, BIG, 0.5)) == 1_200_000
    assert gov.tick(RK, 0.0, BIG, 0, 0.5, 1.0) == opp_of(RK, BIG, 1200)


def test_schedutil_extremes_and_capacity_scale() -> None:
    gov = Schedutil()
    gov.reset(RK)
    assert gov.target_opp(RK, BIG, 0.0) == 0
    assert gov.target_opp(RK, BIG, 0.8) == len(RK.profile.clusters[BIG].opps) - 1  # tipping point
    # little cluster: capacity 381 (485 * 1416 / (1024 * 1800) * 1024); util is on the board scale
    # u = floor(0.2 * 1024) = 204, 204 + 51 = 255, 1416000 * 255 // 381 = 947716 -> 1008 MHz
    assert gov.raw_next_freq_khz(RK, 0, 0.2) == 1_416_000 * 255 // 381
    assert khz(RK, 0, gov.target_opp(RK, 0, 0.2)) == 1_008_000
    assert gov.target_opp(RK, 0, 0.5) == len(RK.profile.clusters[0].opps) - 1  # capped at cap


def test_schedutil_default_rate_limits() -> None:
    gov = Schedutil()
    assert gov.rate_limit_s(RK, BIG) == pytest.approx(60e-6)
    assert gov.rate_limit_s(EXY, BIG) == pytest.approx(210e-6)
    assert gov.rate_limit_s(VIEWS["bcm2711"], 0) == pytest.approx(750e-6)
    assert Schedutil(rate_limit_us=2000).rate_limit_s(RK, BIG) == pytest.approx(2e-3)
    assert gov.tick_s == pytest.approx(0.004)


def test_schedutil_rate_limit_blocks_second_change() -> None:
    gov = SchedutilBig(rate_limit_us=2000)
    gov.reset(RK)
    first = gov.tick(RK, 1.000, BIG, 0, 0.5, 1.0)
    assert khz(RK, BIG, first) == 1_200_000
    # inside the 2 ms window: the new demand is ignored, the last request stands
    assert gov.tick(RK, 1.0015, BIG, first, 0.9, 1.0) == first
    d = gov.decide(RK, ctx(RK, 1.0019, 0.9, first))
    assert d == Decision(RK.profile.fastest_cluster, first)
    # once the window has passed, the update goes through
    assert khz(RK, BIG, gov.tick(RK, 1.002, BIG, first, 0.9, 1.0)) == 1_800_000


def test_schedutil_window_restarts_only_on_a_change() -> None:
    gov = Schedutil(rate_limit_us=2000)
    gov.reset(RK)
    a = gov.tick(RK, 1.000, BIG, 0, 0.5, 1.0)
    # same target 3 ms later: no change, so last_freq_update_time stays at 1.000
    assert gov.tick(RK, 1.003, BIG, a, 0.52, 1.0) == a  # 532 + 133 -> 1169 MHz -> 1200
    # at 1.0035 a different target is allowed (3.5 ms since the last change)
    assert khz(RK, BIG, gov.tick(RK, 1.0035, BIG, a, 0.9, 1.0)) == 1_800_000


def test_schedutil_big_decide_updates_at_enqueue() -> None:
    gov = SchedutilBig()
    gov.reset(RK)
    d = gov.decide(RK, ctx(RK, 0.5, 0.5, 0))
    assert d.cluster == RK.profile.fastest_cluster == BIG
    assert khz(RK, BIG, d.opp) == 1_200_000


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0),
       board=st.sampled_from(sorted(VIEWS)), cluster=st.integers(0, 1))
def test_schedutil_monotone_in_util(a: float, b: float, board: str, cluster: int) -> None:
    view = VIEWS[board]
    ci = cluster % view.n_clusters
    lo, hi = min(a, b), max(a, b)
    gov = Schedutil()
    assert gov.target_opp(view, ci, lo) <= gov.target_opp(view, ci, hi)
    # and a fresh governor's first tick agrees with the unthrottled target
    fresh = Schedutil()
    assert fresh.tick(view, 0.0, ci, 0, hi, 1.0) == gov.target_opp(view, ci, hi)


# ---------------------------------------------------------------------------------------------
# ondemand


def test_ondemand_defaults() -> None:
    gov = Ondemand()
    assert gov.up_threshold == 95  # MICRO_FREQUENCY_UP_THRESHOLD (NO_HZ kernels)
    assert gov.sampling_down_factor == 1
    for view in VIEWS.values():
        for ci in range(view.n_clusters):
            assert gov.sampling_rate_s(view, ci) == pytest.approx(0.008)


def test_ondemand_high_load_goes_to_max() -> None:
    gov = Ondemand(up_threshold=80)
    gov.reset(RK)
    top = len(RK.profile.clusters[BIG].opps) - 1
    assert gov.tick(RK, 0.0, BIG, 0, 0.0, 0.9) == top


def test_ondemand_proportional_load_with_closest_relation() -> None:
    gov = Ondemand(up_threshold=80)
    gov.reset(RK)
    # 408 + 50 * (1800 - 408) / 100 = 1104 MHz: exactly between 1008 and 1200 -> the lower one
    assert khz(RK, BIG, gov.tick(RK, 0.0, BIG, 7, 0.0, 0.5)) == 1_008_000
    # load 60 -> 408 + 835.2 = 1243.2 MHz -> closest 1200
    assert khz(RK, BIG, gov.tick(RK, 0.008, BIG, 4, 0.0, 0.6)) == 1_200_000


def test_ondemand_default_threshold_is_95() -> None:
    gov = Ondemand()
    gov.reset(RK)
    # load 90 <= 95: 408 + 90 * 1392 / 100 = 1660.8 MHz -> closest 1608 MHz
    assert khz(RK, BIG, gov.tick(RK, 0.0, BIG, 0, 0.0, 0.9)) == 1_608_000
    assert khz(RK, BIG, gov.tick(RK, 0.008, BIG, 0, 0.0, 0.96)) == 1_800_000


def test_ondemand_samples_every_sampling_rate() -> None:
    gov = Ondemand(up_threshold=80)
    gov.reset(RK)
    top = len(RK.profile.clusters[BIG].opps) - 1
    assert gov.tick(RK, 0.000, BIG, 0, 0.0, 1.0) == top
    # 4 ms later (one scheduler tick): too early to sample, keep the current OPP
    assert gov.tick(RK, 0.004, BIG, top, 0.0, 0.0) == top
    # at 8 ms the window [0, 8 ms] was busy for 0 of 8 ms -> minimum
    assert gov.tick(RK, 0.008, BIG, top, 0.0, 0.0) == 0


def test_ondemand_reuses_load_after_idle_gap_once() -> None:
    gov = Ondemand(up_threshold=80)
    gov.reset(RK)
    top = len(RK.profile.clusters[BIG].opps) - 1
    assert gov.tick(RK, 0.000, BIG, 0, 0.0, 0.9) == top
    # 200 ms idle (> 2 * sampling_rate): the load of the last busy window is reused once
    assert gov.tick(RK, 0.200, BIG, top, 0.0, 0.0) == top
    assert gov.tick(RK, 0.208, BIG, top, 0.0, 0.0) == 0
    # a second long idle gap right after finds prev_load == 0 and computes load 0
    assert gov.tick(RK, 0.400, BIG, 0, 0.0, 0.0) == 0


def test_ondemand_big_decide_keeps_current_opp() -> None:
    gov = OndemandBig()
    gov.reset(RK)
    assert gov.decide(RK, ctx(RK, 0.0, 0.9, 3)) == Decision(BIG, 3)


# ---------------------------------------------------------------------------------------------
# conservative


def test_conservative_steps_five_percent_of_max() -> None:
    # exynos5422 big: OPPs every 100 MHz up to 2000 MHz, so one 5 % step (100 MHz) is one OPP
    gov = Conservative()
    gov.reset(EXY)
    cur = opp_of(EXY, BIG, 1000)
    up = gov.tick(EXY, 0.000, BIG, cur, 0.0, 0.9)
    assert khz(EXY, BIG, up) == 1_100_000
    assert gov.requested_khz(EXY, BIG) == 1_100_000
    down = gov.tick(EXY, 0.008, BIG, up, 0.0, 0.1)
    assert khz(EXY, BIG, down) == 1_000_000
    # between the thresholds nothing moves
    assert gov.tick(EXY, 0.016, BIG, down, 0.0, 0.5) == down
    assert gov.requested_khz(EXY, BIG) == 1_000_000


def test_conservative_resolution_on_rk3399() -> None:
    # rk3399 big: step = 5 % of 1800 MHz = 90 MHz; up resolves H (at or below), down L (at/above)
    gov = Conservative()
    gov.reset(RK)
    cur = opp_of(RK, BIG, 1200)
    seen = []
    t = 0.0
    for _ in range(3):
        cur = gov.tick(RK, t, BIG, cur, 0.0, 0.95)
        seen.append((gov.requested_khz(RK, BIG), khz(RK, BIG, cur)))
        t += 0.008
    assert seen == [(1_290_000, 1_200_000), (1_380_000, 1_200_000), (1_470_000, 1_416_000)]
    cur = gov.tick(RK, t, BIG, cur, 0.0, 0.05)
    assert (gov.requested_khz(RK, BIG), khz(RK, BIG, cur)) == (1_380_000, 1_416_000)


@pytest.mark.parametrize("board", sorted(VIEWS))
def test_conservative_stays_inside_the_table(board: str) -> None:
    view = VIEWS[board]
    ci = view.profile.fastest_cluster
    table = [o.khz for o in view.profile.clusters[ci].opps]
    gov = Conservative()
    gov.reset(view)
    cur, t = 0, 0.0
    for _ in range(40):
        cur = gov.tick(view, t, ci, cur, 0.0, 1.0)
        t += 0.008
        assert 0 <= cur < len(table)
        assert table[0] <= (gov.requested_khz(view, ci) or 0) <= table[-1]
    assert cur == len(table) - 1
    assert gov.requested_khz(view, ci) == table[-1]
    for _ in range(40):
        cur = gov.tick(view, t, ci, cur, 0.0, 0.0)
        t += 0.008
        assert 0 <= cur < len(table)
    assert cur == 0
    assert gov.requested_khz(view, ci) == table[0]


def test_conservative_drops_a_step_per_idle_period() -> None:
    gov = Conservative()
    gov.reset(EXY)
    cur = gov.tick(EXY, 0.000, BIG, opp_of(EXY, BIG, 1900), 0.0, 0.9)
    assert gov.requested_khz(EXY, BIG) == 2_000_000
    # 40 ms asleep = 5 sampling periods: requested drops 5 steps, then the reused load (90 %)
    # raises it one step: 2000 - 500 + 100 = 1600 MHz
    cur = gov.tick(EXY, 0.040, BIG, cur, 0.0, 0.0)
    assert gov.requested_khz(EXY, BIG) == 1_600_000
    assert khz(EXY, BIG, cur) == 1_600_000


def test_conservative_threshold_validation() -> None:
    with pytest.raises(ValueError):
        Conservative(up_threshold=20, down_threshold=20)
    with pytest.raises(ValueError):
        Ondemand(up_threshold=5)
    with pytest.raises(ValueError):
        Ondemand(sampling_rate_us=1000)  # below two ticks


# ---------------------------------------------------------------------------------------------
# registry


@pytest.mark.parametrize("spec,cls", [
    ("performance", Performance), ("powersave", Powersave), ("ondemand", Ondemand),
    ("conservative", Conservative), ("schedutil", Schedutil),
    ("performance-big", PerformanceBig), ("powersave-big", PowersaveBig),
    ("ondemand-big", OndemandBig), ("conservative-big", ConservativeBig),
    ("schedutil-big", SchedutilBig)])
def test_make_policy_builtins(spec: str, cls: type) -> None:
    policy = make_policy(spec)
    assert isinstance(policy, cls)
    assert isinstance(policy, Policy)
    assert policy.name == spec
    assert make_policy(spec) is not policy  # fresh instance each time


@pytest.mark.parametrize("spec", ["", "  ", "bogus", "Schedutil", "schedutil:fast", "learned"])
def test_make_policy_errors_list_valid_specs(spec: str) -> None:
    with pytest.raises(PolicyError) as info:
        make_policy(spec)
    msg = str(info.value)
    assert "schedutil" in msg
    if spec.strip() and ":" not in spec:
        for name in ("performance", "powersave", "ondemand", "conservative"):
            assert name in msg


def test_register_extension_point() -> None:
    made: list[str] = []

    def factory(spec: str) -> Policy:
        made.append(spec)
        return Performance()

    register("testonly", factory, usage="testonly:PATH")
    try:
        assert "testonly:PATH" in valid_specs()
        assert isinstance(make_policy("testonly:/tmp/x:y"), Performance)
        assert made == ["testonly:/tmp/x:y"]
        with pytest.raises(ValueError):
            register("testonly", factory)
        with pytest.raises(ValueError):
            register("bad:prefix", factory)
    finally:
        FACTORIES.pop("testonly", None)
    with pytest.raises(PolicyError):
        make_policy("testonly:/tmp/x")


def test_registry_imports_nothing_heavy() -> None:
    code = ("import sys, edgesched.policy.registry; "
            "print(','.join(m for m in ('torch', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
