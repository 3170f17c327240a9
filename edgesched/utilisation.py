"""Utilisation tracking shared by the simulator and the daemon.

``PeltTracker`` follows the kernel's PELT signal (kernel/sched/pelt.c): a geometric series with a
32 ms half-life, frequency- and capacity-invariant (time running at frequency f on a CPU of
capacity cap counts as f / f_max * cap / 1024 of a fully busy period). Its value is in [0, 1]
where 1 is the board's biggest CPU at its top frequency. A continuous-time form is used
(``exp(-dt / tau)``, ``tau = 32 ms / ln 2``) instead of 1024 us segments.

``TaskUtil`` follows the one task that runs inferences (the simulator's engine and the daemon's
dispatcher feed it at each run's start and end): its PELT ``util_avg``, which migrates with it
between clusters, and its ``util_est`` (kernel/sched/fair.c, Linux 6.12: ``util_est_update`` at a
dequeue for sleep, ``util_est_enqueue``/``util_est_dequeue`` of the runqueue sum,
``task_util_est``, ``cpu_util`` with its ``boost``). See :class:`TaskUtil`.

``BusyWindow`` measures the wall-clock busy fraction since the last sample, as ondemand and
conservative do from idle-time counters (drivers/cpufreq/cpufreq_governor.c ``dbs_update``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

PELT_HALFLIFE_S = 0.032
PELT_TAU_S = PELT_HALFLIFE_S / math.log(2.0)
SCHED_CAPACITY_SCALE = 1024
"""include/linux/sched.h: capacity and utilisation of the biggest CPU at its top frequency."""
UTIL_EST_WEIGHT_SHIFT = 2
"""kernel/sched/pelt.h: a new util_est sample weighs 1/4 in the EWMA."""
UTIL_EST_MARGIN = SCHED_CAPACITY_SCALE // 100
"""kernel/sched/fair.c: an EWMA within ~1 % (10) above the dequeued util is left alone."""


class PeltTracker:
    """PELT-like utilisation of one cluster (one inference thread at a time)."""

    __slots__ = ("last_s", "util")

    def __init__(self, now_s: float = 0.0) -> None:
        self.util = 0.0
        self.last_s = now_s

    def advance(self, now_s: float, running_scale: float) -> float:
        """Move to ``now_s``; ``running_scale`` is 0 when idle since the last call, else
        ``f / f_max * capacity / 1024`` of the frequency the cluster ran at."""
        dt = now_s - self.last_s
        if dt > 0:
            decay = math.exp(-dt / PELT_TAU_S)
            self.util = self.util * decay + running_scale * (1.0 - decay)
            self.last_s = now_s
        return self.util

    def idle_then_run(self, start_s: float, end_s: float, running_scale: float) -> float:
        """``advance(start_s, 0.0)`` then ``advance(end_s, running_scale)``: idle until a run
        starts, running at ``running_scale`` until it ends (the same arithmetic, one call)."""
        last_s = self.last_s
        util = self.util
        dt = start_s - last_s
        if dt > 0:
            decay = math.exp(-dt / PELT_TAU_S)
            util = util * decay + 0.0 * (1.0 - decay)
            last_s = start_s
        dt = end_s - last_s
        if dt > 0:
            decay = math.exp(-dt / PELT_TAU_S)
            util = util * decay + running_scale * (1.0 - decay)
            last_s = end_s
        self.util = util
        self.last_s = last_s
        return util


def kernel_capacity(capacity: float) -> int:
    """``arch_scale_cpu_capacity()``: a normalised capacity as the kernel's integer (1..1024)."""
    return max(1, min(SCHED_CAPACITY_SCALE, math.floor(capacity + 1e-9)))


