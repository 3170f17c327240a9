"""Calibration: measure latency and power at every OPP of every cluster, then fit a profile.

For each cluster (cpufreq policy) of the board, from its top OPP down: set the frequency through
the board (the same :class:`~edgesched.power.cpufreq.Cpufreq` lease the daemon uses), check it took,
pin the thread to the cluster's CPUs where the board allows it, read the idle power, then run each
workload ``warmup_runs + runs`` times and keep the median latency and the mean busy power.
:func:`calibrate` gives the board back (every cpufreq setting restored, the thread's CPU affinity
too) whatever happens, Ctrl-C included. :mod:`edgesched.fit` turns the rows into a profile.

Latency is what the board charges a run (:attr:`RunCost.wall_s`): the measured time on a real
board, the emulated time on the virtual board. On the virtual board that time is accounted, not
waited: :class:`EmulatedClock` is a board clock that moves only when the board "sleeps", so a
sweep down to 408 MHz takes the host's time, not the emulated board's, and the host's own
overhead between runs is not board time.

Power comes from an :class:`~edgesched.power.meters.EnergyMeter` (RAPL, hwmon, or on the virtual board
:class:`VirtualBoardMeter`, which reads the energy the board prices from its profile's power model
as a board-level meter would see it). Without a meter the power cells stay empty. With
``cluster_meters`` (:func:`open_rail_meters`: each cluster's own INA2xx/INA3221 supply rail, as
the Odroid-XU3's INA231s on the A15 and A7 supplies) a cluster's rows carry its rail's busy and
idle power, which ``edgesched fit --power-scope cluster`` reads as that cluster's.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgesched.device import DeviceProfile
from edgesched.errors import ConfigError, EdgeschedError, MeterError
from edgesched.fit import Measurement
from edgesched.observation import Decision
from edgesched.power.backends import VirtualBoard
from edgesched.power.board import Board, RunCost
from edgesched.power.meters import (
    EnergyMeter,
    HwmonMeter,
    PowerChannel,
    RaplMeter,
    cluster_rail_channels,
    detect_meter,
    hwmon_channels,
)

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Progress = Callable[[str], None]
SENSOR_KINDS = ("auto", "rapl", "hwmon:PATH", "virtual", "none")


class CalibrationError(EdgeschedError):
    """Calibration cannot go on (the frequency did not take, a workload failed)."""


class Workload(Protocol):
    """One model to calibrate with: ``run()`` does one inference on a fixed input."""

    name: str

    def run(self) -> None:
        """One inference."""


@dataclass
class TfliteWorkload:
    """A loaded TFLite model (:func:`edgesched.server.runner.load_model`) on a fixed sample."""

    name: str
    model: Any
    sample: Mapping[str, np.ndarray]

    @classmethod
    def of(cls, model: Any, seed: int = 0) -> TfliteWorkload:
        from edgesched.server.runner import _sample_input

        rng = np.random.default_rng(seed)
        return cls(name=model.name, model=model,
                   sample={t.name: _sample_input(t, rng) for t in model.inputs})

    def run(self) -> None:
        self.model.run(self.sample)


class EmulatedClock:
    """Board time that passes only by ``sleep``: waits are accounted, not waited.

    Give ``now`` and ``sleep`` to the virtual board as its clock and sleep (and to the meter and
    :func:`measure`): the board's ``settle`` then "sleeps" exactly the emulated service time, so
    board time is the sum of emulated runs and idle periods, whatever the host's own overhead.
    Host time (what the model took here) is measured with a separate real clock.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def sleep(self, seconds: float) -> None:
        if seconds > 0.0:
            self._now_s += seconds


