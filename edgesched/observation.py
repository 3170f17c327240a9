"""The one observation builder and action decoder, shared by the simulator and the daemon.

Versioned: a policy file records ``OBS_VERSION``, ``N_ACTIONS`` and ``action_map_id()``; the
daemon refuses a file whose values differ.

Everything is normalised so that one policy can run on a board it never trained on: frequencies
as a fraction of the cluster's top OPP, capacity as a fraction of 1024, slack and backlog in units
of the head request's service time at the board's top speed.

Actions: ``cluster * LEVELS + level``. A level is a target fraction ``(level + 1) / LEVELS`` of the
cluster's top frequency, decoded to the lowest OPP at or above it. Levels that decode to the same
OPP as a lower level, and clusters the board lacks, are masked; decoding a masked action is still
defined (it gives the OPP the level maps to, on cluster 0 if the cluster is missing).

Version 3 (this one) shows up to four clusters (DVFS domains), the heat (the hottest zone's
distance to the lowest passive trip, and per cluster the thermal cap), how bursty the arrivals
have been over the last half minute (``arrival_burstiness``, from
:class:`edgesched.utilisation.BurstMeter`: a steady light load, where the least-energy safe
choice is enough, looks different from one whose bursts need room), and the *safe set*: the
actions whose run, by the board's latency model, keeps every bound of the ``slack`` baseline
(the head's deadline, the queue behind it, the blocking limits, the load bound; see
:mod:`edgesched.policy.safe`). Per cluster the observation gives the lowest-energy safe
frequency and how its energy compares with the best safe option of the board, so the network
sees the analytic answer and learns when to depart from it. The learned policies choose only
among safe actions (the fastest one when none is safe), in training and at run time alike.
Version 2 was the same without the burstiness; files of versions 1 and 2 are refused with the
usual message.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from math import isfinite, tanh
from typing import NamedTuple

import numpy as np

from edgesched.device import Cluster, DeviceProfile, Work
from edgesched.errors import PolicyMismatchError
from edgesched.queue import Entry

OBS_VERSION = 3
URGENT_WINDOW_S = 10.0
"""How long a priority-1 request's timeout counts towards ``DecisionContext.urgent_timeout_s``."""
BLOCKING_SHARE = 0.8
"""A lower-priority run is kept within this share of the shortest recent priority-1 timeout
(``DecisionContext.urgent_timeout_s``) when some action allows it; the rest is left for the
priority-1 request's own run and the serving around it (see :func:`run_limit_s`)."""
MAX_CLUSTERS = 4
LEVELS = 20
N_ACTIONS = MAX_CLUSTERS * LEVELS

GLOBAL_FEATURES = (
    "queue_len",          # waiting requests n, as n / (n + 4)
    "head_priority",      # 0 for priority 1 (highest) .. 1 for the lowest class
    "head_slack",         # tanh(slack / service_time_at_top / 4); negative when already late
    "head_mem_fraction",  # memory-bound share of the head's service time at top speed
    "backlog",            # tanh(queued work at top speed / head service time / 8)
    "queue_slack",        # tanh((earliest queued deadline - now) / (head + backlog) / 4), 1 if none
    "urgent_waiting",     # waiting requests of the head's class or higher, n / (n + 4)
    "arrival_load",       # tanh(arrival rate * head service time at top speed)
    "utilisation",        # recent busy fraction of the board in [0, 1]
    "thermal_headroom",   # tanh((lowest passive trip - temperature) / 10 C); 1 if unknown
    "arrival_burstiness",  # (D - 1) / (D + 3), D the arrival counts' index of dispersion
)
CLUSTER_FEATURES = (
    "present",            # 1 if the board has this cluster
    "capacity",           # kernel capacity / 1024
    "cur_freq",           # current frequency / cluster top frequency
    "required_freq",      # frequency needed to meet the head's deadline here / top, /1.5, <=1
    "transition",         # tanh(transition latency / head service time at top speed)
    "efficient_freq",     # frequency of the least energy per cycle on this cluster / top
    "cost_ratio",         # least energy per cycle anywhere on the board / least on this cluster
    "cap_freq",           # the thermal cap's frequency / top (1 when not capped or unknown)
    "safe_freq",          # frequency of the least-energy safe option here / top; 1 if none safe
    "safe_energy",        # least safe energy on the board / least safe energy here; 0 if none
)
OBS_DIM = len(GLOBAL_FEATURES) + MAX_CLUSTERS * len(CLUSTER_FEATURES)
OBS_LOW = np.array([0, 0, -1, 0, 0, -1, 0, 0, 0, -1, -1] + [0] * len(CLUSTER_FEATURES) * MAX_CLUSTERS,
                   dtype=np.float32)
