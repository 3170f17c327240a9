"""The request queue shared by the daemon and the simulator.

- Priority classes: Triton's convention, 1 is the highest; ``levels`` classes in all.
- Earliest deadline first inside a class, first come first served among equal deadlines.
- Aging: an entry's effective class is ``max(1, priority - floor(wait / aging))``, so a waiting
  low-priority entry moves up one class every ``aging_s`` and cannot starve forever.
- Bounded by count and by bytes. A push over a bound either sheds the lowest-class entry with the
  latest deadline (when it is of a strictly lower class than the newcomer) and hands it back to the
  caller to answer, or raises :class:`QueueFullError`.
- No I/O and no clock of its own: every operation that depends on time takes ``now`` (seconds on
  whatever clock the caller uses, monotonic in the daemon, simulated time in the simulator).

Every pushed entry leaves exactly once: through ``pop``, ``pop_expired``, ``remove``, ``drain`` or
as a shed victim returned by ``push``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from edgesched.errors import QueueFullError


@dataclass(slots=True, eq=False)
class Entry:
    """One queued request. ``payload`` is the caller's (the daemon's future, the simulator's job)."""

    request_id: Any
    priority: int
    deadline_s: float
    enqueued_s: float = 0.0
    size_bytes: int = 0
    service_ms: float = 0.0
    """Estimated service time at the board's top speed (feeds the backlog observation)."""
    payload: Any = None
    cls: int = field(default=0, repr=False)
    seq: int = field(default=0, repr=False)
    next_promotion_s: float = field(default=math.inf, repr=False)
    alive: bool = field(default=False, repr=False)


_SERVICE_ORDER = attrgetter("cls", "deadline_s", "seq")
"""Sort key of the order ``pop`` serves entries in: class, then deadline, then arrival."""


