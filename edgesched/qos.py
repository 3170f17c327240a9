"""Per-class miss budgets and the run-time guard that keeps each class inside its budget.

A **miss budget** states what share of a priority class's requests may miss their deadline
(late, expired in the queue, shed or rejected). Defaults: priority 1 0.1 %, priority 2 1 %,
priority 3 (and every lower class) 5 %. The daemon reads them from ``[qos.miss_budget]`` in its
config file, a scenario from its own ``[qos.miss_budget]`` table (keys ``p1``, ``p2``, ``p3``,
fractions in [0, 1)).

The **guard** (:class:`QosGuard`) is one object used alike by the simulator's engine
(:meth:`edgesched_sim.engine.Engine.run`) and the daemon's dispatcher: both report each
request's outcome to :meth:`QosGuard.record` and pass each decision of a guarded policy through
:meth:`QosGuard.adjust`. It keeps, per class, the outcomes of the class's most recent
``window_requests`` requests that are at most ``window_s`` old. When a class's recent miss rate
exceeds its budget, each further miss raises the class's level by one step; when the rate is
back inside the budget, the level falls by one step once ``hold_s`` has passed since the last
change. Level 1 is a speed floor of ``base_fraction`` of the board's top speed for that class's
requests and every lower class's (their runs cannot be preempted and delay it), the levels
above it spaced evenly up to the top speed at level ``steps``. A decision slower than the
floor moves to the lowest OPP of its own cluster that reaches it or, if that cluster cannot, to
the cheapest (energy per reference cycle) OPP on the board that does. The guard is a finite-state
counterpart of the kernel's ``uclamp_min`` (``uclamp_rq_util_with`` in kernel/sched/sched.h
raises the frequency request of a task's runqueue to the task's clamp); here the clamp is set
per class from its recent misses instead of by the user.

Only the learned policies and ``slack`` are guarded (their class attribute
``qos_guardable = True``); the kernel baselines stay pure models of the kernel.

Training treats the budgets as constraints with a Lagrangian method
(:class:`LagrangeMultipliers`): per class a multiplier ``lambda_k >= 0`` weighs the class's
misses in the reward (``reward = -energy - sum_k lambda_k * misses_k``) and is updated after each
rollout by projected gradient ascent on the constraint ``miss_rate_k <= budget_k``::

    lambda_k <- clip(lambda_k + lr * (miss_rate_k - budget_k) / budget_k, 0, max_lambda)

(the violation is relative to the budget, so a 0.1 % budget and a 5 % one move their multipliers
at comparable speeds; an episode inside its budget lowers the multiplier, by at most ``lr``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgesched.errors import ConfigError
from edgesched.observation import BoardView, Decision

DEFAULT_BUDGETS = {1: 0.001, 2: 0.01, 3: 0.05}
"""Default miss budgets by priority class (fractions): P1 0.1 %, P2 1 %, P3 5 %."""


@dataclass(frozen=True)
class MissBudget:
    """Share of each class's requests that may miss; classes below 3 use ``p3``."""

    p1: float = DEFAULT_BUDGETS[1]
    p2: float = DEFAULT_BUDGETS[2]
    p3: float = DEFAULT_BUDGETS[3]

    def of(self, priority: int) -> float:
        return self.p1 if priority <= 1 else self.p2 if priority == 2 else self.p3

    def as_dict(self) -> dict[str, float]:
        return {"1": self.p1, "2": self.p2, "3": self.p3}

    @classmethod
    def from_mapping(cls, table: Any, src: str) -> MissBudget:
        """A budget from a TOML table ``{p1 = ..., p2 = ..., p3 = ...}`` (missing keys keep their
        defaults); errors name ``src`` and say what is expected."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"{src}: [qos.miss_budget] must be a table such as "
                              "{p1 = 0.001, p2 = 0.01, p3 = 0.05}")
        values: dict[str, float] = {}
        for key, value in table.items():
            if key not in ("p1", "p2", "p3"):
                raise ConfigError(f"{src}: unknown key qos.miss_budget.{key!r} (known keys: p1, "
                                  "p2, p3: the share of each priority class that may miss)")
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not (0.0 <= value < 1.0)):
                raise ConfigError(f"{src}: qos.miss_budget.{key}: expected a fraction in [0, 1) "
                                  f"(0.001 = 0.1 %), got {value!r}")
            values[key] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class GuardConfig:
    """How the guard watches and reacts (see the module notes)."""

    window_requests: int = 200
    """Outcomes kept per class."""
    window_s: float = 60.0
    """Outcomes older than this are forgotten."""
    steps: int = 4
    """Levels above 0; the top one runs the class at the board's top speed."""
    base_fraction: float = 0.4
    """Speed floor of level 1 as a share of the board's top speed; the levels above it are
    spaced evenly up to the top speed."""
    hold_s: float = 2.0
    """Least time after any level change of a class before it relaxes one step."""

    def check(self, src: str = "qos") -> GuardConfig:
        if self.window_requests < 1:
            raise ConfigError(f"{src}: window_requests: expected an integer >= 1, got "
                              f"{self.window_requests!r}")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ConfigError(f"{src}: window_s: expected a finite number of seconds > 0, got "
                              f"{self.window_s!r}")
        if not 1 <= self.steps <= 20:
            raise ConfigError(f"{src}: steps: expected an integer in 1..20, got {self.steps!r}")
        if not 0.0 <= self.base_fraction <= 1.0:
            raise ConfigError(f"{src}: base_fraction: expected a fraction in [0, 1], got "
                              f"{self.base_fraction!r}")
        if not (self.hold_s >= 0 and math.isfinite(self.hold_s)):
            raise ConfigError(f"{src}: hold_s: expected a finite number of seconds >= 0, got "
                              f"{self.hold_s!r}")
        return self


