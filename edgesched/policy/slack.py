"""``slack``: a non-learned, deadline-aware least-energy baseline.

For the request at the head of the queue, ``slack`` runs the (cluster, OPP) of the least energy
whose run (frequency switch included) satisfies every one of these bounds:

1. **Deadline**: the head finishes by its deadline.
2. **The queue behind it** (:func:`queue_room_s`): every request waiting behind the head, taken
   in the queue's own service order (priority class, then earliest deadline;
   ``DecisionContext.waiting_in_order``) and run at the board's top speed after it, still meets
   its deadline wherever it would have met it had the head run at top speed.
3. **Priority-1 blocking** (:func:`~edgesched.observation.run_limit_s`, the limit the learned
   policies' shield applies): a lower-priority run stays within ``BLOCKING_SHARE`` of the
   shortest recent priority-1 timeout, since a run cannot be interrupted and a priority-1
   request arriving just after it started waits for it.
4. **Blocking of the head's own and higher classes** (:meth:`SlackPolicy.class_limit_s`,
   ``class_blocking``): the same rule for every class, with the shortest timeout ``slack`` has
   seen in the last ``URGENT_WINDOW_S`` among the requests of the head's class or a higher one.
   Without it a background MobileNet run stretched to its 1 s deadline makes every
   latency-critical request arriving during it miss.
5. **Load** (``load_target``): the run is at most ``load_target / load`` times the head's
   top-speed run, where ``load`` is the arrival rate times the mean top-speed service time of
   recent requests (the share of the board the work would take at top speed). With the default
   0.8 the board stays at most 80 % busy in the mean, the headroom schedutil gives
   (``map_util_perf`` in the kernel's ``include/linux/sched/cpufreq.h``: util + util/4): the
   queue stays short, so arrivals ``slack`` cannot foresee find room.

All bounds limit the time from now to the end of the head's run, so when no option meets them
all, no option meets the ones the fastest misses: ``slack`` then runs the fastest option (least
run time, ties to less energy), as it does when no option meets the head's own deadline.

Bounds 1 and 2 are look-ahead EDF DVS in the spirit of Pillai and Shin ("Real-Time Dynamic
Voltage Scaling for Low-Power Embedded Operating Systems", SOSP 2001): run the current job as
slowly as the deadlines of the work already known allow, assuming that work runs at top speed
later. Unlike their periodic task model ``slack`` knows only the requests already queued; bounds
3 to 5 stand in for the arrivals it cannot see. Each request runs non-preemptively at one OPP.

Energy of an option is what the simulator's engine charges for it beyond idling
(``sim/edgesched_sim/engine.py``): the cluster's busy power (dynamic power of the CPUs the model
keeps busy plus the cluster's static power) minus its idle power, over the run time from the
profile's latency model, plus the transition latency at the new OPP's static power minus idle
when the OPP changes. The other clusters idle either way and cost the same whatever the choice.
Boards with any number of clusters are searched alike.

Heat: options above the thermal cap (``DecisionContext.cap_opp``, the OPP the kernel's throttling
allows now) are left out, since the kernel would run them slower than planned and the plan's
deadlines would not hold. Among the rest the least energy is also the least heat: the board's
thermal time constant (minutes, :mod:`edgesched.thermal`) is far longer than one run, so its
temperature follows the energy spent per second, and with the same requests to serve the
least-energy choice keeps it furthest from the trip point.

Not modelled: aging of waiting requests (their class as of now counts) and the decision's own
overhead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from edgesched.device import Work
from edgesched.observation import (
    BLOCKING_SHARE,
    URGENT_WINDOW_S,
    BoardView,
    Decision,
    DecisionContext,
    Waiting,
)
from edgesched.policy.base import StaticPolicy
from edgesched.policy.governors import Schedutil
from edgesched.queue import Entry
from edgesched.utilisation import RecentMin

__all__ = ["Cost", "Plan", "SlackPolicy", "queue_room_s"]


class _Option(NamedTuple):
    cluster: int
    opp: int
    run_s: float
    """Run time of the work at this OPP, without a frequency switch."""
    run_j: float
    """Energy of the run above the cluster's idle power."""


class Cost(NamedTuple):
    """One option of a decision, as :meth:`SlackPolicy.plan` prices it."""

    run_s: float
    """From now to the end of the head's run (frequency switch included)."""
    handoff_s: float
    """From now until the board can serve the next request at top speed."""
    energy_j: float
    """Energy above idle of the run (and the switch)."""
    cluster: int
    opp: int


