"""``slack``: the least-energy (cluster, OPP) that meets the head's deadline, leaves the queue its
time and respects the priority-1 blocking limit; worked by hand on the shipped RK3399 profile,
checked against brute force, in the simulator and through the daemon's dispatcher."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import MODELS_DIR, FakeClock, GatedBoard

from edgesched.device import DeviceProfile, load_profile
from edgesched.observation import (
    BLOCKING_SHARE,
    BoardView,
    Decision,
    DecisionContext,
    Waiting,
    run_limit_s,
    run_time_s,
    waiting_of,
)
from edgesched.policy.governors import Schedutil
from edgesched.policy.registry import FACTORIES, make_policy
from edgesched.policy.slack import GuardedSlack, SlackPolicy, queue_room_s
from edgesched.power.meters import CarbonAccount
from edgesched.queue import Entry, RequestQueue
from edgesched.server.admission import InferRequest
from edgesched.server.dispatcher import Dispatcher, Job, Outcome
from edgesched.server.metrics import Metrics
from edgesched.server.runner import LoadedModel, load_model
from edgesched_sim.engine import MISSED, Engine
from edgesched_sim.scenarios import generate, load_scenario

RK = load_profile("rk3399")
VIEW = BoardView.of(RK)
WORK_20MS = RK.work_from_top_latency(20.0)
"""20 ms at the A72's top OPP. By RK3399's profile (run time ms / energy above idle mJ):
LITTLE 816 MHz 57.3/5.18 (the least energy), 1008 MHz 48.3/6.06, 1200 MHz 42.1/7.07,
1416 MHz 37.2/9.04; big 816 MHz 32.3/10.81, 1008 MHz 28.0/12.45, 1416 MHz 22.8/18.39,
1800 MHz 20.0/27.19. Every OPP change adds 0.04 ms."""
LITTLE, BIG = 0, 1
NOW_S = 10.0


def ctx_for(deadline_ms: float, *, priority: int = 2, waiting: tuple[Waiting, ...] = (),
            urgent_timeout_s: float = math.inf, cur_opp: list[int] | None = None,
            profile: DeviceProfile = RK, work_ms: float = 20.0, timeout_ms: float = math.inf,
            arrival_rate_hz: float = 0.0, now_s: float = NOW_S) -> DecisionContext:
    """A head due in ``deadline_ms``; it arrived ``timeout_ms - deadline_ms`` ago."""
    n = len(profile.clusters)
    return DecisionContext(
        now_s=now_s, head_priority=priority, head_deadline_s=now_s + deadline_ms / 1000.0,
        head_work=WORK_20MS if profile is RK and work_ms == 20.0
        else profile.work_from_top_latency(work_ms),
        levels=3, queue_len=len(waiting), urgent_waiting=0,
        backlog_ms=sum(w.service_ms for w in waiting),
        earliest_deadline_s=min((w.deadline_s for w in waiting), default=math.inf),
        cur_opp=list(cur_opp or [0] * n), arrival_rate_hz=arrival_rate_hz, utilisation=0.0,
        util_by_cluster=[0.0] * n, busy_fraction_by_cluster=[0.0] * n,
        urgent_timeout_s=urgent_timeout_s,
        head_enqueued_s=now_s + (deadline_ms - timeout_ms) / 1000.0,
        waiting_in_order=lambda: waiting)


def decide(ctx: DecisionContext, view: BoardView = VIEW) -> Decision:
    return SlackPolicy().decide(view, ctx)


def energy_above_idle_j(view: BoardView, ctx: DecisionContext, d: Decision) -> float:
    """What the simulator's engine charges for running the head at ``d`` beyond idling."""
    c = view.profile.clusters[d.cluster]
    run_s = view.profile.latency_ms(ctx.head_work, d.cluster, d.opp) / 1000.0
    j = (c.busy_power_uw(d.opp, ctx.head_work.threads) - c.idle_uw) * run_s * 1e-6
    if d.opp != ctx.cur_opp[d.cluster]:
        j += (c.static_power_uw(d.opp) - c.idle_uw) * c.transition_latency_ns * 1e-15
    return j


def all_decisions(view: BoardView) -> list[Decision]:
    return [Decision(c, o) for c, cl in enumerate(view.profile.clusters)
            for o in range(len(cl.opps))]


