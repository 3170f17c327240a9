"""A device profile from a device-tree extract: the CPU and OPP data of a board's Linux device
tree, as JSON, turned into an ``edgesched-device/1`` profile.

The extract is the form of ``edgesched/data/devicetree/*.json``: a top-level ``clusters`` list,
one entry per cpufreq policy (CPUs sharing an OPP table), each with

- ``opps``: ``[{"hz": ..., "microvolt": ...}, ...]`` (``opp-hz`` and ``opp-microvolt``; a
  microvolt triplet ``[target, min, max]`` gives its target; ``null`` where the firmware picks
  the voltage), optionally ``clock_latency_ns``;
- ``core`` (the CPU node's ``compatible``, e.g. ``arm,cortex-a55``), ``cpu_labels``
  (``["cpu0", ...]``) or ``cpus`` (the CPU nodes), ``capacity_dmips_mhz`` and
  ``dynamic_power_coefficient`` when the device tree has them, ``clock_latency_ns``;

and ``soc``, ``source`` as free text. :func:`load_profile` (and so every ``--device``) takes
such a file as it takes a profile: :func:`looks_like_extract` tells them apart.

What a device tree does not hold is filled in, and every filled-in number is named in the
profile's ``sources`` with where it comes from:

- ``capacity_dmips_mhz`` missing: the value the shipped device trees give the same core
  (:data:`CORE_CAPACITY`); for a core none of them has, 1024 (what the kernel assumes when a
  CPU has no ``capacity-dmips-mhz``);
- ``dynamic_power_coefficient`` missing: the shipped device trees' value for the same core
  (:data:`CORE_DYNAMIC_POWER`), else that of the shipped core with the nearest capacity;
- a voltage missing (firmware-managed, as on the Raspberry Pi): the shipped profiles' OPP
  voltages of the same core (else the core with the nearest capacity), interpolated at the
  frequency and rounded to 12.5 mV, as the shipped Raspberry Pi 4 profile's were;
- ``transition_latency_ns``: the largest ``clock-latency-ns`` of the cluster or its OPPs; none:
  500 us, the value the shipped Raspberry Pi 4 profile takes for a latency its device tree
  does not give;
- static and idle power, board floor, memory-bound share and scale: not in any device tree;
  the shipped RK3399 profile's values, its A53 cluster's for a cluster of capacity below 1024
  and its A72 cluster's otherwise (the way the shipped RK3566 and RK3588 profiles were made).

``edgesched calibrate`` or ``edgesched fit`` replaces these with measured values.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping
from typing import Any

from edgesched.errors import ProfileError

__all__ = ["CORE_CAPACITY", "CORE_DYNAMIC_POWER", "looks_like_extract", "profile_from_extract"]

CORE_CAPACITY = {"arm,cortex-a7": 539, "arm,cortex-a15": 1024, "arm,cortex-a53": 485,
                 "arm,cortex-a55": 530, "arm,cortex-a72": 1024, "arm,cortex-a76": 1024}
"""``capacity-dmips-mhz`` by core in the shipped device trees (exynos5422: A7 539, A15 1024;
rk3399: A53 485, A72 1024; rk3588: A55 530, A76 1024)."""
CORE_DYNAMIC_POWER = {"arm,cortex-a7": 90.0, "arm,cortex-a15": 310.0, "arm,cortex-a53": 100.0,
                      "arm,cortex-a55": 228.0, "arm,cortex-a72": 436.0, "arm,cortex-a76": 416.0}
"""``dynamic-power-coefficient`` (uW/MHz/V^2) by core in the shipped device trees (same files)."""
NO_LATENCY_NS = 500_000
LITTLE = {"static_uw_at_1v": 60000.0, "static_exponent": 2.0, "idle_uw": 12000.0}
"""The shipped rk3399 profile's A53 cluster."""
BIG = {"static_uw_at_1v": 180000.0, "static_exponent": 2.0, "idle_uw": 30000.0}
"""The shipped rk3399 profile's A72 cluster."""
BOARD = {"board_floor_uw": 1800000.0, "mem_time_scale": 1.0, "typical_mem_fraction": 0.49}
"""The shipped rk3399 profile's board-level values."""
_CPU_LABEL = re.compile(r"cpu(\d+)")


