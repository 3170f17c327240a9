"""Kernel-faithful cpufreq governor baselines: ``schedutil``, ``ondemand`` and ``conservative``.

Each class follows the :class:`~edgesched.policy.base.Policy` protocol and models one Linux 6.x
governor closely enough that its OPP choices can be checked against hand-computed kernel values.
The caller calls ``tick`` for every cluster every ``tick_s`` and applies the OPP it returns.

Placement: ``schedutil`` places each request with Energy Aware Scheduling and feeds the governor
the kernel's ``cpu_util_cfs_boost`` with util_est (``uses_task_util``); ``ondemand`` and
``conservative`` place it as the kernel does without EAS (EAS needs schedutil); see
:mod:`edgesched.policy.eas`. ``schedutil-big``, ``ondemand-big`` and ``conservative-big`` are the
same governors with every request on the board's fastest cluster and, for ``schedutil-big``, the
cluster's own PELT signal without util_est.

What was read, and where (formulas and default numbers only; no kernel code is reproduced):

* ``drivers/cpufreq/cpufreq.c`` ``cpufreq_policy_transition_delay_us`` (Linux 6.12, e.g.
  tes-rep/linux-6.12.y): with ``L = cpuinfo.transition_latency / 1000`` (µs, integer), the
  delay is ``L + L // 2`` when ``L > 0`` and ``USEC_PER_MSEC`` (1000 µs) otherwise.  Older
  kernels used ``min(L * 1000, 10 ms)`` and then ``min(L * 1000, 2 ms)``; 6.12 is modelled.
* ``drivers/cpufreq/cpufreq.c`` ``cpufreq_driver_resolve_freq`` and
  ``include/linux/cpufreq.h`` ``cpufreq_frequency_table_target``: the target is first clamped
  to ``[policy->min, policy->max]``; ``RELATION_L`` = lowest frequency at or above the target,
  ``RELATION_H`` = highest at or below, ``RELATION_C`` = closest (a tie goes to the lower one,
  ``cpufreq_table_find_index_ac``).  The ``E`` variants (``LE``/``HE``/``CE``) only differ when
  the Energy Model has marked OPPs inefficient; that is not modelled (see ``resolve_khz``).
* ``kernel/sched/cpufreq_schedutil.c`` and ``include/linux/sched/cpufreq.h`` (6.8+):
  ``sugov_effective_cpu_perf`` adds the DVFS headroom ``map_util_perf(u) = u + (u >> 2)`` and
  caps it at the CPU capacity; ``get_next_freq`` maps it with
  ``map_util_freq(u, f_ref, cap) = f_ref * u / cap`` where ``f_ref = cpuinfo.max_freq`` on a
  frequency-invariant arm64 system (``get_capacity_ref_freq``); the result is resolved with
  ``cpufreq_driver_resolve_freq`` (lowest OPP >= target).  ``sugov_should_update_freq`` lets an
  update through only when ``now - last_freq_update_time >= rate_limit_us``, and
  ``sugov_update_next_freq`` moves ``last_freq_update_time`` only when the frequency changes.
  ``sugov_init`` sets ``rate_limit_us = cpufreq_policy_transition_delay_us(policy)``
  (Documentation/admin-guide/pm/cpufreq.rst, "schedutil": ``rate_limit_us``).
* ``drivers/cpufreq/cpufreq_governor.c``: ``CPUFREQ_DBS_MIN_SAMPLING_INTERVAL`` is two
  scheduler ticks (``2 * TICK_NSEC / NSEC_PER_USEC``, 8000 µs at HZ=250) and
  ``cpufreq_dbs_governor_init`` sets ``sampling_rate = max(that, transition delay)``.
  ``dbs_update`` computes ``load = 100 * (elapsed - idle) / elapsed`` (integer percent); when
  the idle time of the window exceeds ``2 * sampling_rate * rate_mult`` it reuses the previous
  window's load once (then forgets it) and reports ``idle_periods = idle / sampling_rate``.
  Samples are taken from scheduler callbacks once ``sample_delay`` has passed
  (``dbs_update_util_handler``), so nothing is sampled while the CPU sleeps and the first
  sample after an idle gap covers the whole gap.
* ``drivers/cpufreq/cpufreq_ondemand.c`` (6.x ``od_update``/``od_init``): load above
  ``up_threshold`` goes to ``policy->max`` (``RELATION_HE``) and sets
  ``rate_mult = sampling_down_factor``; otherwise
  ``freq_next = min_f + load * (max_f - min_f) / 100`` with ``RELATION_CE`` and
  ``rate_mult = 1``.  ``od_init`` picks ``up_threshold = MICRO_FREQUENCY_UP_THRESHOLD`` (95)
  when idle micro-accounting (NO_HZ) is available -- the case on every arm64/Raspberry Pi
  kernel config -- and ``DEF_FREQUENCY_UP_THRESHOLD`` (80) otherwise;
  ``DEF_SAMPLING_DOWN_FACTOR`` is 1, ``powersave_bias`` 0.
* ``drivers/cpufreq/cpufreq_conservative.c`` (6.x ``cs_dbs_update``/``cs_init``):
  ``up_threshold`` 80, ``down_threshold`` 20, ``freq_step`` 5 (% of ``policy->max``),
  ``sampling_down_factor`` 1.  ``requested_freq`` starts at ``policy->cur``; it first drops one
  step per idle period, then rises one step (capped at max, ``RELATION_HE``) when
  ``load > up_threshold``, or -- every ``sampling_down_factor`` samples -- falls one step
  (floored at min, ``RELATION_LE``) when ``load < down_threshold``.

Not modelled: iowait boost, uclamp and RT/DL utilisation for schedutil (``schedutil-big`` also
leaves out ``UTIL_EST``: the caller's per-cluster PELT ``util`` is used as is);
``powersave_bias``, ``ignore_nice_load`` and ``io_is_busy`` for the DBS governors (all at their
defaults of 0); policy min/max limits other than the cluster's full OPP range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgesched.observation import BoardView, Decision, DecisionContext
from edgesched.policy.base import (
    KernelPlacement,
    Performance,
    PerformanceBig,
    Powersave,
    PowersaveBig,
)

__all__ = [
    "CONSERVATIVE_DOWN_THRESHOLD",
    "CONSERVATIVE_FREQ_STEP",
    "CONSERVATIVE_UP_THRESHOLD",
    "DEFAULT_HZ",
    "ONDEMAND_UP_THRESHOLD_NOHZ",
    "ONDEMAND_UP_THRESHOLD_PERIODIC",
    "SCHED_CAPACITY_SCALE",
    "Conservative",
    "ConservativeBig",
    "Ondemand",
    "OndemandBig",
    "Performance",
    "PerformanceBig",
    "Powersave",
    "PowersaveBig",
    "Schedutil",
    "SchedutilBig",
    "dbs_sampling_rate_us",
    "resolve_khz",
    "tick_ns",
    "transition_delay_us",
]

DEFAULT_HZ = 250
"""Scheduler tick rate assumed for the boards (CONFIG_HZ=250, arm64 defconfig)."""
SCHED_CAPACITY_SCALE = 1024
"""include/linux/sched.h: capacity and utilisation scale of the biggest CPU at top frequency."""
DEFAULT_TRANSITION_DELAY_US = 1000
"""cpufreq_policy_transition_delay_us() fallback (USEC_PER_MSEC) when the latency is 0."""
DBS_MIN_SAMPLING_TICKS = 2
"""cpufreq_governor.c CPUFREQ_DBS_MIN_SAMPLING_INTERVAL is two scheduler ticks."""
ONDEMAND_UP_THRESHOLD_NOHZ = 95
"""cpufreq_ondemand.c MICRO_FREQUENCY_UP_THRESHOLD, used by od_init() on NO_HZ kernels."""
ONDEMAND_UP_THRESHOLD_PERIODIC = 80
"""cpufreq_ondemand.c DEF_FREQUENCY_UP_THRESHOLD, used without idle micro-accounting."""
CONSERVATIVE_UP_THRESHOLD = 80
CONSERVATIVE_DOWN_THRESHOLD = 20
CONSERVATIVE_FREQ_STEP = 5
"""cpufreq_conservative.c DEF_FREQUENCY_UP_THRESHOLD / _DOWN_THRESHOLD / DEF_FREQUENCY_STEP."""

_EPS_S = 1e-12

# ---------------------------------------------------------------------------------------------
# kernel helpers (formulas only)


def tick_ns(hz: int = DEFAULT_HZ) -> int:
    """Length of one scheduler tick in ns (TICK_NSEC, rounded as in include/linux/jiffies.h)."""
    if hz <= 0:
        raise ValueError(f"hz must be > 0, got {hz}")
    return (1_000_000_000 + hz // 2) // hz


def transition_delay_us(transition_latency_ns: int) -> int:
    """``cpufreq_policy_transition_delay_us`` of Linux 6.12 for a policy without
    ``transition_delay_us``: latency in µs plus 50 %, or 1 ms when the latency is 0."""
    latency_us = max(0, int(transition_latency_ns)) // 1000
    if latency_us:
        return latency_us + (latency_us >> 1)
    return DEFAULT_TRANSITION_DELAY_US


def dbs_sampling_rate_us(transition_latency_ns: int, hz: int = DEFAULT_HZ) -> int:
    """Default ``sampling_rate`` of ondemand/conservative (``cpufreq_dbs_governor_init``):
    the larger of two scheduler ticks and the transition delay."""
    min_interval_us = DBS_MIN_SAMPLING_TICKS * tick_ns(hz) // 1000
    return max(min_interval_us, transition_delay_us(transition_latency_ns))


def resolve_khz(table: tuple[int, ...], target_khz: float, relation: str) -> int:
    """Index into the ascending frequency ``table`` chosen for ``target_khz``.

    ``relation`` is ``"L"`` (lowest at or above), ``"H"`` (highest at or below) or ``"C"``
    (closest, ties to the lower frequency).  The target is clamped to the table's range first,
    as ``__resolve_freq``/``__cpufreq_driver_target`` clamp to the policy limits.  The kernel's
    ``E`` flag (skip Energy-Model-inefficient OPPs) is not applied.
    """
    if not table:
        raise ValueError("empty frequency table")
    target = min(max(target_khz, table[0]), table[-1])
    if relation == "L":
        for i, khz in enumerate(table):
            if khz >= target:
                return i
        return len(table) - 1
    if relation == "H":
        for i in range(len(table) - 1, -1, -1):
            if table[i] <= target:
                return i
        return 0
    if relation == "C":
        below = 0
        for i, khz in enumerate(table):
            if khz == target:
                return i
            if khz < target:
                below = i
                continue
            # first entry above the target: take it only when strictly closer
            if i == 0 or target - table[below] > khz - target:
                return i
            return below
        return below
    raise ValueError(f"unknown relation {relation!r} (expected 'L', 'H' or 'C')")


def _khz_table(view: BoardView, cluster: int) -> tuple[int, ...]:
    return tuple(o.khz for o in view.profile.clusters[cluster].opps)


def _kernel_capacity(view: BoardView, cluster: int) -> int:
    """arch_scale_cpu_capacity(): the integer capacity of the cluster's CPUs (1..1024)."""
    return max(1, math.floor(view.profile.capacity(cluster) + 1e-9))