# ------------------------------------------------------------------------ hand-worked choices
@pytest.mark.parametrize(("deadline_ms", "expected"), [
    (1000.0, Decision(LITTLE, 2)),   # nothing binds: the least energy anywhere
    (50.0, Decision(LITTLE, 3)),     # 48.3 ms is the cheapest that fits
    (45.0, Decision(LITTLE, 4)),     # LITTLE at 1200 MHz (7.07 mJ) beats big at 816 (10.81)
    (30.0, Decision(BIG, 3)),        # nothing on LITTLE fits; big at 1008 MHz, 28.0 ms
    (21.0, Decision(BIG, 7)),        # only the top OPP fits
    (15.0, Decision(BIG, 7)),        # nothing fits: the fastest
])
def test_cheapest_option_that_meets_the_deadline(deadline_ms: float, expected: Decision) -> None:
    assert decide(ctx_for(deadline_ms)) == expected


def test_cheapest_is_what_the_simulator_charges() -> None:
    """With a loose deadline the choice is the brute-force minimum of the engine's charge,
    switch costs included, whatever OPP each cluster is at."""
    for cur in ([0, 0], [2, 7], [5, 3]):
        ctx = ctx_for(10_000.0, cur_opp=cur)
        best = min(all_decisions(VIEW), key=lambda d: energy_above_idle_j(VIEW, ctx, d))
        assert decide(ctx) == best


def test_engine_measures_what_slack_predicts() -> None:
    """One request alone on the simulated board costs exactly the predicted energy above idle."""
    jobs = generate(load_scenario("steady-light"), seed=3, duration_s=2.0)
    engine = Engine(RK, jobs, 2.0)
    engine.reset()
    policy = SlackPolicy()
    policy.reset(engine.view)
    head = engine.next_head(policy)
    assert head is not None and len(engine.queue) == 0
    ctx = engine.context(head)
    d = policy.decide(engine.view, ctx)
    assert d.opp != ctx.cur_opp[d.cluster], "the run includes an OPP change"
    ctx = dataclasses.replace(ctx, cur_opp=list(ctx.cur_opp))  # the engine's list changes
    extra_before = engine.extra_j
    engine.run_head(head, d, policy)
    assert engine.extra_j - extra_before == pytest.approx(energy_above_idle_j(engine.view, ctx, d),
                                                          rel=1e-12)
    assert engine.now - ctx.now_s == pytest.approx(run_time_s(engine.view, ctx, d), rel=1e-12)


@pytest.mark.parametrize("board", ["rk3399", "exynos5422", "bcm2711"])
def test_never_misses_the_head_when_an_option_meets_it(board: str) -> None:
    profile = load_profile(board)
    view = BoardView.of(profile)
    rng = np.random.default_rng(7)
    policy = SlackPolicy()
    met = 0
    for _ in range(400):
        n = len(profile.clusters)
        cur = [int(rng.integers(len(c.opps))) for c in profile.clusters]
        waiting = tuple(Waiting(NOW_S + float(rng.uniform(0.0, 0.3)), float(rng.uniform(1, 40)),
                                int(rng.integers(1, 4))) for _ in range(int(rng.integers(0, 4))))
        ctx = ctx_for(float(rng.uniform(1.0, 150.0)), priority=int(rng.integers(1, 4)),
                      waiting=waiting, cur_opp=cur[:n], profile=profile,
                      work_ms=float(rng.uniform(2.0, 60.0)),
                      urgent_timeout_s=float(rng.choice([math.inf, rng.uniform(0.005, 0.2)])))
        room_s = ctx.head_deadline_s - ctx.now_s
        times = [run_time_s(view, ctx, d) for d in all_decisions(view)]
        chosen = policy.decide(view, ctx)
        if min(times) <= room_s:
            met += 1
            assert run_time_s(view, ctx, chosen) <= room_s
        else:
            assert run_time_s(view, ctx, chosen) == min(times), "nothing meets it: the fastest"
    assert 100 < met < 400, "both cases were exercised"


