"""``kernel``: the hands-off baseline, what a user has without edgesched.

On a real board (``sysfs:``) the daemon leaves governors and placement to the kernel: the board
is opened hands-off (:class:`edgesched.power.backends.HandsOffBoard`: no lease, no write to
cpufreq, no pinning) and this policy only measures: :meth:`KernelPolicy.measure_only` turns its
model off, each decision names the fastest cluster at the OPP last read, and the board reports
where the run really happened (the CPU the thread ended on, the frequency that policy's
``scaling_cur_freq`` showed).

Everywhere else (the virtual board, the simulator, ``edgesched eval``) there is no kernel to
leave things to, so ``kernel`` is the modelled stock kernel: whatever the ``schedutil`` spec
builds, under the name ``kernel``.
"""

from __future__ import annotations

from edgesched.observation import BoardView, Decision, DecisionContext
from edgesched.policy.base import Policy


class KernelPolicy:
    """The stock kernel: a model of it (``inner``), or, on a hands-off board, no model at all."""

    name = "kernel"
    hands_off = True
    """Asks the daemon to open a ``sysfs:`` board hands-off."""

    def __init__(self, inner: Policy) -> None:
        self.inner: Policy | None = inner
        self.tick_s: float = inner.tick_s

    @property
    def uses_task_util(self) -> bool:
        """The model's choice of utilisation signal (see :mod:`edgesched.policy.base`)."""
        return bool(getattr(self.inner, "uses_task_util", False))

    def measure_only(self) -> None:
        """The board leaves everything to the kernel: no model, no ticks."""
        self.inner = None
        self.tick_s = 0.0

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        if self.inner is not None:
            self.inner.reset(view, seed)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        if self.inner is not None:
            return self.inner.decide(view, ctx)
        ci = view.profile.fastest_cluster
        return Decision(ci, ctx.cur_opp[ci])

    def tick(self, view: BoardView, now_s: float, cluster: int, cur_opp: int, util: float,
             busy_fraction: float) -> int:
        if self.inner is None:
            return cur_opp
        return self.inner.tick(view, now_s, cluster, cur_opp, util, busy_fraction)