def looks_like_extract(doc: Any) -> bool:
    """Whether ``doc`` is a device-tree extract rather than a profile: no ``format``, clusters
    of OPP objects, and OPPs given in ``hz``."""
    if not isinstance(doc, Mapping) or "format" in doc:
        return False
    clusters = doc.get("clusters")
    return (isinstance(clusters, list) and bool(clusters)
            and all(isinstance(c, Mapping) and isinstance(c.get("opps"), list) and c["opps"]
                    and all(isinstance(o, Mapping) for o in c["opps"]) for c in clusters)
            and any("hz" in o for c in clusters for o in c["opps"]))


def _int(value: Any) -> int | None:
    if isinstance(value, list) and value:
        value = value[0]  # an opp-microvolt triplet: <target min max>
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _shipped_voltages(core: str) -> list[tuple[int, int]]:
    """(kHz, uV) of every OPP of the shipped profiles' clusters of ``core`` whose voltages come
    from a device tree, by frequency."""
    from edgesched.device import builtin_profiles, load_profile

    points: set[tuple[int, int]] = set()
    for name in builtin_profiles():
        prof = load_profile(name)
        if "voltages" in prof.sources:  # its voltages are themselves a proxy
            continue
        points |= {(o.khz, o.uv) for c in prof.clusters if c.core == core for o in c.opps}
    return sorted(points)


def _proxy_uv(khz: int, table: list[tuple[int, int]]) -> int:
    """The table's voltage at ``khz``: interpolated, held at its ends, rounded to 12.5 mV."""
    ks = [k for k, _ in table]
    i = bisect.bisect_left(ks, khz)
    if i == 0:
        uv = float(table[0][1])
    elif i == len(table):
        uv = float(table[-1][1])
    else:
        (k0, v0), (k1, v1) = table[i - 1], table[i]
        uv = v0 + (v1 - v0) * (khz - k0) / (k1 - k0) if k1 != k0 else float(max(v0, v1))
    return int(round(uv / 12500.0) * 12500)