class Plan(NamedTuple):
    """The options of one decision and its bounds (:meth:`SlackPolicy.plan`)."""

    costs: tuple[Cost, ...]
    fastest: Cost
    """The least run time (ties to less energy): the choice when no option keeps the bounds."""
    limit_s: float
    """Bounds 1, 3, 4 and 5 of the module docstring: the latest end of the head's run."""
    handoff_limit_s: float
    """Bound 2: the latest time the board may become free for the queue behind the head."""

    def keeps(self, k: Cost) -> bool:
        """Whether ``k`` keeps every bound."""
        return k.run_s <= self.limit_s and k.handoff_s <= self.handoff_limit_s


_CACHE_SIZE = 4096
LOAD_TARGET = 0.8
"""Default ``load_target``: schedutil's headroom (1.25x the utilisation)."""
MEAN_WEIGHT = 0.05
"""Weight of each new request in the mean top-speed service time (about the last 20)."""
_MARGIN_S = 1e-9
"""Kept free before every bound, so that rounding in the caller's clock arithmetic cannot turn
a finish exactly at a deadline into a miss."""


def queue_room_s(waiting: Sequence[Waiting] | Sequence[Entry], now_s: float,
                 handoff_s: float) -> float:
    """How much later than ``now_s + handoff_s`` the board may become free for the waiting
    requests without making any of them miss that would otherwise meet its deadline.

    The requests run one after another in the order given, each for its ``service_ms`` (the
    top-speed service time), starting at ``now_s + handoff_s``. One whose deadline passes before
    it could start is dropped by the queue and takes no time; one that would finish late runs
    but sets no bound. inf when no waiting request bounds the head.
    """
    t = now_s + handoff_s
    room = math.inf
    for w in waiting:
        if t > w.deadline_s:
            continue  # expired while queued: answered without running
        t += w.service_ms * 1e-3
        if t <= w.deadline_s:
            left = w.deadline_s - t
            if left < room:
                room = left
    return room