# ---------------------------------------------------------------------------------------------
# schedutil


@dataclass
class _SugovState:
    table: tuple[int, ...]
    max_cap: int
    rate_limit_s: float
    next_khz: int | None = None
    last_update_s: float = -math.inf


class _SugovGovernor:
    """The ``schedutil`` governor's frequency choice (kernel/sched/cpufreq_schedutil.c, Linux 6.x).

    ``next_f = f_max * min(u + u/4, cap) / cap`` with ``u`` the cluster's utilisation in kernel
    capacity units (``util * 1024``) and ``cap`` the cluster's integer CPU capacity, i.e. the
    documented ``1.25 * f_max * util / max``; resolved to the lowest OPP at or above it.  An
    update is evaluated only when ``rate_limit_us`` has passed since the last frequency *change*.
    It runs at every scheduler tick (``tick_s`` = 1/HZ) and at enqueue (``decide``).

    Defaults: ``rate_limit_us=None`` means the kernel default per cluster,
    ``cpufreq_policy_transition_delay_us`` of the cluster's ``transition_latency_ns`` (6.12:
    60 µs on rk3399, 210 µs on exynos5422, 750 µs on bcm2711); ``hz=250``.
    """

    name = "sugov"

    def __init__(self, rate_limit_us: int | None = None, hz: int = DEFAULT_HZ) -> None:
        if rate_limit_us is not None and rate_limit_us < 0:
            raise ValueError(f"rate_limit_us must be >= 0, got {rate_limit_us}")
        self.rate_limit_us = rate_limit_us
        self.hz = hz
        self.tick_s: float = tick_ns(hz) / 1e9
        self._view: BoardView | None = None
        self._state: list[_SugovState] = []

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        del seed
        self._view = view
        self._state = []
        for ci, c in enumerate(view.profile.clusters):
            delay_us = (self.rate_limit_us if self.rate_limit_us is not None
                        else transition_delay_us(c.transition_latency_ns))
            self._state.append(_SugovState(table=_khz_table(view, ci),
                                           max_cap=_kernel_capacity(view, ci),
                                           rate_limit_s=delay_us / 1e6))

    def _ensure(self, view: BoardView) -> None:
        if self._view is not view:
            self.reset(view)

    def rate_limit_s(self, view: BoardView, cluster: int) -> float:
        """Effective rate limit of ``cluster`` in seconds."""
        self._ensure(view)
        return self._state[cluster].rate_limit_s

    def raw_next_freq_khz(self, view: BoardView, cluster: int, util: float) -> int:
        """The unresolved ``get_next_freq`` target in kHz for a utilisation in [0, 1]."""
        self._ensure(view)
        st = self._state[cluster]
        u = min(SCHED_CAPACITY_SCALE, max(0, math.floor(util * SCHED_CAPACITY_SCALE + 1e-9)))
        perf = min(u + (u >> 2), st.max_cap)  # sugov_effective_cpu_perf (map_util_perf)
        return st.table[-1] * perf // st.max_cap  # map_util_freq with f_ref = cpuinfo.max_freq

    def target_opp(self, view: BoardView, cluster: int, util: float) -> int:
        """OPP index schedutil asks for at ``util``, ignoring the rate limit."""
        khz = self.raw_next_freq_khz(view, cluster, util)
        return resolve_khz(self._state[cluster].table, khz, "L")

    def _update(self, view: BoardView, cluster: int, now_s: float, util: float,
                cur_opp: int) -> int:
        self._ensure(view)
        st = self._state[cluster]
        if now_s - st.last_update_s + _EPS_S >= st.rate_limit_s:
            opp = self.target_opp(view, cluster, util)
            khz = st.table[opp]
            if khz != st.next_khz:
                st.next_khz = khz
                st.last_update_s = now_s
        if st.next_khz is None:
            return cur_opp
        return st.table.index(st.next_khz)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        raise NotImplementedError

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        del busy_fraction
        return self._update(view, cluster, now_s, util, cur_opp)


