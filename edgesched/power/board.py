"""What the daemon's dispatcher needs from a board, behind one narrow interface.

Implementations: a board driven through cpufreq sysfs (real or fake root) and the virtual board
(a sysfs tree the daemon owns plus the profile's latency and power models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edgesched.device import DeviceProfile
from edgesched.observation import BoardView, Decision


@dataclass(frozen=True)
class RunCost:
    """What one inference cost on the board."""

    wall_s: float
    """Service time the request is charged (the virtual board's emulated time)."""
    energy_j: float
    """Energy attributed to the inference (dynamic + static of the cluster it ran on)."""
    cluster: int | None = None
    opp: int | None = None
    """Where the run happened, when the board rather than the decision chose it (a hands-off
    board leaves frequency and placement to the kernel); None: as decided."""


class Board(Protocol):
    profile: DeviceProfile
    view: BoardView
    host_scale: float
    """A model's service time at this board's top speed over its time on the host (1 on real
    boards and ``none``: the host is the board; a virtual board's ``slowdown``)."""

    def current_opps(self) -> list[int]:
        """OPP index each cluster runs at now."""

    def apply(self, decision: Decision) -> float:
        """Set ``decision.cluster`` to ``decision.opp``; returns the transition delay in seconds
        (0 when nothing changed). Failures are reported and the board falls back safely."""

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        """CPUs to pin the inference thread to for ``cluster`` (empty: no pinning)."""

    def longest_run_s(self, top_s: float) -> float:
        """The longest a run that takes ``top_s`` at the top speed can take on this board (at
        its slowest operating point, by the profile's latency model)."""

    def settle(self, decision: Decision, host_s: float, started_s: float, *,
               reference_s: float | None = None) -> RunCost:
        """Called after an inference that took ``host_s`` on the host; the virtual board waits
        until the emulated service time has passed since ``started_s`` and prices it.
        ``reference_s``: the model's usual host time; a virtual board emulates from it, so that
        a host slowed down by other work does not make the emulated board slower."""

    def close(self) -> None:
        """Give the board back: restore every setting changed."""