# ------------------------------------------------------------------------ the queue behind the head
def test_speeds_up_when_a_queued_request_would_otherwise_miss() -> None:
    """Alone, the head runs 57.3 ms on LITTLE. Behind it waits a 20 ms request due in 60 ms:
    at top speed the head would hand over after 20.04 ms and the waiting one end at 40.04 ms,
    19.96 ms early, so the head (plus the switch to big's top OPP for the next request) must
    hand over within 40 ms: LITTLE at 1416 MHz (37.26 ms, 9.04 mJ) beats big at 816 MHz."""
    alone = decide(ctx_for(1000.0))
    assert alone == Decision(LITTLE, 2)
    tight = (Waiting(NOW_S + 0.060, 20.0, 2),)
    chosen = decide(ctx_for(1000.0, waiting=tight))
    assert chosen == Decision(LITTLE, 5)
    # the waiting request meets its deadline when served at top speed after the choice
    start_s = run_time_s(VIEW, ctx_for(1000.0), chosen) + VIEW.transition_s[BIG]
    assert NOW_S + start_s + 0.020 <= NOW_S + 0.060
    # ... and one more OPP step down on LITTLE would have made it miss
    slower = run_time_s(VIEW, ctx_for(1000.0), Decision(LITTLE, 4)) + VIEW.transition_s[BIG]
    assert NOW_S + slower + 0.020 > NOW_S + 0.060


def test_a_request_that_misses_anyway_does_not_hold_the_head() -> None:
    hopeless = (Waiting(NOW_S + 0.030, 20.0, 1),)  # 20.04 + 20 ms > 30 ms even at top speed
    assert decide(ctx_for(1000.0, waiting=hopeless)) == Decision(LITTLE, 2)


def test_queue_room_follows_the_service_order() -> None:
    # a long request first pushes a short, tight one behind it past its deadline
    long_first = [Waiting(NOW_S + 1.0, 100.0, 1), Waiting(NOW_S + 0.050, 10.0, 2)]
    assert queue_room_s(long_first, NOW_S, 0.0) == pytest.approx(0.9)
    assert queue_room_s(long_first[::-1], NOW_S, 0.0) == pytest.approx(0.040)
    # one whose deadline passes before it could start is dropped and takes no time
    expired = [Waiting(NOW_S + 0.005, 50.0, 1), Waiting(NOW_S + 0.030, 10.0, 1)]
    assert queue_room_s(expired, NOW_S, 0.010) == pytest.approx(0.010)
    assert queue_room_s([], NOW_S, 0.0) == math.inf


def test_waiting_in_order_is_the_queues_service_order() -> None:
    q = RequestQueue(levels=3, max_count=16)
    specs = [(3, 0.1), (1, 0.9), (2, 0.2), (1, 0.5), (3, 0.05), (2, 0.2)]
    for i, (prio, dl) in enumerate(specs):
        q.push(Entry(i, prio, dl, service_ms=float(i + 1)), now=0.0)
    listed = waiting_of(q.in_service_order())
    assert len(q) == len(specs), "listing removes nothing"
    popped = []
    while (e := q.pop(0.0)) is not None:
        popped.append(Waiting(e.deadline_s, e.service_ms, e.priority))
    assert list(listed) == popped


# ------------------------------------------------------------------------ blocking limit
@pytest.mark.parametrize(("urgent_timeout_s", "expected"), [
    (math.inf, Decision(LITTLE, 2)),
    (0.050, Decision(LITTLE, 5)),   # within 40 ms: LITTLE at 1416 MHz, 37.2 ms
    (0.030, Decision(BIG, 5)),      # within 24 ms: big at 1416 MHz, 22.8 ms
    (0.020, Decision(BIG, 7)),      # within 16 ms: nothing can, the fastest
])
def test_blocking_limit_for_lower_priority(urgent_timeout_s: float, expected: Decision) -> None:
    ctx = ctx_for(1000.0, priority=3, urgent_timeout_s=urgent_timeout_s)
    chosen = decide(ctx)
    assert chosen == expected
    if math.isfinite(urgent_timeout_s) and expected != Decision(BIG, 7):
        assert run_time_s(VIEW, ctx, chosen) <= urgent_timeout_s * BLOCKING_SHARE


def test_blocking_limit_does_not_slow_down_priority_1() -> None:
    ctx = ctx_for(1000.0, priority=1, urgent_timeout_s=0.020)
    assert run_limit_s(ctx) == pytest.approx(1.0)
    assert decide(ctx) == Decision(LITTLE, 2)