class Schedutil(_SugovGovernor):
    """``schedutil`` as a stock kernel with an Energy Model runs it: Energy Aware Scheduling
    places the task (``find_energy_efficient_cpu``, off while overutilised; see
    :mod:`edgesched.policy.eas`), and the governor's utilisation is ``cpu_util_cfs_boost``: the
    task's util_avg on the cluster it runs on, raised to its util_est while it is enqueued
    (``uses_task_util``; at ``decide`` the request's cluster gets ``max(util_avg, util_est)``,
    the value after ``util_est_enqueue``). Frequency choice, rate limit and ticks as
    :class:`_SugovGovernor`."""

    name = "schedutil"
    uses_task_util = True

    def __init__(self, rate_limit_us: int | None = None, hz: int = DEFAULT_HZ) -> None:
        super().__init__(rate_limit_us, hz)
        self.placement = KernelPlacement(eas=True)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = self.placement.cluster(view, ctx)
        util = ctx.task_util if ctx.task_util > ctx.task_util_est else ctx.task_util_est
        return Decision(ci, self._update(view, ci, ctx.now_s, util, ctx.cur_opp[ci]))


class SchedutilBig(_SugovGovernor):
    """The schedutil governor with every request on the fastest cluster and the cluster's own
    PELT utilisation (no util_est, no EAS): the baseline before kernel placement was modelled."""

    name = "schedutil-big"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = view.profile.fastest_cluster
        return Decision(ci, self._update(view, ci, ctx.now_s, ctx.util_by_cluster[ci],
                                         ctx.cur_opp[ci]))


