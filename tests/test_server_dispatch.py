"""The dispatcher in-process with a real model, a gated test board and an injected clock:
queue full, shedding, deadline missed, drain on close and policy ticks, deterministically."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from conftest import MODELS_DIR, FakeClock, GatedBoard

from edgesched.errors import AdmissionError
from edgesched.observation import URGENT_WINDOW_S, BoardView, Decision, DecisionContext
from edgesched.policy.base import Performance
from edgesched.power.board import RunCost
from edgesched.power.meters import CarbonAccount
from edgesched.queue import RequestQueue
from edgesched.server.admission import InferRequest
from edgesched.server.dispatcher import Dispatcher, Job, Outcome
from edgesched.server.metrics import Metrics
from edgesched.server.runner import LoadedModel, load_model
from edgesched.utilisation import BurstMeter

NABU_IN = "serving_default_input_audio:0"


class TickingPolicy(Performance):
    name = "ticking"
    tick_s = 0.01

    def __init__(self) -> None:
        self.ticks: list[tuple[int, float, float]] = []
        self.contexts: list[DecisionContext] = []

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        self.contexts.append(ctx)
        return super().decide(view, ctx)

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        self.ticks.append((cluster, util, busy_fraction))
        return 1


@pytest.fixture(scope="module")
def nabu() -> LoadedModel:
    return load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)


class Rig:
    def __init__(self, model: LoadedModel, max_count: int, policy: Performance | None = None,
                 inline_max_s: float = 0.0) -> None:
        self.model = model
        self.clock = FakeClock()
        self.board = GatedBoard()
        self.metrics = Metrics(CarbonAccount(500.0))
        self.policy = policy or Performance()
        self.dispatcher = Dispatcher(self.board, self.policy,
                                     RequestQueue(levels=3, max_count=max_count),
                                     self.metrics, clock=self.clock, pin_threads=False,
                                     idle_wait_s=0.01, inline_max_s=inline_max_s)
        self.answers: dict[str, Outcome] = {}
        self.order: list[str] = []
        self.answered = threading.Condition()

    def submit(self, rid: str, priority: int = 2, deadline_s: float = float("inf"),
               timeout_us: int | None = None) -> None:
        self.dispatcher.submit(self.job(rid, priority, deadline_s, timeout_us))

    def inline(self, rid: str, priority: int = 2) -> bool:
        """``run_inline`` of request ``rid`` on the calling thread."""
        return self.dispatcher.run_inline(self.job(rid, priority))

    def job(self, rid: str, priority: int = 2, deadline_s: float = float("inf"),
            timeout_us: int | None = None) -> Job:
        req = InferRequest(model=self.model.name, request_id=rid,
                           inputs={NABU_IN: np.zeros((1, 3, 40), np.int8)},
                           outputs=(("StatefulPartitionedCall:0", True),), priority=priority,
                           timeout_us=timeout_us, size_bytes=200)

        def answer(out: Outcome) -> None:
            with self.answered:
                assert rid not in self.answers, "answered twice"
                self.answers[rid] = out
                self.order.append(rid)
                self.answered.notify_all()

        return Job(req=req, model=self.model, deadline_s=deadline_s, answer=answer)

    def wait_for(self, *rids: str) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: all(r in self.answers for r in rids), 30)

    def block_on_first(self) -> None:
        """Submit 'a' and wait until it is running (held in settle)."""
        self.submit("a")
        assert self.board.running.wait(30)


def _running(r: Rig) -> Iterator[Rig]:
    r.dispatcher.start()
    yield r
    r.dispatcher.close(0.0)
    for _ in range(8):
        r.board.gate.release()
    assert r.dispatcher.join(30)


@pytest.fixture
def rig(nabu: LoadedModel) -> Iterator[Rig]:
    yield from _running(Rig(nabu, max_count=2))


def test_queue_full_then_shed(rig: Rig) -> None:
    rig.block_on_first()
    rig.submit("b", priority=3)
    rig.submit("c", priority=3)
    with pytest.raises(AdmissionError) as err:
        rig.submit("d", priority=3)
    assert err.value.status == 429 and err.value.retry_after_s is not None
    rig.submit("e", priority=1)  # displaces the lowest class with the latest deadline
    rig.wait_for("c")
    assert rig.answers["c"].status == 503 and rig.answers["c"].outcome == "shed"
    for _ in range(3):
        rig.board.gate.release()
    rig.wait_for("a", "b", "e")
    assert [rig.answers[r].status for r in "abe"] == [200, 200, 200]
    assert rig.answers["a"].parameters["energy_j"] == 0.5
    assert rig.metrics.energy_j_total == pytest.approx(1.5)


def test_deadline_passed_while_queued_is_answered_504(rig: Rig) -> None:
    rig.block_on_first()
    rig.submit("b", priority=1, deadline_s=rig.clock.now_s + 0.5)
    rig.submit("c", priority=2, deadline_s=rig.clock.now_s + 5.0)
    rig.clock.now_s += 1.0
    rig.board.gate.release()
    rig.wait_for("a", "b")
    assert rig.answers["b"].status == 504 and rig.answers["b"].outcome == "deadline_missed"
    assert "deadline missed" in rig.answers["b"].reason
    # 'c' was taken in the same pass that found 'b' expired, so it is running now; it ends
    # after its deadline: answered with the result, outcome 'late', counted as a miss
    rig.clock.now_s += 10.0
    rig.board.gate.release()
    rig.wait_for("c")
    assert rig.answers["c"].status == 200 and rig.answers["c"].outcome == "late"
    assert rig.metrics.deadline_misses["okay_nabu"] == 2


def test_close_drains_with_503_and_refuses_new_work(rig: Rig) -> None:
    rig.block_on_first()
    rig.submit("b")
    rig.submit("c", priority=1)
    rig.dispatcher.close(0.0)
    with pytest.raises(AdmissionError) as err:
        rig.submit("d")
    assert err.value.status == 503
    rig.board.gate.release()
    rig.wait_for("a", "b", "c")
    assert rig.answers["a"].status == 200  # the running inference finishes
    assert {rig.answers["b"].outcome, rig.answers["c"].outcome} == {"shutting_down"}
    assert rig.dispatcher.join(30)


def test_context_and_ticks(nabu: LoadedModel) -> None:
    policy = TickingPolicy()
    r = Rig(nabu, max_count=8, policy=policy)
    r.dispatcher.start()
    try:
        r.block_on_first()
        r.submit("b", priority=1, deadline_s=r.clock.now_s + 0.5, timeout_us=500_000)
        r.clock.now_s += 0.05
        r.board.gate.release()
        r.board.gate.release()
        r.wait_for("a", "b")
        r.clock.now_s += 0.05
        with r.answered:  # the loop wakes every idle_wait_s and ticks when due
            assert r.answered.wait_for(lambda: len(policy.ticks) >= 2, 30)
        r.clock.now_s += URGENT_WINDOW_S  # the priority-1 timeout is too old to count now
        r.submit("c")
        r.board.gate.release()
        r.wait_for("c")
    finally:
        r.dispatcher.close(0.0)
        assert r.dispatcher.join(30)
    assert policy.contexts[0].urgent_timeout_s == float("inf"), "no priority 1 seen yet"
    assert policy.contexts[1].urgent_timeout_s == pytest.approx(0.5)
    assert policy.contexts[2].urgent_timeout_s == float("inf")
    ctx = policy.contexts[1]
    assert ctx.head_priority == 1 and ctx.queue_len == 0
    assert len(ctx.util_by_cluster) == len(ctx.busy_fraction_by_cluster) == 2
    assert ctx.arrival_rate_hz > 0 and ctx.head_work.compute_mcycles > 0
    assert {c for c, _, _ in policy.ticks} == {0, 1}
    assert Decision(0, 1) in r.board.applied


def test_the_dispatcher_measures_burstiness_as_the_simulator_does(nabu: LoadedModel) -> None:
    """Arrivals in bursts: the snapshot and the first decision's context read the same index
    of dispersion as a ``BurstMeter`` fed the same arrival times (the simulator's meter)."""
    policy = TickingPolicy()
    r = Rig(nabu, max_count=200, policy=policy)
    t0 = r.clock.now_s
    meter = BurstMeter(now_s=t0)
    # one request a second for six seconds, then 40 in the seventh, then calm again
    times = [t0 + s + 0.5 for s in range(6)] + [t0 + 6.0 + k / 40 for k in range(40)]
    times += [t0 + s + 0.5 for s in range(7, 9)]
    for i, t in enumerate(times):
        r.clock.now_s = t
        r.submit(f"r{i}")
        meter.event(t)
    r.clock.now_s = t0 + 9.25
    want = meter.dispersion(r.clock.now_s)
    assert want > 5.0
    assert r.dispatcher.snapshot()["arrival_dispersion"] == want
    r.dispatcher.start()
    try:
        r.board.gate.release()
        r.wait_for("r0")
    finally:
        r.dispatcher.close(0.0)
        for _ in range(len(times)):
            r.board.gate.release()
        assert r.dispatcher.join(30)
    assert policy.contexts[0].arrival_dispersion == want


class SteadyPolicy(TickingPolicy):
    """Ticks that never change the OPP."""

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        self.ticks.append((cluster, util, busy_fraction))
        return cur_opp


def _until(cond: Callable[[], bool]) -> None:
    for _ in range(3000):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


class OrderedPolicy(SteadyPolicy):
    """Logs its ticks and decisions in the order they come."""

    def __init__(self, task_signal: bool) -> None:
        super().__init__()
        self.uses_task_util = task_signal
        self.events: list[str] = []

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        self.events.append("decide")
        return super().decide(view, ctx)

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        self.events.append(f"tick{cluster}")
        return super().tick(view, now_s, cluster, cur_opp, util, busy_fraction)


@pytest.mark.parametrize("inline", [False, True], ids=["queued", "inline"])
@pytest.mark.parametrize("task_signal", [False, True], ids=["ondemand-like", "schedutil-like"])
def test_ticks_come_while_busy_and_stop_while_idle(nabu: LoadedModel, task_signal: bool,
                                                   inline: bool) -> None:
    """As a NO_HZ kernel (and the simulator): no tick while the board is idle; the ticks that
    came due during a run are taken once when it ends; the request that ends an idle gap is
    decided first, except that a governor not fed the task's signals gets one tick before.
    The same whether the dispatcher thread runs it or the thread that received it."""
    policy = OrderedPolicy(task_signal)
    r = Rig(nabu, max_count=8, policy=policy, inline_max_s=1.0 if inline else 0.0)
    r.dispatcher.start()
    caller: threading.Thread | None = None
    try:
        _until(lambda: r.dispatcher._quiescent)  # the governor's start tick ran, at 100 s
        r.clock.now_s += 1.0  # idle for 100 ticks
        r.dispatcher.call(lambda: None).result(30)  # a turn of the loop at the new time
        start = ["tick0", "tick1"]  # the governor's start, then nothing while idle
        assert policy.events == start and r.dispatcher._quiescent
        if inline:
            caller = threading.Thread(target=r.inline, args=("a",))
            caller.start()
            assert r.board.running.wait(30)
        else:
            r.block_on_first()  # "a" runs
        r.clock.now_s += 0.05  # 5 ticks come due while it runs
        r.board.gate.release()
        r.wait_for("a")
        if caller is not None:
            caller.join(30)
        assert r.dispatcher.inlined == (1 if inline else 0)
        r.clock.now_s += 1.0  # idle again
        r.dispatcher.call(lambda: None).result(30)
    finally:
        r.dispatcher.close(0.0)
        assert r.dispatcher.join(30)
    after_run = ["tick0", "tick1"]
    gap = [] if task_signal else ["tick0", "tick1"]
    assert policy.events == [*start, *gap, "decide", *after_run]


def _settling_threads(r: Rig) -> list[int]:
    """The threads that settle ``r``'s runs, in order (filled in as they run)."""
    threads: list[int] = []
    settle = r.board.settle

    def recording_settle(*args: object, **kw: object) -> RunCost:
        threads.append(threading.get_ident())
        return settle(*args, **kw)  # type: ignore[arg-type]

    r.board.settle = recording_settle  # type: ignore[method-assign]
    return threads


@pytest.fixture
def inline_rig(nabu: LoadedModel) -> Iterator[Rig]:
    yield from _running(Rig(nabu, max_count=8, inline_max_s=1.0))


def test_an_idle_dispatcher_serves_inline_on_the_calling_thread(inline_rig: Rig) -> None:
    r = inline_rig
    threads = _settling_threads(r)
    r.board.gate.release()
    assert r.inline("a") and "a" in r.answers, "answered before run_inline returned"
    assert r.answers["a"].status == 200 and r.answers["a"].outcome == "ok"
    assert threads == [threading.get_ident()] and r.dispatcher.inlined == 1
    assert r.answers["a"].parameters["energy_j"] == 0.5 and r.board.applied
    assert r.metrics.totals()["by_outcome"] == {"ok": 1}


def test_no_inline_while_busy_and_queued_work_keeps_its_order(inline_rig: Rig) -> None:
    r = inline_rig
    runner = threading.Thread(target=r.inline, args=("a",))
    runner.start()  # holds the run token, blocked in settle
    assert r.board.running.wait(30)
    assert not r.inline("b"), "a run in progress: hand it to the dispatcher"
    r.submit("low", priority=3)
    r.submit("high", priority=1)
    assert not r.inline("c"), "work queued: the queue decides the order"
    for _ in range(3):
        r.board.gate.release()
    runner.join(30)
    r.wait_for("a", "low", "high")
    assert r.order == ["a", "high", "low"], "the dispatcher took the token before the head"
    assert "b" not in r.answers and "c" not in r.answers and r.dispatcher.inlined == 1


def _threadless(r: Rig) -> Rig:
    """``r`` with its dispatcher taking requests but no dispatcher thread: whatever runs is
    served by the test's own calls (as an HTTP loop serves what it queued)."""
    r.dispatcher._running = True
    return r


def test_requests_queued_together_are_served_by_the_caller_in_priority_order(
        nabu: LoadedModel) -> None:
    r = _threadless(Rig(nabu, max_count=8, inline_max_s=1.0))
    threads = _settling_threads(r)
    for rid, prio in (("low", 3), ("high", 1), ("mid", 2)):
        r.dispatcher.submit(r.job(rid, prio), wake=False)
    for _ in range(3):
        r.board.gate.release()
    served = 0
    while r.dispatcher.serve_waiting_inline():
        served += 1
    assert served == 3 and r.order == ["high", "mid", "low"]
    assert threads == [threading.get_ident()] * 3 and r.dispatcher.inlined == 3
    assert all(r.answers[x].status == 200 for x in r.order)
    assert r.answers["low"].parameters["queue_wait_us"] >= 0
    assert r.metrics.totals()["by_outcome"] == {"ok": 3}


def test_the_caller_leaves_a_long_head_and_a_busy_token_to_the_dispatcher(
        nabu: LoadedModel) -> None:
    r = _threadless(Rig(nabu, max_count=8, inline_max_s=nabu.service_s * 3.9))  # longest is 4x
    r.dispatcher.submit(r.job("long"), wake=False)
    assert not r.dispatcher.serve_waiting_inline(), "too long for an HTTP thread"
    assert len(r.dispatcher.queue) == 1 and not r.answers
    r.dispatcher.inline_max_s = nabu.service_s * 4.1
    r.dispatcher.models_changed()
    with r.dispatcher._token:  # a run in progress elsewhere
        assert not r.dispatcher.serve_waiting_inline()
    assert len(r.dispatcher.queue) == 1
    r.board.gate.release()
    assert r.dispatcher.serve_waiting_inline() and r.order == ["long"]


def test_the_caller_answers_what_expired_on_the_way(nabu: LoadedModel) -> None:
    r = _threadless(Rig(nabu, max_count=8, inline_max_s=1.0))
    r.dispatcher.submit(r.job("late", 1, deadline_s=r.clock() + 0.5, timeout_us=500000),
                        wake=False)
    r.dispatcher.submit(r.job("fine", 2), wake=False)
    r.clock.now_s += 1.0
    r.board.gate.release()
    assert r.dispatcher.serve_waiting_inline()
    assert r.order == ["late", "fine"]
    assert r.answers["late"].status == 504 and r.answers["late"].outcome == "deadline_missed"
    assert not r.dispatcher.serve_waiting_inline() and not len(r.dispatcher.queue)


def test_no_inline_for_a_long_model_or_a_closing_dispatcher(nabu: LoadedModel) -> None:
    r = Rig(nabu, max_count=8, inline_max_s=nabu.service_s * 3.9)  # the board's longest is 4x
    r.dispatcher.start()
    try:
        assert not r.inline("a")
        r.dispatcher.inline_max_s = nabu.service_s * 4.1
        r.dispatcher.models_changed()
        r.board.gate.release()
        assert r.inline("b")
        r.dispatcher.close(5.0)
        assert not r.inline("c")
    finally:
        r.dispatcher.close(0.0)
        r.board.gate.release()
        assert r.dispatcher.join(30)
    assert set(r.answers) == {"b"}
