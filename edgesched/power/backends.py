"""Boards the dispatcher runs on, opened from a spec string.

``virtual:NAME_OR_PATH``
    a board emulated from a device profile: a cpufreq sysfs tree the daemon owns (built with
    :func:`edgesched.power.fakesysfs.from_profile` under ``runtime_dir``, kernel reactions by
    :class:`~edgesched.power.fakesysfs.FakeKernel`) driven through the same :class:`Cpufreq` code as a
    real board. The host's measured service time stands for the top OPP of the fastest cluster;
    :meth:`VirtualBoard.settle` waits until the time the profile's latency model gives at the
    chosen OPP (plus the cluster's transition latency after a change) has passed, and prices it
    with the profile's power model (with a thermal section, its leakage at the heat model's
    temperature when the run starts).
``sysfs:PROFILE``
    a real board (or a fake root for tests): :class:`Cpufreq` on ``sysfs_root`` (``/sys`` by
    default), inference pinned to the policy's ``related_cpus``, energy from a meter when one
    exists (RAPL, hwmon), else from ``PROFILE``'s power model.
``null:PROFILE``
    :class:`NullBoard`: no frequency control, energy from the model (tests of other parts).

``sysfs:`` with ``hands_off`` (``--policy kernel``)
    :class:`HandsOffBoard`: the kernel keeps its governors and its placement. No lease, no
    lock, not one write to cpufreq, no pinning: each run is attributed to the cluster of the CPU
    the inference thread ended on (``/proc/thread-self/stat``, field ``processor``) at the
    frequency that policy's ``scaling_cur_freq`` reports, and priced by the meter or the model
    there. A leftover state file of a killed run is still given back first (that restores the
    kernel's own settings).

A change a cluster refuses midway (``scaling_setspeed`` after the governor became ``userspace``)
is rolled back by :class:`Cpufreq`; the board logs it, keeps serving with the next decision and
shows the cluster's last failure in :attr:`_CpufreqBoard.control` (``GET /v2/status``) until a
change on that cluster succeeds.

Time accounting: ``RunCost.wall_s`` always includes the frequency transition (emulated on the
virtual board, part of the measured run on a real one); callers do not add ``apply()``'s return
value to it.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgesched.device import DeviceProfile, load_profile
from edgesched.errors import (
    ConfigError,
    CpufreqError,
    CpufreqModeError,
    CpufreqPermissionError,
    CpufreqPolicyGoneError,
    CpufreqStateError,
    CpufreqUnavailableError,
    MeterError,
)
from edgesched.observation import BoardView, Decision
from edgesched.power.board import Board, RunCost
from edgesched.power.cpufreq import (
    Cpufreq,
    Mode,
    PolicyInfo,
    SysfsIO,
    read_small_file,
    recover,
)
from edgesched.power.fakesysfs import (
    FakeKernel,
    add_cpufreq_cooling,
    add_thermal_zone,
    from_profile,
    set_zone_temp,
)
from edgesched.power.lease import LeaseLock
from edgesched.power.meters import EnergyMeter, ModelMeter, detect_meter
from edgesched.thermal import ThermalState

Clock = Callable[[], float]
ZONE_WRITE_S = 0.1
"""The virtual board's sensor: its zone's ``temp`` is rewritten after a run at most this often
(the passive polling rate of the boards shipped), and at every status or metrics read."""
Sleep = Callable[[float], None]
SPEC_KINDS = ("virtual", "sysfs", "null")


def _price_model_j(profile: DeviceProfile, cluster: int, opp: int, busy_s: float,
                   temp_c: float | None = None) -> float:
    """Energy of one busy CPU of ``cluster`` for ``busy_s`` at ``opp``, its leakage at ``temp_c``
    Celsius (the profile's default when None)."""
    return profile.clusters[cluster].busy_power_uw(opp, 1, temp_c) * busy_s * 1e-6


def latency_ratio(profile: DeviceProfile, cluster: int, opp: int) -> float:
    """Latency at (cluster, opp) over latency at the profile's top speed. The latency model is
    linear in the work, so one ratio per OPP serves every model and run."""
    work = profile.work_from_top_latency(1.0)
    fastest = profile.fastest_cluster
    top = len(profile.clusters[fastest].opps) - 1
    return profile.latency_ms(work, cluster, opp) / profile.latency_ms(work, fastest, top)


def slowest_ratio(profile: DeviceProfile) -> float:
    """How many times longer a run takes at the profile's slowest operating point than at its
    top speed."""
    return max(latency_ratio(profile, c, o) for c, cl in enumerate(profile.clusters)
               for o in range(len(cl.opps)))


class NullBoard:
    """No frequency control: remembers decisions, charges the model for the host's time."""

    host_scale = 1.0

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.view = BoardView.of(profile)
        self._opps = [len(c.opps) - 1 for c in profile.clusters]
        self._power_uw = [[c.busy_power_uw(i) for i in range(len(c.opps))]
                          for c in profile.clusters]
        """One busy CPU's power per cluster and OPP, at the profile's default temperature."""

    def current_opps(self) -> list[int]:
        return list(self._opps)

    def apply(self, decision: Decision) -> float:
        self._opps[decision.cluster] = decision.opp
        return 0.0

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        del cluster
        return ()

    def longest_run_s(self, top_s: float) -> float:
        return top_s  # nothing changes the speed: every run takes the host's time

    def settle(self, decision: Decision, host_s: float, started_s: float, *,
               reference_s: float | None = None) -> RunCost:
        del started_s, reference_s
        c = decision.cluster
        return RunCost(wall_s=host_s, energy_j=self._power_uw[c][self._opps[c]] * host_s * 1e-6)

    def close(self) -> None:
        pass


RECHECK_S = 0.25
"""How long a cluster's OPP, once set and read back, is taken as known without reading sysfs."""


class _CpufreqBoard:
    """Frequency control through :class:`Cpufreq` for each cluster of a profile.

    Failures never stop inference: permission, state-file and mode errors switch control off
    (the kernel's governor keeps running; ``control_error`` says why); a vanished policy, a
    rejected or unverified value skip that change; each distinct failure is logged once.

    A decision for the OPP a cluster was set to (and read back at) less than ``recheck_s`` ago
    touches no file, and :meth:`current_opps` reads a cluster at most once per ``recheck_s``:
    a request at an unchanged frequency costs no sysfs I/O. Past ``recheck_s`` the next
    decision goes through :class:`Cpufreq` again, so a setting changed behind the daemon's back
    (another tool, a vanished policy) is seen and put right within that time.
    """

    host_scale = 1.0

    def __init__(self, profile: DeviceProfile, cpufreq: Cpufreq, log: logging.Logger, *,
                 clock: Clock = time.monotonic, recheck_s: float = RECHECK_S) -> None:
        self.profile = profile
        self.view = BoardView.of(profile)
        self.cpufreq = cpufreq
        self.log = log
        self.clock = clock
        self.recheck_s = recheck_s
        self._slowest_ratio = slowest_ratio(profile)
        self._checked_s = [-math.inf] * len(profile.clusters)  # set and read back
        self.control_error: str | None = None
        self.faults: dict[str, str] = {}
        """Per policy: the last change that failed, until one succeeds."""
        self._logged: set[str] = set()
        self.policies: list[PolicyInfo] = []
        for i, c in enumerate(profile.clusters):
            try:
                info = cpufreq.policy_for_cpu(c.cpus[0])
            except CpufreqUnavailableError:
                raise CpufreqUnavailableError(
                    f"profile {profile.name!r} cluster {i} ({c.name}) has CPUs "
                    f"{list(c.cpus)} but no cpufreq policy under {cpufreq.sysfs_root} lists "
                    f"CPU {c.cpus[0]}; choose the profile of this board") from None
            if info.cpuinfo_max_khz != c.max_khz:
                log.warning("%s: the kernel's top frequency is %d kHz, profile %s says %d kHz; "
                            "the profile's OPPs are snapped to the kernel's", info.name,
                            info.cpuinfo_max_khz, profile.name, c.max_khz)
            self.policies.append(info)
        self._known = [self._read_opp(i) for i in range(len(profile.clusters))]
        self._seen_s = [clock()] * len(profile.clusters)  # when each OPP was last read or set

    def _once(self, key: str, level: int, msg: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.log.log(level, "%s", msg)

    def _read_opp(self, cluster: int) -> int:
        c = self.profile.clusters[cluster]
        try:
            return c.opp_index_of(self.cpufreq.cur_khz(self.policies[cluster].name))
        except CpufreqError as exc:
            self._once(f"read:{cluster}", logging.WARNING, str(exc))
            return len(c.opps) - 1

    def current_opps(self) -> list[int]:
        """Each cluster's OPP: read from sysfs unless read (or set) within ``recheck_s``."""
        now = self.clock()
        for i, seen_s in enumerate(self._seen_s):
            if now - seen_s >= self.recheck_s:
                self._known[i] = self._read_opp(i)
                self._seen_s[i] = now
        return list(self._known)

    def longest_run_s(self, top_s: float) -> float:
        return top_s * self._slowest_ratio

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        return self.policies[cluster].related_cpus

    def _set(self, decision: Decision) -> bool:
        """Apply a decision; True if the cluster's OPP changed."""
        ci = decision.cluster
        if self.control_error is not None:
            return False
        now = self.clock()
        if decision.opp == self._known[ci] and now - self._checked_s[ci] < self.recheck_s:
            return False
        khz = self.profile.clusters[ci].opps[decision.opp].khz
        info = self.policies[ci]
        try:
            applied = self.cpufreq.set_khz(info.name, khz)
        except (CpufreqPermissionError, CpufreqStateError, CpufreqModeError) as exc:
            self.control_error = str(exc)
            self.log.error("frequency control disabled, the kernel's governor stays in "
                           "charge: %s", exc)
            self._give_back()
            return False
        except CpufreqPolicyGoneError as exc:
            self._once(f"gone:{info.name}", logging.WARNING, str(exc))
            return False
        except CpufreqError as exc:
            self.faults[info.name] = str(exc)
            self._once(f"err:{info.name}:{exc.errno_code}:{exc.path}", logging.WARNING,
                       f"frequency change skipped: {exc}")
            self._seen_s[ci] = -math.inf  # read the OPP the kernel has now at the next look
            return False
        if self.faults.pop(info.name, None) is not None:
            self.log.info("%s: frequency changes work again", info.name)
        new = self.profile.clusters[ci].opp_index_of(applied)
        changed = new != self._known[ci]
        self._known[ci] = new
        self._checked_s[ci] = self._seen_s[ci] = now
        return changed

    @property
    def control(self) -> dict[str, object]:
        """Who sets the frequencies and what went wrong (for ``GET /v2/status``)."""
        return {"mode": "disabled" if self.control_error else "leased",
                "error": self.control_error, "faults": dict(self.faults)}

    def _give_back(self) -> None:
        """Undo what the lease changed before control was disabled (a governor switched to
        userspace would otherwise hold the CPU at one frequency until the daemon exits)."""
        try:
            self.cpufreq.restore()
        except CpufreqError as exc:
            self.log.error("could not give back every cpufreq setting: %s; the state file is "
                           "kept, run `edgesched restore`", exc)

    def close(self) -> None:
        try:
            self.cpufreq.close()
        except CpufreqError as exc:
            self.log.error("could not restore every cpufreq setting: %s; the state file is kept, "
                           "run `edgesched restore`", exc)


class VirtualBoard(_CpufreqBoard):
    """A profile emulated on the host (see the module docstring)."""

    def __init__(self, profile: DeviceProfile, *, runtime_dir: Path, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep, mode: Mode = "auto",
                 log: logging.Logger | None = None, slowdown: float = 1.0) -> None:
        log = log or logging.getLogger("edgesched.power.backends")
        if not (slowdown >= 1.0 and math.isfinite(slowdown)):
            raise ConfigError(f"virtual board slowdown {slowdown!r}: expected a number >= 1")
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", profile.name) or "board"
        self.home = Path(runtime_dir) / f"virtual-{slug}"
        # the tree is this process's alone: a second daemon on the same runtime dir must not
        # delete it from under the first
        self._tree_lock = LeaseLock(Path(runtime_dir) / f"virtual-{slug}.lock", log).acquire(
            f"the virtual {profile.name} board")
        try:
            if self.home.exists():
                shutil.rmtree(self.home)  # a tree of a previous run: nothing real to restore
            self.sysfs_root = from_profile(self.home / "sys", profile, tunables=True)
            self.kernel = FakeKernel(self.sysfs_root)
            io: SysfsIO = self.kernel
            cpufreq = Cpufreq(self.sysfs_root, state_dir=self.home / "state", mode=mode,
                              log=log, io=io)
            super().__init__(profile, cpufreq, log, clock=clock)
        except BaseException:
            self._tree_lock.release()
            raise
        self.host_scale = float(slowdown)
        self._ratios: dict[tuple[int, int], float] = {}
        self.sleep = sleep
        self._pending_transition_s = 0.0
        self.heat: ThermalState | None = None
        """The board's heat when the profile has a thermal section (:mod:`edgesched.thermal`):
        the RC node heated by each run's modelled power, shown in the tree's thermal zone; its
        step_wise governor sets the tree's cpufreq cooling devices, which cap the policies as
        the kernel's do. Idle time is counted when the next run settles or :meth:`refresh_heat`
        is called (``GET /v2/status``, ``/metrics``)."""
        self._heat_lock = threading.Lock()
        if profile.thermal is not None:
            spec = profile.thermal
            by_cpu = {min(c.cpus): i for i, c in enumerate(profile.clusters)}
            self._cdev_of: dict[int, str] = {}
            for cdev in add_cpufreq_cooling(self.sysfs_root):
                cpu = int(read_small_file(cdev / "type").removeprefix("cpufreq-cpu"))
                if cpu in by_cpu:
                    self._cdev_of[by_cpu[cpu]] = cdev.name
            self.heat = ThermalState(spec, [len(c.opps) for c in profile.clusters],
                                     profile.idle_power_uw, start_s=clock())
            self._zone = add_thermal_zone(self.sysfs_root, spec.zone, self.heat.temp_c,
                                          [(t.temp_c, t.kind) for t in spec.trips])
            self._states = [0] * len(profile.clusters)
            self._zone_written_s = -math.inf

    def refresh_heat(self, busy: tuple[float, float, int, int] | None = None) -> float | None:
        """Bring the heat model up to now (idle since the last run), or over one run
        ``(start_s, end_s, cluster, opp)``; writes the zone's temperature and the cooling states.

        A run heats the node with its cluster's busy power at the temperature the run starts at
        (leakage grows with it where the profile's ``static_temp_coeff_per_c`` > 0); that
        temperature is returned (None without a heat model or a run)."""
        heat = self.heat
        if heat is None:
            return None
        run_temp_c: float | None = None
        with self._heat_lock:
            idle_uw = self.profile.idle_power_uw
            if busy is None:
                heat.advance(max(self.clock(), heat.t_s), idle_uw)
            else:
                start_s, end_s, ci, opp = busy
                c = self.profile.clusters[ci]
                heat.advance(max(start_s, heat.t_s), idle_uw)
                run_temp_c = heat.temp_c
                heat.advance(max(end_s, heat.t_s),
                             idle_uw - c.idle_uw + c.busy_power_uw(opp, 1, run_temp_c))
            if busy is None or heat.t_s - self._zone_written_s >= ZONE_WRITE_S:
                set_zone_temp(self._zone, heat.temp_c)
                self._zone_written_s = heat.t_s
            for i, state in enumerate(heat.governor.state):
                if state != self._states[i] and i in self._cdev_of:
                    self.kernel.set_cooling_state(self._cdev_of[i], state)
                    self._states[i] = state
                    # the cap moved the policy: the next decision goes through cpufreq again
                    self._checked_s[i] = self._seen_s[i] = -math.inf
        return run_temp_c

    def apply(self, decision: Decision) -> float:
        if not self._set(decision):
            return 0.0
        delay = self.profile.clusters[decision.cluster].transition_latency_ns * 1e-9
        self._pending_transition_s += delay
        return delay

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        """No pinning: the emulated board's CPU numbers are not the host's."""
        del cluster
        return ()

    def emulated_s(self, cluster: int, opp: int, host_s: float) -> float:
        """Service time at (cluster, opp) of work that took ``host_s`` on the host."""
        if host_s <= 0.0:
            return 0.0
        return host_s * self.host_scale * self._slowness(cluster, opp)

    def _slowness(self, cluster: int, opp: int) -> float:
        """:func:`latency_ratio` of (cluster, opp), computed once."""
        ratio = self._ratios.get((cluster, opp))
        if ratio is None:
            ratio = self._ratios[(cluster, opp)] = latency_ratio(self.profile, cluster, opp)
        return ratio

    def settle(self, decision: Decision, host_s: float, started_s: float, *,
               reference_s: float | None = None) -> RunCost:
        """Waits out the emulated time. With ``reference_s`` it is emulated from the model's
        usual host time, not this run's: the host's own contention (the HTTP thread, local
        clients) would otherwise come out ``host_scale`` times larger. A run that took longer
        on the host than the emulated board would is reported as it happened."""
        ci = decision.cluster
        opp = self._known[ci]
        run_s = self.emulated_s(ci, opp, host_s if reference_s is None else reference_s)
        wall_s = run_s + self._pending_transition_s
        self._pending_transition_s = 0.0
        run_temp_c = None  # the profile's default_temp_c: the leakage of a board without heat
        if self.heat is not None:
            run_temp_c = self.refresh_heat((started_s, started_s + wall_s, ci, opp))
        remaining_s = started_s + wall_s - self.clock()
        if remaining_s > 0.0:
            self.sleep(remaining_s)
        elif reference_s is not None:
            wall_s -= remaining_s  # the host was slower than the board it emulates
        # under a thermal cap the kernel ran it below the decided OPP: say where it ran
        ran = {} if opp == decision.opp else {"cluster": ci, "opp": opp}
        return RunCost(wall_s=wall_s, energy_j=_price_model_j(self.profile, ci, opp, run_s,
                                                              run_temp_c), **ran)

    def close(self) -> None:
        try:
            super().close()
            shutil.rmtree(self.home, ignore_errors=True)
        finally:
            self._tree_lock.release()


class _MeteredBoard(_CpufreqBoard):
    """A board on real cpufreq files whose energy comes from a meter while it works (RAPL,
    hwmon), else from the profile's model."""

    meter: EnergyMeter | None

    def _meter_j(self) -> float | None:
        if self.meter is None:
            return None
        try:
            return self.meter.energy_j()
        except MeterError as exc:
            self.log.warning("energy meter failed, using the model from now on: %s", exc)
            self.meter = None
            return None


class SysfsBoard(_MeteredBoard):
    """A real board (or a fake root): cpufreq control, pinning, measured or modelled energy."""

    def __init__(self, profile: DeviceProfile, *, sysfs_root: Path, state_dir: Path,
                 clock: Clock = time.monotonic, mode: Mode = "auto", dry_run: bool = False,
                 log: logging.Logger | None = None, io: SysfsIO | None = None,
                 meter: EnergyMeter | None = None) -> None:
        log = log or logging.getLogger("edgesched.power.backends")
        cpufreq = Cpufreq(sysfs_root, state_dir=state_dir, mode=mode, dry_run=dry_run, log=log,
                          io=io, claim=not dry_run)
        try:
            super().__init__(profile, cpufreq, log, clock=clock)
        except BaseException:
            cpufreq.close()
            raise
        self.meter: EnergyMeter | None = meter if meter is not None else detect_meter(
            sysfs_root, clock=clock, log=log)
        self.model = ModelMeter(profile)
        self._mark_j: float | None = None
        if self.meter is not None:
            log.info("energy measured by %s", self.meter.describe())


    def apply(self, decision: Decision) -> float:
        changed = self._set(decision)
        self._mark_j = self._meter_j()
        if not changed:
            return 0.0
        lat = self.policies[decision.cluster].transition_latency_ns
        if lat is None:
            lat = self.profile.clusters[decision.cluster].transition_latency_ns
        return lat * 1e-9

    def settle(self, decision: Decision, host_s: float, started_s: float, *,
               reference_s: float | None = None) -> RunCost:
        del started_s, reference_s
        mark, self._mark_j = self._mark_j, None
        now = self._meter_j()
        if mark is not None and now is not None:
            return RunCost(wall_s=host_s, energy_j=max(0.0, now - mark))
        opp = self._known[decision.cluster]
        return RunCost(wall_s=host_s,
                       energy_j=self.model.charge(decision.cluster, opp, host_s))


def thread_cpu() -> int | None:
    """The CPU the calling thread last ran on (``processor``, field 39 of
    ``/proc/thread-self/stat``); None where it cannot be read."""
    try:
        text = read_small_file(Path("/proc/thread-self/stat"))
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[36])  # fields after the command name start at field 3
    except (IndexError, ValueError):
        return None


class HandsOffBoard(_MeteredBoard):
    """``--policy kernel`` on a real board: governors and placement stay the kernel's; the
    board only reads ``scaling_cur_freq`` and measures (see the module docstring)."""

    hands_off = True

    def __init__(self, profile: DeviceProfile, *, sysfs_root: Path, state_dir: Path,
                 clock: Clock = time.monotonic, log: logging.Logger | None = None,
                 io: SysfsIO | None = None, meter: EnergyMeter | None = None,
                 cpu_of_thread: Callable[[], int | None] = thread_cpu) -> None:
        log = log or logging.getLogger("edgesched.power.backends")
        # dry_run: discovery and reads only, no lock, no state file, no write
        cpufreq = Cpufreq(sysfs_root, state_dir=state_dir, dry_run=True, log=log, io=io)
        super().__init__(profile, cpufreq, log, clock=clock)
        self.meter: EnergyMeter | None = meter if meter is not None else detect_meter(
            sysfs_root, clock=clock, log=log)
        self.model = ModelMeter(profile)
        self.cpu_of_thread = cpu_of_thread
        self._mark_j: float | None = None
        log.info("hands-off: the kernel's governors and scheduler choose frequency and CPU; "
                 "edgesched only measures (energy by %s)",
                 self.meter.describe() if self.meter is not None else "the profile's model")

    @property
    def control(self) -> dict[str, object]:
        return {"mode": "hands_off", "error": None, "faults": {}}

    def apply(self, decision: Decision) -> float:
        del decision  # the kernel decides
        self._mark_j = self._meter_j()
        return 0.0

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        del cluster
        return ()  # no pinning: placement is the kernel's


    def ran_on(self, fallback: int) -> int:
        """The cluster whose CPUs include the one the calling thread ran on last."""
        cpu = self.cpu_of_thread()
        if cpu is not None:
            for i, info in enumerate(self.policies):
                if cpu in info.related_cpus:
                    return i
        return fallback

    def settle(self, decision: Decision, host_s: float, started_s: float, *,
               reference_s: float | None = None) -> RunCost:
        del started_s, reference_s
        cluster = self.ran_on(decision.cluster)
        opp = self._read_opp(cluster)
        self._known[cluster] = opp
        self._seen_s[cluster] = self.clock()
        mark, self._mark_j = self._mark_j, None
        now = self._meter_j()
        if mark is not None and now is not None:
            energy_j = max(0.0, now - mark)
        else:
            energy_j = self.model.charge(cluster, opp, host_s)
        return RunCost(wall_s=host_s, energy_j=energy_j, cluster=cluster, opp=opp)

    def close(self) -> None:
        pass  # nothing was changed, nothing was locked


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in SPEC_KINDS or not arg:
        raise ConfigError(f"board spec {spec!r}: expected virtual:PROFILE, sysfs:PROFILE or "
                          "null:PROFILE (PROFILE a built-in name or a profile file)")
    return kind, arg


def open_board(spec: str, *, sysfs_root: Path | None = None, state_dir: Path,
               runtime_dir: Path, clock: Clock = time.monotonic, sleep: Sleep = time.sleep,
               log: logging.Logger | None = None, mode: Mode = "auto",
               dry_run: bool = False, virtual_slowdown: float = 1.0,
               hands_off: bool = False) -> Board:
    """Open the board ``spec`` names (see the module docstring).

    For ``sysfs:`` a leftover state file in ``state_dir`` (a killed daemon) is restored before
    anything else. The virtual board keeps its tree and state under ``runtime_dir``.
    ``hands_off`` (``--policy kernel``) opens a ``sysfs:`` board as a :class:`HandsOffBoard`;
    the virtual and null boards ignore it (there the policy models the stock kernel).
    """
    log = log or logging.getLogger("edgesched.power.backends")
    kind, arg = parse_spec(spec)
    profile = load_profile(arg)
    if kind == "null":
        return NullBoard(profile)
    if kind == "virtual":
        return VirtualBoard(profile, runtime_dir=runtime_dir, clock=clock, sleep=sleep,
                            mode=mode, log=log, slowdown=virtual_slowdown)
    root = Path("/sys") if sysfs_root is None else Path(sysfs_root)
    if not dry_run:
        report = recover(root, state_dir, log=log)
        if not report.nothing_to_do:
            log.warning("restored cpufreq settings left by a killed run: %s",
                        ", ".join(report.actions) or "already in place")
    if hands_off:
        return HandsOffBoard(profile, sysfs_root=root, state_dir=state_dir, clock=clock, log=log)
    return SysfsBoard(profile, sysfs_root=root, state_dir=state_dir, clock=clock, mode=mode,
                      dry_run=dry_run, log=log)
