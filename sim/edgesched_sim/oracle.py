"""The offline energy floor: a lower bound on the energy any schedule of a job set can spend.

Policies are compared against :func:`energy_floor`, an "oracle" that knows every job in advance,
may preempt, may run at any speed between operating points and may even borrow the best cluster
for every job. It is a relaxation of the simulator's accounting, so no policy can beat it.

Accounting it bounds (the simulator's, board floor excluded): over ``[0, H]`` with
``H = max(horizon_s, last completion)`` every cluster ``c`` draws ``idle_uw(c)`` while idle; while
a job runs on ``c`` at OPP ``o`` the cluster draws ``busy_power_uw(o, threads)`` instead; one job
runs at a time on the whole board; an OPP change costs its transition delay at the new OPP's
static power. Job ``j`` on ``(c, o)`` takes ``C_j / s_co + M_j`` seconds with

- ``C_j = compute_mcycles`` (reference megacycles) and ``s_co = speed_mhz(c, o) * n_c``
  (reference megacycles per second, ``n_c = threads`` clamped to the cluster's CPU count exactly
  as ``DeviceProfile.latency_ms`` and ``Cluster.busy_power_uw`` clamp it), and
- ``M_j = mem_ms * mem_time_scale / 1000`` seconds of memory-bound time.

The floor. Let ``P_idle`` be the sum of the clusters' idle power and ``g_co = busy_power_uw(o,
threads) - idle_uw(c)`` the extra power of running at ``(c, o)``. Let ``g~`` be the lower convex
envelope of ``(0, 0)`` and the points ``(s_co, g_co)`` (time-sharing between idling and OPPs or
between two OPPs), extended beyond the top speed with its last slope. Then::

    floor = P_idle * horizon_s + P_min * sum_j M_j + YDS(g~; C_j, [release_j, deadline_j])

with ``P_min = min g_co`` and ``YDS`` the optimal preemptive continuous-speed energy of works
``C_j`` in windows ``[release_j, deadline_j]`` under the convex power function ``g~`` (Yao, Demers
and Shenker 1995).

Proof that it bounds every schedule finishing every job ``j`` by ``deadline_j``. Write the
schedule's energy as ``P_idle * H + sum_j E_j + E_trans`` with ``E_j`` job ``j``'s extra power
integrated over its execution. (1) ``H >= horizon_s``. (2) ``E_trans >= 0`` because static power
is at least idle power (checked; ``ValueError`` otherwise). (3) If job ``j`` spends a fraction
``f_k`` of its work at ``(c_k, o_k)`` (one part for a non-preemptive fixed-OPP run, several when
a governor retunes mid-run), ``E_j = sum_k f_k g_k (C_j / s_k + M_j) >= P_min M_j + sum_k
g_k f_k C_j / s_k``. (4) In each part let the compute time ``f_k C_j / s_k`` come first; these
compute pieces lie inside ``[release_j, deadline_j]`` and never overlap across jobs, so speed
``s_k`` on them and 0 elsewhere is a feasible preemptive variable-speed schedule of the works
``C_j``; its energy ``sum g_k * time >= integral of g~(speed)`` since ``g~ <= g`` at every OPP
point and ``g~(0) = 0``. (5) ``g~`` is convex with ``g~(0) = 0`` (and non-decreasing, as every
``g_co >= 0``), so YDS is optimal for it: no feasible schedule of the works spends less. Adding
(1)-(5) gives ``schedule energy >= floor``. The floor does not need the memory time to fit in the
windows: dropping it only loosens the relaxation.

The per-job bound, which lifts the floor where it is higher. The YDS part charges compute and
memory-bound time at different operating points (compute near the critical speed, memory time
at the least power of any OPP); one job runs both at the same one. With ``t_k = C_j / s_k + M_j``
job ``j``'s run time at point ``k``, its parts take ``sum_k f_k t_k`` seconds, all inside its
window, so ``E_j >= B_j(deadline_j - release_j)`` where::

    B_j(W) = min { sum_k f_k g_k t_k : f_k >= 0, sum_k f_k = 1, sum_k f_k t_k <= W }

is the lower convex hull of the points ``(t_k, g_k t_k)`` at ``W``, flat at the least-energy
point beyond it (:func:`job_frontier`; a window shorter than the fastest run gets the fastest
run's energy, and on such a job the bound claims nothing anyway). For the jobs of one component
``K`` of the union of the finite windows, steps (3)-(5) applied to ``K`` alone give
``sum_{j in K} E_j >= YDS_K + P_min sum_{j in K} M_j``, and the per-job bounds give
``sum_{j in K} E_j >= sum_{j in K} B_j``: the larger of the two bounds ``K``'s busy energy, and
the components' jobs are disjoint. A job without a deadline is bounded by ``B_j(inf)``, its
least-energy point, at least its ``slope0 * C_j + P_min * M_j``. ``Floor.lift_j`` is what this
adds: the floor is ``P_idle * horizon_s`` plus, summed over the components and the jobs without
a deadline, the larger of the two bounds. Lightly loaded, where the components are single jobs
with loose windows, the floor is then exact: a lone job run at its least-energy point spends it.

Because ``g~`` passes through the origin, running slower than the energy-efficient ("critical")
speed costs the same per cycle as time-sharing between idle and the critical OPP, so a YDS
interval of density below the critical speed is charged ``slope0 * work``; no separate
critical-speed step is needed.

Conventions for windows:

- ``deadline_s = math.inf``: the job's window is ``[release, max(horizon_s, release) + S]`` for a
  span ``S`` so large that the job never joins a critical interval of the finite jobs and its own
  interval has a density below the critical speed. In that limit (which YDS reaches for any ``S``
  beyond a finite threshold) the job costs exactly ``slope0 * C_j``, ``slope0`` being the
  envelope's first slope (the least energy per reference megacycle); that value is charged and no
  speed interval is listed for it.
- A window shorter than the job's compute at the board's top speed (``deadline - release <
  C_j / s_max``, including zero-length and reversed windows) makes the job infeasible: it is
  counted in ``Floor.infeasible_jobs`` and its window is stretched to ``[release, release +
  C_j / s_max]``, i.e. its own density is capped at the top speed. Several jobs crowded into a
  window can still need more than the top speed; ``g~`` is then extrapolated linearly. On an
  infeasible instance no schedule meets every deadline, so the bound claim is vacuous there.
- Jobs without compute (``compute_mcycles == 0``) add only their memory part.

The YDS solver splits the jobs into connected components of the union of their windows (windows
that only touch fall into separate components) and, per component, keeps for every job the
densest interval starting at its (compressed) release, one numpy row per start. After the
densest interval ``I = [t1, t2]`` is removed and the timeline compressed, a row whose best
interval missed ``I`` keeps its value exactly; a row whose best interval met ``I`` keeps it as
an upper bound (a new interval is an old one of the same start minus ``I``, and ``I`` was the
densest, so densities never rise) and is recomputed only once that bound reaches the current
maximum; a row whose start fell inside ``I`` now starts at ``t1`` and is recomputed at once.
Once the densest interval left is at most the critical speed, the rest of the component costs
``slope0`` per megacycle whatever YDS would do, so the solver stops there.

Where the floor is not tight: the YDS part lets compute use the whole window and charges the
memory-bound time ``M_j`` apart, without giving it room in the window (one inference at a time
occupies the board for ``C_j / s + M_j``). On a job set whose critical intervals are dense, a
real schedule must squeeze the compute into what the memory time leaves and so run faster (and
dearer) than YDS assumes; the floor stays valid but falls below the best schedule by up to that
difference. The per-job bound sees each job's memory time but not the other jobs of its
component. Both relax non-preemption: a long run that cannot be interrupted makes a short job
released during it wait, which the floor never pays and a real schedule pays by running the long
job faster (or by missing the short one).

Feasibility (:func:`demand_test`): whether any schedule at all can finish every job in time,
judged with each job's full service time at the board's top speed, memory-bound time included
(``DeviceProfile.min_latency_ms``). For every window ``[r_i, d_j]`` the jobs released in it and
due in it must fit: ``sum p_k <= d_j - r_i`` (the processor-demand criterion for one processor
with release times and preemption; EDF meets every deadline exactly when it holds). It ignores
non-preemptive blocking, so it is a necessary condition for the simulator's non-preemptive runs:
``feasible`` false proves that no schedule serves every request; ``feasible`` true says the
preemptive relaxation can, which is what the floor needs. On an infeasible set the floor's
premise (every job finished in time) fails and :func:`energy_floor` is no floor there.

Cost: job sets of thousands of requests with the simulator's deadlines (tens of ms to seconds)
take well under a second. The worst case is O(n^3): thousands of windows nested inside each
other whose YDS speeds all differ and all lie above the critical speed (3,000 such levels take
minutes). Simulator workloads do not look like that.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgesched.device import Cluster, DeviceProfile, Work

__all__ = ["Demand", "Floor", "OracleJob", "PowerEnvelope", "demand_test", "energy_floor",
           "job_frontier", "power_envelope"]

_UJ_TO_J = 1e-6
_ROW_CHUNK = 256
"""Rows recomputed per numpy block (bounds the temporary matrices to 256 x jobs)."""
_STATIC_SLACK_UW = 1e-6
"""Static power may fall this far below idle power (rounding) before the floor refuses."""
_INFEASIBLE_RTOL = 1e-9


@dataclass(frozen=True)
class OracleJob:
    """One job for the oracle: window ``[release_s, deadline_s]`` (absolute) and its work."""

    release_s: float
    deadline_s: float
    """Absolute deadline; ``math.inf`` means none (see the module notes)."""
    work: Work


@dataclass(frozen=True)
class Floor:
    """The energy floor of a job set and its parts (joules, board floor excluded)."""

    energy_j: float
    """The lower bound: ``idle_j + memory_j + compute_j + lift_j``."""
    idle_j: float
    """``P_idle_total * horizon_s``."""
    memory_j: float
    """Memory-bound time at the least extra power of any OPP."""
    compute_j: float
    """The YDS part: compute at the envelope of the OPPs' extra power."""
    lift_j: float
    """What the per-job bound adds where it is above the YDS relaxation (``memory_j`` +
    ``compute_j``): the sum over components of the excess of their jobs' per-job bounds."""
    infeasible_jobs: int
    """Jobs whose window cannot hold their compute even at the board's top speed."""
    speeds: list[tuple[float, float, float]]
    """YDS speed profile in real time: disjoint ``(start_s, end_s, speed_mhz)`` pieces, sorted,
    speed in reference megacycles per second including the thread count (``speed_mhz * threads``).
    A critical interval interrupted by denser earlier ones appears as several pieces. What is
    left of a component once its densest interval is at most the critical speed is listed at its
    average speed (YDS's finer split there does not change the energy and is not computed).
    Jobs without a deadline get no piece."""