class ScriptedWorkload:
    """A shipped fake workload: each run takes exactly ``host_s`` on ``host_clock`` (an
    :class:`EmulatedClock` standing for the host), and calls ``on_run(n)`` first if given (to
    check state mid-calibration or to raise, e.g. KeyboardInterrupt)."""

    def __init__(self, name: str, host_s: float, host_clock: EmulatedClock,
                 on_run: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.host_s = host_s
        self.host_clock = host_clock
        self.on_run = on_run
        self.runs = 0

    def run(self) -> None:
        self.runs += 1
        if self.on_run is not None:
            self.on_run(self.runs)
        self.host_clock.sleep(self.host_s)


class VirtualBoardMeter:
    """Board-level energy of the virtual board, from its profile's power model.

    Reads like a meter on the board's supply: the board floor and every cluster's idle power all
    the time, plus, for each run the board priced (fed by :meth:`record`), the priced energy
    minus the idle power the running cluster would have drawn anyway.
    """

    kind = "virtual"

    def __init__(self, profile: DeviceProfile, clock: Clock) -> None:
        self.profile = profile
        self.clock = clock
        self._idle_uw = profile.board_floor_uw + profile.idle_power_uw
        self._t0 = clock()
        self._runs_j = 0.0

    def record(self, cluster: int, cost: RunCost) -> None:
        idle_uw = self.profile.clusters[cluster].idle_uw
        self._runs_j += cost.energy_j - idle_uw * cost.wall_s * 1e-6

    def energy_j(self) -> float:
        return self._idle_uw * (self.clock() - self._t0) * 1e-6 + self._runs_j

    def describe(self) -> str:
        return f"virtual ({self.profile.name} power model, board level)"


def hwmon_dir_channels(hwmon_dir: Path) -> list[PowerChannel]:
    """Power channels of one hwmon device directory (``power*_input`` in uW, else
    ``in*_input`` mV times ``curr*_input`` mA)."""
    d = Path(hwmon_dir)
    channels = [PowerChannel(f"{d.name}:{p.name[:-6]}", power_path=p)
                for p in sorted(d.glob("power*_input"))]
    if not channels:
        for curr in sorted(d.glob("curr*_input")):
            n = curr.name[4:-6]
            volt = d / f"in{n}_input"
            if volt.exists():
                channels.append(PowerChannel(f"{d.name}:in{n}", volt_path=volt, curr_path=curr))
    return channels


def open_meter(sensor: str, board: Board, *, sysfs_root: Path, clock: Clock,
               log: logging.Logger) -> EnergyMeter | None:
    """The power source ``sensor`` names (one of :data:`SENSOR_KINDS`), or None for none.

    ``auto``: the virtual board's model meter on a virtual board, else RAPL or hwmon under
    ``sysfs_root`` if one is there. A sysfs board's fallback to its profile's model is never
    used: fitting a model to itself would only give the base profile back.
    """
    if sensor == "none":
        return None
    if sensor == "virtual" or (sensor == "auto" and isinstance(board, VirtualBoard)):
        if not isinstance(board, VirtualBoard):
            raise ConfigError("--power-sensor virtual needs a virtual: board")
        return VirtualBoardMeter(board.profile, clock)
    try:
        if sensor == "auto":
            return detect_meter(sysfs_root, clock=clock, log=log)
        if sensor == "rapl":
            return RaplMeter(sysfs_root)
        if sensor.startswith("hwmon:") and sensor[6:]:
            channels = hwmon_dir_channels(Path(sensor[6:]))
            if not channels:
                raise MeterError(f"no power*_input or in*_input/curr*_input files in {sensor[6:]}")
            return HwmonMeter(channels=channels, clock=clock)
    except MeterError as exc:
        raise ConfigError(f"--power-sensor {sensor}: {exc}") from None
    raise ConfigError(f"--power-sensor {sensor!r}: expected auto, rapl, hwmon:PATH (a hwmon "
                      "device directory), virtual or none")


def open_rail_meters(profile: DeviceProfile, *, sysfs_root: Path, clock: Clock,
                     rails: Mapping[str, str] | None = None) -> dict[int, EnergyMeter]:
    """A meter on each cluster's own supply rail, from the INA2xx/INA3221 channels under
    ``<sysfs_root>/class/hwmon`` (labels matched by
    :func:`~edgesched.power.meters.cluster_rail_channels`; ``rails`` maps cluster names to
    labels). Every cluster must have one: the message lists the labels found."""
    channels = hwmon_channels(sysfs_root, totals_only=False)
    found = cluster_rail_channels(channels, [(c.name, c.core) for c in profile.clusters], rails)
    unknown = sorted(set(rails or {}) - {c.name for c in profile.clusters})
    if unknown:
        raise ConfigError(f"--rail {unknown[0]}=...: no such cluster in {profile.name} "
                          f"({', '.join(c.name for c in profile.clusters)})")
    missing = [c.name for i, c in enumerate(profile.clusters) if i not in found]
    if missing:
        labels = ", ".join(ch.label for ch in channels) or "none"
        raise ConfigError(f"no power rail found for cluster {missing[0]} under "
                          f"{Path(sysfs_root) / 'class/hwmon'} (channels: {labels}); name it "
                          f"with --rail {missing[0]}=LABEL or use --power-scope board")
    return {ci: HwmonMeter(channels=[ch], clock=clock) for ci, ch in sorted(found.items())}


class Pinner(Protocol):
    """Sets the calling thread's CPU affinity (the hardware edge of pinning)."""

    def get(self) -> set[int]:
        """The current CPU set."""

    def set(self, cpus: set[int]) -> None:
        """Pin to ``cpus`` (raises OSError when not allowed)."""


class AffinityPinner:
    """``os.sched_setaffinity`` on the calling thread (pid 0)."""

    def get(self) -> set[int]:
        return set(os.sched_getaffinity(0))

    def set(self, cpus: set[int]) -> None:
        os.sched_setaffinity(0, cpus)


def _read_meter(meter: EnergyMeter | None) -> float | None:
    if meter is None:
        return None
    try:
        return meter.energy_j()
    except MeterError as exc:
        raise CalibrationError(f"the power meter failed ({exc}); run again with "
                               "--power-sensor none to calibrate latency only") from None


class _Calibrator:
    def __init__(self, board: Board, meter: EnergyMeter | None, clock: Clock, host_clock: Clock,
                 sleep: Sleep, pinner: Pinner | None, progress: Progress,
                 log: logging.Logger) -> None:
        self.board = board
        self.meter = meter
        self.clock = clock
        self.host_clock = host_clock
        self.sleep = sleep
        self.pinner = pinner
        self.progress = progress
        self.log = log
        self.original_cpus: set[int] | None = None
        self.pin_warned = False

    def set_opp(self, ci: int, oi: int) -> Decision:
        d = Decision(ci, oi)
        self.board.apply(d)
        error = getattr(self.board, "control_error", None)
        if error:
            raise CalibrationError(f"cannot set the frequency: {error}")
        now = self.board.current_opps()[ci]
        if now != oi:
            c = self.board.profile.clusters[ci]
            raise CalibrationError(
                f"cluster {c.name}: asked for {c.opps[oi].khz} kHz but the kernel runs "
                f"{c.opps[now].khz} kHz (thermal limits, another frequency daemon, or a driver "
                "that ignores the request); stop whatever manages cpufreq and calibrate again")
        return d

    def pin(self, ci: int) -> None:
        cpus = set(self.board.cpus_for(ci))
        if not cpus or self.pinner is None:
            return
        try:
            if self.original_cpus is None:
                self.original_cpus = self.pinner.get()
            self.pinner.set(cpus)
        except OSError as exc:
            if not self.pin_warned:
                self.log.warning("cannot pin to CPUs %s (%s); measuring unpinned", sorted(cpus),
                                 exc.strerror or exc)
                self.pin_warned = True

    def unpin(self) -> None:
        if self.original_cpus is not None and self.pinner is not None:
            try:
                self.pinner.set(self.original_cpus)
            except OSError as exc:
                self.log.warning("cannot restore the CPU affinity %s: %s",
                                 sorted(self.original_cpus), exc.strerror or exc)
            self.original_cpus = None

    def idle_power_w(self, idle_s: float) -> float | None:
        if self.meter is None or idle_s <= 0:
            return None
        e0, t0 = _read_meter(self.meter), self.clock()
        self.sleep(idle_s)
        e1, t1 = _read_meter(self.meter), self.clock()
        if e0 is None or e1 is None or t1 <= t0:
            return None
        return (e1 - e0) / (t1 - t0)

    def run_once(self, d: Decision, w: Workload) -> float:
        """One inference; returns the latency the board charges, in ms."""
        started = self.clock()
        h0 = self.host_clock()
        try:
            w.run()
        except (ValueError, RuntimeError) as exc:
            raise CalibrationError(f"model {w.name} failed: {exc}") from None
        host_s = self.host_clock() - h0
        cost = self.board.settle(d, host_s, started)
        if isinstance(self.meter, VirtualBoardMeter):
            self.meter.record(d.cluster, cost)
        return cost.wall_s * 1000.0

    def window(self, d: Decision, w: Workload, runs: int, min_window_s: float,
               max_runs: int, sample_s: float) -> tuple[list[float], float | None]:
        """At least ``runs`` inferences back to back, more until ``min_window_s`` of board time
        has passed (at most ``max_runs``); the latencies in ms and the mean power over the
        window. The meter is read at least every ``sample_s`` (hwmon integrates between reads).
        """
        lat: list[float] = []
        e0 = _read_meter(self.meter)
        t0 = last = self.clock()
        energy_j = 0.0
        while len(lat) < runs or (len(lat) < max_runs and self.clock() - t0 < min_window_s):
            lat.append(self.run_once(d, w))
            if e0 is not None and self.clock() - last >= sample_s:
                e1 = _read_meter(self.meter)
                last = self.clock()
                if e1 is not None:
                    energy_j, e0 = energy_j + e1 - e0, e1
        busy_w: float | None = None
        if e0 is not None:
            e1 = _read_meter(self.meter)
            elapsed_s = self.clock() - t0
            if e1 is not None and elapsed_s > 0:
                busy_w = (energy_j + e1 - e0) / elapsed_s
        return lat, busy_w


def measure(board: Board, workloads: Sequence[Workload], *, runs: int = 5, warmup_runs: int = 1,
            meter: EnergyMeter | None = None, idle_s: float = 0.5, min_window_s: float = 0.1,
            max_runs: int = 2000, sample_s: float = 0.005,
            clock: Clock = time.perf_counter, sleep: Sleep = time.sleep,
            host_clock: Clock | None = None, pinner: Pinner | None = None, progress: Progress | None = None,
            log: logging.Logger | None = None,
            cluster_meters: Mapping[int, EnergyMeter] | None = None) -> list[Measurement]:
    """Measure every workload at every OPP of every cluster (see the module docstring).

    ``cluster_meters``: a meter per cluster index (its own supply rail, :func:`open_rail_meters`)
    used instead of ``meter`` while that cluster is measured: busy and idle power are then the
    cluster's rail (``edgesched fit --power-scope cluster``).

    Per OPP and workload: ``warmup_runs`` untimed, then a window of at least ``runs`` timed runs
    lasting at least ``min_window_s`` of board time (so short models get a median over many
    runs and the meter sees long enough to average), at most ``max_runs``.

    ``clock``/``sleep`` are the board's (an :class:`EmulatedClock` for the virtual board);
    ``host_clock`` times the model on this machine (default: ``clock``).

    Does not close the board (:func:`calibrate` does); restores the CPU affinity it changed.
    """
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1, got {runs}")
    if not workloads:
        raise ConfigError("no models to calibrate with")
    log = log or logging.getLogger("edgesched.calibrate")
    say = progress or (lambda _msg: None)
    cal = _Calibrator(board, meter, clock, host_clock or clock, sleep, pinner, say, log)
    profile = board.profile
    total = sum(len(c.opps) for c in profile.clusters)
    step = 0
    rows: list[Measurement] = []
    try:
        for ci, c in enumerate(profile.clusters):
            cal.pin(ci)
            if cluster_meters is not None:
                cal.meter = cluster_meters.get(ci)
            for oi in reversed(range(len(c.opps))):
                step += 1
                d = cal.set_opp(ci, oi)
                khz = c.opps[oi].khz
                idle_w = cal.idle_power_w(idle_s)
                for w in workloads:
                    for _ in range(warmup_runs):
                        cal.run_once(d, w)
                    lat, busy_w = cal.window(d, w, runs, min_window_s, max(runs, max_runs),
                                             sample_s)
                    row = Measurement(c.name, khz, w.name, statistics.median(lat), busy_w,
                                      idle_w if busy_w is not None else None)
                    rows.append(row)
                    power = ("" if busy_w is None else f" busy {busy_w:.3f} W"
                             + ("" if idle_w is None else f" idle {idle_w:.3f} W"))
                    say(f"[{step}/{total}] {c.name} {khz} kHz {w.name}: "
                        f"{row.latency_ms:.3f} ms ({len(lat)} runs){power}")
    finally:
        cal.unpin()
    return rows


def calibrate(board: Board, workloads: Sequence[Workload], **kw: Any) -> list[Measurement]:
    """:func:`measure`, then give the board back (every cpufreq setting restored) whatever
    happens, KeyboardInterrupt included."""
    try:
        return measure(board, workloads, **kw)
    finally:
        board.close()
