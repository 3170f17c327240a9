"""Energy meters behind one interface, and carbon accounting.

Every meter has ``energy_j()``: joules since the meter was opened (a cumulative counter, call it
at least every few minutes so RAPL wrap-arounds are seen). Kinds:

:class:`RaplMeter`
    Intel/AMD RAPL through powercap: ``<root>/devices/virtual/powercap/intel-rapl/intel-rapl:N/
    energy_uj`` (package zones only, sub-zones are part of them), wrap-around at
    ``max_energy_range_uj``. ``energy_uj`` is root-only since Linux 5.10.
:class:`HwmonMeter`
    board power monitors (INA2xx ``power*_input`` in microwatts; INA3221, which has no power
    file, as ``in*_input`` mV times ``curr*_input`` mA) integrated over time with an injected
    clock (trapezoids between readings).
:class:`ModelMeter`
    the device profile's power model, charged per piece of work.

:func:`detect_meter` picks what exists under a sysfs root. Nothing is read at import time.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgesched.device import DeviceProfile
from edgesched.errors import ConfigError, MeterError

RAPL_REL = Path("devices/virtual/powercap/intel-rapl")
HWMON_REL = Path("class/hwmon")
POWER_MONITOR_CHIPS = ("ina3221", "ina219", "ina220", "ina226", "ina230", "ina231", "ina209",
                       "ina233", "ina238", "ina260", "ina2xx")
TOTAL_RAIL_LABELS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDD_5V_IN")
"""Channel labels that measure the whole board input: when present, only they are summed
(the other rails are parts of them)."""
J_PER_KWH = 3.6e6


class EnergyMeter(Protocol):
    kind: str

    def energy_j(self) -> float:
        """Joules since the meter was opened."""

    def describe(self) -> str:
        """Where the figures come from, for logs and the status endpoint."""


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise MeterError(f"{path} is gone; the energy meter disappeared") from None
    except PermissionError:
        raise MeterError(f"cannot read {path}: permission denied; run as root or through the "
                         "shipped systemd unit (RAPL energy_uj is root-only since Linux 5.10)"
                         ) from None
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            raise MeterError(f"{path} has no data now (sensor disabled?)") from None
        raise MeterError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise MeterError(f"{path} does not hold an integer") from None


@dataclass
class _RaplZone:
    name: str
    energy_path: Path
    max_range_uj: int
    last_uj: int


class RaplMeter:
    """Package energy from RAPL powercap counters, wrap-around handled."""

    kind = "rapl"

    def __init__(self, sysfs_root: Path = Path("/sys")) -> None:
        base = Path(sysfs_root) / RAPL_REL
        zones: list[_RaplZone] = []
        for zdir in sorted(base.glob("intel-rapl:*")):
            if zdir.name.count(":") != 1 or not (zdir / "energy_uj").exists():
                continue  # sub-zones (intel-rapl:0:1) are inside their package
            name_file = zdir / "name"
            name = name_file.read_text().strip() if name_file.exists() else zdir.name
            zones.append(_RaplZone(name, zdir / "energy_uj",
                                   _read_int(zdir / "max_energy_range_uj"),
                                   _read_int(zdir / "energy_uj")))
        if not zones:
            raise MeterError(f"no RAPL package zones under {base}")
        self.zones = zones
        self._total_uj = 0

    def energy_j(self) -> float:
        for z in self.zones:
            now = _read_int(z.energy_path)
            delta = now - z.last_uj
            if delta < 0:  # the counter wrapped at max_energy_range_uj
                delta += z.max_range_uj
            self._total_uj += delta
            z.last_uj = now
        return self._total_uj * 1e-6

    def describe(self) -> str:
        return "RAPL " + ", ".join(z.name for z in self.zones)


@dataclass(frozen=True)
class PowerChannel:
    """One measured rail: a direct power file (uW), or a voltage (mV) and current (mA) pair."""

    label: str
    power_path: Path | None = None
    volt_path: Path | None = None
    curr_path: Path | None = None

    def power_uw(self) -> float:
        if self.power_path is not None:
            return float(_read_int(self.power_path))
        if self.volt_path is None or self.curr_path is None:
            raise MeterError(f"power channel {self.label} has neither a power file nor a "
                             "voltage/current pair")
        return float(_read_int(self.volt_path) * _read_int(self.curr_path))  # mV * mA = uW


def _label(d: Path, stem: str, default: str) -> str:
    f = d / f"{stem}_label"
    try:
        return f.read_text(encoding="utf-8").strip() if f.exists() else default
    except OSError:
        return default


def hwmon_channels(sysfs_root: Path, chips: Sequence[str] = POWER_MONITOR_CHIPS,
                   totals_only: bool = True) -> list[PowerChannel]:
    """Power channels of the known power-monitor chips under ``<root>/class/hwmon``; with
    ``totals_only``, only the board-input rails when there are any (:data:`TOTAL_RAIL_LABELS`)."""
    channels: list[PowerChannel] = []
    for hdir in sorted((Path(sysfs_root) / HWMON_REL).glob("hwmon*")):
        try:
            chip = (hdir / "name").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if chip not in chips:
            continue
        powers = sorted(hdir.glob("power*_input"))
        for p in powers:
            stem = p.name[: -len("_input")]
            channels.append(PowerChannel(f"{chip}:{_label(hdir, stem, stem)}", power_path=p))
        if powers:
            continue
        for curr in sorted(hdir.glob("curr*_input")):
            n = curr.name[4:-6]
            volt = hdir / f"in{n}_input"
            if volt.exists():
                channels.append(PowerChannel(f"{chip}:{_label(hdir, f'in{n}', f'in{n}')}",
                                             volt_path=volt, curr_path=curr))
    if not totals_only:
        return channels
    totals = [c for c in channels if c.label.split(":", 1)[1] in TOTAL_RAIL_LABELS]
    return totals or channels


RAIL_ALIASES = {"big": ("arm", "eagle", "a15", "a57", "a72", "a73", "a76"),
                "little": ("kfc", "a7", "a53", "a55")}
"""Label words that name a cluster's supply besides its own name and core: the Exynos 5422's
``VDD_ARM`` (Cortex-A15, "Eagle") and ``VDD_KFC`` (Cortex-A7, "KFC") as the Odroid-XU3 labels
its INA231 rails, and the usual core names."""


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if w}


def cluster_rail_channels(channels: Sequence[PowerChannel], clusters: Sequence[tuple[str, str]],
                          rails: Mapping[str, str] | None = None) -> dict[int, PowerChannel]:
    """Which channel measures each cluster's supply: ``clusters`` are (name, core) pairs
    (``("big", "arm,cortex-a15")``); ``rails`` maps a cluster name to a label (the part after
    ``chip:`` or the whole ``chip:label``) and wins over matching. Otherwise a channel belongs to
    a cluster when a word of its label is the cluster's name, its core (``a15``) or an alias of
    :data:`RAIL_ALIASES`, and to no other cluster. Clusters with no such channel are absent."""
    rails = dict(rails or {})
    out: dict[int, PowerChannel] = {}
    for ci, (name, core) in enumerate(clusters):
        if name in rails:
            want = rails[name].lower()
            hits = [c for c in channels if want in (c.label.lower(),
                                                    c.label.split(":", 1)[-1].lower())]
            if len(hits) == 1:
                out[ci] = hits[0]
            continue
        keys = {name.lower(), *RAIL_ALIASES.get(name.lower(), ())}
        keys |= {w[len("cortex-"):] for w in core.lower().split(",") if w.startswith("cortex-")}

        def matches(ch: PowerChannel, keys: set[str] = keys) -> bool:
            words = _words(ch.label.split(":", 1)[-1])
            return bool(words & keys) or any(w.startswith("cortex") and w[6:] in keys
                                             for w in words)
        hits = [c for c in channels if matches(c)]
        if len(hits) == 1:
            out[ci] = hits[0]
    # a channel claimed by two clusters belongs to neither
    seen: dict[str, list[int]] = {}
    for ci, ch in out.items():
        seen.setdefault(ch.label, []).append(ci)
    return {ci: ch for ci, ch in out.items() if len(seen[ch.label]) == 1}


class HwmonMeter:
    """Board power from hwmon sensors, integrated over time (trapezoids) with ``clock``."""

    kind = "hwmon"

    def __init__(self, sysfs_root: Path = Path("/sys"), *,
                 clock: Callable[[], float] = time.monotonic,
                 channels: Sequence[PowerChannel] | None = None) -> None:
        self.channels = list(channels) if channels is not None else hwmon_channels(sysfs_root)
        if not self.channels:
            raise MeterError(f"no power sensors ({', '.join(POWER_MONITOR_CHIPS)}) under "
                             f"{Path(sysfs_root) / HWMON_REL}")
        self.clock = clock
        self._last_s = clock()
        self._last_uw = self.power_uw()
        self._total_j = 0.0

    def power_uw(self) -> float:
        return sum(c.power_uw() for c in self.channels)

    def energy_j(self) -> float:
        now_s = self.clock()
        p_uw = self.power_uw()
        dt = now_s - self._last_s
        if dt > 0:
            self._total_j += (p_uw + self._last_uw) * 0.5 * dt * 1e-6
        self._last_s, self._last_uw = now_s, p_uw
        return self._total_j

    def describe(self) -> str:
        return "hwmon " + ", ".join(c.label for c in self.channels)


class ModelMeter:
    """The device profile's power model: energy is charged per piece of work."""

    kind = "model"

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self._total_j = 0.0

    def price_j(self, cluster: int, opp_index: int, busy_s: float, threads: int = 1) -> float:
        """Cluster energy (dynamic + static) of ``busy_s`` seconds at an OPP, in joules."""
        c = self.profile.clusters[cluster]
        return c.busy_power_uw(opp_index, threads) * busy_s * 1e-6

    def charge(self, cluster: int, opp_index: int, busy_s: float, threads: int = 1) -> float:
        """Price work and add it to the total; returns its joules."""
        e = self.price_j(cluster, opp_index, busy_s, threads)
        self._total_j += e
        return e

    def energy_j(self) -> float:
        return self._total_j

    def describe(self) -> str:
        return f"model ({self.profile.name} power model)"