def test_blocking_limit_of_the_heads_own_and_higher_classes() -> None:
    """A priority-2 request with a 50 ms timeout was served: for the next 10 s a run of its class
    or a lower one stays within 40 ms (LITTLE 1416 MHz, 37.26 ms) when some option can."""
    policy = SlackPolicy()
    assert policy.decide(VIEW, ctx_for(50.0, priority=2, timeout_ms=50.0)) == Decision(LITTLE, 5)
    background = ctx_for(1000.0, priority=3, timeout_ms=1000.0, now_s=NOW_S + 1.0)
    assert policy.class_limit_s(background) == pytest.approx(0.040)
    assert policy.decide(VIEW, background) == Decision(LITTLE, 5)
    # a priority-1 head is not held to a lower class's timeout
    urgent = ctx_for(1000.0, priority=1, timeout_ms=1000.0, now_s=NOW_S + 2.0)
    assert policy.decide(VIEW, urgent) == Decision(LITTLE, 2)
    # the 50 ms timeout is forgotten after URGENT_WINDOW_S
    later = ctx_for(1000.0, priority=3, timeout_ms=1000.0, now_s=NOW_S + 11.0)
    assert policy.decide(VIEW, later) == Decision(LITTLE, 2)
    # off: only the priority-1 limit, as the learned policies' shield
    off = SlackPolicy(class_blocking=False)
    off.decide(VIEW, ctx_for(50.0, priority=2, timeout_ms=50.0))
    assert off.decide(VIEW, background) == Decision(LITTLE, 2)


@pytest.mark.parametrize(("rate_hz", "expected"), [
    (0.0, Decision(LITTLE, 2)),
    (20.0, Decision(LITTLE, 5)),   # load 0.4: at most 2x the 20 ms top-speed run
    (40.0, Decision(BIG, 7)),      # load 0.8: no stretch at all, the fastest
])
def test_load_bound(rate_hz: float, expected: Decision) -> None:
    assert decide(ctx_for(1000.0, arrival_rate_hz=rate_hz)) == expected
    unbounded = SlackPolicy(load_target=math.inf)
    assert unbounded.decide(VIEW, ctx_for(1000.0, arrival_rate_hz=rate_hz)) == Decision(LITTLE, 2)


def test_bad_load_target_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="load_target must be > 0"):
        SlackPolicy(load_target=0.0)


def test_learned_shield_and_slack_share_the_limit() -> None:
    from edgesched.policy import learned

    assert learned.BLOCKING_SHARE == BLOCKING_SHARE
    assert run_limit_s(ctx_for(1000.0, priority=2, urgent_timeout_s=0.05)) == pytest.approx(0.04)
    assert run_limit_s(ctx_for(30.0, priority=1, urgent_timeout_s=0.01)) == pytest.approx(0.03)
    assert run_limit_s(ctx_for(30.0, priority=3)) == math.inf


# ------------------------------------------------------------------------ the simulator
@pytest.mark.parametrize(("board", "seed"), [("rk3399", 1), ("rk3399", 5), ("exynos5422", 1),
                                             ("exynos5422", 5)])
def test_simulator_mixed_priority_against_schedutil_and_performance(board: str, seed: int) -> None:
    profile = load_profile(board)
    jobs = generate(load_scenario("mixed-priority"), seed=seed, duration_s=20.0)
    missed = [int(m) for m in MISSED]
    # the top speed on the fastest cluster: "performance-big" where the kernel baselines are
    # placed by capacity, else "performance"
    top = "performance-big" if "performance-big" in FACTORIES else "performance"
    energy, misses = {}, {}
    for spec in ("slack", "schedutil", top):
        stats = Engine(profile, jobs, 20.0).run(make_policy(spec), seed=seed)
        energy[spec] = stats.total_energy_j
        misses[spec] = [int(np.isin(stats.outcome[jobs.priority == k], missed).sum())
                        for k in (1, 2, 3)]
    assert misses["slack"][0] <= misses["schedutil"][0]
    assert energy["slack"] < energy[top]


def test_registered_and_uses_several_clusters() -> None:
    policy = make_policy("slack")
    assert isinstance(policy, SlackPolicy) and policy.name == "slack" and policy.tick_s == 0.0
    jobs = generate(load_scenario("mixed-priority"), seed=2, duration_s=10.0)
    stats = Engine(RK, jobs, 10.0).run(policy, seed=2)
    ran = stats.cluster[stats.cluster >= 0]
    assert set(ran.tolist()) == {LITTLE, BIG}


# ------------------------------------------------------------------------ slack-guarded
def _run_ms(ctx: DecisionContext, d: Decision) -> float:
    return RK.latency_ms(ctx.head_work, d.cluster, d.opp)


def _loaded(ctx: DecisionContext, util: float) -> DecisionContext:
    """``ctx`` with the inference task's utilisation at ``util`` on LITTLE (schedutil then asks
    for a higher OPP than slack's least-energy choice)."""
    return dataclasses.replace(ctx, task_util=util, task_util_est=util, task_cluster=LITTLE,
                               util_by_cluster=[util, 0.0])