# ---------------------------------------------------------------------------------------------
# ondemand / conservative: shared sampling (cpufreq_governor.c)


@dataclass
class _DbsState:
    table: tuple[int, ...]
    sampling_rate_us: int
    rate_mult: int = 1
    last_tick_s: float | None = None
    last_sample_s: float | None = None
    acc_wall_s: float = 0.0
    acc_busy_s: float = 0.0
    prev_load: int = 0
    # conservative only
    requested_khz: int | None = None
    down_skip: int = 0


class _DbsGovernor:
    """Sampling machinery shared by ondemand and conservative (dbs_update and its callers)."""

    name = "dbs"

    def __init__(self, sampling_rate_us: int | None, hz: int) -> None:
        if sampling_rate_us is not None:
            min_us = DBS_MIN_SAMPLING_TICKS * tick_ns(hz) // 1000
            if sampling_rate_us < min_us:
                raise ValueError(f"sampling_rate_us must be >= {min_us} (two ticks at HZ={hz}),"
                                 f" got {sampling_rate_us}")
        self.sampling_rate_us = sampling_rate_us
        self.hz = hz
        self.placement = KernelPlacement(eas=False)
        # Like dbs_update_util_handler(), the governor is looked at on every scheduler tick and
        # samples once its sample delay has passed.
        self.tick_s: float = tick_ns(hz) / 1e9
        self._view: BoardView | None = None
        self._state: list[_DbsState] = []

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        del seed
        self._view = view
        self._state = [
            _DbsState(table=_khz_table(view, ci),
                      sampling_rate_us=(self.sampling_rate_us if self.sampling_rate_us is not None
                                        else dbs_sampling_rate_us(c.transition_latency_ns,
                                                                  self.hz)))
            for ci, c in enumerate(view.profile.clusters)
        ]

    def _ensure(self, view: BoardView) -> None:
        if self._view is not view:
            self.reset(view)

    def sampling_rate_s(self, view: BoardView, cluster: int) -> float:
        """Effective sampling interval of ``cluster`` in seconds."""
        self._ensure(view)
        return self._state[cluster].sampling_rate_us / 1e6

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        """The governor's current OPP on the cluster the kernel places the task on without EAS
        (DBS governors change frequency only when they sample, which the caller's ticks
        drive)."""
        ci = self.placement.cluster(view, ctx)
        return Decision(ci, ctx.cur_opp[ci])

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        del util
        self._ensure(view)
        st = self._state[cluster]
        elapsed = self.tick_s if st.last_tick_s is None else max(0.0, now_s - st.last_tick_s)
        st.last_tick_s = now_s
        st.acc_wall_s += elapsed
        st.acc_busy_s += min(1.0, max(0.0, busy_fraction)) * elapsed
        delay_s = st.sampling_rate_us * st.rate_mult / 1e6
        if st.last_sample_s is not None and now_s - st.last_sample_s + _EPS_S < delay_s:
            return cur_opp
        st.last_sample_s = now_s
        load, idle_periods = self._dbs_update(st)
        return self._gov_update(st, cur_opp, load, idle_periods)

    @staticmethod
    def _dbs_update(st: _DbsState) -> tuple[int, int | None]:
        """Load of the window since the last sample (integer %) and its idle periods."""
        elapsed_us = round(st.acc_wall_s * 1e6)
        idle_us = max(0, round((st.acc_wall_s - st.acc_busy_s) * 1e6))
        st.acc_wall_s = 0.0
        st.acc_busy_s = 0.0
        sampling_us = st.sampling_rate_us * st.rate_mult
        if elapsed_us <= 0:
            load = st.prev_load
        elif idle_us > 2 * sampling_us and st.prev_load:
            load = st.prev_load  # woke from a long idle: reuse the last load once
            st.prev_load = 0
        else:
            load = 100 * (elapsed_us - idle_us) // elapsed_us if elapsed_us > idle_us else 0
            st.prev_load = load
        idle_periods = idle_us // sampling_us if idle_us > 2 * sampling_us else None
        return load, idle_periods

    def _gov_update(self, st: _DbsState, cur_opp: int, load: int,
                    idle_periods: int | None) -> int:
        raise NotImplementedError


