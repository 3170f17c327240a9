"""Kernel placement (EAS and capacity-aware wake-up) and util_est, against numbers worked by hand
from the Linux 6.12 formulas (kernel/sched/fair.c, include/linux/energy_model.h)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from edgesched.device import Work, load_profile
from edgesched.observation import BoardView, Decision, DecisionContext
from edgesched.policy.eas import EnergyModel, PerfDomain, PerfState, first_cluster, fits_capacity
from edgesched.policy.governors import Ondemand, Performance, Powersave, Schedutil, SchedutilBig
from edgesched.utilisation import PeltTracker, TaskUtil, util_est_update
from edgesched_sim.engine import Engine
from edgesched_sim.scenarios import generate, load_scenario

RK_PROFILE = load_profile("rk3399")
RK = BoardView.of(RK_PROFILE)
EM = EnergyModel.of(RK_PROFILE)
LITTLE, BIG = 0, 1


def ctx(util: int, est: int, prev: int, woken: bool = True, now_s: float = 1.0) -> DecisionContext:
    return DecisionContext(
        now_s=now_s, head_priority=2, head_deadline_s=now_s + 1.0,
        head_work=Work(compute_mcycles=10.0, mem_ms=1.0), levels=3, queue_len=1,
        urgent_waiting=0, backlog_ms=0.0, earliest_deadline_s=now_s + 1.0, cur_opp=[0, 0],
        arrival_rate_hz=1.0, utilisation=0.0, util_by_cluster=[0.0, 0.0],
        busy_fraction_by_cluster=[0.0, 0.0], task_util=util / 1024, task_util_est=est / 1024,
        task_cluster=prev, task_woken=woken)


# ---------------------------------------------------------------------------------------------
# capacities, the 1280/1024 margin and the Energy Model


def test_capacities_and_fits_capacity_margin() -> None:
    # topology_normalize_cpu_scale: 485 * 1416 MHz / (1024 * 1800 MHz) * 1024 = 381.5 -> 381
    assert EM.capacities == (381, 1024)
    # fits_capacity(u, 381): u * 1280 < 381 * 1024 = 390144 -> u <= 304
    assert fits_capacity(304, 381) and not fits_capacity(305, 381)
    # fits_capacity(u, 1024): u * 1280 < 1048576 -> u <= 819
    assert fits_capacity(819, 1024) and not fits_capacity(820, 1024)


def test_energy_model_of_rk3399_by_hand() -> None:
    little, big = EM.domains
    # LITTLE 600 MHz, 825 mV: power = 100 * 825^2 * 600 / 1e6 = 40837 uW,
    # performance = 381 * 600000 // 1416000 = 161, cost = 10 * 40837 // 161 = 2536
    assert little.states[1] == PerfState(600_000, 161, 40_837, 2536)
    # big 408 MHz, 825 mV: power = 436 * 825^2 * 408 / 1e6 = 121075 uW,
    # performance = 1024 * 408000 // 1800000 = 232, cost = 1210750 // 232 = 5218
    assert big.states[0] == PerfState(408_000, 232, 121_075, 5218)
    # a task of util 100: max_util = 100 + 25 = 125 -> LITTLE's first state >= 125 is 600 MHz
    # (161), big's is 408 MHz (232); energy = cost * busy time (100)
    assert little.energy(100) == 2536 * 100
    assert big.energy(100) == 5218 * 100
    assert little.energy(0) == 0  # em_cpu_energy: no busy time, no energy


# ---------------------------------------------------------------------------------------------
# find_energy_efficient_cpu


def test_small_task_fits_little_and_eas_puts_it_there() -> None:
    # util 100 fits both; LITTLE costs 253600 against big's 521800: EAS leaves big for LITTLE
    assert EM.find_energy_efficient(BIG, 100) == LITTLE
    assert EM.find_energy_efficient(LITTLE, 100) == LITTLE
    assert EM.place(BIG, 100, 100, woken=True, eas=True) == LITTLE
    d = Schedutil().decide(RK, ctx(100, 100, BIG))
    assert d.cluster == LITTLE
    # schedutil on LITTLE: 1416000 * (100 + 25) // 381 = 464566 kHz -> 600 MHz
    assert RK_PROFILE.clusters[LITTLE].opps[d.opp].khz == 600_000


def test_heavy_task_does_not_fit_little_and_goes_big() -> None:
    # 305 misses the 1280/1024 margin of LITTLE's 381; 304 still fits
    assert EM.find_energy_efficient(LITTLE, 305) == BIG
    assert EM.find_energy_efficient(LITTLE, 304) == LITTLE
    d = Schedutil().decide(RK, ctx(305, 305, LITTLE))
    assert d.cluster == BIG
    # (305 + 76) = 381 -> 1800000 * 381 // 1024 = 669726 kHz -> 816 MHz
    assert RK_PROFILE.clusters[BIG].opps[d.opp].khz == 816_000


def test_no_util_keeps_prev_and_no_fit_keeps_prev() -> None:
    assert EM.find_energy_efficient(BIG, 0) == BIG  # task_util_est(p) == 0: prev_cpu
    assert EM.find_energy_efficient(LITTLE, 900) == LITTLE  # fits nowhere: prev_cpu


def _twins() -> EnergyModel:
    states = (PerfState(500_000, 512, 100_000, 1953), PerfState(1_000_000, 1024, 400_000, 3906))
    return EnergyModel((PerfDomain(0, 1024, 2, states), PerfDomain(1, 1024, 2, states)), 0)


def test_prev_cpu_wins_a_tie() -> None:
    em = _twins()
    # same energy in both domains: only a strictly lower energy moves the task
    assert em.find_energy_efficient(0, 300) == 0
    assert em.find_energy_efficient(1, 300) == 1


def test_overutilised_disables_eas() -> None:
    def dom(ci: int, cap: int, cost: int) -> PerfDomain:
        return PerfDomain(ci, cap, 2, (PerfState(1_000_000, cap, cost * cap // 10, cost),))

    # three clusters; the biggest is (artificially) the cheapest
    em = EnergyModel((dom(0, 300, 400), dom(1, 600, 300), dom(2, 1024, 200)), 0)
    # task util 100 on cluster 0 fits there (100 * 1280 < 300 * 1024): EAS picks the cheapest
    assert em.place(0, 100, 100, woken=True, eas=True) == 2
    # util 260 on cluster 0: 260 * 1280 = 332800 >= 307200, the root domain is overutilised;
    # select_idle_capacity takes the first cluster after prev where it fits: 1, not 2
    assert em.place(0, 260, 260, woken=True, eas=True) == 1
    assert em.find_energy_efficient(0, 260) == 2


# ---------------------------------------------------------------------------------------------
# without EAS: select_idle_capacity and misfit


def test_capacity_aware_wakeup_without_eas() -> None:
    # a small task stays where it ran (an idle prev_cpu that fits is taken at once)
    assert EM.place(BIG, 100, 100, woken=True, eas=False) == BIG
    assert EM.place(LITTLE, 100, 100, woken=True, eas=False) == LITTLE
    # one that does not fit LITTLE goes to the first fitting CPU after it: big
    assert EM.place(LITTLE, 305, 305, woken=True, eas=False) == BIG
    # fitting nowhere: the idle CPU of the highest capacity
    assert EM.place(LITTLE, 900, 900, woken=True, eas=False) == BIG
    assert Performance().decide(RK, ctx(100, 100, BIG)).cluster == BIG
    assert Powersave().decide(RK, ctx(100, 100, LITTLE)) == (LITTLE, 0)
    assert Ondemand().decide(RK, ctx(400, 400, LITTLE)).cluster == BIG


def test_a_running_task_is_not_placed_again_unless_misfit() -> None:
    # kept running from the previous request (not woken): no EAS, even when LITTLE is cheaper
    assert EM.place(BIG, 100, 100, woken=False, eas=True) == BIG
    # misfit on LITTLE: the load balancer pulls it up
    assert EM.place(LITTLE, 320, 320, woken=False, eas=True) == BIG
    assert EM.place(LITTLE, 300, 300, woken=False, eas=True) == LITTLE


def test_a_new_task_starts_on_the_cluster_with_most_cpus() -> None:
    assert first_cluster(RK_PROFILE) == LITTLE  # 4 A53 against 2 A72
    assert first_cluster(load_profile("exynos5422")) == 0  # 4 and 4: the lower CPU numbers
    assert EM.place(-1, 100, 100, woken=True, eas=True) == LITTLE


# ---------------------------------------------------------------------------------------------
# util_est


def test_util_est_ewma_and_margin_by_hand() -> None:
    # a decrease: ewma = (4 * 400 - (400 - 200)) >> 2 = 1400 >> 2 = 350
    assert util_est_update(400, 200, 1024) == 350
    # the margin is SCHED_CAPACITY_SCALE / 100 = 10: a gap of 9 leaves it, 10 updates it
    assert util_est_update(400, 391, 1024) == 400
    assert util_est_update(400, 390, 1024) == (1600 - 10) >> 2 == 397
    # a rise is taken at once (no smoothing upwards)
    assert util_est_update(200, 300, 1024) == 300
    assert util_est_update(300, 300, 1024) == 300
    # dequeued above the CPU's capacity: no idle time there, the sample is not used
    assert util_est_update(500, 390, 381) == 500
    # the task waited for the CPU (runnable well above util): no update
    assert util_est_update(400, 200, 1024, runnable=300) == 400
    assert util_est_update(400, 200, 1024, runnable=210) == 350


def test_util_est_decays_a_quarter_per_activation() -> None:
    ewma = 800
    seen = []
    for _ in range(3):
        ewma = util_est_update(ewma, 400, 1024)
        seen.append(ewma)
    # 800 -> (3200 - 400) >> 2 = 700 -> (2800 - 300) >> 2 = 625 -> (2500 - 225) >> 2 = 568
    assert seen == [700, 625, 568]


def test_util_est_keeps_a_periodic_tasks_estimate_across_idle() -> None:
    task = TaskUtil((381, 1024), first_cluster=BIG)
    cluster_pelt = PeltTracker()
    t = 0.0
    for _ in range(3):  # 20 ms at big's top speed every 100 ms
        task.enqueue(t, BIG)
        cluster_pelt.advance(t, 0.0)
        task.advance(t + 0.020, 1.0)
        cluster_pelt.advance(t + 0.020, 1.0)
        task.dequeue(t + 0.020)
        t += 0.100
    # after each 80 ms sleep util_avg has lost 2^(-80/32) of itself; util_est has not
    on_dequeue = task.util_est
    task.advance(t, 0.0)
    assert task.util == pytest.approx(cluster_pelt.advance(t, 0.0))
    assert task.util_int < on_dequeue / 4
    assert task.util == pytest.approx(on_dequeue / 1024 * 2 ** (-80 / 32), abs=2e-3)
    # the first activation by hand: util = 1 - 2^(-20/32) -> 360; later ones start above 0
    first = TaskUtil((381, 1024), first_cluster=BIG)
    first.enqueue(0.0, BIG)
    first.advance(0.020, 1.0)
    first.dequeue(0.020)
    assert first.util_est == math.floor((1 - 2 ** (-20 / 32)) * 1024) == 360
    assert on_dequeue > 360
    # cpu_util: asleep, only the decayed util_avg; once enqueued again, util_est counts
    assert task.cpu_util(BIG) == pytest.approx(task.util)
    assert task.cpu_util(LITTLE) == 0.0
    task.enqueue(t, BIG)
    assert task.cpu_util(BIG) == pytest.approx(on_dequeue / 1024)
    # schedutil at the wake-up sizes the frequency for util_est, schedutil-big for util_avg
    c = ctx(task.util_int, task.util_est, BIG)
    placed = Schedutil().decide(RK, c)
    assert placed.cluster == BIG  # util_est > 304 does not fit LITTLE
    est = task.util_est
    khz = 1_800_000 * (est + (est >> 2)) // 1024
    table = [o.khz for o in RK_PROFILE.clusters[BIG].opps]
    assert table[placed.opp] == min(k for k in table if k >= khz)
    c.util_by_cluster = [0.0, task.util]
    assert SchedutilBig().decide(RK, c).opp < placed.opp


def test_unchanged_util_skips_the_update() -> None:
    task = TaskUtil((381, 1024))
    task.util_est = 300
    task.enqueue(0.0, LITTLE)
    task.dequeue(0.0)  # PELT did not move since the enqueue (UTIL_AVG_UNCHANGED)
    assert task.util_est == 300
    with pytest.raises(ValueError):
        TaskUtil(())


# ---------------------------------------------------------------------------------------------
# the simulator


def _clusters_run(policy: str, seed: int = 0) -> list[int]:
    from edgesched.policy.registry import make_policy

    jobs = generate(load_scenario("mixed-priority"), seed, 20.0)
    engine = Engine(RK_PROFILE, jobs, 20.0)
    stats = engine.run(make_policy(policy), seed)
    ran = stats.cluster[stats.cluster >= 0]
    return [int((ran == ci).sum()) for ci in range(len(RK_PROFILE.clusters))]


def test_schedutil_runs_some_requests_on_little_and_schedutil_big_none() -> None:
    placed = _clusters_run("schedutil")
    pinned = _clusters_run("schedutil-big")
    assert placed[LITTLE] > 0 and placed[BIG] > 0
    assert pinned[LITTLE] == 0 and pinned[BIG] > 0
    assert sum(placed) > 0.9 * sum(pinned)


# ---------------------------------------------------------------------------------------------
# the daemon's dispatcher on the virtual board


class _Clock:
    def __init__(self) -> None:
        self.now_s = 50.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


class _Recording(Schedutil):
    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[DecisionContext] = []

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        self.contexts.append(ctx)
        return super().decide(view, ctx)


def test_dispatcher_feeds_the_task_signals_to_schedutil(tmp_path: Path) -> None:
    import numpy as np
    from conftest import MODELS_DIR

    from edgesched.power.backends import VirtualBoard
    from edgesched.power.meters import CarbonAccount
    from edgesched.queue import RequestQueue
    from edgesched.server.admission import InferRequest
    from edgesched.server.dispatcher import Dispatcher, Job, Outcome
    from edgesched.server.metrics import Metrics
    from edgesched.server.runner import load_model

    clock = _Clock()
    # 1000 times slower than the host: every run lasts tens of ms on the emulated board
    board = VirtualBoard(RK_PROFILE, runtime_dir=tmp_path, clock=clock, sleep=clock.sleep,
                         slowdown=1000.0)
    model = load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)
    policy = _Recording()
    disp = Dispatcher(board, policy, RequestQueue(levels=3, max_count=8),
                      Metrics(CarbonAccount(500.0)), clock=clock, pin_threads=False,
                      idle_wait_s=0.01, inline_max_s=1e9)
    answers: list[Outcome] = []
    answered = threading.Condition()

    def answer(out: Outcome) -> None:
        with answered:
            answers.append(out)
            answered.notify_all()

    disp.start()
    try:
        for i in range(3):
            req = InferRequest(model=model.name, request_id=str(i),
                               inputs={"serving_default_input_audio:0":
                                       np.zeros((1, 3, 40), np.int8)},
                               outputs=(("StatefulPartitionedCall:0", True),), priority=2,
                               timeout_us=None, size_bytes=200)
            disp.submit(Job(req=req, model=model, deadline_s=float("inf"), answer=answer))
            with answered:
                assert answered.wait_for(lambda n=i + 1: len(answers) == n, 30)
            clock.now_s += 0.2  # asleep for 200 ms
    finally:
        disp.close(0.0)
        assert disp.join(30)
        board.close()
    assert [a.status for a in answers] == [200, 200, 200]
    first, second = policy.contexts[0], policy.contexts[1]
    assert first.task_woken and first.task_util == 0.0 and first.task_util_est == 0.0
    assert second.task_woken
    assert second.task_cluster == answers[0].parameters["cluster"]
    # the estimate kept from the first run's dequeue outlives the decayed util_avg
    assert second.task_util_est > second.task_util > 0.0


def test_a_wake_up_in_the_simulator_sizes_the_frequency_for_util_est() -> None:
    """After an idle gap the wake-up's own update decides (a NO_HZ kernel does not tick an idle
    CPU): the OPP is schedutil's for max(util_avg, util_est) on the chosen cluster."""
    rows: list[tuple[float, DecisionContext, Decision]] = []

    class Watched(Schedutil):
        def decide(self, view: BoardView, c: DecisionContext) -> Decision:
            d = super().decide(view, c)
            rows.append((c.now_s, c, d))
            return d

    jobs = generate(load_scenario("mixed-priority"), 4, 10.0)
    stats = Engine(RK_PROFILE, jobs, 10.0).run(Watched(), 4)
    finishes = sorted(float(f) for f in stats.finish_s if not math.isnan(f))
    probe = Schedutil()
    checked = 0
    for now, c, d in rows:
        before = [f for f in finishes if f <= now]
        if not c.task_woken or (before and now - before[-1] <= 1e-3):
            continue  # kept running, or woken within the rate limit of the last change
        util = max(c.task_util, c.task_util_est)
        assert d.opp == probe.target_opp(RK, d.cluster, util), (now, c.task_util_est)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("name", ["rk3399", "exynos5422", "rk3588", "bcm2711"])
def test_remembered_placements_are_the_computed_ones(name: str, monkeypatch) -> None:
    em = EnergyModel.of(load_profile(name))
    monkeypatch.setattr("edgesched.policy.eas.PLACED_MAX", 50)
    n = len(em.domains)
    args = [(prev, avg, est, woken, eas) for prev in (-1, *range(n)) for avg in range(0, 1025, 97)
            for est in (avg, min(1024, avg + 150)) for woken in (True, False)
            for eas in (True, False)]
    for _ in range(2):  # computed, then (for what is still kept) remembered
        for a in args:
            assert em.place(*a) == em._place(*a), a
            assert len(em._placed) <= 50