@dataclass
class _ClassState:
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    misses: int = 0
    level: int = 0
    changed_s: float = -math.inf


class QosGuard:
    """Per-class miss tracking and speed floors (see the module notes). Times are the caller's
    clock (simulated seconds in the engine, the dispatcher's clock in the daemon)."""

    def __init__(self, budget: MissBudget | None = None, config: GuardConfig | None = None) -> None:
        self.budget = budget or MissBudget()
        self.config = (config or GuardConfig()).check()
        self._classes: dict[int, _ClassState] = {}
        self._view: BoardView | None = None
        self._speeds: list[list[float]] = []
        self._cost: list[list[float]] = []
        self._top_mhz = 0.0

    def reset(self) -> None:
        """Forget every outcome and level (a new run)."""
        self._classes.clear()

    def _state(self, priority: int) -> _ClassState:
        st = self._classes.get(priority)
        if st is None:
            st = self._classes[priority] = _ClassState()
        return st

    def _expire(self, st: _ClassState, now_s: float) -> None:
        horizon = now_s - self.config.window_s
        q = st.outcomes
        while q and (len(q) > self.config.window_requests or q[0][0] < horizon):
            _, missed = q.popleft()
            st.misses -= missed

    def miss_rate(self, priority: int, now_s: float) -> float:
        """The class's miss rate over its window (0 with no outcome)."""
        st = self._state(priority)
        self._expire(st, now_s)
        return st.misses / len(st.outcomes) if st.outcomes else 0.0

    def level(self, priority: int) -> int:
        return self._state(priority).level

    def record(self, priority: int, missed: bool, now_s: float) -> None:
        """One request of ``priority`` got its outcome at ``now_s``; moves the class's level."""
        st = self._state(priority)
        st.outcomes.append((now_s, bool(missed)))
        st.misses += bool(missed)
        self._expire(st, now_s)
        rate = st.misses / len(st.outcomes)
        if rate > self.budget.of(priority):
            if missed and st.level < self.config.steps:  # each new miss over budget: one step up
                st.level += 1
                st.changed_s = now_s
        elif st.level > 0 and now_s - st.changed_s >= self.config.hold_s:
            st.level -= 1
            st.changed_s = now_s

    def floor_fraction(self, level: int) -> float:
        """Speed floor of ``level`` as a share of the board's top speed (0 at level 0)."""
        if level <= 0:
            return 0.0
        cfg = self.config
        return cfg.base_fraction + (1.0 - cfg.base_fraction) * (level - 1) / max(1, cfg.steps - 1)

    def floor_mhz(self, view: BoardView, priority: int) -> float:
        """The class's speed floor in reference MHz (0 at level 0)."""
        return view.profile.max_speed_mhz * self.floor_fraction(self._state(priority).level)

    def _prepare(self, view: BoardView) -> None:
        prof = view.profile
        self._speeds = [[c.speed_mhz(o) for o in range(len(c.opps))] for c in prof.clusters]
        self._cost = [[c.busy_power_uw(o) / c.speed_mhz(o) for o in range(len(c.opps))]
                      for c in prof.clusters]
        self._top_mhz = prof.max_speed_mhz
        self._view = view

    def effective_level(self, priority: int) -> int:
        """The level applied to a request of ``priority``: the highest level of its own class and
        of every higher class (a run cannot be preempted, so a slow lower-class run delays the
        higher classes that arrive during it)."""
        return max((st.level for p, st in self._classes.items() if p <= priority), default=0)

    def adjust(self, view: BoardView, priority: int, decision: Decision) -> Decision:
        """``decision`` raised to the speed floor of :meth:`effective_level` (unchanged at 0)."""
        lv = self.effective_level(priority)
        if lv == 0:
            return decision
        if self._view is not view:
            self._prepare(view)
        floor = self._top_mhz * self.floor_fraction(lv) - 1e-9
        c, o = decision
        speeds = self._speeds[c]
        if speeds[o] >= floor:
            return decision
        for i in range(o + 1, len(speeds)):
            if speeds[i] >= floor:
                return Decision(c, i)
        best: Decision | None = None
        best_cost = math.inf
        for ci, row in enumerate(self._speeds):
            for oi, s in enumerate(row):
                if s >= floor and self._cost[ci][oi] < best_cost:
                    best, best_cost = Decision(ci, oi), self._cost[ci][oi]
        return best if best is not None else decision

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """Per class: budget, recent miss rate, level (for status and reports)."""
        return {str(p): {"budget": self.budget.of(p), "recent_miss_rate": self.miss_rate(p, now_s),
                         "level": st.level, "steps": self.config.steps}
                for p, st in sorted(self._classes.items())}