class SlackPolicy(StaticPolicy):
    """The least-energy (cluster, OPP) that meets the head's deadline, leaves the queue behind
    it its time and respects the priority-1 blocking limit; the fastest when none does."""

    name = "slack"
    qos_guardable = True
    """The miss-budget guard (:mod:`edgesched.qos`) may raise its decisions."""

    def __init__(self, class_blocking: bool = True, load_target: float = LOAD_TARGET) -> None:
        if not load_target > 0:
            raise ValueError(f"load_target must be > 0 (math.inf: no load bound), got {load_target}")
        self.class_blocking = class_blocking
        """Bound 4 of the module docstring (off: the priority-1 limit only, as the shield)."""
        self.load_target = load_target
        """Bound 5: the mean busy share the load bound aims at; math.inf turns it off."""
        self._mean_top_s = 0.0
        self._timeouts: list[RecentMin] = []
        self._view: BoardView | None = None
        self._options: dict[int, tuple[Work, tuple[_Option, ...]]] = {}
        self._priced: dict[tuple[Any, ...], tuple[Work, tuple[tuple[Cost, ...], Cost, float,
                                                             float]]] = {}
        self._switch_j: tuple[tuple[float, ...], ...] = ()
        self._fastest = 0
        self._fastest_top = 0

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        del seed
        self._timeouts = []
        self._mean_top_s = 0.0
        self._prepare(view)

    def class_limit_s(self, ctx: DecisionContext) -> float:
        """``BLOCKING_SHARE`` of the shortest timeout among the requests of the head's class or
        higher that started in the last ``URGENT_WINDOW_S`` (the head's own included)."""
        timeouts = self._timeouts
        levels = ctx.levels
        if len(timeouts) < levels:
            timeouts.extend(RecentMin(URGENT_WINDOW_S) for _ in range(levels - len(timeouts)))
        k = ctx.head_priority  # min(max(priority, 1), levels), written out
        if k < 1:
            k = 1
        if levels < k:
            k = levels
        if k < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        now = ctx.now_s
        own = ctx.head_deadline_s - ctx.head_enqueued_s
        if own != math.inf:
            timeouts[k - 1].add(now, own)
        return BLOCKING_SHARE * RecentMin.least(timeouts, k, now)

    def load_limit_s(self, ctx: DecisionContext, top_s: float) -> float:
        """Bound 5: ``top_s`` (the head's run at top speed) stretched by at most
        ``load_target / load``; updates the mean top-speed service time with the head's."""
        mean = self._mean_top_s
        self._mean_top_s = mean + (top_s - mean) * MEAN_WEIGHT if mean > 0 else top_s
        load = ctx.arrival_rate_hz * self._mean_top_s
        return top_s * self.load_target / load if load > 0 else math.inf

    def _prepare(self, view: BoardView) -> None:
        if view is self._view:
            return
        clusters = view.profile.clusters
        self._switch_j = tuple(
            tuple((c.static_power_uw(o) - c.idle_uw) * c.transition_latency_ns * 1e-15
                  for o in range(len(c.opps)))
            for c in clusters)
        self._fastest = view.profile.fastest_cluster
        self._fastest_top = len(clusters[self._fastest].opps) - 1
        self._options = {}
        self._priced = {}
        self._view = view

    def options(self, view: BoardView, work: Work) -> tuple[_Option, ...]:
        """Every (cluster, OPP) of the board with ``work``'s run time and energy above idle,
        cached by the identity of ``work``."""
        self._prepare(view)
        hit = self._options.get(id(work))
        if hit is not None and hit[0] is work:
            return hit[1]
        profile = view.profile
        opts: list[_Option] = []
        for ci, c in enumerate(profile.clusters):
            for oi in range(len(c.opps)):
                run_s = profile.latency_ms(work, ci, oi) * 1e-3
                extra_uw = c.busy_power_uw(oi, work.threads) - c.idle_uw
                opts.append(_Option(ci, oi, run_s, extra_uw * run_s * 1e-6))
        table = tuple(opts)
        if len(self._options) >= _CACHE_SIZE:
            self._options.clear()
        self._options[id(work)] = (work, table)
        return table

    def _price(self, view: BoardView, work: Work, cur: Sequence[int],
               cap: Sequence[int] | None) -> tuple[tuple[Cost, ...], Cost, float, float]:
        """Every option within ``cap`` priced from the current OPPs ``cur``: the costs, the
        fastest (least run time, ties to less energy), the earliest hand-off and the least run
        time of any option (capped or not). Depends on nothing else, so :meth:`plan` caches it."""
        options = self.options(view, work)
        trans_s = view.transition_s
        switch_j = self._switch_j
        fc, ftop = self._fastest, self._fastest_top
        fc_after_switch_s = trans_s[fc] if cur[fc] != ftop else 0.0
        # per option: time to the end of the run, time until the board can serve the next
        # request at top speed, energy above idle
        costs: list[Cost] = []
        fastest: Cost | None = None
        first_free_s = top_s = math.inf
        for opt in options:
            c, o, run_s, run_j = opt
            if run_s < top_s:
                top_s = run_s
            if cap is not None and o > cap[c]:
                continue  # the thermal cap would run it slower than planned
            if o != cur[c]:
                dur = run_s + trans_s[c]
                energy = run_j + switch_j[c][o]
            else:
                dur = run_s
                energy = run_j
            # the waiting requests run on the fastest cluster's top OPP: switch there if needed
            handoff = dur + ((0.0 if o == ftop else trans_s[fc]) if c == fc
                             else fc_after_switch_s)
            k = Cost(dur, handoff, energy, c, o)
            costs.append(k)
            if fastest is None or dur < fastest.run_s or (dur == fastest.run_s
                                                          and energy < fastest.energy_j):
                fastest = k
            if handoff < first_free_s:
                first_free_s = handoff
        assert fastest is not None  # every cluster keeps at least its lowest OPP under a cap
        return tuple(costs), fastest, first_free_s, top_s

    def plan(self, view: BoardView, ctx: DecisionContext) -> Plan:
        """Every option within the thermal cap with its run time, hand-off time and energy, and
        the bounds of the module docstring for this decision. Call once per decision: it updates
        the class timeouts and the mean service time (bounds 4 and 5)."""
        return Plan(*self.plan_fields(view, ctx))

    def plan_fields(self, view: BoardView, ctx: DecisionContext,
                    ) -> tuple[tuple[Cost, ...], Cost, float, float]:
        """:meth:`plan` as a plain tuple of the :class:`Plan`'s fields (cheaper to make)."""
        if view is not self._view:
            self._prepare(view)  # a new board drops the caches
        work = ctx.head_work
        cur = ctx.cur_opp
        cap = ctx.cap_opp
        key = (id(work), tuple(cur), None if cap is None else tuple(cap))
        hit = self._priced.get(key)
        if hit is not None and hit[0] is work:
            costs, fastest, first_free_s, top_s = hit[1]
        else:
            costs, fastest, first_free_s, top_s = self._price(view, work, cur, cap)
            if len(self._priced) >= _CACHE_SIZE:
                self._priced.clear()
            self._priced[key] = (work, (costs, fastest, first_free_s, top_s))
        # min() of the bounds written out as comparisons (the same first-of-the-least result)
        now = ctx.now_s
        limit_s = ctx.head_deadline_s - now
        if ctx.head_priority != 1:  # run_limit_s(ctx), written out (priority 1: limit_s itself)
            blocking_s = ctx.urgent_timeout_s * BLOCKING_SHARE
            if blocking_s < limit_s:
                limit_s = blocking_s
        if self.class_blocking:
            timeouts = self._timeouts
            k = ctx.head_priority
            if 1 <= k <= ctx.levels <= len(timeouts):  # class_limit_s(ctx), written out
                own = ctx.head_deadline_s - ctx.head_enqueued_s
                if own != math.inf:
                    class_s = BLOCKING_SHARE * RecentMin.add_least(timeouts, k, now, own)
                else:
                    class_s = BLOCKING_SHARE * RecentMin.least(timeouts, k, now)
            else:
                class_s = self.class_limit_s(ctx)
            if class_s < limit_s:
                limit_s = class_s
        # load_limit_s(ctx, top_s), written out
        mean = self._mean_top_s
        mean = self._mean_top_s = mean + (top_s - mean) * MEAN_WEIGHT if mean > 0 else top_s
        load = ctx.arrival_rate_hz * mean
        if load > 0:
            load_s = top_s * self.load_target / load
            if load_s < limit_s:
                limit_s = load_s
        limit_s -= _MARGIN_S
        handoff_limit_s = math.inf
        if ctx.queue_len > 0:
            entries = ctx.entries_in_order
            waiting = ctx.waiting_in_order() if entries is None else entries()
            # queue_room_s(waiting, now, first_free_s), written out
            t = now + first_free_s
            room = math.inf
            for w in waiting:
                deadline_s = w.deadline_s
                if t > deadline_s:
                    continue  # expired while queued: answered without running
                t += w.service_ms * 1e-3
                if t <= deadline_s:
                    left = deadline_s - t
                    if left < room:
                        room = left
            handoff_limit_s = first_free_s + room - _MARGIN_S
        return costs, fastest, limit_s, handoff_limit_s

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        chosen = self.cheapest(self.plan(view, ctx))
        return Decision(chosen.cluster, chosen.opp)

    @staticmethod
    def cheapest(plan: Plan) -> Cost:
        """The least-energy option that keeps every bound (ties to the shorter run); the
        fastest when none does."""
        best: Cost | None = None
        for k in plan.costs:
            if plan.keeps(k) and (best is None or (k.energy_j, k.run_s) < (best.energy_j,
                                                                           best.run_s)):
                best = k
        return best or plan.fastest