OBS_HIGH = np.ones(OBS_DIM, dtype=np.float32)


class Decision(NamedTuple):
    """What a policy chose: a cluster index and an OPP index in that cluster's table."""

    cluster: int
    opp: int


class SafeActions(NamedTuple):
    """The safe set of one decision (:class:`edgesched.policy.safe.SafeSet` builds it)."""

    mask: np.ndarray
    """int8 over the ``N_ACTIONS`` actions: 1 for an action of the board whose run keeps every
    bound (the fastest ones when none does); always a subset of ``BoardView.mask``, never empty."""
    freq: tuple[float, ...]
    """Per cluster of the board, the ``safe_freq`` feature."""
    energy: tuple[float, ...]
    """Per cluster of the board, the ``safe_energy`` feature."""
    best: int
    """The safe action of the least energy (ties to the shorter run): ``slack``'s choice, to the
    resolution of the action levels (the imitation target of training's warm start)."""


_ABSENT = (0.0,) * len(CLUSTER_FEATURES)


def _energy_per_cycle(c: Cluster, opp: int) -> float:
    """Busy power (one CPU) over reference speed: energy per reference cycle, up to a constant."""
    return c.busy_power_uw(opp) / c.speed_mhz(opp)


def _efficient_opp(c: Cluster) -> int:
    """The OPP with the least energy per cycle (the energy-efficient critical speed)."""
    return min(range(len(c.opps)), key=lambda o: _energy_per_cycle(c, o))