def guardable(policy: object) -> bool:
    """Whether the guard applies to ``policy`` (learned policies and ``slack``)."""
    return bool(getattr(policy, "qos_guardable", False))


MISSED_OUTCOMES = frozenset({"late", "deadline_missed", "shed", "rejected"})
"""The daemon's outcome names that count as a miss."""


@dataclass
class LagrangeMultipliers:
    """Per-class multipliers of the miss-budget constraints (see the module notes)."""

    budget: MissBudget = field(default_factory=MissBudget)
    lr: float = 0.5
    max_lambda: float = 500.0
    min_budget: float = 1e-4
    """Budgets below this divide as this (a 0 budget still gives a finite step)."""
    values: dict[int, float] = field(default_factory=lambda: {1: 50.0, 2: 2.0, 3: 0.5})
    """Start values: the fixed miss weights used before budgets existed."""

    def update(self, miss_rates: Mapping[int, float],
               targets: Mapping[int, float] | None = None) -> dict[int, float]:
        """One projected ascent step from the observed per-class miss rates; returns the new
        multipliers. Classes without an observed rate keep theirs. ``targets`` replaces the
        budget of the classes it names as the rate to stay under (e.g. a reference policy's miss
        rate on the same job sets); the step is still scaled by the class's budget."""
        for p, rate in miss_rates.items():
            b = self.budget.of(p)
            target = b if targets is None or p not in targets else float(targets[p])
            step = self.lr * (float(rate) - target) / max(b, target, self.min_budget)
            cur = self.values.get(p, 0.0)
            self.values[p] = min(self.max_lambda, max(0.0, cur + step))
        return dict(self.values)


__all__ = ["DEFAULT_BUDGETS", "MISSED_OUTCOMES", "GuardConfig", "LagrangeMultipliers",
           "MissBudget", "QosGuard", "guardable"]
