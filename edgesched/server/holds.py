"""Holds, the power source and which policy runs: the daemon's policy arbiter.

A client may *hold* a policy or a frequency floor for a while (``edgesched hold performance
--for 30s``; ``POST /v2/admin/holds``), like power-profiles-daemon's ``HoldProfile``: the hold
ends when its time is up, when the client asks (``DELETE /v2/admin/holds/{id}``), or, unless it
asked otherwise, when the connection that made it closes (the CLI keeps its connection open for
the hold's duration, so a killed client releases its hold).

Which policy runs, strongest first:

1. the strongest policy hold. Policies rank by how fast they run the board: ``performance``
   above every other policy (schedutil, ondemand, conservative, learned, qlearn), those above
   ``powersave``; between holds of the same rank the newest wins. A deadline scheduler lets no
   holder get less speed than it asked for (power-profiles-daemon, a laptop tool, lets
   power-saver win instead);
2. the policy of the current power source (``[power_source.battery]`` / ``[power_source.ac]``
   ``policy``), when set;
3. ``policy.spec`` (the configuration, or the last ``POST /v2/admin/policy``).

Floors combine apart from policies: the highest ``min_khz`` of the holds in force applies to
every cluster whatever policy runs, as the kernel aggregates ``FREQ_QOS_MIN`` requests with
``PM_QOS_MAX`` (``freq_constraints_init`` in ``kernel/power/qos.c``), each cluster clamped to its
top OPP (:meth:`~edgesched.server.dispatcher.Dispatcher.set_floor`).

Expiry is judged by the daemon's injected clock: every look at the holds drops the expired ones,
and an event-loop timer looks when the first one is due.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesched.errors import AdmissionError, EdgeschedError
from edgesched.policy.base import Policy
from edgesched.power.supply import PowerSource, policy_for_source, read_power_source
from edgesched.server.http1 import Request, Response, error_response, json_response

if TYPE_CHECKING:
    from edgesched.server.access import Verdict
    from edgesched.server.app import ServerState

log = logging.getLogger("edgesched.server")

MAX_HOLD_S = 7 * 24 * 3600.0
"""The longest hold (a week); a longer one is refused."""
MAX_HOLDS = 64
"""Holds in force at once; one more is refused (409)."""
MAX_REASON_CHARS = 200


def policy_rank(spec: str) -> int:
    """How fast a policy runs the board: performance 2, powersave 0, any other 1."""
    name = spec.partition(":")[0]
    return {"performance": 2, "powersave": 0}.get(name, 1)


@dataclass
class Hold:
    id: int
    policy: str
    """The held policy spec ("": a floor only)."""
    min_khz: int
    started_s: float
    expires_s: float
    """``math.inf``: until released or disconnected."""
    who: str
    reason: str = ""
    on_disconnect: bool = True
    """Released when the connection that made it closes."""

    def to_dict(self, now_s: float) -> dict[str, Any]:
        left = None if math.isinf(self.expires_s) else round(max(0.0, self.expires_s - now_s), 3)
        return {"id": self.id, "policy": self.policy or None, "min_khz": self.min_khz or None,
                "seconds_left": left, "who": self.who, "reason": self.reason,
                "release_on_disconnect": self.on_disconnect}


class HoldTable:
    """The holds in force (no I/O; the clock is injected)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._holds: dict[int, Hold] = {}
        self._next = 0
        self.granted = 0
        self.released: dict[str, int] = {"expired": 0, "released": 0, "disconnected": 0}

    def add(self, policy: str, min_khz: int, seconds: float | None, who: str, reason: str = "",
            on_disconnect: bool = True) -> Hold:
        self.prune()
        if len(self._holds) >= MAX_HOLDS:
            raise AdmissionError(409, f"{MAX_HOLDS} holds are in force already; release one")
        now = self.clock()
        self._next += 1
        hold = Hold(self._next, policy, min_khz, now,
                    now + seconds if seconds is not None else math.inf, who, reason,
                    on_disconnect)
        self._holds[hold.id] = hold
        self.granted += 1
        return hold

    def remove(self, hold_id: int, why: str = "released") -> Hold | None:
        hold = self._holds.pop(hold_id, None)
        if hold is not None:
            self.released[why] = self.released.get(why, 0) + 1
        return hold

    def prune(self) -> list[Hold]:
        """Drop the holds whose time is up; returns them."""
        now = self.clock()
        gone = [h for h in self._holds.values() if h.expires_s <= now]
        for h in gone:
            self.remove(h.id, "expired")
        return gone

    def active(self) -> list[Hold]:
        self.prune()
        return sorted(self._holds.values(), key=lambda h: h.id)

    def next_expiry_s(self) -> float:
        return min((h.expires_s for h in self._holds.values()), default=math.inf)

    def policy(self) -> Hold | None:
        """The winning policy hold: highest rank, then newest."""
        held = [h for h in self.active() if h.policy]
        return max(held, key=lambda h: (policy_rank(h.policy), h.id), default=None)

    def floor_khz(self) -> int:
        return max((h.min_khz for h in self.active()), default=0)