def _opps(c: Mapping[str, Any], source: str, where: str,
          proxy_core: str) -> tuple[list[dict[str, int]], int]:
    """The cluster's OPPs by frequency (a repeated frequency: its first entry) and how many of
    their voltages were filled in from ``proxy_core``'s."""
    by_khz: dict[int, int | None] = {}
    for j, o in enumerate(c["opps"]):
        hz, uv = _int(o.get("hz")), _int(o.get("microvolt"))
        if hz is None or hz <= 0:
            raise ProfileError(source, f"{where}opps[{j}].hz", f"a frequency in Hz > 0, got "
                               f"{o.get('hz')!r}")
        by_khz.setdefault(hz // 1000, uv if uv is not None and uv > 0 else None)
    missing = sorted(k for k, v in by_khz.items() if v is None)
    if missing:  # firmware-managed voltages (Raspberry Pi): the same core's from the device trees
        table = _shipped_voltages(proxy_core)
        for k in missing:
            by_khz[k] = _proxy_uv(k, table)
    return [{"khz": k, "uv": int(by_khz[k] or 0)} for k in sorted(by_khz)], len(missing)


def _cpus(c: Mapping[str, Any], next_cpu: int) -> list[int]:
    labels = c.get("cpu_labels")
    if isinstance(labels, list) and labels:
        found = [_CPU_LABEL.fullmatch(str(x)) for x in labels]
        if all(found):
            return [int(m.group(1)) for m in found if m]
    nodes = c.get("cpus")
    count = len(nodes) if isinstance(nodes, list) and nodes else 1
    return list(range(next_cpu, next_cpu + count))


def _latency_ns(c: Mapping[str, Any]) -> int | None:
    values = [_int(c.get("clock_latency_ns"))]
    values += [_int(o.get("clock_latency_ns")) for o in c["opps"] if isinstance(o, Mapping)]
    known = [v for v in values if v is not None and v >= 0]
    return max(known) if known else None


def _nearest_core(capacity: int) -> str:
    return min(CORE_DYNAMIC_POWER, key=lambda k: (abs(CORE_CAPACITY[k] - capacity), k))


def profile_from_extract(doc: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    """The ``edgesched-device/1`` document for device-tree extract ``doc`` (see the module
    notes); :func:`~edgesched.device.parse_profile` checks it. Raises ProfileError naming the
    field when an OPP lacks its frequency or voltage."""
    if not looks_like_extract(doc):
        raise ProfileError(source, "clusters", "a device-tree extract: a list of clusters, each "
                           "with opps of hz and microvolt")
    filled: dict[str, list[str]] = {}

    def note(what: str, text: str) -> None:
        filled.setdefault(what, []).append(text)

    raw = list(doc["clusters"])
    cores = [str(c.get("core") or "") for c in raw]
    caps: list[int] = []
    for i, c in enumerate(raw):
        cap = _int(c.get("capacity_dmips_mhz"))
        if cap is None or cap <= 0:
            cap = CORE_CAPACITY.get(cores[i], 1024)
            known = cores[i] in CORE_CAPACITY
            note("capacity", f"cluster {i} ({cores[i] or 'core not named'}): not in the device "
                 f"tree; {cap}, " + ("the shipped device trees' value for this core" if known
                                     else "what the kernel assumes without capacity-dmips-mhz"))
        caps.append(cap)
    clusters: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    next_cpu = 0
    for i, c in enumerate(raw):
        proxy = cores[i] if cores[i] in CORE_DYNAMIC_POWER else _nearest_core(caps[i])
        dpc = c.get("dynamic_power_coefficient")
        if isinstance(dpc, bool) or not isinstance(dpc, (int, float)) or not dpc > 0:
            dpc = CORE_DYNAMIC_POWER[proxy]
            note("dynamic_power_coefficient",
                 f"cluster {i}: not in the device tree; {dpc:g} uW/MHz/V^2, the shipped device "
                 f"trees' value for {proxy}"
                 + ("" if proxy == cores[i] else f" (the shipped core nearest capacity {caps[i]})"))
        latency = _latency_ns(c)
        if latency is None:
            latency = NO_LATENCY_NS
            note("transition_latency", f"cluster {i}: no clock-latency-ns; {NO_LATENCY_NS} ns, "
                 "as the shipped bcm2711 profile")
        power = LITTLE if caps[i] < 1024 else BIG
        note("static_power", f"cluster {i}: not in the device tree; the shipped rk3399 profile's "
             f"{'A53' if power is LITTLE else 'A72'} cluster (static {power['static_uw_at_1v']:g}"
             f" uW at 1 V, idle {power['idle_uw']:g} uW)")
        opps, filled_uv = _opps(c, source, f"clusters[{i}].", proxy)
        if filled_uv:
            note("voltages", f"cluster {i}: {filled_uv} OPP voltages not in the device tree; "
                 f"those of {proxy} OPPs in the shipped profiles, interpolated at each "
                 "frequency (held beyond their range) and rounded to 12.5 mV")
        cpus = _cpus(c, next_cpu)
        next_cpu = max(next_cpu, max(cpus) + 1)
        short = cores[i].split(",")[-1] or "cpu"
        used[short] = used.get(short, 0) + 1
        cname = short if used[short] == 1 else f"{short}-{used[short]}"
        clusters.append({"name": cname, "core": cores[i], "cpus": cpus,
                         "capacity_dmips_mhz": caps[i], "dynamic_power_coefficient": float(dpc),
                         "transition_latency_ns": latency, **power,
                         "opps": opps})
    sources = {"devicetree": str(doc.get("source", source)),
               **{k: "; ".join(v) for k, v in filled.items()},
               "board": "not in the device tree: the shipped rk3399 profile's board floor "
                        f"({BOARD['board_floor_uw'] / 1e6:g} W), memory-time scale and typical "
                        "memory-bound share; replace with `edgesched calibrate` or `fit`"}
    return {"format": "edgesched-device/1", "name": name, "soc": str(doc.get("soc", "")),
            "sources": sources, **BOARD, "clusters": clusters}
