"""The dispatcher: one thread that takes the next request from the shared RequestQueue, asks the
policy for a cluster and OPP, applies it on the board, runs the model and answers.

It also drives the policy's periodic ``tick`` (governors that re-evaluate every ``tick_s``) from
the same loop, keeps PELT utilisation and busy windows per cluster, and accounts energy. Waiting
is on a condition variable with a timeout, so a new request wakes it at once.

Ticks come as a NO_HZ kernel's do, and as the simulator gives them: one when the governor starts
(the daemon's start, a policy switch), then every ``tick_s`` while the board is busy (ticks that
came due during a run are taken once, when it ends), none while it is idle (nothing queued,
nothing running). The wake-up's own update (the policy's ``decide``) comes first; a governor not
fed the task's signals (``uses_task_util`` false, e.g. ``ondemand``) also gets one tick at the end
of an idle gap in which a tick came due, before that decision. An idle daemon therefore does not
wake every ``tick_s`` to run a governor the kernel would not run.

The run token: whatever touches the board and the policy (a request, a tick, a command) holds
one lock. When nothing is queued and nothing runs, :meth:`Dispatcher.run_inline` lets the thread
that received a short request (the HTTP thread) take the token and serve it at once, with the
same code, instead of handing it to the dispatcher thread and back: on an idle daemon that
hand-off (two thread wake-ups and two interpreter-lock hand-overs) is most of the serving
overhead. Anything queued meanwhile waits for the token like it waits for a running inference.
The HTTP side asks for it only for a request that is alone on its listener: requests that
arrive together are queued, so that priority and deadline order them.

Every entry that enters the queue leaves with exactly one answer: a result, an error, "deadline
missed" (504), "shed" (503) or "shutting down" (503).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesched.device import Work
from edgesched.errors import AdmissionError, PolicyError, QueueFullError
from edgesched.observation import URGENT_WINDOW_S, Decision, DecisionContext, Waiting, waiting_of
from edgesched.policy.base import Policy
from edgesched.policy.eas import first_cluster
from edgesched.power.board import Board
from edgesched.qos import MISSED_OUTCOMES, QosGuard, guardable
from edgesched.queue import Entry, RequestQueue
from edgesched.server.admission import InferRequest
from edgesched.server.metrics import Metrics
from edgesched.server.runner import LoadedModel
from edgesched.thermal import HeatMonitor
from edgesched.utilisation import (
    BurstMeter,
    BusyAverage,
    BusyWindow,
    PeltTracker,
    RateMeter,
    RecentMin,
    TaskUtil,
    kernel_capacity,
)

log = logging.getLogger("edgesched.server")

_NO_HEAT: dict[str, Any] = {}
"""The context's heat fields on a board without a heat monitor: none (the defaults)."""


@dataclass
class Outcome:
    """What a request's submitter gets back (exactly once)."""

    status: int
    outcome: str
    """ok | late | deadline_missed | shed | shutting_down | error"""
    reason: str = ""
    results: dict[str, np.ndarray] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    cpu_ns: int = 0
    """CPU time the dispatcher thread spent serving it (``time.thread_time_ns``); 0 when it was
    served inline, on the thread that already counts it."""


@dataclass(eq=False)
class Job:
    req: InferRequest
    model: LoadedModel
    deadline_s: float
    answer: Callable[[Outcome], None]
    """Delivers the outcome; must be safe to call from any thread."""