class PolicyArbiter:
    """Decides which policy and floor run (holds > power source > ``policy.spec``) and hands
    changes to the dispatcher thread. Lives on the main event loop."""

    def __init__(self, policy: Policy | None = None, spec: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.holds = HoldTable(clock)
        self.clock = clock
        self.running_spec = spec
        """The spec of the policy the dispatcher runs."""
        self.running_floor_khz = 0
        self.why = "config"
        """Where the running policy comes from: ``hold``, ``power_source`` or ``config``."""
        self._cache: dict[str, Policy] = {spec: policy} if policy is not None else {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self.source: PowerSource | None = None
        self._poll: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the running loop, keeping a reference until it ends."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # the loop is closing
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------- decisions
    def wanted(self, st: ServerState) -> tuple[str, int, str]:
        """(policy spec, floor kHz, why) as things stand."""
        floor = self.holds.floor_khz()
        hold = self.holds.policy()
        if hold is not None:
            return hold.policy, floor, "hold"
        cfg = st.config
        base = cfg.policy.spec
        if self.source is not None:
            ps = cfg.power_source
            spec = policy_for_source(self.source.source,
                                     {"battery": ps.battery.policy, "ac": ps.ac.policy}, "")
            if spec:
                return spec, floor, "power_source"
        return base, floor, "config"

    async def refresh(self, st: ServerState) -> None:
        """Bring the dispatcher to what :meth:`wanted` says (a failure is logged; the running
        policy stays)."""
        async with self._lock:
            spec, floor, why = self.wanted(st)
            disp = st.dispatcher
            try:
                if spec != self.running_spec:
                    policy = self._cache.get(spec)
                    if policy is None:
                        from edgesched.policy.registry import make_policy

                        loop = asyncio.get_running_loop()
                        policy = await loop.run_in_executor(None, make_policy, spec)
                    await asyncio.wrap_future(disp.call(lambda: disp.set_policy(policy)))
                    log.warning("policy %s -> %s (%s)", self.running_spec, spec, why)
                    self._cache = {spec: policy}
                    self.running_spec = spec
                    st.policy = policy
                if floor != self.running_floor_khz:
                    await asyncio.wrap_future(disp.call(lambda: disp.set_floor(floor)))
                    log.info("frequency floor %s", f"{floor} kHz" if floor else "lifted")
                    self.running_floor_khz = floor
                self.why = why
            except AdmissionError as exc:  # the daemon is stopping
                log.info("policy change not made: %s", exc.reason)
            except Exception as exc:  # a policy that cannot be made or cannot run on the board
                log.error("cannot switch to policy %r (%s): %s; %s keeps running", spec, why,
                          exc, self.running_spec)
        self._arm(st)

    def adopted(self, st: ServerState, spec: str, policy: Policy) -> None:
        """A policy switched outside the arbiter (``POST /v2/admin/policy``: it becomes
        ``policy.spec``) now runs; a hold or source policy in force takes over again."""
        self.running_spec = spec
        self._cache = {spec: policy}
        if self.wanted(st)[0] != spec:
            self.kick(st)

    def _arm(self, st: ServerState) -> None:
        """A loop timer for the next expiry (by the loop's clock, checked by the injected one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.holds.next_expiry_s()
        if math.isinf(due):
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - self.clock()) + 0.001
        self._timer = loop.call_later(delay, self.kick, st)

    def kick(self, st: ServerState) -> None:
        """Look again soon (from a loop callback: a timer, a connection that closed)."""
        self._timer = None
        self.spawn(self.refresh(st))

    # ------------------------------------------------------------------------- power source
    def sysfs_root(self, st: ServerState) -> Path:
        return Path(st.config.power_source.sysfs_root or st.config.board.sysfs_root)

    async def read_source(self, st: ServerState) -> PowerSource:
        loop = asyncio.get_running_loop()
        src = await loop.run_in_executor(None, read_power_source, self.sysfs_root(st))
        old = self.source.source if self.source is not None else None
        self.source = src
        if old is not None and old != src.source:
            log.warning("power source %s -> %s", old, src.source)
        return src

    def start(self, st: ServerState) -> None:
        """Read the power source now and every ``power_source.poll_s`` after."""
        self._poll = asyncio.get_running_loop().create_task(self._poll_source(st))

    async def _poll_source(self, st: ServerState) -> None:
        while True:
            before = self.source.source if self.source is not None else None
            try:
                src = await self.read_source(st)
            except Exception:  # a reader bug must not end the polling
                log.exception("reading the power source failed")
            else:
                if src.source != before:
                    await self.refresh(st)
            await asyncio.sleep(st.config.power_source.poll_s)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    # ------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        now = self.clock()
        src = self.source.to_dict() if self.source is not None else None
        return {
            "holds": [h.to_dict(now) for h in self.holds.active()],
            "holds_granted": self.holds.granted,
            "holds_ended": dict(self.holds.released),
            "policy_running": self.running_spec,
            "policy_from": self.why,
            "floor_khz": self.running_floor_khz,
            "power_source": src,
        }


# ----------------------------------------------------------------------------- HTTP handlers
def _duration_s(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdmissionError(400, f"seconds must be a number, got {value!r}")
    seconds = float(value)
    if not (0 < seconds <= MAX_HOLD_S):
        raise AdmissionError(400, f"seconds must be in (0, {MAX_HOLD_S:g}], got {value!r}")
    return seconds


def parse_hold(doc: dict[str, Any], policy_dir: str,
               resolve: Callable[[str, str], str]) -> tuple[str, int, float | None, str, bool]:
    """(policy spec, min kHz, seconds, reason, release on disconnect) of a hold request."""
    known = {"policy", "min_khz", "seconds", "reason", "release_on_disconnect"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise AdmissionError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(sorted(known))}")
    policy = doc.get("policy", "") or ""
    if not isinstance(policy, str):
        raise AdmissionError(400, f"policy must be a policy spec string, got {policy!r}")
    min_khz = doc.get("min_khz", 0) or 0
    if isinstance(min_khz, bool) or not isinstance(min_khz, int) or not 0 <= min_khz <= 10**8:
        raise AdmissionError(400, f"min_khz must be a frequency in kHz (an integer), got "
                             f"{doc.get('min_khz')!r}")
    if not policy and not min_khz:
        raise AdmissionError(400, "a hold needs a policy (\"policy\": \"performance\") or a "
                             "floor (\"min_khz\": 1200000), or both")
    seconds = _duration_s(doc.get("seconds"))
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise AdmissionError(400, "reason must be a string")
    tied = doc.get("release_on_disconnect", True)
    if not isinstance(tied, bool):
        raise AdmissionError(400, "release_on_disconnect must be true or false")
    if seconds is None and not tied:
        raise AdmissionError(400, "a hold that outlives its connection needs \"seconds\"")
    if policy:
        policy = resolve(policy, policy_dir)
    return policy, min_khz, seconds, reason[:MAX_REASON_CHARS], tied


async def create_hold(request: Request, st: ServerState, verdict: Verdict,
                      doc: dict[str, Any]) -> Response:
    """POST /v2/admin/holds {policy | min_khz, seconds, reason, release_on_disconnect}."""
    from edgesched.server.app import _policy_spec_over_http

    arb = st.arbiter
    try:
        policy, min_khz, seconds, reason, tied = parse_hold(doc, st.config.policy.dir,
                                                            _policy_spec_over_http)
        if policy and policy != arb.running_spec:  # refuse a policy that cannot be made
            from edgesched.policy.registry import make_policy

            loop = asyncio.get_running_loop()
            try:
                made = await loop.run_in_executor(None, make_policy, policy)
            except EdgeschedError as exc:
                raise AdmissionError(400, f"cannot hold policy {policy!r}: {exc}") from None
            arb._cache.setdefault(policy, made)
        hold = arb.holds.add(policy, min_khz, seconds, verdict.who, reason, tied)
    except AdmissionError as exc:
        return error_response(exc.status, exc.reason)
    conn = request.connection
    if tied and conn is not None:
        if conn.transport is None:  # the client has gone already: nothing will call back
            arb.holds.remove(hold.id, "disconnected")
            return error_response(400, "the connection closed before the hold was granted")
        conn.closed_callbacks.append(lambda: _disconnected(st, hold.id))
    log.warning("hold %d granted to %s: %s%s%s", hold.id, verdict.who,
                f"policy {policy} " if policy else "", f"floor {min_khz} kHz " if min_khz else "",
                f"for {seconds:g} s" if seconds is not None else "until released")
    await arb.refresh(st)
    out = hold.to_dict(arb.clock())
    out["keepalive_s"] = round(st.config.server.idle_timeout_s / 3.0, 3)
    out["policy_running"] = arb.running_spec
    return json_response(out)


def _disconnected(st: ServerState, hold_id: int) -> None:
    if st.arbiter.holds.remove(hold_id, "disconnected") is not None:
        log.warning("hold %d released: its client disconnected", hold_id)
        st.arbiter.kick(st)


async def release_hold(request: Request, st: ServerState, verdict: Verdict,
                       doc: dict[str, Any]) -> Response:
    """DELETE /v2/admin/holds/{id}."""
    raw = request.params.get("id", "")
    hold = st.arbiter.holds.remove(int(raw), "released") if raw.isdigit() else None
    if hold is None:
        return error_response(404, f"no hold {raw!r} in force (see GET /v2/status: holds)")
    log.warning("hold %d released by %s", hold.id, verdict.who)
    await st.arbiter.refresh(st)
    return json_response({"released": hold.id, "policy_running": st.arbiter.running_spec})


__all__ = ["MAX_HOLD_S", "Hold", "HoldTable", "PolicyArbiter", "create_hold", "parse_hold",
           "policy_rank", "release_hold"]
