"""The one interface every policy implements, in the simulator and in the daemon alike.

A policy is asked for a :class:`~edgesched.observation.Decision` when a request is about to run
(``decide``). Policies that imitate kernel governors also re-evaluate periodically (``tick_s`` > 0):
the caller then calls ``tick`` for each cluster every ``tick_s`` while the board runs, with the
cluster's PELT utilisation and busy fraction, and applies the OPP it returns.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from edgesched.observation import BoardView, Decision, DecisionContext


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


class Performance(StaticPolicy):
    """Top OPP of the fastest cluster (the kernel's ``performance`` governor)."""

    name = "performance"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        ci = view.profile.fastest_cluster
        return Decision(ci, len(view.profile.clusters[ci].opps) - 1)


class Powersave(StaticPolicy):
    """Lowest OPP of the cluster the baselines run on (the kernel's ``powersave`` governor)."""

    name = "powersave"

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        return Decision(view.profile.fastest_cluster, 0)