def util_est_update(ewma: int, dequeued: int, cpu_capacity: int,
                    runnable: int | None = None) -> int:
    """The task's new util_est after it went to sleep with util ``dequeued`` on a CPU of
    ``cpu_capacity`` (kernel/sched/fair.c ``util_est_update``, Linux 6.12, all integers in
    capacity units):

    * ``ewma <= dequeued``: the estimate jumps to ``dequeued`` at once (rises are never
      smoothed; this is what the ``UTIL_EST_FASTUP`` feature did before 6.8 made it the rule);
    * ``ewma - dequeued < UTIL_EST_MARGIN``: unchanged ("within margin");
    * ``dequeued > cpu_capacity``: unchanged (no idle time on that CPU, the sample is not
      trusted);
    * ``dequeued + UTIL_EST_MARGIN < runnable``: unchanged (the task waited to run;
      ``runnable`` defaults to ``dequeued``: a task alone on its CPU never waits);
    * otherwise ``ewma = (4 * ewma - (ewma - dequeued)) >> 2``, the EWMA with weight 1/4.
    """
    if ewma <= dequeued:
        return dequeued
    diff = ewma - dequeued
    if diff < UTIL_EST_MARGIN or dequeued > cpu_capacity:
        return ewma
    if runnable is not None and dequeued + UTIL_EST_MARGIN < runnable:
        return ewma
    return ((ewma << UTIL_EST_WEIGHT_SHIFT) - diff) >> UTIL_EST_WEIGHT_SHIFT


class TaskUtil(PeltTracker):
    """The utilisation signals of the one task that runs inferences, as the kernel keeps them.

    ``util`` is the task's PELT ``util_avg`` in [0, 1] (frequency- and capacity-invariant, the
    continuous form of :class:`PeltTracker`, whose ``advance`` it uses: 0 while the
    task slept or waited); it moves with the task when it changes cluster, as
    ``attach_entity_load_avg``/``remove_entity_load_avg`` move it between runqueues.
    ``util_est`` is the kernel's integer EWMA (0..1024), updated by :func:`util_est_update`
    when the task goes to sleep (:meth:`dequeue`), never while it runs or migrates.

    Lifecycle: :meth:`enqueue` when a run starts (a wake-up if the task slept, a migration if
    it kept running and changes cluster), :meth:`advance` while it runs, :meth:`dequeue` when
    nothing is left to run and the thread sleeps.  ``cluster`` is where the task last ran (the
    kernel's ``prev_cpu``); a new task starts on ``first_cluster``.

    Kept simpler than the kernel: PELT in continuous time instead of 1024 us segments;
    ``UTIL_AVG_UNCHANGED`` (skip the update when util_avg did not change since the enqueue) is
    read as "the integer util did not change"; a new task starts at util 0, not at
    ``post_init_entity_util_avg``'s half of the spare capacity (the inference thread has long
    been idle when the first request comes).
    """

    __slots__ = ("_util_at_enqueue", "capacity", "cluster", "enqueued", "util_est")

    def __init__(self, capacity: tuple[int, ...], now_s: float = 0.0,
                 first_cluster: int = 0) -> None:
        if not capacity:
            raise ValueError("TaskUtil needs the integer capacity of at least one cluster")
        super().__init__(now_s)
        self.capacity = capacity
        self.util_est = 0
        self.cluster = first_cluster
        self.enqueued = False
        self._util_at_enqueue = 0

    @property
    def util_int(self) -> int:
        """``task_util(p)``: util_avg as the kernel's integer."""
        return min(SCHED_CAPACITY_SCALE, math.floor(self.util * SCHED_CAPACITY_SCALE + 1e-9))

    def task_util_est(self) -> int:
        """``task_util_est(p)``: ``max(task_util(p), util_est)``."""
        u = self.util_int
        return u if u > self.util_est else self.util_est

    def enqueue(self, now_s: float, cluster: int) -> None:
        """A run starts on ``cluster`` at ``now_s``: a wake-up (``util_est_enqueue`` adds the
        estimate to that runqueue) or, if the task is already enqueued, a migration (its
        util_avg and util_est move along; util_est is not updated)."""
        self.advance(now_s, 0.0)
        if not self.enqueued:
            self.enqueued = True
            self._util_at_enqueue = self.util_int
        self.cluster = cluster

    def dequeue(self, now_s: float) -> None:
        """The task goes to sleep at ``now_s``: ``util_est_dequeue`` then ``util_est_update``."""
        self.advance(now_s, 0.0)
        if not self.enqueued:
            return
        self.enqueued = False
        dequeued = self.util_int
        if dequeued == self._util_at_enqueue:
            return  # UTIL_AVG_UNCHANGED still set: PELT did not move since the enqueue
        self.util_est = util_est_update(self.util_est, dequeued, self.capacity[self.cluster])

    def cpu_util(self, cluster: int) -> float:
        """``cpu_util_cfs_boost()`` of ``cluster``'s CPU that holds the task, in [0, 1]: the
        runqueue's util_avg (the task's, blocked or running, on the cluster it last ran on; 0
        elsewhere), raised to the runqueue's util_est while the task is enqueued, capped at the
        CPU's capacity (``cpu_util(cpu, NULL, -1, 1)``; runnable equals util for a task alone
        on its CPU)."""
        if cluster != self.cluster:
            return 0.0
        u = self.util
        if self.enqueued:
            est = self.util_est / SCHED_CAPACITY_SCALE
            if est > u:
                u = est
        cap = self.capacity[cluster] / SCHED_CAPACITY_SCALE
        return u if u < cap else cap