BURST_DISPERSION = 2.0
"""``slack-guarded`` guards the head while the arrivals' index of dispersion (the context's
``arrival_dispersion``: 1 for Poisson arrivals) is above this."""


class GuardedSlack(SlackPolicy):
    """``slack-guarded``: :class:`SlackPolicy`, but never slower than the stock kernel
    (:class:`~edgesched.policy.governors.Schedutil`: EAS placement and schedutil's frequency
    for the task's utilisation) would run the head when a miss is likely: the head is priority
    1, requests wait behind it, or arrivals come in bursts (``arrival_dispersion`` above
    ``burst_dispersion``). Then it takes the faster of the two choices (by the profile's run
    time, switch included; schedutil's OPP clamped to the thermal cap). Otherwise it is
    ``slack``'s least-energy choice.

    ``slack`` alone misses more than schedutil in about a third of the runs of
    ``bench/generalisation.py`` (bursts and queues: it plans for the head and the requests
    already waiting, not for the ones about to arrive behind a slow run); the guard buys that
    back with part of its saving (``docs/figures.md``)."""

    name = "slack-guarded"

    def __init__(self, class_blocking: bool = True, load_target: float = LOAD_TARGET,
                 burst_dispersion: float = BURST_DISPERSION) -> None:
        super().__init__(class_blocking, load_target)
        self.burst_dispersion = burst_dispersion
        self.kernel = Schedutil()
        """The reference: what the stock kernel would choose for the head."""

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        super().reset(view, seed)
        self.kernel.reset(view, seed)

    def guarded(self, ctx: DecisionContext) -> bool:
        """Whether a miss is likely enough to run no slower than the kernel would."""
        return (ctx.head_priority == 1 or ctx.queue_len > 0
                or ctx.arrival_dispersion > self.burst_dispersion)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        plan = self.plan(view, ctx)
        chosen = self.cheapest(plan)
        if self.guarded(ctx):
            ref = self.kernel.decide(view, ctx)
            kernel: Cost | None = None  # its option, or the fastest below it under the cap
            for k in plan.costs:
                if k.cluster == ref.cluster and k.opp <= ref.opp and (
                        kernel is None or k.opp > kernel.opp):
                    kernel = k
            if kernel is not None and kernel.run_s < chosen.run_s:
                chosen = kernel
        return Decision(chosen.cluster, chosen.opp)