class Ondemand(_DbsGovernor):
    """The ``ondemand`` governor (drivers/cpufreq/cpufreq_ondemand.c, Linux 6.x ``od_update``).

    Every ``sampling_rate``: ``load > up_threshold`` -> ``f_max``; otherwise
    ``freq_next = f_min + load * (f_max - f_min) / 100`` resolved to the closest OPP
    (``CPUFREQ_RELATION_CE``, ties to the lower).

    Defaults: ``up_threshold=95`` (``MICRO_FREQUENCY_UP_THRESHOLD``, what ``od_init`` selects on
    a NO_HZ kernel; pass ``ONDEMAND_UP_THRESHOLD_PERIODIC`` (80) for a kernel without idle
    micro-accounting), ``sampling_down_factor=1``, ``powersave_bias`` fixed at 0,
    ``sampling_rate_us=None`` = ``max(2 ticks, transition delay)`` per cluster (8000 µs on all
    shipped profiles at HZ=250), ``hz=250``.
    """

    name = "ondemand"

    def __init__(self, up_threshold: int = ONDEMAND_UP_THRESHOLD_NOHZ,
                 sampling_down_factor: int = 1, sampling_rate_us: int | None = None,
                 hz: int = DEFAULT_HZ) -> None:
        # store_up_threshold / store_sampling_down_factor bounds in cpufreq_ondemand.c
        if not 11 <= up_threshold <= 100:
            raise ValueError(f"up_threshold must be in 11..100, got {up_threshold}")
        if not 1 <= sampling_down_factor <= 100_000:
            raise ValueError(f"sampling_down_factor must be in 1..100000, got "
                             f"{sampling_down_factor}")
        super().__init__(sampling_rate_us, hz)
        self.up_threshold = up_threshold
        self.sampling_down_factor = sampling_down_factor

    def _gov_update(self, st: _DbsState, cur_opp: int, load: int,
                    idle_periods: int | None) -> int:
        del idle_periods
        top = len(st.table) - 1
        if load > self.up_threshold:
            if cur_opp < top:
                st.rate_mult = self.sampling_down_factor
            return top
        min_f, max_f = st.table[0], st.table[-1]
        freq_next = min_f + load * (max_f - min_f) // 100
        st.rate_mult = 1
        return resolve_khz(st.table, freq_next, "C")