class BusyWindow:
    """Busy fraction of one cluster over the window since the last ``sample``."""

    __slots__ = ("busy_s", "start_s")

    def __init__(self, now_s: float = 0.0) -> None:
        self.start_s = now_s
        self.busy_s = 0.0

    def add_busy(self, seconds: float) -> None:
        self.busy_s += seconds

    def sample(self, now_s: float) -> float:
        """Busy fraction since the last sample, then start a new window."""
        span = now_s - self.start_s
        frac = min(1.0, self.busy_s / span) if span > 0 else 0.0
        self.start_s = now_s
        self.busy_s = 0.0
        return frac


class RateMeter:
    """Arrival rate in Hz, exponentially weighted with time constant ``tau_s``."""

    __slots__ = ("acc", "last_s", "tau_s")

    def __init__(self, tau_s: float = 1.0, now_s: float = 0.0) -> None:
        self.tau_s = tau_s
        self.acc = 0.0
        self.last_s = now_s

    def event(self, now_s: float) -> None:
        if now_s > self.last_s:
            self.acc *= math.exp(-(now_s - self.last_s) / self.tau_s)
            self.last_s = now_s
        self.acc += 1.0

    def events(self, times_s: Sequence[float]) -> None:
        """``event`` for each of ``times_s`` in turn (the same arithmetic, one call)."""
        if not times_s:
            return
        acc = self.acc
        last_s = self.last_s
        tau_s = self.tau_s
        exp = math.exp
        for now_s in times_s:
            if now_s > last_s:
                acc *= exp(-(now_s - last_s) / tau_s)
                last_s = now_s
            acc += 1.0
        self.acc = acc
        self.last_s = last_s

    def rate_hz(self, now_s: float) -> float:
        dt = now_s - self.last_s
        return self.acc * (math.exp(-dt / self.tau_s) if dt > 0 else 1.0) / self.tau_s