@dataclass(frozen=True)
class PowerEnvelope:
    """Lower convex envelope of ``(0, 0)`` and the (speed, extra power) points of every OPP.

    ``speeds_mhz[0] == 0`` and ``extra_uw[0] == 0``; the last vertex is the top speed. Speeds are
    reference megacycles per second for the job set's thread count.
    """

    speeds_mhz: tuple[float, ...]
    extra_uw: tuple[float, ...]
    min_extra_uw: float
    """The least extra power of any OPP (what memory-bound time costs at best)."""

    @property
    def top_speed_mhz(self) -> float:
        return self.speeds_mhz[-1]

    @property
    def min_uj_per_mcycle(self) -> float:
        """First slope: the least energy per reference megacycle (the critical speed's)."""
        return self.extra_uw[1] / self.speeds_mhz[1]

    @property
    def critical_speed_mhz(self) -> float:
        """Where the first segment ends: the most energy-efficient speed."""
        return self.speeds_mhz[1]

    def power_uw(self, speed_mhz: np.ndarray | float) -> np.ndarray:
        """``g~(speed)``: interpolated on the envelope, linear with the last slope beyond it."""
        s = np.asarray(speed_mhz, dtype=float)
        xs = np.asarray(self.speeds_mhz)
        ys = np.asarray(self.extra_uw)
        last_slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        inside = np.interp(np.minimum(s, xs[-1]), xs, ys)
        return np.where(s > xs[-1], ys[-1] + last_slope * (s - xs[-1]), inside)


