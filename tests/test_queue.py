"""The shared RequestQueue: a Hypothesis state machine checks priority order, EDF inside a class,
aging, the bounds and exactly one outcome per request; plus a few direct cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgesched.errors import QueueFullError
from edgesched.queue import Entry, RequestQueue

LEVELS = 3
AGING_S = 1.0
MAX_COUNT = 6
MAX_BYTES = 40


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.q = RequestQueue(levels=LEVELS, max_count=MAX_COUNT, max_bytes=MAX_BYTES,
                              aging_s=AGING_S)
        self.now = 0.0
        self.next_id = 0
        self.model: dict[int, tuple[int, float, float, int]] = {}  # id -> prio, dl, enq, size
        self.accepted: set[int] = set()
        self.outcomes: dict[int, str] = {}

    # effective class (0 = highest) of a modelled entry at the current time
    def cls(self, rid: int) -> int:
        prio, _, enq, _ = self.model[rid]
        return max(0, prio - 1 - math.floor((self.now - enq) / AGING_S))

    def settle(self, rid: int, how: str) -> None:
        assert rid in self.model, f"{rid} left the queue but was not in it"
        assert rid not in self.outcomes, f"{rid} got a second outcome ({how})"
        self.outcomes[rid] = how
        del self.model[rid]

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.75]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(prio=st.integers(1, LEVELS), rel_dl=st.sampled_from([0.5, 1.0, 2.0, 4.0, math.inf]),
          size=st.integers(0, 15))
    def push(self, prio: int, rel_dl: float, size: int) -> None:
        rid = self.next_id
        self.next_id += 1
        before = {r: self.cls(r) for r in self.model}
        entry = Entry(request_id=rid, priority=prio, deadline_s=self.now + rel_dl,
                      enqueued_s=self.now, size_bytes=size)
        try:
            shed = self.q.push(entry, self.now)
        except QueueFullError:
            # refused only when full and nothing strictly lower-class than the newcomer exists
            full = (len(self.model) + 1 > MAX_COUNT
                    or sum(m[3] for m in self.model.values()) + size > MAX_BYTES)
            assert full
            return
        for victim in shed:
            vid = victim.request_id
            assert before[vid] > prio - 1, "shed a request of the same or higher class"
            worst = max(before.values())
            assert before[vid] == worst, "shed someone other than the lowest class"
            same = [self.model[r][1] for r in self.model if before[r] == worst]
            assert self.model[vid][1] == max(same), "shed someone other than the latest deadline"
            self.settle(vid, "shed")
            del before[vid]
        self.model[rid] = (prio, self.now + rel_dl, self.now, size)
        self.accepted.add(rid)

    @precondition(lambda self: bool(self.model))
    @rule()
    def pop(self) -> None:
        e = self.q.pop(self.now)
        assert e is not None
        best = min((self.cls(r), self.model[r][1]) for r in self.model)
        assert (self.cls(e.request_id), self.model[e.request_id][1]) == best
        self.settle(e.request_id, "served")

    @rule()
    def pop_expired(self) -> None:
        out = self.q.pop_expired(self.now)
        expected = {r for r, m in self.model.items() if m[1] < self.now}
        assert {e.request_id for e in out} == expected
        for e in out:
            self.settle(e.request_id, "expired")

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.model)))
        e = self.q.remove(rid)
        assert e is not None and e.request_id == rid
        self.settle(rid, "removed")
        assert self.q.remove(rid) is None

    @rule()
    def peek_matches_pop_order(self) -> None:
        e = self.q.peek(self.now)
        if not self.model:
            assert e is None
        else:
            assert e is not None
            best = min((self.cls(r), self.model[r][1]) for r in self.model)
            assert (self.cls(e.request_id), self.model[e.request_id][1]) == best

    @invariant()
    def bounds_and_counts(self) -> None:
        assert len(self.q) == len(self.model) <= MAX_COUNT
        assert self.q.bytes == sum(m[3] for m in self.model.values()) <= MAX_BYTES
        counts = self.q.count_by_priority()
        if self.model:
            self.q.peek(self.now)  # applies aging up to now
            counts = self.q.count_by_priority()
            for k in range(LEVELS):
                assert counts[k + 1] == sum(1 for r in self.model if self.cls(r) == k)

    def teardown(self) -> None:
        for e in self.q.drain():
            self.settle(e.request_id, "drained")
        assert len(self.q) == 0
        assert set(self.outcomes) == self.accepted, "an accepted request got no outcome"


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_aging_lets_low_priority_overtake() -> None:
    q = RequestQueue(levels=3, aging_s=1.0)
    q.push(Entry("low", 3, deadline_s=100.0), now=0.0)
    q.push(Entry("high", 1, deadline_s=50.0), now=1.5)
    # at t=2.0 the low entry has waited 2 s: two classes up, class 1, earlier... but later deadline
    assert q.peek(2.0).request_id == "high"
    q.push(Entry("high2", 1, deadline_s=200.0), now=2.0)
    assert [q.pop(2.0).request_id for _ in range(3)] == ["high", "low", "high2"]


def test_refused_push_loses_nothing() -> None:
    q = RequestQueue(levels=2, max_count=2, aging_s=math.inf)
    q.push(Entry("a", 1, deadline_s=1.0), now=0.0)
    q.push(Entry("b", 1, deadline_s=2.0), now=0.0)
    with pytest.raises(QueueFullError, match="queue full"):
        q.push(Entry("c", 2, deadline_s=0.5), now=0.0)
    assert {e.request_id for e in q.drain()} == {"a", "b"}


def test_byte_bound_and_validation() -> None:
    q = RequestQueue(levels=3, max_bytes=100)
    with pytest.raises(QueueFullError, match="byte bound"):
        q.push(Entry("big", 1, deadline_s=1.0, size_bytes=101), now=0.0)
    with pytest.raises(ValueError, match="priority"):
        q.push(Entry("p", 4, deadline_s=1.0), now=0.0)
    q.push(Entry("x", 2, deadline_s=1.0, size_bytes=60), now=0.0)
    shed = q.push(Entry("y", 1, deadline_s=1.0, size_bytes=60), now=0.0)
    assert [e.request_id for e in shed] == ["x"]
    with pytest.raises(ValueError, match="already queued"):
        q.push(Entry("y", 1, deadline_s=1.0), now=0.0)