class RequestQueue:
    """Priority classes, EDF inside a class, aging, bounded by count and bytes."""

    def __init__(self, levels: int = 3, max_count: int = 256, max_bytes: int = 64 << 20,
                 aging_s: float = 1.0, shed_lower: bool = True) -> None:
        if levels < 1:
            raise ValueError("levels must be >= 1")
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be >= 1")
        if not aging_s > 0:
            raise ValueError("aging_s must be > 0 (use math.inf to disable aging)")
        self.levels = levels
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.aging_s = aging_s
        self.shed_lower = shed_lower
        self._edf: list[list[tuple[float, int, Entry]]] = [[] for _ in range(levels)]
        self._promo: list[list[tuple[float, int, Entry]]] = [[] for _ in range(levels)]
        self._by_deadline: list[tuple[float, int, Entry]] = []
        self._by_id: dict[Any, Entry] = {}
        self._counts = [0] * levels
        self._seq = itertools.count()
        self._bytes = 0
        self._backlog_ms = 0.0
        self._stale = 0

    # --------------------------------------------------------------------------- introspection
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._by_id

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def backlog_ms(self) -> float:
        """Sum of the queued entries' estimated service times at top speed."""
        return self._backlog_ms if self._by_id else 0.0

    def count_by_priority(self) -> dict[int, int]:
        """Entries per current (aged) class, keyed by Triton priority (1 = highest)."""
        return {k + 1: n for k, n in enumerate(self._counts)}

    def count_at_most(self, priority: int) -> int:
        """Entries whose current class is ``priority`` or higher (numerically <=)."""
        return sum(self._counts[:priority]) if priority > 0 else 0

    def decision_stats(self, priority: int) -> tuple[int, int, float, float]:
        """``(len(self), self.count_at_most(priority), self.backlog_ms,
        self.earliest_deadline_s())`` in one call (what a decision's context reads)."""
        by_id = self._by_id
        heap = self._by_deadline
        while heap and not heap[0][2].alive:
            heapq.heappop(heap)
        return (len(by_id), sum(self._counts[:priority]) if priority > 0 else 0,
                self._backlog_ms if by_id else 0.0, heap[0][0] if heap else math.inf)

    def earliest_deadline_s(self) -> float:
        """The earliest deadline of any queued entry (inf when none has one or it is empty)."""
        heap = self._by_deadline
        while heap and not heap[0][2].alive:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    # --------------------------------------------------------------------------- operations
    def push(self, entry: Entry, now: float) -> list[Entry]:
        """Queue ``entry``; returns the entries shed to make room (each must be answered).

        Raises QueueFullError when a bound is reached and nothing of a lower class can be shed.
        """
        by_id = self._by_id
        request_id = entry.request_id
        if request_id in by_id:
            raise ValueError(f"request id {request_id!r} is already queued")
        priority = entry.priority
        if not 1 <= priority <= self.levels:
            raise ValueError(f"priority {priority} outside 1..{self.levels}")
        size = entry.size_bytes
        if size > self.max_bytes:
            raise QueueFullError(f"request of {size} bytes exceeds the queue's byte "
                                 f"bound of {self.max_bytes}")
        if len(by_id) < self.max_count and self._bytes + size <= self.max_bytes:
            # room without shedding: ``_insert``, written out
            entry.enqueued_s = now
            cls = priority - 1
            entry.cls = cls
            entry.seq = seq = next(self._seq)
            entry.alive = True
            entry.next_promotion_s = due = now + self.aging_s
            by_deadline = (entry.deadline_s, seq, entry)
            heapq.heappush(self._edf[cls], by_deadline)
            if cls > 0:
                heapq.heappush(self._promo[cls], (due, seq, entry))
            heapq.heappush(self._by_deadline, by_deadline)
            by_id[request_id] = entry
            self._counts[cls] += 1
            self._bytes += size
            self._backlog_ms += entry.service_ms
            return []
        shed: list[Entry] = []
        while (len(self._by_id) + 1 > self.max_count
               or self._bytes + entry.size_bytes > self.max_bytes):
            if not shed:
                self._age(now)  # shedding compares aged classes
            victim = self._shed_candidate(entry.priority - 1) if self.shed_lower else None
            if victim is None:
                for v in shed:  # undo: nothing is lost when the push is refused
                    self._insert(v, v.cls, v.next_promotion_s)
                bound = ("count" if len(self._by_id) + 1 > self.max_count else "bytes")
                raise QueueFullError(
                    f"queue full ({len(self._by_id)} requests, {self._bytes} bytes; bound on "
                    f"{bound}) and nothing of lower priority to shed; retry later")
            self._take(victim)
            shed.append(victim)
        entry.enqueued_s = now
        self._insert(entry, entry.priority - 1, now + self.aging_s)
        return shed

    def peek(self, now: float) -> Entry | None:
        """The entry ``pop`` would return, without removing it."""
        heap = self._head_heap(now)
        return heap[0][2] if heap else None

    def pop(self, now: float) -> Entry | None:
        """Remove and return the next entry: highest class first, earliest deadline inside it."""
        self._age(now)
        edf_heaps, counts = self._edf, self._counts
        for k, heap in enumerate(edf_heaps):  # ``_head_heap``, written out
            while heap:
                entry = heap[0][2]
                if entry.alive and entry.cls == k:
                    heapq.heappop(heap)
                    # ``_take``, written out (the entry's class is k)
                    entry.alive = False
                    by_id = self._by_id
                    del by_id[entry.request_id]
                    counts[k] -= 1
                    self._bytes -= entry.size_bytes
                    self._backlog_ms -= entry.service_ms
                    self._stale = stale = self._stale + 1
                    if stale > 64 and stale > 2 * len(by_id):
                        self._compact()
                    return entry
                heapq.heappop(heap)
        return None

    def pop_expired(self, now: float) -> list[Entry]:
        """Remove and return every entry whose deadline is before ``now``."""
        out: list[Entry] = []
        heap = self._by_deadline
        while heap and (not heap[0][2].alive or heap[0][0] < now):
            _, _, entry = heapq.heappop(heap)
            if entry.alive:
                self._take(entry)
                out.append(entry)
        return out

    def remove(self, request_id: Any) -> Entry | None:
        """Remove an entry by id (a client gave up); None if it is not queued."""
        entry = self._by_id.get(request_id)
        if entry is not None:
            self._take(entry)
        return entry

    def in_service_order(self) -> list[Entry]:
        """The queued entries in the order ``pop`` would serve them now, without removing any
        (classes as of the last aging; later aging not foreseen)."""
        return sorted(self._by_id.values(), key=_SERVICE_ORDER)

    def drain(self) -> list[Entry]:
        """Remove and return everything, in the order ``pop`` would have served it (no aging)."""
        out = sorted(self._by_id.values(), key=lambda e: (e.cls, e.deadline_s, e.seq))
        for entry in out:
            self._take(entry)
        self._compact()
        return out

    # --------------------------------------------------------------------------- internals
    def _head_heap(self, now: float) -> list[tuple[float, int, Entry]] | None:
        """After aging to ``now``, the EDF heap of the highest non-empty class, its top entry
        live; None when the queue is empty."""
        self._age(now)
        for k, heap in enumerate(self._edf):
            while heap:
                entry = heap[0][2]
                if entry.alive and entry.cls == k:
                    return heap
                heapq.heappop(heap)
        return None

    def _insert(self, entry: Entry, cls: int, next_promotion_s: float) -> None:
        entry.cls = cls
        entry.seq = seq = next(self._seq)
        entry.alive = True
        entry.next_promotion_s = next_promotion_s
        by_deadline = (entry.deadline_s, seq, entry)
        heapq.heappush(self._edf[cls], by_deadline)
        if cls > 0:
            heapq.heappush(self._promo[cls], (next_promotion_s, seq, entry))
        heapq.heappush(self._by_deadline, by_deadline)
        self._by_id[entry.request_id] = entry
        self._counts[cls] += 1
        self._bytes += entry.size_bytes
        self._backlog_ms += entry.service_ms

    def _take(self, entry: Entry) -> None:
        entry.alive = False
        del self._by_id[entry.request_id]
        self._counts[entry.cls] -= 1
        self._bytes -= entry.size_bytes
        self._backlog_ms -= entry.service_ms
        self._stale += 1
        if self._stale > 64 and self._stale > 2 * len(self._by_id):
            self._compact()

    def _age(self, now: float) -> None:
        for k in range(self.levels - 1, 0, -1):
            heap = self._promo[k]
            while heap:
                due, _, entry = heap[0]
                live = entry.alive and entry.cls == k
                if live and due > now:
                    break
                heapq.heappop(heap)
                if not live:
                    continue
                self._counts[k] -= 1
                self._counts[k - 1] += 1
                entry.cls = k - 1
                entry.next_promotion_s = due + self.aging_s
                heapq.heappush(self._edf[k - 1], (entry.deadline_s, entry.seq, entry))
                if k - 1 > 0:
                    heapq.heappush(self._promo[k - 1], (entry.next_promotion_s, entry.seq, entry))

    def _shed_candidate(self, incoming_cls: int) -> Entry | None:
        for k in range(self.levels - 1, incoming_cls, -1):
            if self._counts[k]:
                return max((e for _, _, e in self._edf[k] if e.alive and e.cls == k),
                           key=lambda e: (e.deadline_s, e.seq))
        return None

    def _compact(self) -> None:
        def keep(heap: list[tuple[float, int, Entry]], cls: int | None,
                 ) -> list[tuple[float, int, Entry]]:
            kept = [t for t in heap if t[2].alive and (cls is None or t[2].cls == cls)]
            heapq.heapify(kept)
            return kept

        self._edf = [keep(h, k) for k, h in enumerate(self._edf)]
        self._promo = [keep(h, k) for k, h in enumerate(self._promo)]
        self._by_deadline = keep(self._by_deadline, None)
        self._stale = 0