@dataclass(frozen=True)
class BoardView:
    """Per-board constants the builder and decoder need, computed once per profile."""

    profile: DeviceProfile
    n_clusters: int
    capacity: tuple[float, ...]
    max_khz: tuple[int, ...]
    speed_top_mhz: tuple[float, ...]
    transition_s: tuple[float, ...]
    level_to_opp: tuple[tuple[int, ...], ...]
    mask: np.ndarray
    mem_scale: float
    freq_frac: tuple[tuple[float, ...], ...]
    decoded: tuple[Decision, ...]
    efficient_frac: tuple[float, ...]
    cost_ratio: tuple[float, ...]
    work_cache: dict[int, tuple[Work, _WorkConstants]] = field(
        default_factory=dict, compare=False, repr=False)
    """Per-``Work`` constants of the observation, keyed by ``id(work)``."""

    @classmethod
    def of(cls, profile: DeviceProfile) -> BoardView:
        n = len(profile.clusters)
        best = min(_energy_per_cycle(c, _efficient_opp(c)) for c in profile.clusters)
        level_to_opp: list[tuple[int, ...]] = []
        mask = np.zeros(N_ACTIONS, dtype=np.int8)
        # a row per cluster (every one of a board with more than MAX_CLUSTERS, for ``encode``);
        # the actions and their mask cover the first MAX_CLUSTERS only (see ``observable``)
        for ci in range(max(n, MAX_CLUSTERS)):
            c = profile.clusters[ci if ci < n else 0]
            row = tuple(c.opp_index_at_least((lv + 1) / LEVELS * c.max_khz - 1e-6)
                        for lv in range(LEVELS))
            level_to_opp.append(row)
            if ci < n and ci < MAX_CLUSTERS:
                seen: set[int] = set()
                for lv, opp in enumerate(row):
                    if opp not in seen:
                        mask[ci * LEVELS + lv] = 1
                        seen.add(opp)
        return cls(
            profile=profile, n_clusters=n,
            capacity=tuple(profile.capacity(i) / 1024.0 for i in range(n)),
            max_khz=tuple(c.max_khz for c in profile.clusters),
            speed_top_mhz=tuple(c.speed_mhz(len(c.opps) - 1) for c in profile.clusters),
            transition_s=tuple(c.transition_latency_ns * 1e-9 for c in profile.clusters),
            level_to_opp=tuple(level_to_opp), mask=mask, mem_scale=profile.mem_time_scale,
            freq_frac=tuple(tuple(o.khz / c.max_khz for o in c.opps) for c in profile.clusters),
            decoded=tuple(Decision(a // LEVELS if a // LEVELS < n else 0,
                                   level_to_opp[a // LEVELS][a % LEVELS])
                          for a in range(N_ACTIONS)),
            efficient_frac=tuple(c.opps[_efficient_opp(c)].khz / c.max_khz
                                 for c in profile.clusters),
            cost_ratio=tuple(best / _energy_per_cycle(c, _efficient_opp(c)) for c in profile.clusters))

    def decode(self, action: int) -> Decision:
        """Action index to (cluster, OPP index); total over 0..N_ACTIONS-1."""
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action {a} outside 0..{N_ACTIONS - 1}")
        return self.decoded[a]

    def encode(self, decision: Decision) -> int:
        """The lowest unmasked action that decodes to ``decision`` (or the nearest level above)."""
        row = self.level_to_opp[decision.cluster]
        for lv, opp in enumerate(row):
            if opp >= decision.opp:
                return decision.cluster * LEVELS + lv
        return decision.cluster * LEVELS + LEVELS - 1



def action_map_id() -> str:
    """A stable description of the action encoding (not of any board)."""
    return f"cluster*{LEVELS}+level;level->lowest opp >= (level+1)/{LEVELS}*fmax;clusters<={MAX_CLUSTERS}"


def observable(profile: DeviceProfile) -> bool:
    """Whether the observation shows every cluster of ``profile`` (at most ``MAX_CLUSTERS``).

    Profiles may have more clusters (up to ``edgesched.device.MAX_PROFILE_CLUSTERS``): the kernel
    baselines, ``slack`` and the oracle run on any of them; the policies that read this
    observation (``learned:...``, ``qlearn``) and the training environment do not.
    """
    return len(profile.clusters) <= MAX_CLUSTERS


def check_observable(profile: DeviceProfile, policy: str) -> None:
    """Refuse ``policy`` (a policy that reads this observation) on a board it cannot see whole.

    Raises :class:`~edgesched.errors.PolicyMismatchError` naming the board's cluster count, the
    observation's, and what runs there instead.
    """
    if observable(profile):
        return
    raise PolicyMismatchError(
        f"{policy} cannot run on board {profile.name!r}: it has {len(profile.clusters)} clusters "
        f"(DVFS domains) but the policy's observation (version {OBS_VERSION}) shows at most "
        f"{MAX_CLUSTERS}; on this board use a kernel baseline (schedutil, schedutil-big, "
        "performance, powersave, ondemand, conservative) or slack")


def check_policy_board(policy: object, profile: DeviceProfile) -> None:
    """:func:`check_observable` for a policy object that reads the observation (one with an
    ``observation_clusters`` attribute); any other policy runs on any board."""
    if getattr(policy, "observation_clusters", None) is not None:
        check_observable(profile, f"policy {getattr(policy, 'name', type(policy).__name__)!r}")


class Waiting(NamedTuple):
    """A request still queued behind the head, as :attr:`DecisionContext.waiting_in_order` gives it."""

    deadline_s: float
    service_ms: float
    """Estimated service time at the board's top speed (``Entry.service_ms``)."""
    priority: int
    """Current (aged) class, 1 = highest."""


def waiting_of(entries: Iterable[Entry]) -> tuple[Waiting, ...]:
    """Compact, immutable copies of queue entries (in the order given)."""
    return tuple(Waiting(e.deadline_s, e.service_ms, e.cls + 1) for e in entries)


def _nothing_waiting() -> Sequence[Waiting]:
    return ()


@dataclass(slots=True)
class DecisionContext:
    """Everything a policy may look at when the next request is about to run.

    Filled by the simulator's engine and by the daemon's dispatcher alike.
    """

    now_s: float
    head_priority: int
    head_deadline_s: float
    head_work: Work
    levels: int
    queue_len: int
    urgent_waiting: int
    backlog_ms: float
    earliest_deadline_s: float
    cur_opp: list[int]
    arrival_rate_hz: float
    utilisation: float
    util_by_cluster: list[float]
    """PELT-style utilisation per cluster in [0, 1] (frequency- and capacity-invariant)."""
    busy_fraction_by_cluster: list[float]
    """Busy fraction per cluster over the last governor sampling window."""
    urgent_timeout_s: float = math.inf
    """The shortest timeout (deadline minus arrival) of the priority-1 requests that arrived in
    the last ``URGENT_WINDOW_S`` seconds; inf when none did. Not part of the observation vector:
    the learned policies' shield keeps a lower-priority run short enough that a priority-1
    request arriving just after it started still meets its deadline."""
    head_enqueued_s: float = -math.inf
    """When the head arrived (on the clock of ``now_s``); -inf when unknown. Not part of the
    observation vector."""
    waiting_in_order: Callable[[], Sequence[Waiting]] = _nothing_waiting
    """The requests queued behind the head, in the order the queue would serve them now
    (priority class, then earliest deadline; later aging not foreseen). Computed when called,
    so that building a context stays cheap for policies that never look; call it during
    ``decide`` only. Not part of the observation vector."""
    entries_in_order: Callable[[], Sequence[Entry]] | None = None
    """The same requests in the same order as the queue's own entries, uncopied (their
    ``deadline_s`` and ``service_ms`` are those of ``waiting_in_order``; their ``priority`` is
    the class they arrived in, not the aged one): cheaper for the bounds that need deadlines and
    service times only (``slack``'s queue bound). None when the context's owner cannot hand them
    out safely (the daemon copies under its lock): ``waiting_in_order`` is used instead. Not part
    of the observation vector."""
    task_util: float = 0.0
    """PELT util_avg of the task that runs inferences, in [0, 1] (frequency- and capacity-
    invariant; ``edgesched.utilisation.TaskUtil``). Not part of the observation vector."""
    task_util_est: float = 0.0
    """That task's util_est (the kernel's EWMA, updated when it sleeps), in [0, 1]."""
    task_cluster: int = -1
    """The cluster the task last ran on (the kernel's ``prev_cpu``); -1 when unknown."""
    task_woken: bool = True
    """True when the task slept since its last run, so this request is a wake-up (where the
    kernel places tasks); False when it kept running from the previous request."""
    temp_c: float = math.nan
    """The board's thermal-zone temperature in C (:mod:`edgesched.thermal`); nan when the board
    has no heat model or sensor."""
    cap_opp: Sequence[int] | None = None
    """Per cluster, the highest OPP index the thermal throttling allows now (the top OPP when not
    throttled); None when unknown (no cap)."""
    trip_c: float = math.inf
    """The lowest passive trip point in C (where the kernel starts to throttle); inf when
    unknown."""
    arrival_dispersion: float = 1.0
    """The index of dispersion of the recent arrival counts (:class:`edgesched.utilisation.
    BurstMeter`): about 1 for Poisson arrivals, far above for bursts."""


def run_limit_s(ctx: DecisionContext) -> float:
    """How long the head's run (frequency switch included) should take at most: its own time to
    deadline for a priority-1 request; for a lower-priority one ``BLOCKING_SHARE`` of the
    shortest recent priority-1 timeout, since a run cannot be interrupted and a priority-1
    request arriving just after it started would wait for it. inf when nothing limits it.

    Policies keep their choice within the limit when some action can, and take the fastest
    action when none can (the learned policies' shield and ``slack`` alike)."""
    if ctx.head_priority == 1:
        return ctx.head_deadline_s - ctx.now_s
    return ctx.urgent_timeout_s * BLOCKING_SHARE


def run_time_s(view: BoardView, ctx: DecisionContext, decision: Decision) -> float:
    """The head's run at ``decision`` by the profile's latency model, with the cluster's
    transition latency when the OPP changes."""
    c, o = decision
    switch_s = view.transition_s[c] if o != ctx.cur_opp[c] else 0.0
    return view.profile.latency_ms(ctx.head_work, c, o) / 1000.0 + switch_s


class _WorkConstants(NamedTuple):
    """What the observation needs of one ``Work`` on one board, computed once."""

    top_ms: float
    """Service time at the board's top speed (the unit of slack and backlog)."""
    mem_ms: float
    mem_fraction: float
    compute_ms: tuple[float, ...]
    """Compute time at each cluster's top OPP."""
    transition: tuple[float, ...]
    """The ``transition`` feature of each cluster."""
    shown: tuple[tuple[float, float, float, float, float, tuple[float, ...], int], ...]
    """Per cluster the observation shows: its compute time at the top OPP, ``capacity``,
    ``transition``, ``efficient_freq``, ``cost_ratio``, its frequencies as fractions of the top
    (``BoardView.freq_frac``) and its top OPP index."""


_WORK_CACHE_SIZE = 4096


def _work_constants(view: BoardView, work: Work) -> _WorkConstants:
    """The constants of ``work`` on ``view``, cached by object identity (hashing a ``Work``
    costs more than the lookup saves; the cache keeps each ``Work`` it holds alive, so an id
    cannot be reused while cached)."""
    hit = view.work_cache.get(id(work))
    if hit is not None and hit[0] is work:
        return hit[1]
    threads = max(1, work.threads)
    mem_ms = work.mem_ms * view.mem_scale
    compute = tuple(work.compute_mcycles * 1000.0 / (s * threads) for s in view.speed_top_mhz)
    top_ms = max(min(compute) + mem_ms, 1e-6)
    transition = tuple(tanh(t * 1000.0 / top_ms) for t in view.transition_s)
    n_shown = min(view.n_clusters, MAX_CLUSTERS)
    shown = tuple((compute[ci], view.capacity[ci], transition[ci], view.efficient_frac[ci],
                   view.cost_ratio[ci], view.freq_frac[ci], len(view.freq_frac[ci]) - 1)
                  for ci in range(n_shown))
    consts = _WorkConstants(top_ms, mem_ms, mem_ms / top_ms, compute, transition, shown)
    if len(view.work_cache) < _WORK_CACHE_SIZE:
        view.work_cache[id(work)] = (work, consts)
    return consts


def thermal_headroom(temp_c: float, trip_c: float) -> float:
    """The ``thermal_headroom`` feature: tanh((trip - temperature) / 10 C), 1 when either is
    unknown (nan or inf)."""
    if math.isfinite(temp_c) and math.isfinite(trip_c):
        return tanh((trip_c - temp_c) * 0.1)
    return 1.0


def build_observation(view: BoardView, ctx: DecisionContext,
                      safe: SafeActions | None = None) -> np.ndarray:
    """The observation vector (float32, ``OBS_DIM`` long) for ``ctx`` on the board ``view``.

    ``safe`` is the decision's safe set (:meth:`edgesched.policy.safe.SafeSet.compute`); without
    it the safe features read as if every cluster's lowest OPP were safe and equally cheap
    (for policies that do not use the safe set, such as ``qlearn``).

    Every feature is bounded by construction (ratios n/(n+4), tanh, clipped fractions), so the
    vector always lies inside ``[OBS_LOW, OBS_HIGH]``.
    """
    now = ctx.now_s
    n = ctx.queue_len
    u = ctx.urgent_waiting
    util = ctx.utilisation
    levels = ctx.levels
    backlog_ms = ctx.backlog_ms
    earliest_deadline_s = ctx.earliest_deadline_s
    temp_c = ctx.temp_c
    trip_c = ctx.trip_c
    work = ctx.head_work
    disp = ctx.arrival_dispersion
    if not 0.0 <= disp < 1e12:  # nan, negative or unbounded: read as Poisson or as 1
        disp = 1.0 if not disp > 0.0 else 1e12
    hit = view.work_cache.get(id(work))  # _work_constants' cache, looked up here (hot path)
    wc = hit[1] if hit is not None and hit[0] is work else _work_constants(view, work)
    top_ms = wc.top_ms
    slack_ms = (ctx.head_deadline_s - now) * 1000.0
    finite_slack = slack_ms != math.inf
    priority = (ctx.head_priority - 1) / (levels - 1 if levels > 1 else 1)
    feats = [
        n / (n + 4.0),
        priority if priority < 1.0 else 1.0,
        tanh(slack_ms / top_ms * 0.25) if finite_slack else 1.0,
        wc.mem_fraction,
        tanh(backlog_ms / top_ms * 0.125),
        (tanh((earliest_deadline_s - now) * 1000.0 / (top_ms + backlog_ms) * 0.25)
         if earliest_deadline_s != math.inf else 1.0),
        u / (u + 4.0),
        tanh(ctx.arrival_rate_hz * top_ms * 0.001),
        1.0 if util > 1.0 else (util if util > 0.0 else 0.0),
        # thermal_headroom(temp_c, trip_c), written out
        tanh((trip_c - temp_c) * 0.1) if isfinite(temp_c) and isfinite(trip_c) else 1.0,
        (disp - 1.0) / (disp + 3.0),
    ]
    room_ms = slack_ms - wc.mem_ms
    cur_opp = ctx.cur_opp
    cap = ctx.cap_opp
    safe_freq, safe_energy = ((), ()) if safe is None else (safe.freq, safe.energy)
    for ci, (compute_ms, capacity, transition, efficient, cost_ratio, frac, top) in enumerate(
            wc.shown):
        if not finite_slack:
            required = 0.0
        elif room_ms <= 0.0:
            required = 1.0
        else:
            required = compute_ms / room_ms / 1.5
            if required > 1.0:
                required = 1.0
        if cap is None:
            cap_freq = 1.0
        else:
            c = int(cap[ci])
            cap_freq = frac[top if top < c else c]  # min(c, top)
        if safe is None:
            feats += (1.0, capacity, frac[cur_opp[ci]], required, transition, efficient,
                      cost_ratio, cap_freq, frac[0], 1.0)
        else:
            feats += (1.0, capacity, frac[cur_opp[ci]], required, transition, efficient,
                      cost_ratio, cap_freq, safe_freq[ci], safe_energy[ci])
    # the same float32 rounding as np.array(feats, np.float32) (a C cast of each double), with
    # less than half the work: packed by struct into a zeroed array; the empty cluster slots'
    # features (``_ABSENT``, all 0.0) are its zeros
    out = _zeros(OBS_DIM, _FLOAT32)
    _PACK_SHOWN[len(wc.shown)](out, 0, *feats)
    return out


_FLOAT32 = np.dtype(np.float32)
_zeros = np.zeros
_PACK_SHOWN: tuple[Callable[..., None], ...] = tuple(
    struct.Struct(f"{len(GLOBAL_FEATURES) + k * len(CLUSTER_FEATURES)}f").pack_into
    for k in range(MAX_CLUSTERS + 1))
"""By clusters shown: ``pack_into`` of the global features and those clusters' features (into
an array: a writable buffer)."""
if any(_ABSENT):  # the empty slots are left as zeros
    raise AssertionError("the features of an empty cluster slot must be 0.0")