def _threads_of(jobs: Sequence[OracleJob]) -> int:
    threads = {j.work.threads for j in jobs}
    if len(threads) > 1:
        raise ValueError("energy_floor needs all jobs in one call to have the same threads, got "
                         f"{sorted(threads)}; call it once per thread count or use one count")
    return threads.pop() if threads else 1


def _hull_push(hull: list[tuple[float, float]], x: float, y: float) -> None:
    """Append ``(x, y)`` (x beyond every vertex) to a lower convex hull, first dropping the
    vertices that do not lie strictly below the chord to it."""
    while len(hull) >= 2:
        (x0, y0), (x1, y1) = hull[-2], hull[-1]
        if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) <= 0.0:
            hull.pop()
        else:
            break
    hull.append((x, y))


def _floor_temp_c(cluster: Cluster, coldest_c: float | None) -> float | None:
    """The temperature ``cluster``'s leakage is priced at by the floor: the profile's
    ``default_temp_c`` (None), or ``coldest_c`` when the run can be colder than that."""
    if coldest_c is None or coldest_c >= cluster.default_temp_c:
        return None
    return coldest_c


def _busy_uw(cluster: Cluster, opp: int, threads: int, temp_c: float | None) -> float:
    """``busy_power_uw`` at ``temp_c`` with the static part never below idle power, as the
    simulator prices a run at a temperature (``Cluster.idle_lift_uw``)."""
    return cluster.busy_power_uw(opp, threads, temp_c) + cluster.idle_lift_uw(opp, temp_c)


