"""The discrete-event core of the simulator.

One board, one inference at a time, non-preemptive. Requests arrive from a :class:`JobSet`, wait
in the daemon's :class:`~edgesched.queue.RequestQueue`, and run at the cluster and OPP a policy
chose, paying the cluster's transition latency when the OPP changes. Requests whose deadline has
passed while they waited are answered "deadline missed" without running (as the daemon does).

Energy over a run (board floor excluded, reported apart): every cluster draws its ``idle_uw``
when idle; the cluster running a request draws ``busy_power_uw`` instead; a frequency change
costs its transition latency at the new OPP's static power. The run lasts until
``max(duration, last completion)``.

Policies with ``tick_s > 0`` (kernel governors) are re-evaluated on a tick grid while a request
runs, the request's progress carrying over between OPPs; after an idle gap they get one tick with
the utilisation decayed over the gap.

Heat (profiles with a thermal section, :mod:`edgesched.thermal`): the board's RC node is
heated by the same cluster power the energy accounts use, and the step_wise governor polls it on
the run's clock; its cap limits the OPP any decision or governor tick asks for, as the kernel's
``scaling_max_freq`` would. A cap that falls while a request runs applies from the next decision
or tick (a run is not re-clocked midway). ``RunStats.throttled_s`` and ``peak_temp_c`` report it;
without a thermal section none of this runs. Where some cluster's leakage depends on temperature
(``static_temp_coeff_per_c`` > 0), a run, a governor's run segment between ticks and a
frequency switch are priced with their leakage at the node's temperature when they start
(``exp(k_T * (T - default_temp_c))`` evaluated exactly, no temperature buckets), and that power
heats the node: heat feeds back into leakage. Idle power (``idle_uw``) has no temperature term;
a cluster's static power is never priced below it (so cold that the leakage term would take it
there, it is the idle power).
With k_T = 0 on every cluster the tables' powers are used as they are, number for number.

Per-board constants (service times, powers, switch energies, the heat node's power during each
run, the kernel capacities) are computed once in :class:`BoardTables`; a step only looks them up.

The inference task's utilisation (:class:`~edgesched.utilisation.TaskUtil`, as the daemon's
dispatcher keeps it) starts a run when a request starts and sleeps when nothing is left to run;
policies get it in the context, and ``uses_task_util`` policies get its ``cpu_util`` at ticks
and no tick at the end of an idle gap (a NO_HZ kernel does not tick idle CPUs; the wake-up's own
update, ``decide``, comes first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import partial

import numpy as np

from edgesched.device import DeviceProfile
from edgesched.errors import QueueFullError
from edgesched.observation import (
    URGENT_WINDOW_S,
    BoardView,
    Decision,
    DecisionContext,
    Waiting,
    waiting_of,
)
from edgesched.policy.base import Policy
from edgesched.policy.eas import first_cluster
from edgesched.qos import QosGuard
from edgesched.queue import Entry, RequestQueue
from edgesched.thermal import ThermalSpec, ThermalState
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
from edgesched_sim.scenarios import JobSet
from edgesched_sim.workloads import MODELS


def _waiting_in_order(queue: RequestQueue) -> tuple[Waiting, ...]:
    """``DecisionContext.waiting_in_order`` of the engine's queue: built only when a policy
    asks for it."""
    return waiting_of(queue.in_service_order())


class Outcome(IntEnum):
    PENDING = 0
    OK = 1
    LATE = 2        # ran, finished after its deadline
    EXPIRED = 3     # deadline passed while queued: answered without running
    SHED = 4        # displaced from a full queue by higher-priority work
    REJECTED = 5    # refused at admission: queue full


MISSED = (Outcome.LATE, Outcome.EXPIRED, Outcome.SHED, Outcome.REJECTED)
_OK, _LATE, _EXPIRED = Outcome.OK, Outcome.LATE, Outcome.EXPIRED


@dataclass(frozen=True)
class QueueConfig:
    levels: int = 3
    max_count: int = 64
    aging_s: float = 2.0
    drop_expired: bool = True


@dataclass
class RunStats:
    """Per-job results of one run (arrays indexed like the job set)."""

    outcome: np.ndarray
    finish_s: np.ndarray
    start_s: np.ndarray
    cluster: np.ndarray
    opp: np.ndarray
    energy_j: np.ndarray
    """Energy attributed to each request (busy power x service time); 0 if it did not run."""
    total_energy_j: float = 0.0
    idle_energy_j: float = 0.0
    transition_energy_j: float = 0.0
    horizon_s: float = 0.0
    board_floor_j: float = 0.0
    transitions: int = 0
    busy_s: float = 0.0
    mean_busy_khz: float = 0.0
    """Time-weighted mean frequency while running requests."""
    throttled_s: float = 0.0
    """Time the thermal throttling capped some cluster below its top OPP (0 without heat model)."""
    peak_temp_c: float = math.nan
    """Highest thermal-zone temperature of the run (nan without a heat model)."""


class BoardTables:
    """The constants of runs on one board with one set of models: the board view and, by model,
    cluster and OPP, service times and powers. Built once and shared by every run on the same
    board and models (the simulator's environment keeps one per pair)."""

    def __init__(self, profile: DeviceProfile, model_names: Sequence[str],
                 temp_c: float | None = None) -> None:
        """``temp_c``: the cluster temperature (Celsius) the powers are priced at; None for the
        profile's ``default_temp_c`` (leakage: ``Cluster.leakage_uw``)."""
        self.profile = profile
        self.temp_c = temp_c
        self.view = BoardView.of(profile)
        names = sorted(set(model_names))
        self.model_names = tuple(names)
        self.model_index = {m: i for i, m in enumerate(names)}
        self.works = [MODELS[m].work for m in names]
        self.input_bytes = [MODELS[m].input_bytes for m in names]
        nc = len(profile.clusters)
        self.n_clusters = nc
        # [model][cluster][opp] service time (s) and extra power over the cluster's idle (uW)
        self.lat_s = [[[profile.latency_ms(w, c, o) / 1000.0 for o in range(len(cl.opps))]
                       for c, cl in enumerate(profile.clusters)] for w in self.works]
        # a cluster held at an OPP never draws less than idle (a cold temp_c could price it so)
        lift = [[cl.idle_lift_uw(o, temp_c) for o in range(len(cl.opps))]
                for cl in profile.clusters]
        self.lift_uw = lift
        """[cluster][opp] what the tables' static and busy powers add to reach idle power."""
        self.busy_uw = [[[cl.busy_power_uw(o, w.threads, temp_c) + lift[c][o]
                          for o in range(len(cl.opps))]
                         for c, cl in enumerate(profile.clusters)] for w in self.works]
        self.static_uw = [[cl.static_power_uw(o, temp_c) + lift[c][o] for o in range(len(cl.opps))]
                          for c, cl in enumerate(profile.clusters)]
        self.idle_uw = [cl.idle_uw for cl in profile.clusters]
        self.idle_total_uw = sum(self.idle_uw)
        self.trans_s = [cl.transition_latency_ns * 1e-9 for cl in profile.clusters]
        # [cluster][opp] of a switch to that OPP: (energy above the cluster's idle J, energy J)
        self.switch_j = [[((st - self.idle_uw[c]) * self.trans_s[c] * 1e-6, st * self.trans_s[c] * 1e-6)
                          for st in static_c] for c, static_c in enumerate(self.static_uw)]
        self.khz = [[o.khz for o in cl.opps] for cl in profile.clusters]
        # [model][cluster][opp] of one uninterrupted run: (service s, energy J, energy above the
        # cluster's idle J, kHz x s)
        self.run_cost = [[[(dt, p * dt * 1e-6, (p - self.idle_uw[c]) * dt * 1e-6,
                            self.khz[c][o] * dt)
                           for o, (dt, p) in enumerate(zip(lat_c, busy_c, strict=True))]
                          for c, (lat_c, busy_c) in enumerate(zip(lat_m, busy_m, strict=True))]
                         for lat_m, busy_m in zip(self.lat_s, self.busy_uw, strict=True)]
        # [model][cluster][opp] the board's cluster power while that cluster runs the model (uW):
        # what heats the thermal node during a run
        self.run_heat_uw = [[[self.idle_total_uw - self.idle_uw[c] + p for p in busy_c]
                             for c, busy_c in enumerate(busy_m)] for busy_m in self.busy_uw]
        top = profile.max_speed_mhz
        self.run_scale = [[cl.speed_mhz(o) / top for o in range(len(cl.opps))]
                          for cl in profile.clusters]
        self.top_s = [min(self.lat_s[m][c][-1] for c in range(nc)) for m in range(len(names))]
        self.top_ms = [t * 1000.0 for t in self.top_s]
        fastest = profile.fastest_cluster
        self.ref_j = [self.busy_uw[m][fastest][-1] * self.lat_s[m][fastest][-1] * 1e-6
                      for m in range(len(names))]
        """Energy of each model at the board's top speed (the reward's unit)."""
        self.task_capacity = tuple(kernel_capacity(profile.capacity(i)) for i in range(nc))
        """The clusters' capacities as the kernel's integers (the inference task's ``TaskUtil``)."""
        self.task_first_cluster = first_cluster(profile)
        """Where the inference task starts (``TaskUtil``'s first cluster)."""
        self.leak_k = [cl.static_temp_coeff_per_c for cl in profile.clusters]
        """Per cluster: the leakage's k_T (1/C); all 0 in a profile without a temperature term."""
        self.leak_t0_c = [cl.default_temp_c for cl in profile.clusters]
        self.leak_uw = [[cl.leakage_uw(o) for o in range(len(cl.opps))] for cl in profile.clusters]
        """[cluster][opp] leakage at the profile's ``default_temp_c`` (uW)."""
        self.leak_priced = [1.0 if temp_c is None or not k else math.exp(k * (temp_c - t0))
                            for k, t0 in zip(self.leak_k, self.leak_t0_c, strict=True)]
        """Per cluster: the factor ``exp(k_T * (T - T0))`` the tables' powers already include."""
        self.temp_leakage = any(self.leak_k)
        """Some cluster's leakage depends on temperature: with a heat model, runs are priced at
        the model's temperature (:meth:`Engine.leak_extra_uw`)."""


class Engine:
    """A run of one job set on one board; drive it with ``run(policy)`` or step by step.

    ``tables`` may be passed to reuse the board's constants across runs; they must have been
    built for ``profile`` and cover every model of ``jobs``.
    """

    def __init__(self, profile: DeviceProfile, jobs: JobSet, duration_s: float,
                 queue: QueueConfig | None = None, tables: BoardTables | None = None,
                 thermal: ThermalSpec | None = None) -> None:
        if (tables is None or tables.profile is not profile
                or not tables.model_index.keys() >= set(jobs.model)):
            tables = BoardTables(profile, jobs.model)
        self.profile = profile
        self.tables = tables
        self.view = tables.view
        self.jobs = jobs
        self.duration_s = duration_s
        self.qcfg = queue or QueueConfig()
        self.thermal = profile.thermal if thermal is None else thermal
        """The heat model (:mod:`edgesched.thermal`): the profile's unless one is passed (another
        ambient or cooling); None: no heat, no throttling, no cost."""
        self.leak_heat = self.thermal is not None and tables.temp_leakage
        """Leakage follows the heat model's temperature (a heat model and some k_T > 0); else
        every power is the tables' and none of the temperature pricing runs."""
        self._model_index = tables.model_index
        self.works = tables.works
        self.input_bytes = tables.input_bytes
        self.n_clusters = tables.n_clusters
        self.lat_s = tables.lat_s
        self.busy_uw = tables.busy_uw
        self.static_uw = tables.static_uw
        self.idle_uw = tables.idle_uw
        self.idle_total_uw = tables.idle_total_uw
        self.trans_s = tables.trans_s
        self.switch_j = tables.switch_j
        self.run_heat_uw = tables.run_heat_uw
        self.khz = tables.khz
        self.run_cost = tables.run_cost
        self.run_scale = tables.run_scale
        self.top_s = tables.top_s
        self.top_ms = tables.top_ms
        self.ref_j = tables.ref_j
        self.track_pelt = True
        """Keep the utilisation signals (per-cluster PELT and the inference task's)."""
        self.task_capacity = tables.task_capacity
        self.task_first_cluster = tables.task_first_cluster
        self.task_signal = False
        """Ticks get the task's ``cpu_util`` instead of the cluster's PELT (``uses_task_util``)."""
        self.guard: QosGuard | None = None
        """The miss-budget guard of the current run (:mod:`edgesched.qos`): told every outcome."""
        self.job_model = list(map(self._model_index.__getitem__, jobs.model))
        self.job_work = list(map(self.works.__getitem__, self.job_model))
        self.job_release = jobs.release_s.tolist()
        self.job_deadline = jobs.deadline_s.tolist()
        levels = self.qcfg.levels
        prio = np.minimum(np.asarray(jobs.priority, dtype=np.int64), levels)
        self.job_prio: list[int] = prio.tolist()
        """Per job: its priority class (1 = highest), priorities past ``levels`` in the lowest."""
        self.job_size = list(map(self.input_bytes.__getitem__, self.job_model))
        self.job_service_ms = list(map(self.top_ms.__getitem__, self.job_model))
        self.job_urgent: list[bool] = ((prio == 1) & (jobs.deadline_s != math.inf)).tolist()
        """Per job: a priority-1 request with a deadline (its timeout feeds ``urgent``)."""
        self.reset()

    # ------------------------------------------------------------------------------- state
    def reset(self) -> None:
        n = len(self.jobs)
        nc = self.n_clusters
        q = self.qcfg
        self.queue = RequestQueue(levels=q.levels, max_count=q.max_count, max_bytes=1 << 40,
                                  aging_s=q.aging_s)
        self.now = 0.0
        self.next_job = 0
        self.cur_opp = [0] * nc
        self.pelt = [PeltTracker() for _ in range(nc)]
        self.task = TaskUtil(self.task_capacity, 0.0, self.task_first_cluster)
        self.windows = [BusyWindow() for _ in range(nc)]
        self.rate = RateMeter()
        self.burst = BurstMeter()
        self.urgent = RecentMin(URGENT_WINDOW_S)
        self.busy_avg = BusyAverage()
        self.next_tick_s = math.inf
        self.extra_j = 0.0
        self.busy_khz_s = 0.0
        self.busy_s = 0.0
        self.stats = RunStats(outcome=np.zeros(n, dtype=np.int8), finish_s=np.full(n, np.nan),
                              start_s=np.full(n, np.nan), cluster=np.full(n, -1, dtype=np.int8),
                              opp=np.full(n, -1, dtype=np.int16), energy_j=np.zeros(n))
        self._outcome = [0] * n
        self._energy = [0.0] * n
        self._finish = [math.nan] * n
        self._start = [math.nan] * n
        self._cluster = [-1] * n
        self._opp = [-1] * n
        self._zeros = [0.0] * nc
        self.step_missed: list[int] = []  # priorities of requests missed since the last call
        self.done = False
        self.heat = (None if self.thermal is None else
                     ThermalState(self.thermal, [len(k) for k in self.khz], self.idle_total_uw))
        self.trip_c = math.inf if self.thermal is None else self.thermal.passive_trip_c()
        """The lowest passive trip (``DecisionContext.trip_c``)."""
        self._waiting_in_order = partial(_waiting_in_order, self.queue)
        """The contexts' ``waiting_in_order`` (refers to the queue, not to the engine: the
        engine keeps a context, see ``_ctx``, and no reference cycle holds it alive)."""
        self._ctx: DecisionContext | None = None
        """The context ``context(..., reuse=True)`` updates (made for this run's queue, OPPs and
        heat state)."""

    # ------------------------------------------------------------------------------- arrivals
    def _admit_until(self, t: float) -> None:
        rel = self.job_release
        n = len(rel)
        i = self.next_job
        push = self.queue.push
        urgent = self.urgent.add
        prios, deadlines, timed = self.job_prio, self.job_deadline, self.job_urgent
        sizes, service_ms = self.job_size, self.job_service_ms
        # the rate meter does not depend on the queue: ``rate.events`` of the arrivals, written
        # out in the same loop
        rate = self.rate
        acc, last_s, tau_s = rate.acc, rate.last_s, rate.tau_s
        exp = math.exp
        burst = self.burst
        while i < n and rel[i] <= t:
            r = rel[i]
            if r >= burst.end_s:  # ``burst.event(r)``, written out
                burst.roll(r)
            burst.count += 1
            if r > last_s:
                acc *= exp(-(r - last_s) / tau_s)
                last_s = r
            acc += 1.0
            if timed[i]:
                urgent(r, deadlines[i] - r)
            # positional: request_id, priority, deadline_s, enqueued_s, size_bytes, service_ms
            entry = Entry(i, prios[i], deadlines[i], r, sizes[i], service_ms[i])
            try:
                shed = push(entry, r)
            except QueueFullError:
                self._miss(i, Outcome.REJECTED)
            else:
                if shed:
                    for victim in shed:
                        self._miss(victim.request_id, Outcome.SHED)
            i += 1
        self.next_job = i
        rate.acc = acc
        rate.last_s = last_s

    def _miss(self, job: int, outcome: Outcome) -> None:
        self._outcome[job] = outcome
        self.step_missed.append(self.job_prio[job])
        if self.guard is not None:
            self.guard.record(self.job_prio[job], True, self.now)

    # ------------------------------------------------------------------------------- stepping
    def next_head(self, policy: Policy | None = None) -> Entry | None:
        """Advance until a request is ready to run; None when the run is over."""
        q = self.queue
        drop_expired = self.qcfg.drop_expired
        while True:
            if drop_expired:  # (an empty queue returns none)
                expired = q.pop_expired(self.now)
                if expired:  # ``_miss(e.request_id, Outcome.EXPIRED)`` of each, written out
                    outcome, prios, missed = self._outcome, self.job_prio, self.step_missed
                    guard = self.guard
                    for e in expired:
                        job = e.request_id
                        outcome[job] = _EXPIRED
                        missed.append(prios[job])
                        if guard is not None:
                            guard.record(prios[job], True, self.now)
            head = q.pop(self.now)
            if head is not None:
                return head
            if self.track_pelt and self.task.enqueued:
                self.task.dequeue(self.now)  # nothing left to run: the inference task sleeps
            if self.next_job >= len(self.job_release):
                self.done = True
                return None
            t_next = self.job_release[self.next_job]
            if t_next > self.now:
                self._idle_until(t_next, policy)
            self._admit_until(self.now)

    def _idle_until(self, t: float, policy: Policy | None) -> None:
        if self.heat is not None:
            self.heat.advance(t, self.idle_total_uw)
        if self.track_pelt:
            for c in range(self.n_clusters):
                self.pelt[c].advance(t, 0.0)
        self.busy_avg.advance(t, False)
        self.now = t
        if policy is not None and policy.tick_s > 0 and t >= self.next_tick_s:
            # a NO_HZ kernel takes no tick on an idle CPU: for a policy fed the task's signals
            # (schedutil) the wake-up's own update (``decide``) comes first, not a tick
            if not self.task_signal:
                self._tick(policy)
            self.next_tick_s = (math.floor(t / policy.tick_s) + 1) * policy.tick_s

    def context(self, head: Entry, reuse: bool = False) -> DecisionContext:
        """The context of the decision about ``head``. With ``reuse`` the engine's own context
        object is updated in place and returned (the same values, nothing allocated): for a
        caller that keeps nothing of it past the decision, such as the environment; the next
        ``context(..., reuse=True)`` overwrites it."""
        now = self.now
        q = self.queue
        task = self.task
        ctx = self._ctx
        if not reuse or ctx is None:
            ctx = DecisionContext(
                now_s=now, head_priority=head.priority, head_deadline_s=head.deadline_s,
                head_work=self.job_work[head.request_id], levels=q.levels,
                queue_len=len(q), urgent_waiting=q.count_at_most(head.cls + 1),
                backlog_ms=q.backlog_ms, earliest_deadline_s=q.earliest_deadline_s(),
                cur_opp=self.cur_opp, arrival_rate_hz=self.rate.rate_hz(now),
                utilisation=self.busy_avg.value,
                util_by_cluster=[p.util for p in self.pelt] if self.track_pelt else self._zeros,
                busy_fraction_by_cluster=self._zeros, urgent_timeout_s=self.urgent.value(now),
                head_enqueued_s=head.enqueued_s, waiting_in_order=self._waiting_in_order,
                entries_in_order=q.in_service_order,
                task_util=task.advance(now, 0.0) if self.track_pelt else 0.0,
                task_util_est=task.util_est / 1024.0, task_cluster=task.cluster,
                task_woken=not task.enqueued,
                temp_c=math.nan if self.heat is None else self.heat.temp_c,
                cap_opp=None if self.heat is None else self.heat.cap, trip_c=self.trip_c,
                arrival_dispersion=self.burst.dispersion(now))
            if reuse:
                self._ctx = ctx
            return ctx
        # the fields above that change between decisions (the rest hold for the whole run:
        # ``reset`` drops the reused context)
        ctx.now_s = now
        ctx.head_priority = head.priority
        ctx.head_deadline_s = head.deadline_s
        ctx.head_work = self.job_work[head.request_id]
        (ctx.queue_len, ctx.urgent_waiting, ctx.backlog_ms,
         ctx.earliest_deadline_s) = q.decision_stats(head.cls + 1)
        rate = self.rate  # ``rate.rate_hz(now)``, written out
        dt = now - rate.last_s
        ctx.arrival_rate_hz = rate.acc * (math.exp(-dt / rate.tau_s) if dt > 0 else 1.0) / rate.tau_s
        ctx.arrival_dispersion = self.burst.dispersion(now)
        ctx.utilisation = self.busy_avg.value
        ctx.urgent_timeout_s = self.urgent.value(now)
        ctx.head_enqueued_s = head.enqueued_s
        if self.track_pelt:
            ctx.util_by_cluster = [p.util for p in self.pelt]
            ctx.task_util = task.advance(now, 0.0)
        else:
            ctx.util_by_cluster = self._zeros
            ctx.task_util = 0.0
        ctx.task_util_est = task.util_est / 1024.0
        ctx.task_cluster = task.cluster
        ctx.task_woken = not task.enqueued
        heat = self.heat
        if heat is not None:
            ctx.temp_c = heat.temp_c
            ctx.cap_opp = heat.cap
        return ctx

    def leak_extra_uw(self, cluster: int, opp: int, temp_c: float) -> float:
        """Leakage of ``cluster`` at ``opp`` and ``temp_c`` above what the tables price (uW):
        ``leakage(T0) * (exp(k_T * (temp_c - T0)) - the tables' factor)``; 0 when k_T is 0. A
        cluster held at an OPP never draws less than idle: colder than where its static power
        meets its idle power, the static power is the idle power."""
        t = self.tables
        k = t.leak_k[cluster]
        if not k:
            return 0.0
        extra = t.leak_uw[cluster][opp] * (math.exp(k * (temp_c - t.leak_t0_c[cluster]))
                                           - t.leak_priced[cluster])
        lift = t.lift_uw[cluster][opp]  # the tables' own lift to idle power, taken back here
        least = t.idle_uw[cluster] - t.static_uw[cluster][opp] + lift
        return (extra if extra > least else least) - lift

    def _switch(self, cluster: int, opp: int) -> None:
        if self.cur_opp[cluster] == opp:
            return
        extra_j, energy_j = self.switch_j[cluster][opp]
        heat = self.heat
        if self.leak_heat and heat is not None:  # the new OPP's leakage at the temperature now
            leak_j = self.leak_extra_uw(cluster, opp, heat.temp_c) * self.trans_s[cluster] * 1e-6
            extra_j += leak_j
            energy_j += leak_j
        self.extra_j += extra_j
        stats = self.stats
        stats.transition_energy_j += energy_j
        stats.transitions += 1
        self.cur_opp[cluster] = opp
        self.now += self.trans_s[cluster]

    def _tick(self, policy: Policy) -> None:
        now = self.now
        for c in range(self.n_clusters):
            util = self.pelt[c].advance(now, 0.0)
            if self.task_signal:
                self.task.advance(now, 0.0)
                util = self.task.cpu_util(c)
            busy = self.windows[c].sample(now)
            new = policy.tick(self.view, now, c, self.cur_opp[c], util, busy)
            if self.heat is not None and new > self.heat.cap[c]:
                new = self.heat.cap[c]  # the thermal cap is scaling_max_freq: it clamps the governor
            if new != self.cur_opp[c]:
                self._switch(c, new)

    def run_head(self, head: Entry, decision: Decision, policy: Policy | None = None) -> float:
        """Run ``head`` at ``decision``; returns the energy attributed to it (J)."""
        job = head.request_id
        m = self.job_model[job]
        c, o = decision
        heat = self.heat
        if heat is not None:
            now = self.now
            if heat.t_s < now or heat.next_poll_s <= now:  # else ``advance`` would do nothing
                heat.advance(now, self.idle_total_uw)
            cap = heat.cap[c]
            if o > cap:
                o = cap  # the kernel's cap limits whatever OPP the policy asked for
        hot = self.leak_heat
        cur_opp = self.cur_opp
        if cur_opp[c] != o:  # ``_switch``, written out
            switch_extra_j, switch_j = self.switch_j[c][o]
            if hot and heat is not None:  # the new OPP's leakage at the temperature now
                leak_j = self.leak_extra_uw(c, o, heat.temp_c) * self.trans_s[c] * 1e-6
                switch_extra_j += leak_j
                switch_j += leak_j
            self.extra_j += switch_extra_j
            stats = self.stats
            stats.transition_energy_j += switch_j
            stats.transitions += 1
            cur_opp[c] = o
            self.now += self.trans_s[c]
        start = self.now
        track = self.track_pelt
        if track:
            self.task.enqueue(start, c)
        energy = 0.0
        if policy is None or policy.tick_s <= 0:
            dt, energy, extra_j, khz_s = self.run_cost[m][c][o]
            end = start + dt
            if heat is not None:  # the switch's time (if any) at idle power, then the run
                if hot:  # the run's leakage at the temperature it starts at (before the switch)
                    leak_uw = self.leak_extra_uw(c, o, heat.temp_c)
                    energy += leak_uw * dt * 1e-6
                    extra_j += leak_uw * dt * 1e-6
                    heat.advance_two(start, self.idle_total_uw, end,
                                     self.run_heat_uw[m][c][o] + leak_uw)
                else:
                    heat.advance_two(start, self.idle_total_uw, end, self.run_heat_uw[m][c][o])
            self.extra_j += extra_j
            self.busy_khz_s += khz_s
            self.busy_s += dt
            self.now = end
            if track:
                self.pelt[c].advance(start, 0.0)
                self.pelt[c].advance(end, self.run_scale[c][o])
                self.task.advance(end, self.run_scale[c][o])
                self.windows[c].add_busy(dt)
        else:
            remaining = 1.0
            tick = policy.tick_s
            if not self.next_tick_s > self.now:
                self.next_tick_s = (math.floor(self.now / tick) + 1) * tick
            while remaining > 1e-12:
                o = self.cur_opp[c]
                total = self.lat_s[m][c][o]
                seg = min(remaining * total, self.next_tick_s - self.now)
                p = self.busy_uw[m][c][o]
                if heat is not None:
                    run_heat_uw = self.run_heat_uw[m][c][o]
                    if hot:  # the segment's leakage at the temperature it starts at
                        leak_uw = self.leak_extra_uw(c, o, heat.temp_c)
                        p += leak_uw
                        run_heat_uw += leak_uw
                    heat.advance_two(self.now, self.idle_total_uw, self.now + seg, run_heat_uw)
                energy += p * seg * 1e-6
                self.extra_j += (p - self.idle_uw[c]) * seg * 1e-6
                self.busy_khz_s += self.khz[c][o] * seg
                self.busy_s += seg
                self.pelt[c].advance(self.now, 0.0)
                self.now += seg
                self.pelt[c].advance(self.now, self.run_scale[c][o])
                if track:
                    self.task.advance(self.now, self.run_scale[c][o])
                self.windows[c].add_busy(seg)
                remaining -= seg / total
                if self.now >= self.next_tick_s - 1e-12:
                    self._tick(policy)
                    self.next_tick_s = (math.floor(self.now / tick + 1e-9) + 1) * tick
        finish = self.now
        self.busy_avg.idle_then_busy(start, finish)
        self._start[job] = start
        self._finish[job] = finish
        self._cluster[job] = c
        self._opp[job] = cur_opp[c]
        self._energy[job] = energy
        guard = self.guard
        if finish > head.deadline_s:  # ``_miss(job, Outcome.LATE)``, written out
            self._outcome[job] = _LATE
            prio = self.job_prio[job]
            self.step_missed.append(prio)
            if guard is not None:
                guard.record(prio, True, self.now)
        else:
            self._outcome[job] = _OK
            if guard is not None:
                guard.record(self.job_prio[job], False, finish)
        nxt = self.next_job
        release = self.job_release
        if nxt < len(release) and release[nxt] <= finish:
            self._admit_until(finish)
        return energy

    # ------------------------------------------------------------------------------- whole runs
    def run(self, policy: Policy, seed: int | None = None,
            guard: QosGuard | None = None) -> RunStats:
        """Run ``policy`` over the job set; with ``guard``, its decisions go through
        :meth:`QosGuard.adjust` and every outcome is recorded in it (:mod:`edgesched.qos`)."""
        self.reset()
        if guard is not None:
            guard.reset()
        self.guard = guard
        policy.reset(self.view, seed)
        self.task_signal = bool(getattr(policy, "uses_task_util", False))
        if policy.tick_s > 0:
            self.next_tick_s = policy.tick_s
        while True:
            head = self.next_head(policy)
            if head is None:
                break
            decision = policy.decide(self.view, self.context(head))
            if guard is not None:
                decision = guard.adjust(self.view, head.priority, decision)
            self.run_head(head, decision, policy)
        self.guard = None
        return self.finish()

    def finish(self) -> RunStats:
        """Close the run's accounts (idle power over the horizon) and return the statistics."""
        s = self.stats
        s.horizon_s = max(self.duration_s, self.now)
        if self.heat is not None:
            self.heat.advance(s.horizon_s, self.idle_total_uw)
            s.throttled_s = self.heat.throttled_s
            s.peak_temp_c = self.heat.peak_temp_c
        s.idle_energy_j = self.idle_total_uw * s.horizon_s * 1e-6
        s.total_energy_j = s.idle_energy_j + self.extra_j
        s.board_floor_j = self.profile.board_floor_uw * s.horizon_s * 1e-6
        s.busy_s = self.busy_s
        s.mean_busy_khz = self.busy_khz_s / self.busy_s if self.busy_s > 0 else 0.0
        s.outcome[:] = self._outcome
        s.finish_s[:] = self._finish
        s.start_s[:] = self._start
        s.cluster[:] = self._cluster
        s.opp[:] = self._opp
        s.energy_j[:] = self._energy
        return s
