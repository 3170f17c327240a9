"""Where the Linux scheduler puts the inference task on an asymmetric-capacity board.

The kernel governor baselines (``schedutil``, ``performance``, ``powersave``, ``ondemand``,
``conservative``) place each request where a stock Linux 6.12 kernel would run the one task that
serves it. Everything here is integer arithmetic in the kernel's capacity units (0..1024), from
kernel/sched/fair.c, kernel/sched/topology.c, include/linux/energy_model.h and
kernel/power/energy_model.c (formulas and decisions only; no kernel code is reproduced):

* ``fits_capacity(util, cap)`` is ``util * 1280 < cap * 1024`` (a 20 % margin);
  ``util_fits_cpu`` without uclamp is just that, against ``capacity_of(cpu)`` (the CPU's
  capacity; no RT, DL, IRQ or thermal pressure on the modelled board).
* Energy Model (``em_create_perf_table``, ``em_init_performance``, ``em_compute_costs``): per
  OPP ``performance = cap * f / f_max`` (integer), ``power`` from ``dev_pm_opp_calc_power`` (uW,
  ``Cluster.em_power_uw_kernel``), ``cost = 10 * power / performance``.
* ``em_cpu_energy(pd, max_util, sum_util, cap)``: 0 when ``sum_util`` is 0; else the first
  performance state whose ``performance >= min(max_util, cap)`` (the top one if none),
  ``cost * sum_util``.
* ``compute_energy``/``eenv_pd_max_util``/``eenv_pd_busy_time``: for the task alone on the board,
  every CPU's utilisation without the task is 0, so the energy of putting it in a domain is
  ``em_cpu_energy(pd, min(map_util_perf(u), cap), min(pd_cap, u))`` with ``u = task_util_est(p)``
  and ``map_util_perf(u) = u + u/4`` (``sugov_effective_cpu_perf``), and the base energy is 0.
* ``find_energy_efficient_cpu``: returns ``prev_cpu`` for a task with no utilisation; per
  performance domain (in the root domain's list order, which ``build_perf_domains`` builds by
  prepending, so the last cluster first) the CPUs where the task fits are candidates, ``prev_cpu``
  always, another CPU of the domain only if it has more spare capacity than ``prev_cpu`` (for a
  lone task it never has, so one candidate per domain); the first other candidate is taken, a
  later one only if its energy is strictly lower; the result is that candidate if ``prev_cpu``
  does not fit or if its energy is strictly below ``prev_cpu``'s, else ``prev_cpu``.
* ``select_task_rq_fair``: EAS runs at a wake-up unless the root domain is overutilised
  (``is_rd_overutilized``: some CPU's ``cpu_util_cfs`` does not fit its capacity). Otherwise, and
  always for governors other than schedutil (``sched_is_eas_possible`` requires schedutil), the
  wake-up goes to ``select_idle_sibling`` with ``sched_asym_cpucap_active``: the target (the
  previous CPU: ``wake_affine_idle`` returns ``prev_cpu`` when it is idle and shares no cache
  with the waker) if it is idle and ``asym_fits_cpu``; else ``select_idle_capacity``: the first
  idle CPU in wrap-around order from the target where the task fits, or, if none fits, the idle
  CPU of the highest capacity.
* Misfit (``update_misfit_status``, ``task_fits_cpu``): a task that keeps running where it no
  longer fits is pulled to a CPU of higher capacity by the load balancer.

Simplifications kept (see also ``edgesched/policy/README.md``):

* One task on an otherwise idle board: other processes, the HTTP threads and their utilisation
  are not modelled, so every CPU but the task's has utilisation 0 and is idle.
* Placement is per cluster (one performance domain per cluster, all its CPUs alike).
* A task that keeps running (the next request was already queued) is not woken, so it is not
  placed again; if it no longer fits its cluster it moves up at the start of the next request
  (the kernel's misfit balancing does it within a tick or two of the running request; a run is
  not interrupted here), to the cluster of the next higher capacity where it fits, or the
  biggest.
* Overutilisation is evaluated at each wake-up from the current signals; the kernel sets it at
  enqueue and clears it at the next load balance.
* Energy Model states marked inefficient are not skipped (``EM_PERF_DOMAIN_SKIP_INEFFICIENCIES``),
  as schedutil's frequency resolution does not skip them either.
* A new task starts on the cluster with the most CPUs (``sched_balance_find_dst_cpu`` takes the
  group with the most idle CPUs; ties to the lower CPU numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgesched.device import DeviceProfile
from edgesched.utilisation import SCHED_CAPACITY_SCALE, kernel_capacity

__all__ = [
    "CAPACITY_MARGIN",
    "EnergyModel",
    "PerfDomain",
    "PerfState",
    "first_cluster",
    "fits_capacity",
    "map_util_perf",
]

PLACED_MAX = 1 << 16
"""Answers :meth:`EnergyModel.place` keeps before it starts again."""
CAPACITY_MARGIN = 1280
"""kernel/sched/fair.c ``fits_capacity``: ``util * 1280 < capacity * 1024``."""


def fits_capacity(util: int, capacity: int) -> bool:
    """``fits_capacity(util, capacity)``: the utilisation leaves the 20 % margin free."""
    return util * CAPACITY_MARGIN < capacity * SCHED_CAPACITY_SCALE


def map_util_perf(util: int) -> int:
    """include/linux/sched/cpufreq.h ``map_util_perf``: the DVFS headroom ``u + u/4``."""
    return util + (util >> 2)


def first_cluster(profile: DeviceProfile) -> int:
    """Where a new task starts: the cluster with the most CPUs (the lowest index on a tie)."""
    return max(range(len(profile.clusters)), key=lambda i: (len(profile.clusters[i].cpus), -i))


@dataclass(frozen=True)
class PerfState:
    """One ``em_perf_state``: frequency, performance (capacity units), power (uW) and cost."""

    khz: int
    performance: int
    power_uw: int
    cost: int


@dataclass(frozen=True)
class PerfDomain:
    """One ``em_perf_domain``: a cluster's CPUs, their capacity and performance states."""

    cluster: int
    capacity: int
    n_cpus: int
    states: tuple[PerfState, ...]

    def state_for(self, max_util: int) -> int:
        """``em_pd_get_efficient_state``: the first state with ``performance >= max_util``."""
        for i, ps in enumerate(self.states):
            if ps.performance >= max_util:
                return i
        return len(self.states) - 1

    def energy(self, task_util: int) -> int:
        """``compute_energy`` of this domain with the task (alone on the board) on one of its
        CPUs: ``em_cpu_energy(pd, min(map_util_perf(u), cap), min(pd_cap, u), cap)``."""
        busy = min(self.capacity * self.n_cpus, task_util)
        if busy <= 0:
            return 0
        max_util = min(map_util_perf(task_util), self.capacity)
        return self.states[self.state_for(max_util)].cost * busy


