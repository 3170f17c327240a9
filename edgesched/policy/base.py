"""The one interface every policy implements, in the simulator and in the daemon alike.

A policy is asked for a :class:`~edgesched.observation.Decision` when a request is about to run
(``decide``). Policies that imitate kernel governors also re-evaluate periodically (``tick_s`` > 0):
the caller then calls ``tick`` for each cluster every ``tick_s`` while the board runs, with the
cluster's utilisation and busy fraction, and applies the OPP it returns.

The utilisation passed to ``tick`` is the cluster's own PELT signal
(:class:`~edgesched.utilisation.PeltTracker`) unless the policy has a true ``uses_task_util``
attribute: then it is the kernel's ``cpu_util_cfs_boost`` of the cluster from the inference task's
signals (:meth:`edgesched.utilisation.TaskUtil.cpu_util`: the task's util_avg on the cluster it
last ran on, raised to its util_est while it is enqueued). The simulator's engine and the
daemon's dispatcher both honour it.

The kernel baselines ``performance`` and ``powersave`` here place each request as the kernel
places the task on an asymmetric-capacity board without EAS (:mod:`edgesched.policy.eas`);
``performance-big`` and ``powersave-big`` always use the fastest cluster.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from edgesched.observation import BoardView, Decision, DecisionContext
from edgesched.policy.eas import EnergyModel
from edgesched.utilisation import SCHED_CAPACITY_SCALE


@runtime_checkable
class Policy(Protocol):
    name: str
    tick_s: float
    """0.0 for policies that decide only at dispatch; the sampling period otherwise."""

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        """Forget all state and get ready for ``view``'s board (called before each run)."""

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        """Cluster and OPP for the request at the head of the queue."""

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        """Periodic re-evaluation of one cluster; returns the OPP index it should run at."""


def kernel_util(fraction: float) -> int:
    """A utilisation in [0, 1] as the kernel's integer (0..1024)."""
    u = int(fraction * SCHED_CAPACITY_SCALE + 1e-9)
    return 0 if u < 0 else (SCHED_CAPACITY_SCALE if u > SCHED_CAPACITY_SCALE else u)


class KernelPlacement:
    """Where the kernel runs the inference task for the next request (:mod:`edgesched.policy.eas`),
    from the task's signals in the context. ``eas``: Energy Aware Scheduling is on (schedutil)."""

    def __init__(self, eas: bool) -> None:
        self.eas = eas
        self._view: BoardView | None = None
        self._em: EnergyModel | None = None

    def model(self, view: BoardView) -> EnergyModel:
        if self._view is not view or self._em is None:
            self._view = view
            self._em = EnergyModel.of(view.profile)
        return self._em

    def cluster(self, view: BoardView, ctx: DecisionContext) -> int:
        em = self.model(view)
        avg = kernel_util(ctx.task_util)
        est = max(avg, kernel_util(ctx.task_util_est))
        return em.place(ctx.task_cluster, avg, est, ctx.task_woken, self.eas)


class StaticPolicy:
    """Shared base of policies that never need ticks."""

    name = "static"
    tick_s = 0.0

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        del view, seed

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        del view, now_s, cluster, util, busy_fraction
        return cur_opp


class PerformanceBig(StaticPolicy):
    """Top OPP of the fastest cluster, whatever the task (the ``performance`` governor with the
    work pinned to the big cluster)."""

    name = "performance-big"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = view.profile.fastest_cluster
        return Decision(ci, len(view.profile.clusters[ci].opps) - 1)


class PowersaveBig(StaticPolicy):
    """Lowest OPP of the fastest cluster (the ``powersave`` governor, pinned to big)."""

    name = "powersave-big"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        return Decision(view.profile.fastest_cluster, 0)


class Performance(StaticPolicy):
    """The kernel's ``performance`` governor (every cluster at its top OPP) with the kernel's
    capacity-aware placement without EAS (``select_idle_capacity``, misfit balancing)."""

    name = "performance"

    def __init__(self) -> None:
        self.placement = KernelPlacement(eas=False)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = self.placement.cluster(view, ctx)
        return Decision(ci, len(view.profile.clusters[ci].opps) - 1)


class Powersave(StaticPolicy):
    """The kernel's ``powersave`` governor (every cluster at its lowest OPP) with the kernel's
    capacity-aware placement without EAS. At the lowest OPP the task's frequency-invariant
    utilisation stays small, so it keeps fitting the cluster it starts on."""

    name = "powersave"

    def __init__(self) -> None:
        self.placement = KernelPlacement(eas=False)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        return Decision(self.placement.cluster(view, ctx), 0)