class Conservative(_DbsGovernor):
    """The ``conservative`` governor (drivers/cpufreq/cpufreq_conservative.c, ``cs_dbs_update``).

    Keeps a requested frequency (starting at the current one) and every ``sampling_rate``
    raises it by ``freq_step`` % of ``f_max`` when ``load > up_threshold`` (resolved to the
    highest OPP at or below, ``RELATION_HE``) or lowers it by the same step when
    ``load < down_threshold`` (lowest OPP at or above, ``RELATION_LE``); after an idle gap it
    first drops one step per idle sampling period.

    Defaults: ``up_threshold=80``, ``down_threshold=20``, ``freq_step=5``,
    ``sampling_down_factor=1``, ``sampling_rate_us=None`` (as for :class:`Ondemand`), ``hz=250``.
    """

    name = "conservative"

    def __init__(self, up_threshold: int = CONSERVATIVE_UP_THRESHOLD,
                 down_threshold: int = CONSERVATIVE_DOWN_THRESHOLD,
                 freq_step: int = CONSERVATIVE_FREQ_STEP, sampling_down_factor: int = 1,
                 sampling_rate_us: int | None = None, hz: int = DEFAULT_HZ) -> None:
        # store_up_threshold / store_down_threshold / store_freq_step bounds
        if not 1 <= down_threshold < up_threshold <= 100:
            raise ValueError("need 1 <= down_threshold < up_threshold <= 100, got "
                             f"{down_threshold} and {up_threshold}")
        if not 0 <= freq_step <= 100:
            raise ValueError(f"freq_step must be in 0..100, got {freq_step}")
        if not 1 <= sampling_down_factor <= 10:
            raise ValueError(f"sampling_down_factor must be in 1..10, got {sampling_down_factor}")
        super().__init__(sampling_rate_us, hz)
        self.up_threshold = up_threshold
        self.down_threshold = down_threshold
        self.freq_step = freq_step
        self.sampling_down_factor = sampling_down_factor

    def requested_khz(self, view: BoardView, cluster: int) -> int | None:
        """The governor's requested frequency for ``cluster`` (None before its first sample)."""
        self._ensure(view)
        return self._state[cluster].requested_khz

    def _gov_update(self, st: _DbsState, cur_opp: int, load: int,
                    idle_periods: int | None) -> int:
        min_f, max_f = st.table[0], st.table[-1]
        requested = st.requested_khz
        if requested is None or not min_f <= requested <= max_f:
            requested = st.table[cur_opp]  # cs_start / limits changed: start from policy->cur
            st.requested_khz = requested
        if self.freq_step == 0:
            return cur_opp
        step = self.freq_step * max_f // 100 or CONSERVATIVE_FREQ_STEP  # get_freq_step()
        if idle_periods is not None:
            drop = idle_periods * step
            requested = requested - drop if requested > min_f + drop else min_f
        if load > self.up_threshold:
            st.down_skip = 0
            requested = min(requested + step, max_f)
            st.requested_khz = requested
            return resolve_khz(st.table, requested, "H")
        st.down_skip += 1
        if st.down_skip < self.sampling_down_factor:
            return cur_opp
        st.down_skip = 0
        if load < self.down_threshold:
            requested = requested - step if requested > min_f + step else min_f
            st.requested_khz = requested
            return resolve_khz(st.table, requested, "L")
        return cur_opp


class OndemandBig(Ondemand):
    """:class:`Ondemand` with every request on the fastest cluster."""

    name = "ondemand-big"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = view.profile.fastest_cluster
        return Decision(ci, ctx.cur_opp[ci])


class ConservativeBig(Conservative):
    """:class:`Conservative` with every request on the fastest cluster."""

    name = "conservative-big"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = view.profile.fastest_cluster
        return Decision(ci, ctx.cur_opp[ci])