@pytest.mark.parametrize("case", ["calm", "priority-1", "queue", "burst"])
def test_guarded_slack_runs_no_slower_than_the_kernel_when_a_miss_is_likely(case: str) -> None:
    """Calm (priority 2, nothing waiting, Poisson-like arrivals): slack's choice. Otherwise the
    faster of slack's and schedutil's choices."""
    waiting = (Waiting(priority=3, deadline_s=NOW_S + 5.0, service_ms=20.0),)
    ctx = _loaded(ctx_for(1000.0, priority=1 if case == "priority-1" else 2,
                          waiting=waiting if case == "queue" else ()), 0.3)
    if case == "burst":
        ctx = dataclasses.replace(ctx, arrival_dispersion=5.0)
    slack = SlackPolicy().decide(VIEW, ctx)
    kernel = Schedutil()
    kernel.reset(VIEW)
    ref = kernel.decide(VIEW, ctx)
    guarded = GuardedSlack()
    guarded.reset(VIEW)
    got = guarded.decide(VIEW, ctx)
    assert _run_ms(ctx, ref) < _run_ms(ctx, slack)  # the two differ here
    if case == "calm":
        assert not guarded.guarded(ctx) and got == slack
    else:
        assert guarded.guarded(ctx) and got == ref


def test_guarded_slack_keeps_slacks_choice_when_it_is_faster() -> None:
    """A tight deadline: slack already runs faster than schedutil would (util 0: its lowest
    OPP), and the guard changes nothing."""
    ctx = _loaded(ctx_for(30.0, priority=1), 0.0)
    guarded = GuardedSlack()
    guarded.reset(VIEW)
    assert guarded.decide(VIEW, ctx) == SlackPolicy().decide(VIEW, ctx) == Decision(BIG, 3)


def test_guarded_slack_is_registered_and_misses_no_more_than_slack_in_bursts() -> None:
    """In the simulator on ``bursty``: no class misses more than under ``slack``, for more
    energy (the guard's price), and less than ``performance``."""
    policy = make_policy("slack-guarded")
    assert isinstance(policy, GuardedSlack) and policy.tick_s == 0.0 and policy.qos_guardable
    jobs = generate(load_scenario("bursty"), seed=3, duration_s=20.0)
    missed = [int(m) for m in MISSED]
    energy, misses = {}, {}
    for spec in ("slack", "slack-guarded", "performance"):
        stats = Engine(RK, jobs, 20.0).run(make_policy(spec), seed=3)
        energy[spec] = stats.total_energy_j
        misses[spec] = [int(np.isin(stats.outcome[jobs.priority == k], missed).sum())
                        for k in (1, 2, 3)]
    assert all(g <= s for g, s in zip(misses["slack-guarded"], misses["slack"], strict=True))
    assert sum(misses["slack-guarded"]) < sum(misses["slack"])
    assert energy["slack"] < energy["slack-guarded"] < energy["performance"]


# ------------------------------------------------------------------------ the daemon
class RecordingSlack(SlackPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, tuple[Waiting, ...]]] = []

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        self.seen.append((ctx.head_priority, tuple(ctx.waiting_in_order())))
        return super().decide(view, ctx)


@pytest.fixture(scope="module")
def nabu_20ms() -> LoadedModel:
    """The real okay_nabu model, its top-speed service time set to 20 ms (as on a slow board),
    so that the decisions do not depend on this machine's speed."""
    model = load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)
    return dataclasses.replace(model, service_s=0.020)


def _started(policy: SlackPolicy) -> tuple[Dispatcher, GatedBoard, FakeClock]:
    """A running dispatcher on a gated rk3399 test board, with a fake clock."""
    board, clock = GatedBoard(), FakeClock()
    d = Dispatcher(board, policy, RequestQueue(levels=3, max_count=8),
                   Metrics(CarbonAccount(500.0)), clock=clock, pin_threads=False,
                   idle_wait_s=0.01)
    d.start()
    return d, board, clock


@pytest.fixture
def daemon(nabu_20ms: LoadedModel) -> Iterator[tuple[Dispatcher, GatedBoard, FakeClock,
                                                     RecordingSlack, dict[str, Outcome]]]:
    policy = RecordingSlack()
    d, board, clock = _started(policy)
    answers: dict[str, Outcome] = {}
    yield d, board, clock, policy, answers
    d.close(0.0)
    for _ in range(8):
        board.gate.release()
    assert d.join(30)