class BurstMeter:
    """How bursty the arrivals have been: the index of dispersion (variance over mean) of the
    arrival counts in ``bin_s`` bins, exponentially weighted over about ``horizon_bins`` bins.

    About 1 for Poisson arrivals at any rate, below 1 for regular ones (a camera's frames), and
    far above 1 when the rate switches between calm and bursts (two-state MMPP, real traces):
    the built-in ``bursty`` scenario (3 and 35 requests per second) reads about 14. A burst's
    first requests cannot tell it is coming, but a workload that has had bursts in the last
    minute will likely have more; the learned policies see this (``arrival_burstiness`` in the
    observation) to run cheaply where arrivals are steady and keep room where they are not.
    Only completed bins count (the value lags by up to ``bin_s``); it reads 1.0 until
    ``MIN_BINS`` bins are complete."""

    MIN_BINS = 5

    __slots__ = ("bins", "count", "end_s", "keep", "m", "s", "w", "width_s")

    def __init__(self, bin_s: float = 1.0, horizon_bins: float = 30.0, now_s: float = 0.0) -> None:
        if not bin_s > 0 or not horizon_bins >= 1:
            raise ValueError("bin_s must be > 0 and horizon_bins >= 1")
        self.width_s = bin_s
        self.keep = 1.0 - 1.0 / horizon_bins
        self.end_s = now_s + bin_s
        """When the current bin closes."""
        self.count = 0
        self.bins = 0
        self.m = 0.0  # weighted sums of the closed bins' counts, their squares, their weights
        self.s = 0.0
        self.w = 0.0

    def roll(self, now_s: float) -> None:
        """Close the bins that ended by ``now_s`` (the empty ones after the first at once)."""
        keep = self.keep
        c = float(self.count)
        self.m = keep * self.m + c
        self.s = keep * self.s + c * c
        self.w = keep * self.w + 1.0
        self.count = 0
        empty = int((now_s - self.end_s) // self.width_s)
        if empty > 0:
            d = keep ** empty
            self.m *= d
            self.s *= d
            self.w = self.w * d + (1.0 - d) / (1.0 - keep)  # keep < 1: horizon_bins >= 1
        self.bins += 1 + max(empty, 0)
        self.end_s += (1 + max(empty, 0)) * self.width_s

    def event(self, now_s: float) -> None:
        """One arrival at ``now_s`` (times never decrease)."""
        if now_s >= self.end_s:
            self.roll(now_s)
        self.count += 1

    def dispersion(self, now_s: float) -> float:
        """The index of dispersion at ``now_s``: 1.0 until ``MIN_BINS`` bins are complete, and
        while no arrival has been counted."""
        if now_s >= self.end_s:
            self.roll(now_s)
        if self.bins < self.MIN_BINS or self.m <= 0.0:
            return 1.0
        mean = self.m / self.w
        var = self.s / self.w - mean * mean
        return var / mean if var > 0.0 else 0.0


class BusyAverage:
    """Busy fraction of the board, exponentially weighted with time constant ``tau_s``."""

    __slots__ = ("last_s", "tau_s", "value")

    def __init__(self, tau_s: float = 1.0, now_s: float = 0.0) -> None:
        self.tau_s = tau_s
        self.value = 0.0
        self.last_s = now_s

    def advance(self, now_s: float, busy: bool) -> float:
        dt = now_s - self.last_s
        if dt > 0:
            decay = math.exp(-dt / self.tau_s)
            self.value = self.value * decay + (1.0 - decay if busy else 0.0)
            self.last_s = now_s
        return self.value

    def idle_then_busy(self, start_s: float, end_s: float) -> float:
        """``advance(start_s, False)`` then ``advance(end_s, True)`` with one exponential each."""
        tau = self.tau_s
        if start_s > self.last_s:
            self.value *= math.exp((self.last_s - start_s) / tau)
            self.last_s = start_s
        if end_s > self.last_s:
            decay = math.exp((self.last_s - end_s) / tau)
            self.value = self.value * decay + 1.0 - decay
            self.last_s = end_s
        return self.value


class RecentMin:
    """The least value added within the last ``window_s`` seconds (``inf`` when none was): a
    sliding-window minimum, O(1) amortised per call. Times must not go backwards."""

    __slots__ = ("_items", "window_s")

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque()
        """(time, value), values strictly increasing from the front."""

    def add(self, now_s: float, value: float) -> None:
        items = self._items
        while items and items[-1][1] >= value:
            items.pop()
        items.append((now_s, value))

    def value(self, now_s: float) -> float:
        items = self._items
        limit = now_s - self.window_s
        while items and items[0][0] < limit:
            items.popleft()
        return items[0][1] if items else math.inf

    @staticmethod
    def add_least(trackers: Sequence[RecentMin], count: int, now_s: float,
                  value: float) -> float:
        """``trackers[count - 1].add(now_s, value)`` then ``least(trackers, count, now_s)``
        (the same result, one call)."""
        trackers[count - 1].add(now_s, value)
        return RecentMin.least(trackers, count, now_s)

    @staticmethod
    def least(trackers: Sequence[RecentMin], count: int, now_s: float) -> float:
        """``min(t.value(now_s) for t in trackers[:count])`` (the first of the least, as
        ``min`` gives it; ``count`` >= 1) in one call."""
        least = math.nan
        for i in range(count):
            t = trackers[i]
            items = t._items
            limit = now_s - t.window_s
            while items and items[0][0] < limit:
                items.popleft()
            v = items[0][1] if items else math.inf
            if i == 0 or v < least:
                least = v
        return least
