"""The power source: mains or battery, read from ``/sys/class/power_supply`` under a sysfs root.

Each supply is a folder ``class/power_supply/NAME`` whose attributes are the kernel's
(``drivers/power/supply/power_supply_sysfs.c``, ``power_supply_show_property``; units from
``Documentation/ABI/testing/sysfs-class-power``):

- ``type``: ``Mains``, ``USB``, ``Wireless``, ``Battery``, ``UPS``;
- ``online`` (Mains, USB, Wireless): 1 when it supplies power;
- ``status`` (Battery): ``Charging``, ``Discharging``, ``Not charging``, ``Full``, ``Unknown``;
- ``capacity``: percent; ``energy_now``/``energy_full`` in uWh, ``power_now`` in uW;
  ``charge_now``/``charge_full`` in uAh, ``current_now`` in uA, ``voltage_now`` in uV;
- ``scope``: ``Device`` for the battery of a peripheral (a mouse), which does not power the
  board and is ignored.

The source is ``battery`` when no mains-like supply is online and a system battery discharges,
``ac`` when a mains-like supply (Mains, USB, Wireless, UPS) is online, else ``unknown`` (no
supply class at all, as on most development boards on a bench supply, or states that say
neither). The battery time follows the energy when the battery reports ``energy_now`` and
``power_now`` (``time = energy_now / power_now``), else its charge (``charge_now /
current_now``, with ``voltage_now`` for the energy and power shown): time to empty while
discharging, time to full while charging; none when the rate is 0 or missing. Some drivers
report the discharge rate as a negative number: its magnitude counts.

Nothing is read at import; the root is injected (the daemon passes ``board.sysfs_root``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPLY_REL = Path("class/power_supply")
MAINS_TYPES = frozenset({"Mains", "USB", "Wireless", "UPS"})
SOURCES = ("ac", "battery", "unknown")


@dataclass(frozen=True)
class Battery:
    name: str
    status: str
    capacity_pct: float | None = None
    energy_uwh: float | None = None
    """Energy left (``energy_now``, or ``charge_now * voltage_now``)."""
    energy_full_uwh: float | None = None
    power_uw: float | None = None
    """Rate of charge or discharge (``power_now``, or ``current_now * voltage_now``)."""
    time_to_empty_s: float | None = None
    time_to_full_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "capacity_pct": self.capacity_pct,
                "energy_uwh": self.energy_uwh, "energy_full_uwh": self.energy_full_uwh,
                "power_uw": self.power_uw,
                "time_to_empty_s": _round(self.time_to_empty_s),
                "time_to_full_s": _round(self.time_to_full_s)}


@dataclass(frozen=True)
class PowerSource:
    source: str
    """``ac``, ``battery`` or ``unknown``."""
    mains_online: tuple[str, ...] = ()
    batteries: tuple[Battery, ...] = ()
    errors: tuple[str, ...] = field(default=())
    """Supplies that could not be read (named, with the reason)."""

    @property
    def time_to_empty_s(self) -> float | None:
        """Estimated time on battery: the energy of every discharging battery over their total
        rate (None unless each discharging battery reports both)."""
        going = [b for b in self.batteries if b.status == "Discharging"]
        if self.source != "battery" or not going:
            return None
        if any(b.energy_uwh is None or not b.power_uw for b in going):
            return None
        energy = sum(b.energy_uwh or 0.0 for b in going)
        power = sum(b.power_uw or 0.0 for b in going)
        return energy / power * 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "mains_online": list(self.mains_online),
                "batteries": [b.to_dict() for b in self.batteries],
                "time_to_empty_s": _round(self.time_to_empty_s),
                "errors": list(self.errors)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _read(folder: Path, name: str) -> str | None:
    try:
        return (folder / name).read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # ENODATA and friends: a driver that cannot say right now
        return None


def _number(folder: Path, name: str) -> float | None:
    text = _read(folder, name)
    if text is None:
        return None
    try:
        value = float(int(text))
    except ValueError:
        return None
    return value


def read_battery(folder: Path) -> Battery:
    """One battery's state (missing attributes stay None)."""
    status = _read(folder, "status") or "Unknown"
    capacity = _number(folder, "capacity")
    energy = _number(folder, "energy_now")
    energy_full = _number(folder, "energy_full")
    power = _number(folder, "power_now")
    voltage = _number(folder, "voltage_now")
    if energy is not None and power is not None:
        power = abs(power)
        rate_h = energy / power if power else None
        full_h = (energy_full - energy) / power if power and energy_full is not None else None
    else:
        charge = _number(folder, "charge_now")
        charge_full = _number(folder, "charge_full")
        current = _number(folder, "current_now")
        current = abs(current) if current is not None else None
        rate_h = charge / current if charge is not None and current else None
        full_h = ((charge_full - charge) / current
                  if charge is not None and charge_full is not None and current else None)
        volts = voltage / 1e6 if voltage else None
        energy = charge * volts if charge is not None and volts else None
        energy_full = charge_full * volts if charge_full is not None and volts else None
        power = current * volts if current is not None and volts else None
    to_empty = rate_h * 3600.0 if status == "Discharging" and rate_h is not None else None
    to_full = (max(0.0, full_h) * 3600.0 if status == "Charging" and full_h is not None
               else None)
    for value in (to_empty, to_full):
        if value is not None and not math.isfinite(value):
            to_empty = to_full = None
    return Battery(name=folder.name, status=status, capacity_pct=capacity, energy_uwh=energy,
                   energy_full_uwh=energy_full, power_uw=power, time_to_empty_s=to_empty,
                   time_to_full_s=to_full)


def read_power_source(sysfs_root: Path | str) -> PowerSource:
    """The power source as the kernel reports it under ``sysfs_root`` (``/sys`` on a board)."""
    base = Path(sysfs_root) / SUPPLY_REL
    try:
        folders = sorted(p for p in base.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return PowerSource("unknown")
    except OSError as exc:
        return PowerSource("unknown", errors=(f"{base}: {exc.strerror or exc}",))
    mains: list[str] = []
    batteries: list[Battery] = []
    errors: list[str] = []
    for folder in folders:
        kind = _read(folder, "type")
        if kind is None:
            errors.append(f"{folder.name}: no readable type")
            continue
        if kind in MAINS_TYPES:
            if _read(folder, "online") == "1":
                mains.append(folder.name)
        elif kind == "Battery":
            if _read(folder, "scope") == "Device":
                continue
            if _read(folder, "present") == "0":
                continue
            batteries.append(read_battery(folder))
    if mains:
        source = "ac"
    elif any(b.status == "Discharging" for b in batteries):
        source = "battery"
    else:
        source = "unknown"
    return PowerSource(source, tuple(mains), tuple(batteries), tuple(errors))


def policy_for_source(source: str, by_source: Mapping[str, str], default: str) -> str:
    """The policy spec for ``source``: its entry in ``by_source`` if set, else ``default``."""
    return by_source.get(source) or default


__all__ = ["MAINS_TYPES", "SOURCES", "SUPPLY_REL", "Battery", "PowerSource", "policy_for_source",
           "read_battery", "read_power_source"]
