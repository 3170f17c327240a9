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
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from edgesched.observation import LEVELS, N_ACTIONS, BoardView, DecisionContext, SafeActions
from edgesched.policy.slack import Cost, Plan, SlackPolicy

__all__ = ["Pairs", "SafeSet", "action_costs", "board_actions", "safe_actions"]


class SafeSet:
    """Builds :class:`~edgesched.observation.SafeActions` per decision; holds the bounds' state
    (recent timeouts by class, the mean service time), so one instance serves one run.

    The safe set depends on the plan's bounds only through which options keep them, so it is
    cached per priced options (:meth:`SlackPolicy.plan <edgesched.policy.slack.SlackPolicy.plan>`
    caches those per work, OPPs and cap) and per set of the options that keep the bounds (found
    from where the two bounds fall among the options' sorted run and hand-off times): the same
    :class:`~edgesched.observation.SafeActions` object serves every decision that keeps the same
    options, its mask read-only."""

    def __init__(self) -> None:
        self.bounds = SlackPolicy()
        self._view: BoardView | None = None
        self._actions: tuple[tuple[int, int, int], ...] = ()
        self._tables: dict[int, _Table] = {}

    def reset(self, view: BoardView) -> None:
        """A new run on ``view``'s board: the bounds' state starts afresh (the caches, which
        depend on the board only, are kept while the board is the same)."""
        self.bounds.reset(view)
        if view is not self._view:
            self._view = view
            self._actions = board_actions(view)
            self._tables = {}

    def compute(self, view: BoardView, ctx: DecisionContext) -> SafeActions:
        """The safe set of the decision ``ctx`` describes (call once per decision)."""
        if view is not self._view:
            self.reset(view)
        costs, fastest, limit_s, handoff_limit_s = self.bounds.plan_fields(view, ctx)
        # the plan's costs are cached by the bounds for the same work, OPPs and cap: so are
        # the actions' pairing with them and the safe sets they give
        table = self._tables.get(id(costs))
        if table is None or table.costs is not costs:
            table = _Table(costs, action_costs(self._actions, costs, ctx.cap_opp))
            if len(self._tables) >= _CACHE_SIZE:
                self._tables.clear()
            self._tables[id(costs)] = table
            # many options serve one decision only (a generated board each episode): their
            # times are sorted when they serve a second
            plan = Plan(costs, fastest, limit_s, handoff_limit_s)
            return safe_actions(view, ctx, plan, self._actions, table.pairs)
        if not table.sorted:
            table.sort()
        if not table.sortable or limit_s != limit_s or handoff_limit_s != handoff_limit_s:
            plan = Plan(costs, fastest, limit_s, handoff_limit_s)  # nan: no order
            return safe_actions(view, ctx, plan, self._actions, table.pairs)
        # the pairs that keep the bounds, as bits: those whose run time is among the ones
        # within the run bound and whose hand-off time is among the ones within the other
        key = (table.run_bits[bisect_right(table.run_s, limit_s)]
               & table.handoff_bits[bisect_right(table.handoff_s, handoff_limit_s)])
        safe = table.safe.get(key)
        if safe is None:
            plan = Plan(costs, fastest, limit_s, handoff_limit_s)
            safe = safe_actions(view, ctx, plan, self._actions, table.pairs)
            safe.mask.flags.writeable = False  # shared by every decision of the same key
            table.safe[key] = safe
        return safe


_CACHE_SIZE = 4096


class _Table:
    """The actions paired with one plan's costs; their run and hand-off times sorted, with for
    each count of them the pairs (bit i: ``pairs[i]``) whose time is among the first that many;
    and the safe sets found so far by the pairs that keep the bounds."""

    __slots__ = ("costs", "handoff_bits", "handoff_s", "pairs", "run_bits", "run_s", "safe",
                 "sortable", "sorted")

    def __init__(self, costs: tuple[Cost, ...], pairs: Pairs) -> None:
        self.costs = costs
        self.pairs = pairs
        self.sorted = False
        self.sortable = False
        self.run_s: list[float] = []
        self.run_bits: list[int] = []
        self.handoff_s: list[float] = []
        self.handoff_bits: list[int] = []
        self.safe: dict[int, SafeActions] = {}

    def sort(self) -> None:
        """Sort the run and hand-off times and find their bits (see the class docstring)."""
        runs = [k.run_s for _, _, _, k in self.pairs]
        handoffs = [k.handoff_s for _, _, _, k in self.pairs]
        # no nan among them (a sum is nan for inf - inf too: then no caching, still correct)
        self.sortable = not math.isnan(sum(runs) + sum(handoffs))
        self.run_s, self.run_bits = _within(runs)
        self.handoff_s, self.handoff_bits = _within(handoffs)
        self.sorted = True


def _within(times: list[float]) -> tuple[list[float], list[int]]:
    """``times`` sorted, and for n = 0..len(times) the bits of the times at most the n-th
    smallest (none for 0): those within a bound when ``bisect_right`` of it in the sorted
    times is n."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ordered = [times[i] for i in order]
    bits = [0]
    for i in order:
        bits.append(bits[-1] | 1 << i)
    for n in range(len(ordered) - 1, 0, -1):  # ties: the n-th smallest equals the next one
        if ordered[n - 1] == ordered[n]:
            bits[n] = bits[n + 1]
    return ordered, bits


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