class Dispatcher:
    """The single consumer of the request queue."""

    def __init__(self, board: Board, policy: Policy, queue: RequestQueue, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic, pin_threads: bool = True,
                 idle_wait_s: float = 1.0, queue_full_status: int = 429,
                 retry_after_s: float = 1.0, nice: int = 0, inline_max_s: float = 0.0,
                 host_clock: Callable[[], float] = time.perf_counter,
                 qos_guard: QosGuard | None = None) -> None:
        self.board = board
        self.policy = policy
        self.queue = queue
        self.metrics = metrics
        self.clock = clock
        self.host_clock = host_clock
        """Times a model's run on the host (``host_us``); the models' start-up times use it too."""
        self.view = board.view
        self.idle_wait_s = idle_wait_s
        self.queue_full_status = queue_full_status
        self.retry_after_s = retry_after_s
        self.nice = nice
        self.inline_max_s = inline_max_s
        """Longest expected run (slowest OPP) of a model served inline; 0: never inline."""
        self.inlined = 0
        """Requests served on an HTTP thread (:meth:`run_inline`, :meth:`serve_waiting_inline`)."""
        self.heat = HeatMonitor.for_board(board, clock)
        """Heat read through the board's sysfs root (:mod:`edgesched.thermal`); None without one."""
        self._token = threading.Lock()
        self._inline_ok: dict[str, bool] = {}
        self.thread_nice: int | None = None
        """The dispatcher thread's nice value once it runs."""
        self._lock = threading.RLock()
        """``_cond``'s lock, taken directly where nothing waits or notifies (the same lock, one
        call fewer per request)."""
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._running = False
        """The dispatcher thread was started and has not ended (:meth:`alive` without asking
        the thread)."""
        self._closing = False
        self._drain_until_s = math.inf
        self._ids = 0
        now = clock()
        n = self.view.n_clusters
        self._pelt = [PeltTracker(now) for _ in range(n)]
        prof = board.profile
        self._task = TaskUtil(tuple(kernel_capacity(prof.capacity(i)) for i in range(n)), now,
                              first_cluster(prof))
        """The inference task's PELT util_avg and util_est (the simulator keeps the same)."""
        self._board_busy = BusyAverage(now_s=now)
        self._busy = [BusyWindow(now) for _ in range(n)]
        self._rate = RateMeter(now_s=now)
        self._burst = BurstMeter(now_s=now)
        self._urgent = RecentMin(URGENT_WINDOW_S)
        self._next_tick_s = now if policy.tick_s > 0 else math.inf
        """The next tick (inf: none); the first is the governor's start, then the board idles."""
        self._quiescent = False
        """The board is idle (nothing queued or running): no ticks until the next request."""
        self._idle_tick_s = math.inf
        """While idle: when the next tick would have come had the board stayed busy."""
        self._gap_tick = False
        """The request that ends an idle gap gets a tick before its decision (see the module
        docstring)."""
        self._cur_opps = list(board.current_opps())
        self.floor_khz = 0
        """A frequency floor (a hold's ``min_khz``, 0: none): see :meth:`set_floor`."""
        self._floor_opps = [0] * n
        self._note_frequencies(now)
        self._allowed_cpus: set[int] = set()
        if pin_threads and hasattr(os, "sched_getaffinity"):
            self._allowed_cpus = set(os.sched_getaffinity(0))
        self._pinned: dict[int, frozenset[int]] = {}
        self._pin_targets: dict[int | None, frozenset[int]] = {}
        """CPUs to pin to per cluster (None: every CPU the daemon may use)."""
        self._scales: dict[tuple[int, int], float] = {}
        """PELT's frequency- and capacity-invariance scale per (cluster, OPP)."""
        """CPUs each thread that ran inferences is pinned to (by thread id)."""
        self.heartbeat_s = now
        self.served = 0
        self._work: dict[str, Work] = {}
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._current: Entry | None = None
        self.on_stopped: Callable[[], None] | None = None
        """Called on the dispatcher thread as it ends, however it ends."""
        self.qos_guard = qos_guard
        """The miss-budget guard (:mod:`edgesched.qos`): told every request's outcome; raises
        the decisions of guarded policies (learned, slack) for classes spending their budget."""
        self._qos_lock = threading.Lock()  # outcomes arrive from the submitting threads too

    # ----------------------------------------------------------------------------- submit side
    def submit(self, job: Job, wake: bool = True) -> None:
        """Queue ``job`` (from any thread); raises AdmissionError when it cannot be queued.
        ``wake=False`` leaves the dispatcher thread asleep: the caller then serves the queue
        itself (:meth:`serve_waiting_inline`) or calls :meth:`wake`."""
        shed: list[Entry]
        with self._cond:
            if self._closing:
                raise AdmissionError(503, "shutting down: the daemon no longer accepts requests",
                                     retry_after_s=self.retry_after_s, outcome="shutting_down")
            now = self.clock()
            entry = self._entry(job)
            try:
                shed = self.queue.push(entry, now)
            except QueueFullError as exc:
                self._record_outcome(job.req.priority, True)
                raise AdmissionError(self.queue_full_status, exc.reason,
                                     retry_after_s=self.retry_after_s) from None
            self._arrived(entry, now)
            if wake:
                self._cond.notify()
        for victim in shed:
            self._finish(victim, Outcome(503, "shed", "shed: displaced from a full queue by a "
                                         "higher-priority request; retry later"))

    def run_inline(self, job: Job) -> bool:
        """Serve ``job`` on the calling thread if the daemon is idle (nothing queued, nothing
        running, no command waiting) and its model's longest expected run on this board is
        within ``inline_max_s``; its answer is delivered before this returns. False: nothing was
        done, :meth:`submit` it."""
        if not self._inline_allowed(job.model):
            return False
        with self._lock:
            if (self._closing or len(self.queue) or self._calls or not self._running
                    or not self._token.acquire(blocking=False)):
                return False
            now = self.clock()
            entry = self._entry(job)
            entry.enqueued_s = now  # it never enters the queue: its wait is 0, not the uptime
            self._arrived(entry, now)  # its ticks are this thread's to run (_after_run)
        try:
            self._serve_here(entry, inline=True)
        finally:
            self._token.release()
        return True

    def _serve_here(self, entry: Entry, inline: bool) -> None:
        """Serve ``entry`` on the calling HTTP thread, holding the run token."""
        self.inlined += 1
        try:
            self._serve(entry, inline=inline)
        except Exception:  # a bug: this request is answered, the daemon goes on
            log.exception("serving request %r on the HTTP thread failed",
                          entry.payload.req.request_id)
            self._current = None
            self._finish(entry, Outcome(500, "error", "internal error: the request failed"))
        finally:
            self._after_run()
            self._pin(None)  # the HTTP thread goes back to every CPU it may use

    def wake(self) -> None:
        """Wake the dispatcher thread for what was submitted with ``wake=False``."""
        with self._cond:
            self._cond.notify()

    def serve_waiting_inline(self) -> bool:
        """Serve the head of the queue on the calling thread (an HTTP event loop that queued
        requests read together) when the run token is free (nothing runs), no command waits and
        the head's model may run inline; requests that expired in the queue are answered on the
        way. The head is the one the dispatcher thread would take: priority and deadline still
        decide the order. Returns whether it served one; when it did not, the dispatcher
        thread (:meth:`wake`) serves what is queued."""
        if not self._token.acquire(blocking=False):
            return False
        try:
            with self._cond:
                if self._closing or self._calls or not self._running:
                    return False
                now = self.clock()
                expired = self.queue.pop_expired(now)
                head = self.queue.peek(now)
                entry = (self.queue.pop(now) if head is not None
                         and self._inline_allowed(head.payload.model) else None)
            self._answer_expired(expired)
            if entry is None:
                if expired and not self._quiescent:
                    self._after_run()  # what waited expired: the board may be idle now
                return False
            self._serve_here(entry, inline=False)
            return True
        finally:
            self._token.release()

    def may_run_inline(self, model: LoadedModel) -> bool:
        """Whether ``model``'s longest expected run allows serving it on an HTTP thread."""
        return self._inline_allowed(model)

    def _inline_allowed(self, model: LoadedModel) -> bool:
        ok = self._inline_ok.get(model.name)
        if ok is None:
            ok = (self.inline_max_s > 0
                  and self.board.longest_run_s(self.top_service_s(model)) <= self.inline_max_s)
            self._inline_ok[model.name] = ok
        return ok

    def _entry(self, job: Job) -> Entry:
        self._ids += 1
        return Entry(request_id=self._ids, priority=job.req.priority, deadline_s=job.deadline_s,
                     size_bytes=job.req.size_bytes,
                     service_ms=self.top_service_s(job.model) * 1000.0, payload=job)

    def _arrived(self, entry: Entry, now: float) -> None:
        """Count an arrival (under ``_cond``); one that ends an idle gap starts the ticks."""
        self._rate.event(now)
        self._burst.event(now)
        job: Job = entry.payload
        if entry.priority == 1 and job.req.timeout_us is not None:
            self._urgent.add(now, job.req.timeout_us / 1e6)
        if self._quiescent:  # the end of an idle gap: ticks start again
            self._quiescent = False
            tick_s = self.policy.tick_s
            self._gap_tick = (now >= self._idle_tick_s
                              and not getattr(self.policy, "uses_task_util", False))
            if tick_s <= 0:
                self._next_tick_s = math.inf
            else:  # the gap's tick is due at once; the grid goes on from it
                self._next_tick_s = now if self._gap_tick else now + tick_s

    def top_service_s(self, model: LoadedModel) -> float:
        """``model``'s service time at the board's top speed: its start-up host time, scaled
        for a virtual board slower than the host (queue backlog, admission, observation)."""
        return model.service_s * self.board.host_scale

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the dispatcher thread between two requests (from any thread).

        The way to change what the loop owns (the policy, the board's settings) without racing
        a running inference. The future fails with AdmissionError(503) once the daemon stops.
        """
        fut: Future[Any] = Future()
        with self._cond:
            if self._closing or not self.alive():
                fut.set_exception(AdmissionError(503, "shutting down: the dispatcher no longer "
                                                 "takes commands"))
                return fut
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def set_policy(self, policy: Policy) -> None:
        """Switch to ``policy`` (call through :meth:`call`: on the dispatcher thread only).

        A board opened hands-off (``--policy kernel`` on a real board) takes no decision: only
        ``kernel`` may run on it, measuring only, until the daemon restarts with another policy.
        """
        if getattr(self.board, "hands_off", False):
            if not getattr(policy, "hands_off", False):
                raise PolicyError(
                    f"policy {policy.name!r} cannot run: the board was opened hands-off for "
                    "'kernel' (no lease, no cpufreq write); restart the daemon with that policy")
            policy.measure_only()  # type: ignore[attr-defined]
        policy.reset(self.view)
        now = self.clock()
        self.policy = policy
        self._gap_tick = False
        self._quiescent = False  # one tick now, the new governor's start, then as ever
        self._next_tick_s = now if policy.tick_s > 0 else math.inf

    def set_floor(self, min_khz: int) -> None:
        """Run every cluster at ``min_khz`` or above (0: no floor), on the dispatcher thread
        (through :meth:`call`). Like a ``FREQ_QOS_MIN`` request on each cpufreq policy
        (``freq_qos_add_request`` in ``kernel/power/qos.c``, clamped to the policy's
        ``cpuinfo_max_freq`` by ``cpufreq_set_policy``): a cluster whose top OPP is below the
        floor runs at its top OPP. Decisions and governor ticks are raised to the floor, and a
        cluster below it is raised at once."""
        prof = self.board.profile
        self.floor_khz = max(0, int(min_khz))
        self._floor_opps = [
            next((i for i, o in enumerate(c.opps) if o.khz >= self.floor_khz), len(c.opps) - 1)
            for c in prof.clusters]
        for c, floor in enumerate(self._floor_opps):
            if self._cur_opps[c] < floor:
                self._apply(Decision(c, floor))

    def _floored(self, decision: Decision) -> Decision:
        floor = self._floor_opps[decision.cluster]
        return decision if decision.opp >= floor else Decision(decision.cluster, floor)

    def _note_frequencies(self, now: float) -> None:
        clusters = self.board.profile.clusters
        self.metrics.frequencies(now, [(c.name, c.opps[i].khz)
                                       for c, i in zip(clusters, self._cur_opps, strict=True)])

    def models_changed(self) -> None:
        """Forget per-model work estimates (call through :meth:`call` after a reload)."""
        self._work.clear()
        self._inline_ok.clear()

    def _run_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for fn, fut in calls:
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller, never kills the loop
                fut.set_exception(exc)

    def _fail_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for _, fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(AdmissionError(503, "shutting down: the command was not run"))

    # ----------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgesched-dispatcher",
                                        daemon=True)
        self._running = True
        try:
            self._thread.start()
        except BaseException:
            self._running = False
            raise

    def close(self, drain_s: float) -> None:
        """Stop accepting; serve what is queued for up to ``drain_s``, then answer the rest."""
        with self._cond:
            self._closing = True
            self._drain_until_s = self.clock() + drain_s
            self._cond.notify()

    def join(self, timeout_s: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------------------- introspection
    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            now = self.clock()
            return {
                "queue_len": len(self.queue),
                "queue_bytes": self.queue.bytes,
                "queue_by_priority": self.queue.count_by_priority(),
                "backlog_ms": self.queue.backlog_ms,
                "arrival_rate_hz": self._rate.rate_hz(now),
                "arrival_dispersion": self._burst.dispersion(now),
                "cur_opps": list(self._cur_opps),
                "util_by_cluster": [p.util for p in self._pelt],
                "closing": self._closing,
                "served": self.served,
            }

    # ----------------------------------------------------------------------------- the loop
    def _set_priority(self) -> None:
        """Give this thread its own nice value: under load the HTTP thread and any local
        clients keep the CPUs busy, and at the same priority the dispatcher waits for a time
        slice at every step while priority-1 requests expire in the queue."""
        self.thread_nice = set_thread_nice(self.nice, "the dispatcher thread", log)

    def _run(self) -> None:
        try:
            self._run_until_stopped()
        finally:
            self._running = False
            if self.on_stopped is not None:
                self.on_stopped()

    def _run_until_stopped(self) -> None:
        self._set_priority()
        try:
            self._loop()
            self._fail_calls()
        except BaseException:
            self._fail_calls()
            log.exception("dispatcher crashed; answering every queued request")
            with self._cond:
                self._closing = True
                left = self.queue.drain()
            if self._current is not None:  # the request it was running when it failed
                left.insert(0, self._current)
            for e in left:
                self._finish(e, Outcome(500, "error", "internal error: the dispatcher stopped"))
            raise

    def _loop(self) -> None:
        while True:
            with self._token:
                wait_s = self._step()
            if wait_s is None:
                return
            if wait_s > 0:
                with self._cond:  # nothing arrived since the step looked: wait for something
                    if not (len(self.queue) or self._calls or self._closing):
                        self._cond.wait(wait_s)

    def _step(self) -> float | None:
        """One turn of the loop, holding the run token: answer what expired, run the waiting
        commands, serve the head of the queue, tick. Returns how long to wait for work (0: go
        on at once) or None to stop."""
        expired: list[Entry] = []
        leftovers: list[Entry] = []
        entry: Entry | None = None
        stop = False
        idle = False
        wait_s = 0.0
        with self._cond:
            now = self.clock()
            self.heartbeat_s = now
            if self._closing and now >= self._drain_until_s:
                leftovers = self.queue.drain()
                stop = True
            else:
                expired = self.queue.pop_expired(now)
                entry = self.queue.pop(now)
                if entry is None and not expired and not self._calls:
                    if self._closing:
                        stop = True
                    else:
                        idle = True
        self._answer_expired(expired)
        for e in leftovers:
            self._finish(e, Outcome(503, "shutting_down", "shutting down: the daemon stopped "
                                    "before this request could run; retry later"))
        if stop:
            return None
        if self._calls:
            self._run_calls()
        if entry is not None:
            try:
                self._serve(entry)
            finally:
                self._after_run()
        elif not self._quiescent:
            self._after_run()  # nothing to run (what waited expired): the board goes idle
        if idle:
            wait_s = min(self.idle_wait_s, self._next_tick_s - self.clock())
        return wait_s

    def _answer_expired(self, expired: list[Entry]) -> None:
        for e in expired:
            job: Job = e.payload
            late_ms = (self.clock() - e.deadline_s) * 1000.0
            self._finish(e, Outcome(504, "deadline_missed", f"deadline missed: the request's "
                                    f"deadline passed {late_ms:.1f} ms ago while it was queued "
                                    f"(timeout {job.req.timeout_us} us)"))

    def _context(self, entry: Entry, job: Job, now: float) -> DecisionContext:
        work = self._work.get(job.model.name)
        if work is None:  # the service time is fixed at start-up: one Work per model
            work = self.board.profile.work_from_top_latency(
                self.top_service_s(job.model) * 1000.0)
            self._work[job.model.name] = work
        with self._lock:
            queue_len = len(self.queue)
            urgent = self.queue.count_at_most(entry.cls + 1)
            backlog_ms = self.queue.backlog_ms
            earliest = self.queue.earliest_deadline_s()  # of those still waiting, as in the simulator
            rate = self._rate.rate_hz(now)
            dispersion = self._burst.dispersion(now)
            urgent_timeout_s = self._urgent.value(now)
        utils = [p.advance(now, 0.0) for p in self._pelt]
        busy = [self._busy_fraction(c, now) for c in range(self.view.n_clusters)]
        heat = self._heat_context() if self.heat is not None else _NO_HEAT
        return DecisionContext(
            now_s=now, head_priority=entry.priority, head_deadline_s=entry.deadline_s,
            head_work=work, levels=self.queue.levels, queue_len=queue_len,
            urgent_waiting=urgent, backlog_ms=backlog_ms, earliest_deadline_s=earliest,
            cur_opp=list(self._cur_opps), arrival_rate_hz=rate,
            utilisation=self._board_busy.advance(now, False), util_by_cluster=utils,
            busy_fraction_by_cluster=busy, urgent_timeout_s=urgent_timeout_s,
            head_enqueued_s=entry.enqueued_s, waiting_in_order=self._waiting_in_order,
            task_util=self._task.advance(now, 0.0), task_util_est=self._task.util_est / 1024.0,
            task_cluster=self._task.cluster, task_woken=not self._task.enqueued,
            arrival_dispersion=dispersion, **heat)

    def _heat_context(self) -> dict[str, Any]:
        """``temp_c``, ``cap_opp`` and ``trip_c`` of the context: the hottest zone, per cluster
        the highest OPP at or below its cooling device's cap, and the lowest passive trip (read
        at most once a second)."""
        if self.heat is None:
            return {}
        temp_c, caps_khz = self.heat.current()
        trip_c = self.heat.trip_c()
        clusters = self.board.profile.clusters
        if len(caps_khz) != len(clusters):
            return {"temp_c": temp_c, "trip_c": trip_c}
        cap_opp = [len(c.opps) - 1 if cap is None else
                   max([i for i, o in enumerate(c.opps) if o.khz <= cap] or [0])
                   for c, cap in zip(clusters, caps_khz, strict=True)]
        return {"temp_c": temp_c, "cap_opp": cap_opp, "trip_c": trip_c}

    def _waiting_in_order(self) -> tuple[Waiting, ...]:
        """``DecisionContext.waiting_in_order``: the queue behind the head, copied under the lock
        (the HTTP threads push while the policy looks)."""
        with self._cond:
            return waiting_of(self.queue.in_service_order())

    def _busy_fraction(self, cluster: int, now: float) -> float:
        """Busy fraction of the current window, without starting a new one."""
        w = self._busy[cluster]
        span = now - w.start_s
        return min(1.0, w.busy_s / span) if span > 0 else 0.0

    def _fallback_decision(self) -> Decision:
        ci = self.board.profile.fastest_cluster
        return Decision(ci, len(self.board.profile.clusters[ci].opps) - 1)

    def _apply(self, decision: Decision) -> None:
        self.board.apply(decision)
        opps = list(self.board.current_opps())
        if opps != self._cur_opps:  # the metrics' time per frequency changes only then
            self._cur_opps = opps
            self._note_frequencies(self.clock())

    def _pin(self, cluster: int | None) -> None:
        """Pin the calling thread to ``cluster``'s CPUs (None: to every CPU it may use)."""
        if not self._allowed_cpus:
            return
        target = self._pin_targets.get(cluster)
        if target is None:  # the CPUs are fixed per board: worked out once per cluster
            everywhere = frozenset(self._allowed_cpus)
            target = everywhere
            if cluster is not None:
                target = frozenset(self.board.cpus_for(cluster)) & everywhere or everywhere
            self._pin_targets[cluster] = target
        tid = threading.get_ident()
        if target == self._pinned.get(tid):
            return
        try:
            os.sched_setaffinity(0, target)
            self._pinned[tid] = target
        except OSError as exc:
            log.warning("cannot pin the inference thread to CPUs %s (%s); not pinning",
                        sorted(target), exc.strerror)
            self._allowed_cpus = set()

    def _serve(self, entry: Entry, inline: bool = False) -> None:
        if not inline:  # answered by _finish, or by the crash path if it never gets there
            self._current = entry
        cpu0_ns = 0 if inline else time.thread_time_ns()  # inline: the caller counts it
        job: Job = entry.payload
        now = self.clock()
        if self._gap_tick:  # the tick a governor without the task's signals gets on waking
            self._gap_tick = False
            self._tick(now)
        ctx = self._context(entry, job, now)
        try:
            decision = self.policy.decide(self.view, ctx)
        except Exception:
            log.exception("policy %s failed to decide; running at the top OPP", self.policy.name)
            decision = self._fallback_decision()
        guard = self.qos_guard
        if guard is not None and guardable(self.policy):
            with self._qos_lock:
                decision = guard.adjust(self.view, entry.priority, decision)
        if self.floor_khz:
            decision = self._floored(decision)
        try:
            self._apply(decision)
        except Exception:
            log.exception("board failed to apply %s", decision)
        self._pin(decision.cluster)
        started_s = self.clock()
        t0 = self.host_clock()
        try:
            results = job.model.run(job.req.inputs)
        except Exception as exc:  # the interpreter's errors are not typed
            host_s = self.host_clock() - t0
            log.warning("model %s failed: %s", job.model.name, exc)
            self._finish(entry, Outcome(500, "error", f"inference failed: {exc}"))
            return
        host_s = self.host_clock() - t0
        board = self.board
        cost = board.settle(decision, host_s, started_s, reference_s=job.model.service_s)
        if cost.cluster is not None and cost.opp is not None:  # the kernel chose (hands-off)
            decision = Decision(cost.cluster, cost.opp)
        end_s = self.clock()
        self._account(decision, started_s, end_s, cost.wall_s)
        job.model.record(host_s)
        self.served += 1
        cluster = board.profile.clusters[decision.cluster]
        params = {
            "queue_wait_us": 0 if inline else round((now - entry.enqueued_s) * 1e6),
            "service_us": round(cost.wall_s * 1e6),
            "host_us": round(host_s * 1e6),
            "freq_khz": cluster.opps[decision.opp].khz,
            "opp": decision.opp,
            "cluster": decision.cluster,
            "cluster_name": cluster.name,
            "energy_j": cost.energy_j,
            "priority": job.req.priority,
        }
        if self.heat is not None:
            temp_c = self.heat.temp_c()
            if math.isfinite(temp_c):  # the hottest thermal zone (read at most once a second)
                params["temp_c"] = temp_c
        late = end_s > entry.deadline_s
        cpu_ns = 0 if inline else time.thread_time_ns() - cpu0_ns
        self._finish(entry, Outcome(200, "late" if late else "ok", results=results,
                                    parameters=params, cpu_ns=cpu_ns), energy_j=cost.energy_j)

    def _account(self, decision: Decision, started_s: float, end_s: float, wall_s: float) -> None:
        c = decision.cluster
        key = (c, decision.opp)
        scale = self._scales.get(key)
        if scale is None:  # fixed per board: worked out once per (cluster, OPP)
            cl = self.board.profile.clusters[c]
            scale = cl.opps[decision.opp].khz / cl.max_khz * self.board.profile.capacity(c) / 1024.0
            self._scales[key] = scale
        for i, p in enumerate(self._pelt):
            if i == c:
                p.idle_then_run(started_s, end_s, scale)
            else:
                p.advance(end_s, 0.0)
        board_busy = self._board_busy
        board_busy.advance(started_s, False)
        board_busy.advance(end_s, True)
        self._busy[c].busy_s += wall_s
        task = self._task
        task.enqueue(started_s, c)
        task.advance(end_s, scale)
        if not len(self.queue):  # nothing left to run: the inference task goes to sleep
            task.dequeue(end_s)  # (util_est updates)

    def _after_run(self) -> None:
        """After a run (holding the token): the ticks that came due while it ran, taken once;
        then, with nothing queued, the board is idle and ticks stop."""
        if self.policy.tick_s > 0:
            now = self.clock()
            if now >= self._next_tick_s:
                self._tick(now)
        with self._cond:
            if not len(self.queue) and not self._quiescent:
                self._quiescent = True
                self._idle_tick_s = self._next_tick_s
                self._next_tick_s = math.inf

    def _tick(self, now: float) -> None:
        task_signal = bool(getattr(self.policy, "uses_task_util", False))
        for c in range(self.view.n_clusters):
            util = self._pelt[c].advance(now, 0.0)
            if task_signal:
                self._task.advance(now, 0.0)
                util = self._task.cpu_util(c)
            busy = self._busy[c].sample(now)
            try:
                opp = self.policy.tick(self.view, now, c, self._cur_opps[c], util, busy)
                opp = max(opp, self._floor_opps[c])
                if opp != self._cur_opps[c]:
                    self._apply(Decision(c, opp))
            except Exception:
                log.exception("policy %s failed to tick cluster %d", self.policy.name, c)
        tick_s = self.policy.tick_s  # > 0: only a ticking policy's ticks come due
        self._next_tick_s += tick_s
        if self._next_tick_s <= now:
            self._next_tick_s = now + tick_s

    def _record_outcome(self, priority: int, missed: bool) -> None:
        guard = self.qos_guard
        if guard is not None:
            with self._qos_lock:
                guard.record(priority, missed, self.clock())

    def _finish(self, entry: Entry, out: Outcome, energy_j: float = 0.0) -> None:
        if entry is self._current:
            self._current = None
        job: Job = entry.payload
        self.metrics.count(job.req.model, job.req.priority, out.outcome, energy_j=energy_j)
        if out.outcome == "ok" or out.outcome in MISSED_OUTCOMES:
            self._record_outcome(job.req.priority, out.outcome != "ok")
        try:
            job.answer(out)
        except Exception:  # the answer path must never take the loop down
            log.exception("cannot deliver the answer of request %r", job.req.request_id)


def set_thread_nice(nice: int, what: str, logger: logging.Logger) -> int | None:
    """Run the calling thread at ``nice`` (0: leave it); returns the nice value in effect."""
    tid = threading.get_native_id()
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError as exc:
            logger.warning("cannot run %s at nice %d (%s); it runs at the daemon's priority. "
                           "Allow it with LimitNICE=%d (the shipped unit does) or "
                           "CAP_SYS_NICE", what, nice, exc.strerror or exc, nice)
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None


def drain_remaining(dispatcher: Dispatcher) -> None:
    """Answer anything still queued (used if the thread could not finish in time)."""
    with dispatcher._cond:
        left = dispatcher.queue.drain()
    for e in left:
        with contextlib.suppress(Exception):
            dispatcher._finish(e, Outcome(503, "shutting_down", "shutting down"))
