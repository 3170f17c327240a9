"""The queue's and the bounds' one-call forms agree with the calls they stand for."""

from __future__ import annotations

import math
import random

import pytest

from edgesched.errors import QueueFullError
from edgesched.queue import Entry, RequestQueue
from edgesched.utilisation import RecentMin


@pytest.mark.parametrize("seed", range(5))
def test_pop_and_decision_stats_match_peek_and_the_single_reads(seed: int) -> None:
    rng = random.Random(seed)
    q = RequestQueue(levels=3, max_count=12, aging_s=0.05)
    now = 0.0
    next_id = 0
    popped = 0
    for _ in range(3000):
        now += rng.uniform(0.0, 0.01)
        op = rng.random()
        if op < 0.55:
            deadline = now + rng.uniform(0.0, 0.2) if rng.random() < 0.8 else math.inf
            entry = Entry(next_id, rng.randint(1, 3), deadline, 0.0, rng.randint(1, 100),
                          rng.uniform(1.0, 20.0))
            next_id += 1
            try:
                shed = q.push(entry, now)
            except QueueFullError:
                continue
            assert entry not in shed and entry.request_id in q
        elif op < 0.85:
            expected = q.peek(now)
            got = q.pop(now)
            assert got is expected
            if got is not None:
                popped += 1
                assert got.request_id not in q and not got.alive
        elif op < 0.95:
            for e in q.pop_expired(now):
                assert e.deadline_s < now and e.request_id not in q
        elif next_id:
            q.remove(rng.randrange(next_id))
        priority = rng.randint(0, 4)
        stats = q.decision_stats(priority)
        assert stats == (len(q), q.count_at_most(priority), q.backlog_ms,
                         q.earliest_deadline_s())
    assert popped > 100


def test_push_refuses_and_sheds_as_before_when_full() -> None:
    q = RequestQueue(levels=2, max_count=2, aging_s=10.0)
    q.push(Entry("a", 2, 1.0), 0.0)
    q.push(Entry("b", 2, 2.0), 0.0)
    shed = q.push(Entry("c", 1, 3.0), 0.0)
    assert [e.request_id for e in shed] == ["b"]
    with pytest.raises(QueueFullError):
        q.push(Entry("d", 2, 0.5), 0.0)
    assert [e.request_id for e in q.drain()] == ["c", "a"]


@pytest.mark.parametrize("seed", range(3))
def test_add_least_is_add_then_least(seed: int) -> None:
    rng = random.Random(seed)
    one = [RecentMin(0.5) for _ in range(3)]
    two = [RecentMin(0.5) for _ in range(3)]
    now = 0.0
    for _ in range(2000):
        now += rng.uniform(0.0, 0.05)
        k = rng.randint(1, 3)
        value = rng.uniform(0.0, 1.0)
        one[k - 1].add(now, value)
        expected = RecentMin.least(one, k, now)
        assert RecentMin.add_least(two, k, now, value) == expected
        assert [t.value(now) for t in one] == [t.value(now) for t in two]