def power_envelope(profile: DeviceProfile, threads: int = 1,
                   coldest_c: float | None = None) -> PowerEnvelope:
    """The envelope ``g~`` of ``profile`` for work on ``threads`` CPUs (see the module notes),
    leakage priced at the coldest temperature of the run (:func:`energy_floor`)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    points: dict[float, float] = {}
    for c in profile.clusters:
        n = max(1, min(threads, len(c.cpus)))
        temp_c = _floor_temp_c(c, coldest_c)
        for o in range(len(c.opps)):
            static_uw = c.static_power_uw(o)
            if static_uw < c.idle_uw - _STATIC_SLACK_UW:
                raise ValueError(
                    f"energy_floor needs static power >= idle power on every OPP; cluster "
                    f"{c.name!r} OPP {c.opps[o].khz} kHz has static {static_uw:.1f} uW < idle "
                    f"{c.idle_uw:.1f} uW")
            s = c.speed_mhz(o) * n
            g = _busy_uw(c, o, threads, temp_c) - c.idle_uw
            points[s] = min(g, points.get(s, math.inf))
    pts = sorted(points.items())
    min_extra = min(g for _, g in pts)
    hull: list[tuple[float, float]] = [(0.0, 0.0)]
    for x, y in pts:
        _hull_push(hull, x, y)
    return PowerEnvelope(speeds_mhz=tuple(p[0] for p in hull),
                         extra_uw=tuple(p[1] for p in hull), min_extra_uw=min_extra)


# ---------------------------------------------------------------------------------------------
# YDS


class _Covered:
    """Disjoint real-time intervals already given a speed; hands out the uncovered pieces."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def claim(self, a: float, b: float) -> list[tuple[float, float]]:
        lo = bisect.bisect_left(self.ends, a)
        hi = bisect.bisect_right(self.starts, b)
        gaps: list[tuple[float, float]] = []
        cur = a
        for k in range(lo, hi):
            if self.starts[k] > cur:
                gaps.append((cur, self.starts[k]))
            cur = max(cur, self.ends[k])
        if cur < b:
            gaps.append((cur, b))
        new_a = min(a, self.starts[lo]) if hi > lo else a
        new_b = max(b, self.ends[hi - 1]) if hi > lo else b
        self.starts[lo:hi] = [new_a]
        self.ends[lo:hi] = [new_b]
        return gaps


