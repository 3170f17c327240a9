"""Utilisation tracking shared by the simulator and the daemon.

``PeltTracker`` follows the kernel's PELT signal (kernel/sched/pelt.c): a geometric series with a
32 ms half-life, frequency- and capacity-invariant (time running at frequency f on a CPU of
capacity cap counts as f / f_max * cap / 1024 of a fully busy period). Its value is in [0, 1]
where 1 is the board's biggest CPU at its top frequency. A continuous-time form is used
(``exp(-dt / tau)``, ``tau = 32 ms / ln 2``) instead of 1024 us segments.

``BusyWindow`` measures the wall-clock busy fraction since the last sample, as ondemand and
conservative do from idle-time counters (drivers/cpufreq/cpufreq_governor.c ``dbs_update``).
"""

from __future__ import annotations

import math
from collections import deque

PELT_HALFLIFE_S = 0.032
PELT_TAU_S = PELT_HALFLIFE_S / math.log(2.0)


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

    def rate_hz(self, now_s: float) -> float:
        dt = now_s - self.last_s
        return self.acc * (math.exp(-dt / self.tau_s) if dt > 0 else 1.0) / self.tau_s


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
