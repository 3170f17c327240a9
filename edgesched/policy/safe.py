"""The safe set of a decision: the actions whose run keeps every bound of ``slack``.

The learned policies choose among these actions only, in training (the environment's action
mask, :mod:`edgesched_sim.env`) and at run time (:class:`~edgesched.policy.learned.LearnedPolicy`)
alike, and the observation (version 2) shows per cluster the least-energy safe option. The
bounds are those of :class:`~edgesched.policy.slack.SlackPolicy` (the head's deadline, the queue
behind it, the priority-1 and class blocking limits, the load bound), priced by the board's
latency and power models. So a learned policy never runs slower than the analytic baseline
would allow; what it learns is where to run faster or on another cluster than the least-energy
safe choice, for the arrivals it cannot see.

An action above the thermal cap runs at the cap (the kernel's cooling device clamps the
frequency): it is judged at the capped OPP. When no option keeps the bounds, the safe set is the
actions that run the fastest option (least run time, ties to less energy), as ``slack`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgesched.observation import LEVELS, N_ACTIONS, BoardView, DecisionContext, SafeActions
from edgesched.policy.slack import Cost, Plan, SlackPolicy

__all__ = ["Pairs", "SafeSet", "action_costs", "board_actions", "safe_actions"]


class SafeSet:
    """Builds :class:`~edgesched.observation.SafeActions` per decision; holds the bounds' state
    (recent timeouts by class, the mean service time), so one instance serves one run."""

    def __init__(self) -> None:
        self.bounds = SlackPolicy()
        self._view: BoardView | None = None
        self._actions: tuple[tuple[int, int, int], ...] = ()
        self._pairs: dict[int, tuple[tuple[Cost, ...], Pairs]] = {}

    def reset(self, view: BoardView) -> None:
        self.bounds.reset(view)
        self._view = view
        self._actions = board_actions(view)
        self._pairs = {}

    def compute(self, view: BoardView, ctx: DecisionContext) -> SafeActions:
        """The safe set of the decision ``ctx`` describes (call once per decision)."""
        if view is not self._view:
            self.reset(view)
        plan = self.bounds.plan(view, ctx)
        # the plan's costs are cached by the bounds for the same work, OPPs and cap: so are
        # the actions' pairing with them
        hit = self._pairs.get(id(plan.costs))
        if hit is not None and hit[0] is plan.costs:
            pairs = hit[1]
        else:
            pairs = action_costs(self._actions, plan.costs, ctx.cap_opp)
            if len(self._pairs) >= 4096:
                self._pairs.clear()
            self._pairs[id(plan.costs)] = (plan.costs, pairs)
        return safe_actions(view, ctx, plan, self._actions, pairs)


Pairs = tuple[tuple[int, int, int, Cost], ...]
"""(action, cluster, OPP it runs at under the cap, its cost) for every action of the board."""


def action_costs(actions: tuple[tuple[int, int, int], ...], costs: tuple[Cost, ...],
                 cap: Sequence[int] | None) -> Pairs:
    """Each action of ``actions`` with the cost of the option it runs (at the cap when above)."""
    by_option = {(k.cluster, k.opp): k for k in costs}
    out = []
    for a, c, o in actions:
        if cap is not None and o > cap[c]:
            o = cap[c]
        k = by_option.get((c, o))
        if k is not None:
            out.append((a, c, o, k))
    return tuple(out)


def board_actions(view: BoardView) -> tuple[tuple[int, int, int], ...]:
    """(action, cluster, OPP) of every unmasked action of ``view``'s board."""
    return tuple((int(a), *view.decoded[int(a)]) for a in np.flatnonzero(view.mask))


def safe_actions(view: BoardView, ctx: DecisionContext, plan: Plan,
                 actions: tuple[tuple[int, int, int], ...] | None = None,
                 pairs: Pairs | None = None) -> SafeActions:
    """The safe set of ``plan`` on ``view`` (see the module docstring); ``actions`` is
    :func:`board_actions` of the view and ``pairs`` :func:`action_costs` of them with the
    plan's costs (each computed when not given)."""
    if actions is None:
        actions = board_actions(view)
    cap = ctx.cap_opp
    if pairs is None:
        pairs = action_costs(actions, plan.costs, cap)
    n = view.n_clusters
    limit_s, handoff_limit_s = plan.limit_s, plan.handoff_limit_s
    mask = np.zeros(N_ACTIONS, dtype=np.int8)
    best_j = [math.inf] * n
    best_freq = [1.0] * n
    fastest = plan.fastest
    best_action, best_key = -1, (math.inf, math.inf)
    for a, c, o, k in pairs:
        if k.run_s <= limit_s and k.handoff_s <= handoff_limit_s:
            mask[a] = 1
            e = k.energy_j
            if e < best_j[c]:
                best_j[c] = e
                best_freq[c] = view.freq_frac[c][o]
            if (e, k.run_s) < best_key:
                best_action, best_key = a, (e, k.run_s)
    if best_action < 0:
        # nothing keeps the bounds: the actions that run the fastest option (or, when its OPP
        # is between two levels, the lowest level above it on its cluster)
        fc, fo = fastest.cluster, fastest.opp
        for a, c, o in actions:
            if cap is not None and o > cap[c]:
                o = cap[c]
            if c == fc and o == fo:
                mask[a] = 1
                if best_action < 0:
                    best_action = a
        if best_action < 0:
            row = view.level_to_opp[fc]
            lv = next((i for i, o in enumerate(row) if o >= fo), LEVELS - 1)
            best_action = fc * LEVELS + lv
            mask[best_action] = 1
        best_j[fc] = fastest.energy_j
        best_freq[fc] = view.freq_frac[fc][fo]
    least = min(best_j)
    energy = tuple(0.0 if j == math.inf else (least / j if j > 0 else 1.0) for j in best_j)
    return SafeActions(mask, tuple(best_freq), energy, best_action)