def _a_then_b_and_c(dispatcher: Dispatcher, board: GatedBoard, clock: FakeClock,
                    model: LoadedModel, answers: dict[str, Outcome]) -> None:
    """'a' (priority 2, no timeout) runs; while it runs 'b' (priority 2, 45 ms) and 'c'
    (priority 1, 100 ms) arrive; all three are answered."""
    done = threading.Condition()

    def submit(rid: str, priority: int, timeout_us: int | None) -> None:
        def answer(out: Outcome) -> None:
            with done:
                answers[rid] = out
                done.notify_all()

        req = InferRequest(model=model.name, request_id=rid,
                           inputs={"serving_default_input_audio:0": np.zeros((1, 3, 40), np.int8)},
                           outputs=(("StatefulPartitionedCall:0", True),), priority=priority,
                           timeout_us=timeout_us, size_bytes=200)
        deadline_s = math.inf if timeout_us is None else clock.now_s + timeout_us / 1e6
        dispatcher.submit(Job(req=req, model=model, deadline_s=deadline_s, answer=answer))

    submit("a", 2, None)
    assert board.running.wait(30)
    submit("b", 2, 45_000)
    submit("c", 1, 100_000)
    for _ in range(3):
        board.gate.release()
    with done:
        assert done.wait_for(lambda: len(answers) == 3, 30)


def test_through_the_dispatcher(daemon: tuple[Dispatcher, GatedBoard, FakeClock, RecordingSlack,
                                              dict[str, Outcome]], nabu_20ms: LoadedModel) -> None:
    """'a' runs alone (LITTLE 816 MHz). While it runs, 'b' (priority 2, due in 45 ms) and 'c'
    (priority 1, timeout 100 ms) arrive. 'c' goes first; with 'b' waiting (at top speed 'c'
    would hand over at 20.04 ms and 'b' end at 40.04 ms, 4.96 ms early) it must hand over, the
    switch to big's top OPP included, within 25 ms: big 1416 MHz (22.85 ms). 'b' then has 45 ms
    and its own class's 45 ms timeout limits its run to 36 ms: big 816 MHz (32.34 ms)."""
    dispatcher, board, clock, policy, answers = daemon
    _a_then_b_and_c(dispatcher, board, clock, nabu_20ms, answers)
    assert [answers[r].status for r in "abc"] == [200, 200, 200]
    assert board.applied == [Decision(LITTLE, 2), Decision(BIG, 5), Decision(BIG, 2)]
    assert [p for p, _ in policy.seen] == [2, 1, 2]
    assert policy.seen[1][1] == (Waiting(pytest.approx(100.045), pytest.approx(20.0), 2),)
    assert policy.seen[0][1] == () and policy.seen[2][1] == ()


class RecordingGuarded(GuardedSlack):
    """Beside each decision, what plain ``slack`` (fed the same contexts) would have chosen."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = SlackPolicy()
        self.rows: list[tuple[int, bool, Decision, Decision]] = []

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        super().reset(view, seed)
        self.plain.reset(view, seed)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        got = super().decide(view, ctx)
        self.rows.append((ctx.head_priority, self.guarded(ctx), got,
                          self.plain.decide(view, ctx)))
        return got


def test_slack_guarded_through_the_dispatcher(nabu_20ms: LoadedModel) -> None:
    """The daemon's contexts carry what the guard reads: 'a' (alone, priority 2) gets slack's
    choice; 'c' (priority 1) is guarded, and runs no slower than slack would run it."""
    policy = RecordingGuarded()
    d, board, clock = _started(policy)
    answers: dict[str, Outcome] = {}
    try:
        _a_then_b_and_c(d, board, clock, nabu_20ms, answers)
    finally:
        d.close(0.0)
        for _ in range(8):
            board.gate.release()
        assert d.join(30)
    assert [answers[r].status for r in "abc"] == [200, 200, 200]
    assert [(p, g) for p, g, _, _ in policy.rows][:2] == [(2, False), (1, True)]
    work = RK.work_from_top_latency(nabu_20ms.service_s * 1000.0)
    for _, guarded, got, plain in policy.rows:
        if not guarded:
            assert got == plain
        else:
            assert (RK.latency_ms(work, got.cluster, got.opp)
                    <= RK.latency_ms(work, plain.cluster, plain.opp))