def detect_meter(sysfs_root: Path = Path("/sys"), *, clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None) -> RaplMeter | HwmonMeter | None:
    """The first meter that exists and can be read: RAPL, then hwmon; None if neither."""
    log = log or logging.getLogger("edgesched.power.meters")
    root = Path(sysfs_root)
    if (root / RAPL_REL).is_dir():
        try:
            return RaplMeter(root)
        except MeterError as exc:
            log.warning("RAPL present but not usable: %s", exc)
    try:
        return HwmonMeter(root, clock=clock)
    except MeterError as exc:
        log.debug("no hwmon power meter: %s", exc)
    return None


@dataclass(frozen=True)
class CarbonAccount:
    """Grams of CO2e from joules, for a grid intensity and the renewable share of the supply."""

    grid_gco2_per_kwh: float
    renewable_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.grid_gco2_per_kwh) or self.grid_gco2_per_kwh < 0:
            raise ConfigError(f"grid_gco2_per_kwh must be a number >= 0, got "
                              f"{self.grid_gco2_per_kwh!r}")
        if not 0.0 <= self.renewable_fraction <= 1.0:
            raise ConfigError(f"renewable_fraction must be in [0, 1], got "
                              f"{self.renewable_fraction!r}")

    def grams_co2e(self, energy_j: float) -> float:
        return energy_j / J_PER_KWH * self.grid_gco2_per_kwh * (1.0 - self.renewable_fraction)
