"""Heat: a lumped RC thermal model of the SoC and the kernel's thermal throttling.

Shared by the simulator (``edgesched_sim.engine``) and the virtual board
(``edgesched.power.backends``): the same model heats both, the same governor caps both.

**The RC model.** One thermal node per SoC (the sensor of the device tree's CPU thermal zone):
``C dT/dt = P - (T - T_ambient) / R`` with ``R`` (K/W) the thermal resistance to ambient air and
``C`` (J/K) the heat capacity of die, package and the board copper around it. ``P`` is the
cluster power the power model computes plus ``other_heat_uw``, the rest of the board's power
that ends up in the same copper (memory, PMIC, interconnect). Over an interval of constant power
the exact solution is used (:func:`rc_step_c`)::

    T(t + dt) = T_ss + (T(t) - T_ss) * exp(-dt / (R * C)),   T_ss = T_ambient + P * R

A run starts at the idle steady state (the board has been idle long): :func:`idle_temp_c`.

**Throttling** follows the kernel's thermal framework for one zone:

- the zone is polled every ``polling_delay_passive_ms`` while a passive trip is active (some
  cooling instance has a target), every ``polling_delay_ms`` otherwise
  (drivers/thermal/thermal_core.c ``monitor_thermal_zone``);
- at each poll, for every trip and every cooling instance bound to it by the device tree's
  cooling-maps, the step_wise governor (drivers/thermal/gov_step_wise.c ``get_target_state``,
  ``thermal_zone_trip_update``) compares the temperature with the trip (``throttle`` when at or
  above it) and takes the trend from the last poll (``get_tz_trend``: rising, dropping or
  stable): throttling and rising raises the instance's target to the cooling device's current
  state + 1 (clamped to the map's lower/upper limits); not throttling and dropping lowers it by
  one, and clears it once the state is at the lower limit; otherwise the target stays. A first
  throttle of an instance that has never had a target raises it at once whatever the trend;
- a cooling device takes the highest target of its instances (thermal_helpers.c/
  thermal_core.c ``thermal_cdev_update``, ``__thermal_cdev_select``);
- a cpufreq cooling device's state ``k`` caps its cluster at the ``k``-th OPP below the top
  (drivers/thermal/cpufreq_cooling.c ``cpufreq_set_cur_state``: ``get_state_freq`` indexes the
  frequency table from the top), which cpufreq applies as ``scaling_max_freq``.

Policies see the temperature and the current caps in ``DecisionContext.temp_c`` and
``cap_opp`` (the simulator's engine and the daemon's dispatcher fill both); the observation
vector of the learned policies (version 1) does not carry them, so those policies cannot see
heat until a later observation version and policies retrained on it.

Critical and hot trips shut down or notify in the kernel; here they only count in the peak
temperature. The Raspberry Pi's throttling is the firmware's, not the kernel's; it is modelled
with the same machinery (see ``edgesched/profiles/README.md``).

The thermal section of a profile (optional; a profile without one has no heat model)::

    "thermal": {
      "zone": "cpu_thermal", "ambient_c": 25.0, "cooling": "none",
      "other_heat_uw": 1800000,
      "coolings": {"none": {"r_c_per_w": 12.0, "c_j_per_c": 10.0}, "heatsink": {...}},
      "polling_delay_ms": 1000, "polling_delay_passive_ms": 100,
      "trips": [{"name": "cpu_alert0", "temp_c": 70.0, "hysteresis_c": 2.0, "type": "passive"}],
      "cooling_maps": [{"trip": "cpu_alert0", "clusters": ["big"]}],
      "sources": {...}
    }
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgesched.errors import ProfileError

TRIP_TYPES = ("active", "passive", "hot", "critical")
NO_TARGET = -1
"""An instance without a target (the kernel's THERMAL_NO_TARGET)."""


@dataclass(frozen=True)
class Trip:
    """A trip point of the zone, as the device tree declares it."""

    name: str
    temp_c: float
    hysteresis_c: float = 0.0
    kind: str = "passive"


@dataclass(frozen=True)
class CoolingMap:
    """A cooling-maps entry: the clusters whose cpufreq cooling devices a trip drives.

    ``lower``/``upper`` are the map's state limits (``None``: THERMAL_NO_LIMIT, i.e. 0 and the
    device's highest state)."""

    trip: int
    clusters: tuple[int, ...]
    lower: int | None = None
    upper: int | None = None


@dataclass(frozen=True)
class Cooling:
    """One cooling setting of the board: thermal resistance to ambient and heat capacity."""

    r_c_per_w: float
    c_j_per_c: float
    note: str = ""

    @property
    def tau_s(self) -> float:
        """The time constant R * C in seconds."""
        return self.r_c_per_w * self.c_j_per_c


@dataclass(frozen=True)
class ThermalSpec:
    """A profile's thermal section (see the module notes)."""

    zone: str
    ambient_c: float
    cooling: str
    coolings: Mapping[str, Cooling] = field(hash=False)
    other_heat_uw: float
    polling_delay_ms: int
    polling_delay_passive_ms: int
    trips: tuple[Trip, ...]
    maps: tuple[CoolingMap, ...]
    sources: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def active(self) -> Cooling:
        """The cooling setting in use."""
        return self.coolings[self.cooling]

    def with_conditions(self, ambient_c: float | None = None, cooling: str | None = None,
                        ) -> ThermalSpec:
        """The same board at another ambient temperature or with another cooling setting."""
        if cooling is not None and cooling not in self.coolings:
            raise ProfileError(self.zone, "thermal.cooling", "one of "
                               f"{', '.join(sorted(self.coolings))}, got {cooling!r}")
        return replace(self, ambient_c=self.ambient_c if ambient_c is None else float(ambient_c),
                       cooling=self.cooling if cooling is None else cooling)

    def passive_trip_c(self) -> float:
        """The lowest trip that throttles (``inf`` when none does)."""
        temps = [self.trips[m.trip].temp_c for m in self.maps]
        return min(temps) if temps else math.inf


def rc_step_c(temp_c: float, ambient_c: float, power_w: float, cooling: Cooling,
              dt_s: float) -> float:
    """Temperature after ``dt_s`` seconds at constant ``power_w`` (exact solution of the RC node)."""
    steady = ambient_c + power_w * cooling.r_c_per_w
    return steady + (temp_c - steady) * math.exp(-dt_s / cooling.tau_s)


def steady_temp_c(spec: ThermalSpec, power_uw: float) -> float:
    """The temperature the node settles at with ``power_uw`` of cluster power."""
    return spec.ambient_c + (power_uw + spec.other_heat_uw) * 1e-6 * spec.active.r_c_per_w


def idle_temp_c(spec: ThermalSpec, idle_uw: float) -> float:
    """The idle steady state with the clusters drawing ``idle_uw``: where a run starts."""
    return steady_temp_c(spec, idle_uw)


# ---------------------------------------------------------------------------------------------
# the governor


class StepWise:
    """The step_wise governor over one zone's cpufreq cooling devices (one per cluster).

    ``max_state[c]`` is the cluster's highest cooling state (number of OPPs - 1). ``poll``
    runs one ``thermal_zone_device_update``: every trip's instances are updated
    (``thermal_zone_trip_update``), then each cooling device takes its instances' highest
    target (``thermal_cdev_update``). ``state[c]`` is the cluster's current cooling state.
    """

    def __init__(self, spec: ThermalSpec, max_state: Sequence[int]) -> None:
        self.spec = spec
        self.max_state = tuple(max_state)
        # one instance per (map, cluster) pair: [trip index, cluster, lower, upper]
        self.instances: list[tuple[int, int, int, int]] = []
        for m in spec.maps:
            for c in m.clusters:
                top = self.max_state[c]
                lower = 0 if m.lower is None else min(m.lower, top)
                upper = top if m.upper is None else min(m.upper, top)
                self.instances.append((m.trip, c, lower, upper))
        self.reset()

    def reset(self) -> None:
        self.target = [NO_TARGET] * len(self.instances)
        self.initialized = [False] * len(self.instances)
        self.state = [0] * len(self.max_state)
        self.last_temp_c: float | None = None
        self.passive = 0
        """Instances of passive trips with a target (the zone polls at the passive delay)."""

    def poll(self, temp_c: float) -> None:
        last = self.last_temp_c
        # get_tz_trend: rising (1), dropping (-1) or stable (0) since the last poll
        trend = 0 if last is None or temp_c == last else (1 if temp_c > last else -1)
        self.last_temp_c = temp_c
        trips = self.spec.trips
        for i, (trip, c, lower, upper) in enumerate(self.instances):
            throttle = temp_c >= trips[trip].temp_c
            cur = self.state[c]
            old = self.target[i]
            if not self.initialized[i]:
                new = min(max(cur + 1, lower), upper) if throttle else NO_TARGET
            elif throttle:
                new = min(max(cur + 1, lower), upper) if trend > 0 else old
            elif trend < 0:
                new = NO_TARGET if cur <= lower else min(max(cur - 1, lower), upper)
            else:
                new = old
            if self.initialized[i] and new == old:
                continue
            if trips[trip].kind == "passive":
                if old == NO_TARGET and new != NO_TARGET:
                    self.passive += 1
                elif old != NO_TARGET and new == NO_TARGET:
                    self.passive -= 1
            self.initialized[i] = True
            self.target[i] = new
        for c in range(len(self.state)):
            self.state[c] = max([0] + [self.target[i] for i, inst in enumerate(self.instances)
                                       if inst[1] == c and self.target[i] != NO_TARGET])

    def delay_s(self) -> float:
        """Time to the next poll (``monitor_thermal_zone``)."""
        spec = self.spec
        ms = spec.polling_delay_passive_ms if self.passive > 0 else spec.polling_delay_ms
        return ms / 1000.0


class ThermalState:
    """The heat of one board over time: the RC node, the governor and the OPP caps.

    ``advance(t_s, power_uw)`` integrates with ``power_uw`` of cluster power held from the last
    time to ``t_s``, running the governor at every poll on the way. ``cap[c]`` is the highest OPP
    index cluster ``c`` may run at; ``throttled_s`` the time any cap was below the top OPP;
    ``peak_temp_c`` the highest temperature reached.
    """

    def __init__(self, spec: ThermalSpec, n_opps: Sequence[int], idle_uw: float,
                 start_s: float = 0.0) -> None:
        self.spec = spec
        self.cooling = spec.active
        # constants of the step, read once (the same values ``rc_step_c`` reads per call)
        self._ambient_c = spec.ambient_c
        self._r_c_per_w = self.cooling.r_c_per_w
        self._tau_s = self.cooling.tau_s
        self._other_heat_uw = spec.other_heat_uw
        self.n_opps = tuple(n_opps)
        self.governor = StepWise(spec, [n - 1 for n in self.n_opps])
        self.idle_uw = idle_uw
        self.reset(start_s)

    def reset(self, start_s: float = 0.0) -> None:
        self.governor.reset()
        self.t_s = start_s
        self.temp_c = idle_temp_c(self.spec, self.idle_uw)
        self.peak_temp_c = self.temp_c
        self.throttled_s = 0.0
        self.cap = [n - 1 for n in self.n_opps]
        self.throttled = False
        self.next_poll_s = start_s + self.governor.delay_s()

    def _integrate(self, t_s: float, power_w: float) -> None:
        """:func:`rc_step_c` from ``self.t_s`` to ``t_s`` (written out: the same arithmetic in
        the same order, without the call; this runs at every event of a simulated run)."""
        dt = t_s - self.t_s
        if dt <= 0:
            return
        steady = self._ambient_c + power_w * self._r_c_per_w
        temp = steady + (self.temp_c - steady) * math.exp(-dt / self._tau_s)
        self.temp_c = temp
        if temp > self.peak_temp_c:
            self.peak_temp_c = temp
        if self.throttled:
            self.throttled_s += dt
        self.t_s = t_s

    def advance(self, t_s: float, power_uw: float) -> None:
        if self.next_poll_s <= t_s:
            power_w = (power_uw + self._other_heat_uw) * 1e-6
            while self.next_poll_s <= t_s:
                self._integrate(self.next_poll_s, power_w)
                self.poll()
            self._integrate(t_s, power_w)
            return
        # no poll due on the way: one ``_integrate``, written out (the common case of a run)
        dt = t_s - self.t_s
        if dt <= 0:
            return
        steady = self._ambient_c + (power_uw + self._other_heat_uw) * 1e-6 * self._r_c_per_w
        temp = steady + (self.temp_c - steady) * math.exp(-dt / self._tau_s)
        self.temp_c = temp
        if temp > self.peak_temp_c:
            self.peak_temp_c = temp
        if self.throttled:
            self.throttled_s += dt
        self.t_s = t_s

    def advance_two(self, t1_s: float, power1_uw: float, t2_s: float, power2_uw: float) -> None:
        """``advance(t1_s, power1_uw)`` then ``advance(t2_s, power2_uw)`` (the same arithmetic,
        one call: a run's frequency switch, then the run)."""
        if self.next_poll_s <= t2_s or self.next_poll_s <= t1_s:
            self.advance(t1_s, power1_uw)
            self.advance(t2_s, power2_uw)
            return
        ambient_c = self._ambient_c
        r_c_per_w = self._r_c_per_w
        tau_s = self._tau_s
        temp = self.temp_c
        peak = self.peak_temp_c
        last_s = self.t_s
        dt = t1_s - last_s
        if not dt <= 0:
            steady = ambient_c + (power1_uw + self._other_heat_uw) * 1e-6 * r_c_per_w
            temp = steady + (temp - steady) * math.exp(-dt / tau_s)
            if temp > peak:
                peak = temp
            if self.throttled:
                self.throttled_s += dt
            last_s = t1_s
        dt = t2_s - last_s
        if not dt <= 0:
            steady = ambient_c + (power2_uw + self._other_heat_uw) * 1e-6 * r_c_per_w
            temp = steady + (temp - steady) * math.exp(-dt / tau_s)
            if temp > peak:
                peak = temp
            if self.throttled:
                self.throttled_s += dt
            last_s = t2_s
        self.temp_c = temp
        self.peak_temp_c = peak
        self.t_s = last_s

    def poll(self) -> None:
        """One governor pass at the current temperature; schedules the next poll."""
        gov = self.governor
        gov.poll(self.temp_c)
        self.cap = [n - 1 - s for n, s in zip(self.n_opps, gov.state, strict=True)]
        self.throttled = any(gov.state)
        self.next_poll_s = self.t_s + gov.delay_s()


# ---------------------------------------------------------------------------------------------
# the profile section


def _num(d: Mapping[str, Any], key: str, src: str, where: str, expected: str,
         default: float | None = None, low: float = 0.0, allow_low: bool = False) -> float:
    value = d.get(key, default)
    if value is None:
        raise ProfileError(src, where + key, f"{expected} (missing)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(src, where + key, f"{expected}, got {value!r}")
    if value < low or (value == low and not allow_low):
        raise ProfileError(src, where + key, f"{expected}, got {value!r}")
    return float(value)


THERMAL_KEYS = frozenset({"zone", "ambient_c", "cooling", "coolings", "other_heat_uw",
                          "polling_delay_ms", "polling_delay_passive_ms", "trips",
                          "cooling_maps", "sources"})


def parse_thermal(data: Any, source: str, cluster_names: Sequence[str]) -> ThermalSpec | None:
    """Validate a profile's ``thermal`` section; ``None`` (no heat model) when it is absent."""
    if data is None:
        return None
    w = "thermal."
    if not isinstance(data, Mapping):
        raise ProfileError(source, "thermal", "an object (see edgesched/profiles/README.md)")
    unknown = sorted(set(data) - THERMAL_KEYS)
    if unknown:
        raise ProfileError(source, w + unknown[0], f"one of {', '.join(sorted(THERMAL_KEYS))}")
    raw_coolings = data.get("coolings")
    if not isinstance(raw_coolings, Mapping) or not raw_coolings:
        raise ProfileError(source, w + "coolings", "an object of cooling settings, e.g. "
                           '{"none": {"r_c_per_w": 12.0, "c_j_per_c": 10.0}}')
    coolings: dict[str, Cooling] = {}
    for name, c in raw_coolings.items():
        cw = f"{w}coolings.{name}."
        if not isinstance(c, Mapping):
            raise ProfileError(source, cw[:-1], "an object {r_c_per_w, c_j_per_c}")
        coolings[str(name)] = Cooling(
            r_c_per_w=_num(c, "r_c_per_w", source, cw, "a thermal resistance in K/W > 0"),
            c_j_per_c=_num(c, "c_j_per_c", source, cw, "a heat capacity in J/K > 0"),
            note=str(c.get("note", "")))
    cooling = data.get("cooling", next(iter(coolings)))
    if cooling not in coolings:
        raise ProfileError(source, w + "cooling", f"one of {', '.join(coolings)}, got {cooling!r}")
    raw_trips = data.get("trips", [])
    if not isinstance(raw_trips, list):
        raise ProfileError(source, w + "trips", "a list of {name, temp_c, type}")
    trips: list[Trip] = []
    for i, t in enumerate(raw_trips):
        tw = f"{w}trips[{i}]."
        if not isinstance(t, Mapping):
            raise ProfileError(source, tw[:-1], "an object {name, temp_c, type}")
        kind = t.get("type", "passive")
        if kind not in TRIP_TYPES:
            raise ProfileError(source, tw + "type", f"one of {', '.join(TRIP_TYPES)}, got {kind!r}")
        trips.append(Trip(name=str(t.get("name", f"trip{i}")),
                          temp_c=_num(t, "temp_c", source, tw, "a temperature in C",
                                      low=-273.15),
                          hysteresis_c=_num(t, "hysteresis_c", source, tw, "a hysteresis in C >= 0",
                                            default=0.0, allow_low=True),
                          kind=str(kind)))
    by_name = {t.name: i for i, t in enumerate(trips)}
    raw_maps = data.get("cooling_maps", [])
    if not isinstance(raw_maps, list):
        raise ProfileError(source, w + "cooling_maps", "a list of {trip, clusters}")
    maps: list[CoolingMap] = []
    for i, m in enumerate(raw_maps):
        mw = f"{w}cooling_maps[{i}]."
        if not isinstance(m, Mapping):
            raise ProfileError(source, mw[:-1], "an object {trip, clusters}")
        trip = m.get("trip")
        if trip not in by_name:
            raise ProfileError(source, mw + "trip", f"the name of a trip ({', '.join(by_name)}), "
                               f"got {trip!r}")
        names = m.get("clusters")
        if (not isinstance(names, list) or not names
                or not all(isinstance(n, str) and n in cluster_names for n in names)):
            raise ProfileError(source, mw + "clusters", "a non-empty list of cluster names ("
                               f"{', '.join(cluster_names)}), got {names!r}")
        limits: list[int | None] = []
        for key in ("lower", "upper"):
            v = m.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ProfileError(source, mw + key, f"a cooling state >= 0 or null, got {v!r}")
            limits.append(v)
        maps.append(CoolingMap(trip=by_name[str(trip)],
                               clusters=tuple(list(cluster_names).index(n) for n in names),
                               lower=limits[0], upper=limits[1]))
    polling = _num(data, "polling_delay_ms", source, w, "a polling delay in ms > 0", 1000.0)
    passive = _num(data, "polling_delay_passive_ms", source, w, "a passive polling delay in ms > 0",
                   polling)
    sources = data.get("sources", {})
    return ThermalSpec(
        zone=str(data.get("zone", "cpu_thermal")),
        ambient_c=_num(data, "ambient_c", source, w, "an ambient temperature in C", 25.0,
                       low=-273.15),
        cooling=str(cooling), coolings=coolings,
        other_heat_uw=_num(data, "other_heat_uw", source, w, "heat in uW >= 0", 0.0,
                           allow_low=True),
        polling_delay_ms=int(polling), polling_delay_passive_ms=int(passive),
        trips=tuple(trips), maps=tuple(maps),
        sources=sources if isinstance(sources, Mapping) else {})


def thermal_to_dict(spec: ThermalSpec, cluster_names: Sequence[str]) -> dict[str, Any]:
    """The section in the format :func:`parse_thermal` reads."""
    return {
        "zone": spec.zone, "ambient_c": spec.ambient_c, "cooling": spec.cooling,
        "other_heat_uw": spec.other_heat_uw,
        "coolings": {k: {"r_c_per_w": c.r_c_per_w, "c_j_per_c": c.c_j_per_c, "note": c.note}
                     for k, c in spec.coolings.items()},
        "polling_delay_ms": spec.polling_delay_ms,
        "polling_delay_passive_ms": spec.polling_delay_passive_ms,
        "trips": [{"name": t.name, "temp_c": t.temp_c, "hysteresis_c": t.hysteresis_c,
                   "type": t.kind} for t in spec.trips],
        "cooling_maps": [{"trip": spec.trips[m.trip].name,
                          "clusters": [cluster_names[c] for c in m.clusters],
                          "lower": m.lower, "upper": m.upper} for m in spec.maps],
        "sources": dict(spec.sources),
    }


# ---------------------------------------------------------------------------------------------
# reading heat from sysfs (the daemon)

THERMAL_CLASS_REL = "class/thermal"
FIRMWARE_THROTTLED_REL = "devices/platform/soc/soc:firmware/get_throttled"
"""The Raspberry Pi firmware driver's sysfs form of ``vcgencmd get_throttled`` (Raspberry Pi
kernels, drivers/firmware/raspberrypi.c); absent on other boards and on mainline kernels."""
FIRMWARE_FLAGS = ((0, "under_voltage"), (1, "arm_freq_capped"), (2, "throttled"),
                  (3, "soft_temp_limit"))
"""Bits of the get_throttled word happening now; the same bits + 16 say it happened since boot."""


@dataclass(frozen=True)
class ZoneReading:
    """One ``thermal_zoneN``: its ``type``, temperature and trip points (temp C, type)."""

    name: str
    kind: str
    temp_c: float
    trips: tuple[tuple[float, str], ...] = ()


def _read_text(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def read_zones(sysfs_root: Path | str, read: Callable[[Path], str] = _read_text,
               ) -> list[ZoneReading]:
    """Every readable ``class/thermal/thermal_zone*`` under ``sysfs_root``, in zone order.

    ``temp`` and ``trip_point_K_temp`` are millidegrees Celsius (thermal_sysfs.c ``temp_show``,
    ``trip_point_temp_show``); a zone whose ``temp`` cannot be read (a sensor that is off reads
    EINVAL or ENODATA) is left out."""
    base = Path(sysfs_root) / THERMAL_CLASS_REL
    try:
        names = sorted((p for p in base.iterdir() if p.name.startswith("thermal_zone")
                        and p.name[12:].isdigit()), key=lambda p: int(p.name[12:]))
    except OSError:
        return []
    out: list[ZoneReading] = []
    for zdir in names:
        try:
            temp_c = int(read(zdir / "temp")) / 1000.0
            kind = read(zdir / "type")
        except (OSError, ValueError):
            continue
        trips: list[tuple[float, str]] = []
        k = 0
        while True:
            try:
                t_c = int(read(zdir / f"trip_point_{k}_temp")) / 1000.0
                t_kind = read(zdir / f"trip_point_{k}_type")
            except (OSError, ValueError):
                break
            trips.append((t_c, t_kind))
            k += 1
        out.append(ZoneReading(zdir.name, kind, temp_c, tuple(trips)))
    return out


def read_firmware_throttled(sysfs_root: Path | str, read: Callable[[Path], str] = _read_text,
                            ) -> int | None:
    """The Raspberry Pi firmware's throttle word (hex in sysfs), or None where there is none."""
    try:
        return int(read(Path(sysfs_root) / FIRMWARE_THROTTLED_REL), 16)
    except (OSError, ValueError):
        return None


def firmware_flags(word: int) -> dict[str, bool]:
    """The get_throttled word as named flags (now and ``*_occurred`` since boot)."""
    flags = {name: bool(word >> bit & 1) for bit, name in FIRMWARE_FLAGS}
    flags.update({f"{name}_occurred": bool(word >> (bit + 16) & 1) for bit, name in FIRMWARE_FLAGS})
    return flags


CapRow = tuple[str, int, int | None, int | None]
"""Per cpufreq policy: name, cpuinfo_max_freq, scaling_max_freq (None if unreadable) and the
cap of an active cpufreq cooling device (None without one), all kHz."""


class HeatMonitor:
    """What the daemon reports about heat, read through the injected sysfs root.

    ``caps`` is a callable giving, per cpufreq policy, ``(name, cpuinfo_max_khz,
    scaling_max_khz, cooling cap kHz or None)`` (:meth:`for_board` builds it from a board's
    :class:`~edgesched.power.cpufreq.Cpufreq`). Throttled time is integrated between samples on
    the injected ``clock``: a sample that finds a cooling device capping a policy, or the
    firmware's throttled/capped bits set, counts the time from it to the next sample. ``board``
    may give the exact figure instead (a virtual board that models its heat: ``heat``)."""

    def __init__(self, sysfs_root: Path | str, caps: Callable[[], list[CapRow]] | None = None,
                 clock: Callable[[], float] | None = None,
                 board_heat: ThermalState | None = None) -> None:
        import time

        self.sysfs_root = Path(sysfs_root)
        self.caps = caps
        self.clock = clock or time.monotonic
        self.board_heat = board_heat
        self.throttled_s = 0.0
        self._last_s: float | None = None
        self._last_throttled = False
        self._cached: tuple[float, float] = (-math.inf, math.nan)
        self._caps_khz: list[int | None] = []
        self._trip_c = math.inf
        self._lock = threading.Lock()

    @classmethod
    def for_board(cls, board: object, clock: Callable[[], float] | None = None,
                  ) -> HeatMonitor | None:
        """A monitor on the sysfs root of a cpufreq board (virtual or real); None without one."""
        cpufreq = getattr(board, "cpufreq", None)
        if cpufreq is None:
            return None
        policies = list(getattr(board, "policies", ()))

        def caps() -> list[CapRow]:
            from edgesched.power.cpufreq import thermal_cap_khz

            rows = []
            for info in policies:
                try:
                    max_khz: int | None = int(_read_text(info.path / "scaling_max_freq"))
                except (OSError, ValueError):
                    max_khz = None
                cap = thermal_cap_khz(cpufreq.sysfs_root, info.related_cpus, info.available_khz,
                                      _read_text)
                rows.append((info.name, info.cpuinfo_max_khz, max_khz,
                             None if cap is None else cap[0]))
            return rows

        return cls(cpufreq.sysfs_root, caps, clock, getattr(board, "heat", None))

    def sample(self) -> dict[str, Any]:
        """Read zones, caps and firmware flags now; the document ``GET /v2/status`` shows."""
        with self._lock:
            return self._sample()

    def _sample(self) -> dict[str, Any]:
        now = self.clock()
        zones = read_zones(self.sysfs_root)
        word = read_firmware_throttled(self.sysfs_root)
        rows = self.caps() if self.caps is not None else []
        capped = any(cap is not None for _, _, _, cap in rows)
        fw = firmware_flags(word) if word is not None else None
        throttled = capped or bool(fw and (fw["throttled"] or fw["arm_freq_capped"]))
        if self._last_s is not None and self._last_throttled:
            self.throttled_s += max(0.0, now - self._last_s)
        self._last_s, self._last_throttled = now, throttled
        if zones:
            self._cached = (now, max(z.temp_c for z in zones))
        heat = self.board_heat
        return {
            "zones": [{"zone": z.name, "type": z.kind, "temp_c": z.temp_c,
                       "trips": [{"temp_c": t, "type": k} for t, k in z.trips]} for z in zones],
            "policies": [{"policy": name, "cpuinfo_max_khz": top, "scaling_max_khz": mx,
                          "thermal_cap_khz": cap,
                          "capped_below_top": mx is not None and mx < top}
                         for name, top, mx, cap in rows],
            "throttled": throttled,
            "throttled_s": heat.throttled_s if heat is not None else self.throttled_s,
            "firmware_throttled": (None if fw is None else {"word": hex(word or 0), **fw}),
            "firmware_note": None if fw is not None else
            ("no Raspberry Pi firmware throttle file (" + FIRMWARE_THROTTLED_REL + "); "
             "`vcgencmd get_throttled` is a command and is not run"),
        }

    def temp_c(self, max_age_s: float = 1.0) -> float:
        """The hottest zone's temperature, re-read at most every ``max_age_s``; nan if none."""
        return self.current(max_age_s)[0]

    def current(self, max_age_s: float = 1.0) -> tuple[float, list[int | None]]:
        """The hottest zone's temperature (nan if none) and each policy's cooling cap in kHz
        (None: no cap), re-read at most every ``max_age_s`` (the dispatcher asks per request)."""
        now = self.clock()
        if now - self._cached[0] >= max_age_s:
            zones = read_zones(self.sysfs_root)
            rows = self.caps() if self.caps is not None else []
            self._cached = (now, max(z.temp_c for z in zones) if zones else math.nan)
            self._caps_khz = [cap for _, _, _, cap in rows]
            self._trip_c = min((t for z in zones for t, kind in z.trips if kind == "passive"),
                               default=math.inf)
        return self._cached[1], self._caps_khz

    def trip_c(self) -> float:
        """The lowest passive trip of any zone as of the last :meth:`current` read (inf: none)."""
        return self._trip_c