def _best_rows(starts: np.ndarray, rel: np.ndarray, dl: np.ndarray,
               work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each start: the densest interval ``[start, deadline]``; (density, end).

    ``dl`` is sorted; an interval holds the jobs with ``rel >= start`` and ``dl <= end``.
    """
    uniq, inverse = np.unique(starts, return_inverse=True)
    vals = np.full(len(uniq), -np.inf)
    ends = np.zeros(len(uniq))
    for lo in range(0, len(uniq), _ROW_CHUNK):
        s = uniq[lo:lo + _ROW_CHUNK, None]
        # jobs due at or before the chunk's first start are in none of its intervals
        first = int(np.searchsorted(dl, uniq[lo], side="right"))
        if first == len(dl):
            continue
        r_t, d_t, w_t = rel[first:], dl[first:], work[first:]
        cum = np.cumsum(np.where(r_t[None, :] >= s, w_t[None, :], 0.0), axis=1)
        span = d_t[None, :] - s
        dens = np.full(cum.shape, -np.inf)
        np.divide(cum, span, out=dens, where=span > 0.0)
        best = np.argmax(dens, axis=1)
        vals[lo:lo + _ROW_CHUNK] = dens[np.arange(len(best)), best]
        ends[lo:lo + _ROW_CHUNK] = d_t[best]
    return vals[inverse], ends[inverse]


def _compress(x: np.ndarray, t1: float, t2: float) -> np.ndarray:
    return np.where(x <= t1, x, np.where(x >= t2, x - (t2 - t1), t1))


def _yds_component(rel: np.ndarray, dl: np.ndarray, work: np.ndarray, env: PowerEnvelope,
                   covered: _Covered, speeds: list[tuple[float, float, float]]) -> float:
    """YDS energy (uW*s) of one component; appends its real-time speed pieces to ``speeds``."""
    if len(work) == 1:
        span = float(dl[0] - rel[0])
        density = float(work[0]) / span
        for a, b in covered.claim(float(rel[0]), float(dl[0])):
            speeds.append((a, b, density))
        return float(env.power_uw(density)) * span
    order = np.argsort(dl, kind="stable")
    r_c = rel[order].astype(float)
    d_c = dl[order].astype(float)
    w = work[order].astype(float)
    r_real = r_c.copy()
    d_real = d_c.copy()
    row_val, row_end = _best_rows(r_c, r_c, d_c, w)
    # a stale row's value is only an upper bound (densities never rise); refreshed when it matters
    stale = np.zeros(len(w), dtype=bool)
    energy_uws = 0.0
    s_max = env.top_speed_mhz
    s_crit = env.critical_speed_mhz
    while len(w):
        while stale.any():
            fresh_max = float(row_val[~stale].max()) if not stale.all() else -math.inf
            todo = np.flatnonzero(stale & (row_val >= fresh_max))
            if not len(todo):
                break
            row_val[todo], row_end[todo] = _best_rows(r_c[todo], r_c, d_c, w)
            stale[todo] = False
        j = int(np.argmax(row_val))
        if not math.isfinite(float(row_val[j])):
            # only windows squeezed to nothing by rounding are left: run them at the top speed
            total = float(w.sum())
            energy_uws += float(env.power_uw(s_max)) * total / s_max
            break
        if float(row_val[j]) <= s_crit:
            # every interval left is at most critical speed, where g~ is linear: the rest costs
            # slope0 per megacycle however YDS would split it; report it at its average speed
            total = float(w.sum())
            energy_uws += env.min_uj_per_mcycle * total
            gaps = covered.claim(float(r_real.min()), float(d_real.max()))
            length = sum(b - a for a, b in gaps)
            if length > 0.0:
                speeds.extend((a, b, total / length) for a, b in gaps)
            break
        t1 = float(r_c[j])
        t2 = float(row_end[j])
        inside = (r_c >= t1) & (d_c <= t2)
        span = t2 - t1
        density = float(w[inside].sum()) / span
        energy_uws += float(env.power_uw(density)) * span
        for a, b in covered.claim(float(r_real[inside].min()), float(d_real[inside].max())):
            speeds.append((a, b, density))
        keep = ~inside
        old_r = r_c[keep]
        old_end = row_end[keep]
        stale = stale[keep] | ((old_r <= t2) & (old_end >= t1))
        row_val = row_val[keep]
        # a row starting inside I now starts at t1: its intervals are old row t1's minus I, so
        # its old value bounds nothing; make it first in line for a refresh
        row_val[(old_r >= t1) & (old_r <= t2)] = math.inf
        r_c = _compress(old_r, t1, t2)
        d_c = _compress(d_c[keep], t1, t2)
        row_end = _compress(old_end, t1, t2)
        w = w[keep]
        r_real = r_real[keep]
        d_real = d_real[keep]
    return energy_uws


def _yds(rel: np.ndarray, dl: np.ndarray, work: np.ndarray, env: PowerEnvelope
         ) -> tuple[float, list[tuple[float, float, float]], list[tuple[np.ndarray, float]]]:
    """YDS energy (uW*s), speed pieces and, per component of the union of the windows, (its
    jobs' indices into the arguments, its YDS energy) for finite windows with ``dl > rel`` and
    ``work > 0``."""
    speeds: list[tuple[float, float, float]] = []
    parts: list[tuple[np.ndarray, float]] = []
    if not len(work):
        return 0.0, speeds, parts
    order = np.argsort(rel, kind="stable")
    rel, dl, work = rel[order], dl[order], work[order]
    reach = np.maximum.accumulate(dl)
    # a component starts where a release is at or after every earlier deadline
    cuts = np.flatnonzero(rel[1:] >= reach[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(work)]
    covered = _Covered()
    energy_uws = 0.0
    for lo, hi in itertools.pairwise(bounds):
        e = _yds_component(rel[lo:hi], dl[lo:hi], work[lo:hi], env, covered, speeds)
        parts.append((order[lo:hi], e))
        energy_uws += e
    speeds.sort()
    return energy_uws, speeds, parts


# ---------------------------------------------------------------------------------------------
# the per-job bound


def job_frontier(profile: DeviceProfile, work: Work,
                 coldest_c: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``B(W)`` of the module notes for ``work`` on ``profile``: the least extra energy (uW*s)
    of running it within ``W`` seconds, as the vertices ``(times_s, energies_uws)`` of a convex
    piecewise-linear function, times increasing and energies decreasing (evaluate with
    ``np.interp``: flat at the least energy beyond the last vertex; left of the first vertex,
    the shortest run's energy, which no window shorter than that run makes smaller)."""
    points: dict[float, float] = {}
    for ci, c in enumerate(profile.clusters):
        temp_c = _floor_temp_c(c, coldest_c)
        for o in range(len(c.opps)):
            t = profile.latency_ms(work, ci, o) / 1000.0
            e = (_busy_uw(c, o, work.threads, temp_c) - c.idle_uw) * t
            points[t] = min(e, points.get(t, math.inf))
    hull: list[tuple[float, float]] = []
    for x, y in sorted(points.items()):
        if hull and y >= hull[-1][1]:
            continue  # slower and no cheaper than a faster point: never on the frontier
        _hull_push(hull, x, y)
    return np.array([p[0] for p in hull]), np.array([p[1] for p in hull])


def _per_job_uws(profile: DeviceProfile, jobs: Sequence[OracleJob],
                 coldest_c: float | None) -> np.ndarray:
    """Each job's ``B_j(deadline - release)`` (uW*s); ``B_j(inf)`` without a deadline."""
    out = np.empty(len(jobs))
    windows = np.array([j.deadline_s - j.release_s for j in jobs], dtype=float)
    by_work: dict[Work, list[int]] = {}
    for i, job in enumerate(jobs):
        by_work.setdefault(job.work, []).append(i)
    for work, idx in by_work.items():
        times, energies = job_frontier(profile, work, coldest_c)
        out[idx] = np.interp(windows[idx], times, energies)
    return out


# ---------------------------------------------------------------------------------------------
# the floor


def energy_floor(profile: DeviceProfile, jobs: Sequence[OracleJob], horizon_s: float,
                 coldest_c: float | None = None) -> Floor:
    """Lower bound on the energy (J, board floor excluded) of any schedule of ``jobs`` on
    ``profile`` over ``[0, max(horizon_s, last completion)]`` that finishes every job by its
    deadline. See the module docstring for the relaxation and its proof.

    ``coldest_c``: the lowest temperature the run's clusters can have (Celsius; the heat
    model's ambient, below which it never cools), when their leakage follows a heat model; a
    cluster whose ``default_temp_c`` is above it has its leakage priced there (leakage grows
    with temperature: ``static_temp_coeff_per_c >= 0``), its static power never below its idle
    power (as the simulator prices it). None: leakage at ``default_temp_c``,
    as the simulator prices it without a heat model.

    Raises ``ValueError`` when the jobs' thread counts differ, on NaN or infinite releases, a NaN
    deadline, negative work, a negative or non-finite horizon, or a profile whose static power
    falls below idle power.
    """
    if not math.isfinite(horizon_s) or horizon_s < 0:
        raise ValueError(f"horizon_s must be finite and >= 0, got {horizon_s!r}")
    threads = _threads_of(jobs)
    env = power_envelope(profile, threads, coldest_c)
    idle_j = profile.idle_power_uw * horizon_s * _UJ_TO_J
    n = len(jobs)
    rel = np.array([j.release_s for j in jobs], dtype=float)
    dl = np.array([j.deadline_s for j in jobs], dtype=float)
    compute = np.array([j.work.compute_mcycles for j in jobs], dtype=float)
    mem_ms = np.array([j.work.mem_ms for j in jobs], dtype=float)
    if n:
        if not np.all(np.isfinite(rel)):
            raise ValueError("every job needs a finite release_s")
        if np.any(np.isnan(dl)):
            raise ValueError("deadline_s must be a number or math.inf, got NaN")
        if np.any(~(compute >= 0)) or np.any(~(mem_ms >= 0)):
            raise ValueError("job work must have compute_mcycles >= 0 and mem_ms >= 0")
    mem_s = mem_ms * profile.mem_time_scale / 1000.0
    memory_j = float(mem_s.sum()) * env.min_extra_uw * _UJ_TO_J

    s_max = env.top_speed_mhz
    has_compute = compute > 0.0
    unbounded = has_compute & np.isinf(dl)
    finite = has_compute & ~np.isinf(dl)
    unbounded_uws = float(compute[unbounded].sum()) * env.min_uj_per_mcycle

    r_f, d_f, c_f = rel[finite], dl[finite], compute[finite]
    need_s = c_f / s_max
    infeasible = (d_f - r_f) < need_s * (1.0 - _INFEASIBLE_RTOL)
    # stretch short windows to the top speed; keep every window at least one ulp long
    d_f = np.maximum(np.maximum(d_f, r_f + need_s), np.nextafter(r_f, np.inf))
    yds_uws, speeds, parts = _yds(r_f, d_f, c_f, env)
    compute_j = (yds_uws + unbounded_uws) * _UJ_TO_J

    # the per-job bound, where it is higher: per component of the finite windows, per job
    # without a deadline (a job without compute costs P_min * M_j either way)
    per_job = _per_job_uws(profile, jobs, coldest_c) if n else np.zeros(0)
    mem_uws = mem_s * env.min_extra_uw
    lift_uws = 0.0
    pj_f, mem_f = per_job[finite], mem_uws[finite]
    for idx, e in parts:
        lift_uws += max(0.0, float(pj_f[idx].sum()) - e - float(mem_f[idx].sum()))
    yds_unbounded = compute[unbounded] * env.min_uj_per_mcycle + mem_uws[unbounded]
    lift_uws += float(np.maximum(per_job[unbounded] - yds_unbounded, 0.0).sum())
    lift_j = lift_uws * _UJ_TO_J
    return Floor(energy_j=idle_j + memory_j + compute_j + lift_j, idle_j=idle_j,
                 memory_j=memory_j, compute_j=compute_j, lift_j=lift_j,
                 infeasible_jobs=int(infeasible.sum()), speeds=speeds)


# ---------------------------------------------------------------------------------------------
# feasibility: the processor-demand test

_DEMAND_TOL_S = 1e-9
"""Excess demand (seconds) below which a window counts as fitting (rounding)."""


@dataclass(frozen=True)
class Demand:
    """The processor-demand test of a job set (see the module notes)."""

    feasible: bool
    """Every window ``[r_i, d_j]`` holds the service time of the jobs released and due in it."""
    max_load: float
    """Largest demand / window length over all windows: the factor by which the board's top
    speed would have to grow for the set to fit (``> 1`` exactly when infeasible; ``inf`` when a
    job has a zero-length window)."""
    max_excess_s: float
    """Largest demand minus window length (seconds, ``<= 0`` when feasible) over the windows
    inside one component of the union of the jobs' windows (a window across components can
    exceed it when several components overflow; ``feasible`` is exact either way)."""
    min_misses: int
    """A proven lower bound on the jobs any schedule misses, summed over the components of the
    union of the windows (their jobs are disjoint): per component, the jobs whose own window is
    shorter than their service time, plus, among the rest, the fewest jobs whose removal makes
    the window with the largest excess fit (largest service times first)."""


def _worst_window(rel: np.ndarray, dl: np.ndarray, p: np.ndarray) -> tuple[float, float, float,
                                                                              float]:
    """(max excess s, max load, window start, window end) over windows ``[r_i, d_j]``."""
    if not len(p):
        return -math.inf, 0.0, 0.0, 0.0
    order = np.argsort(dl, kind="stable")
    rel, dl, p = rel[order], dl[order], p[order]
    starts = np.unique(rel)
    best_excess, best_load, best_a, best_b = -math.inf, 0.0, 0.0, 0.0
    for lo in range(0, len(starts), _ROW_CHUNK):
        s = starts[lo:lo + _ROW_CHUNK, None]
        # a window [s, d] holds jobs with r >= s and dl <= d; jobs due before the chunk's first
        # start hold none of its windows
        first = int(np.searchsorted(dl, starts[lo], side="left"))
        if first == len(dl):
            break
        r_t, d_t, p_t = rel[first:], dl[first:], p[first:]
        cum = np.cumsum(np.where(r_t[None, :] >= s, p_t[None, :], 0.0), axis=1)
        span = d_t[None, :] - s
        valid = span >= 0.0
        excess = np.where(valid, cum - span, -np.inf)
        k = int(np.argmax(excess))
        row, col = divmod(k, excess.shape[1])
        if float(excess[row, col]) > best_excess:
            best_excess = float(excess[row, col])
            best_a, best_b = float(s[row, 0]), float(d_t[col])
        with np.errstate(divide="ignore", invalid="ignore"):
            load = np.where(valid & (cum > 0.0), cum / span, 0.0)
        best_load = max(best_load, float(load.max()))
    return best_excess, best_load, best_a, best_b


def demand_test(release_s: np.ndarray, deadline_s: np.ndarray, service_s: np.ndarray) -> Demand:
    """Processor-demand test of jobs with absolute windows and service times (seconds).

    Jobs with ``deadline_s = inf`` constrain nothing and are left out. Numpy, chunked: about
    ``n^2 / 2`` window sums, a fraction of a second for a few thousand jobs.
    """
    rel = np.asarray(release_s, dtype=float)
    dl = np.asarray(deadline_s, dtype=float)
    p = np.asarray(service_s, dtype=float)
    if not (rel.shape == dl.shape == p.shape):
        raise ValueError("release_s, deadline_s and service_s need the same length")
    if np.any(~np.isfinite(rel)) or np.any(np.isnan(dl)) or np.any(~(p >= 0)):
        raise ValueError("demand_test needs finite releases, deadlines that are numbers or "
                         "inf, and service times >= 0")
    keep = np.isfinite(dl) & (p > 0.0)
    order = np.argsort(rel[keep], kind="stable")
    rel, dl, p = rel[keep][order], dl[keep][order], p[keep][order]
    if not len(p):
        return Demand(True, 0.0, 0.0, 0)
    # a window across a point no job's window spans splits in two whose demands add up to its
    # own and whose lengths add up to at most its own: each component of the union of the
    # windows decides alone
    reach = np.maximum.accumulate(dl)
    cuts = np.flatnonzero(rel[1:] >= reach[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(p)]
    excess, load, misses = -math.inf, 0.0, 0
    for lo, hi in itertools.pairwise(bounds):
        e, ld, _, _ = _worst_window(rel[lo:hi], dl[lo:hi], p[lo:hi])
        excess, load = max(excess, e), max(load, ld)
        if e > _DEMAND_TOL_S:
            misses += _min_misses(rel[lo:hi], dl[lo:hi], p[lo:hi])
    return Demand(misses == 0, load, excess, misses)


def _min_misses(rel: np.ndarray, dl: np.ndarray, p: np.ndarray) -> int:
    """Lower bound on the misses of one component (see ``Demand.min_misses``)."""
    alone = p > (dl - rel) + _DEMAND_TOL_S
    misses = int(alone.sum())
    rest = ~alone
    r_excess, _, a, b = _worst_window(rel[rest], dl[rest], p[rest])
    if r_excess > _DEMAND_TOL_S:
        inside = rest & (rel >= a) & (dl <= b)
        drop = np.cumsum(np.sort(p[inside])[::-1])
        misses += int(np.searchsorted(drop, r_excess - _DEMAND_TOL_S, side="left")) + 1
    return misses