@dataclass(frozen=True)
class EnergyModel:
    """The kernel's view of a board: capacities and the Energy Model of every cluster."""

    domains: tuple[PerfDomain, ...]
    first_cluster: int
    _placed: dict[tuple[int, int, int, bool, bool], int] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    """:meth:`place`'s answers by their arguments (integers in capacity units: few distinct)."""

    @classmethod
    def of(cls, profile: DeviceProfile) -> EnergyModel:
        domains = []
        for ci, c in enumerate(profile.clusters):
            cap = kernel_capacity(profile.capacity(ci))
            fmax = c.max_khz
            states = []
            for oi, opp in enumerate(c.opps):
                perf = max(1, cap * opp.khz // fmax)
                power = c.em_power_uw_kernel(oi)
                states.append(PerfState(opp.khz, perf, power, power * 10 // perf))
            domains.append(PerfDomain(ci, cap, len(c.cpus), tuple(states)))
        return cls(tuple(domains), first_cluster(profile))

    @property
    def capacities(self) -> tuple[int, ...]:
        return tuple(d.capacity for d in self.domains)

    def fits(self, util: int, cluster: int) -> bool:
        return fits_capacity(util, self.domains[cluster].capacity)

    def overutilized(self, cpu_util_cfs: int, cluster: int) -> bool:
        """``is_rd_overutilized`` for the lone task: its CPU's ``cpu_util_cfs`` does not fit
        (every other CPU has utilisation 0)."""
        return not self.fits(cpu_util_cfs, cluster)

    def find_energy_efficient(self, prev: int, task_util: int) -> int:
        """``find_energy_efficient_cpu`` for a task with ``task_util_est(p) = task_util`` whose
        previous CPU is in cluster ``prev``; returns a cluster index."""
        if task_util <= 0:
            return prev
        inf = float("inf")
        prev_delta = best_delta = inf
        prev_fits = best_fits = -1
        best = -1
        for pd in reversed(self.domains):  # rd->pd: build_perf_domains prepends each domain
            if not fits_capacity(task_util, pd.capacity):
                continue
            delta = pd.energy(task_util)
            if pd.cluster == prev:
                prev_delta, prev_fits = delta, 1
                best_delta = min(best_delta, prev_delta)
                continue
            if best_fits > 0 and delta >= best_delta:
                continue
            best_delta, best, best_fits = delta, pd.cluster, 1
        if best >= 0 and (best_fits > prev_fits or best_delta < prev_delta):
            return best
        return prev

    def select_idle_capacity(self, prev: int, task_util: int) -> int:
        """``select_idle_sibling`` on an asymmetric-capacity board without EAS: ``prev`` if
        the task fits there, else the first cluster in wrap-around order from ``prev`` where it
        fits (``select_idle_capacity``), else the one of the highest capacity."""
        if self.fits(task_util, prev):
            return prev
        n = len(self.domains)
        best, best_cap = prev, -1
        for k in range(1, n + 1):
            pd = self.domains[(prev + k) % n]
            if fits_capacity(task_util, pd.capacity):
                return pd.cluster
            if pd.capacity > best_cap:
                best, best_cap = pd.cluster, pd.capacity
        return best

    def misfit_target(self, cur: int, task_util: int) -> int:
        """Where misfit balancing moves a task that keeps running on ``cur``: nowhere if it
        fits or ``cur`` is the biggest; else the cluster of the next higher capacity where it
        fits, or the biggest."""
        cap = self.domains[cur].capacity
        top = max(self.domains, key=lambda d: (d.capacity, -d.cluster))
        if fits_capacity(task_util, cap) or cap >= top.capacity:
            return cur
        for pd in sorted(self.domains, key=lambda d: (d.capacity, d.cluster)):
            if pd.capacity > cap and fits_capacity(task_util, pd.capacity):
                return pd.cluster
        return top.cluster

    def place(self, prev: int, task_util_avg: int, task_util_est: int, woken: bool,
              eas: bool) -> int:
        """The cluster the kernel runs the task on for the next request.

        ``task_util_avg`` is ``task_util(p)``, ``task_util_est`` is ``task_util_est(p)``
        (the max of util_avg and util_est), ``woken`` says whether the task slept (a wake-up:
        ``select_task_rq_fair``) or kept running (only misfit balancing moves it), ``eas``
        whether Energy Aware Scheduling is on (schedutil with an Energy Model).
        """
        key = (prev, task_util_avg, task_util_est, woken, eas)
        placed = self._placed.get(key)
        if placed is None:
            if len(self._placed) >= PLACED_MAX:
                self._placed.clear()
            placed = self._placed[key] = self._place(prev, task_util_avg, task_util_est, woken,
                                                     eas)
        return placed

    def _place(self, prev: int, task_util_avg: int, task_util_est: int, woken: bool,
               eas: bool) -> int:
        if not 0 <= prev < len(self.domains):
            prev = self.first_cluster
        if not woken:
            return self.misfit_target(prev, task_util_est)
        # the task is asleep: its CPU's cpu_util_cfs is its blocked util_avg (no util_est)
        if eas and not self.overutilized(task_util_avg, prev):
            return self.find_energy_efficient(prev, task_util_est)
        return self.select_idle_capacity(prev, task_util_est)
