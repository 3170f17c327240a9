"""Device profiles: a board's clusters and operating points, its power model and its latency model.

Format (JSON, ``"format": "edgesched-device/1"``), documented in ``edgesched/profiles/README.md``.

Power follows the kernel Energy Model (Documentation/power/energy-model.rst,
drivers/opp/of.c ``dev_pm_opp_calc_power``): dynamic power of one busy CPU is
``P[uW] = C[uW/MHz/V^2] * V[V]^2 * f[MHz]``. To that the profile adds cluster static power
while the cluster runs, ``idle_uw`` while it idles, and a board floor that no policy changes
(reported separately, never part of a policy comparison). Static power is leakage that grows with
voltage and temperature, plus what stays clocked while the CPUs idle at the OPP::

    static_uw(V, f, T) = static_uw_at_1v * V^static_exponent
                         * exp(static_temp_coeff_per_c * (T - default_temp_c))
                         + idle_dynamic_coefficient * V^2 * f

Every power function takes an optional temperature in Celsius (the profile's ``default_temp_c``
when absent); with ``static_temp_coeff_per_c = 0`` and ``idle_dynamic_coefficient = 0`` (the
defaults) this is the constant-temperature form of earlier profiles, number for number. Why this
form and where it comes from: ``edgesched/profiles/README.md``.

Latency of a piece of work on cluster ``c`` at OPP ``o`` is a compute part that scales with the
frequency and the core's per-clock performance, plus a memory-bound part that does not::

    latency_ms = compute_mcycles * 1000 / (f_mhz * capacity_dmips_mhz / 1024 * threads)
                 + mem_ms * mem_time_scale

``compute_mcycles`` counts cycles of a core with capacity-dmips-mhz 1024 (a Cortex-A72 class core).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgesched.errors import ProfileError
from edgesched.thermal import ThermalSpec, parse_thermal, thermal_to_dict

PROFILE_FORMAT = "edgesched-device/1"
REFERENCE_CAPACITY_DMIPS_MHZ = 1024
MAX_PROFILE_CLUSTERS = 4
"""Most clusters (cpufreq policies) a profile may have: RK3588 has three, SM8150 three, some have four."""


@dataclass(frozen=True)
class Opp:
    """One operating point: frequency in kHz and supply voltage in microvolts."""

    khz: int
    uv: int

    @property
    def mhz(self) -> float:
        return self.khz / 1000.0

    @property
    def volts(self) -> float:
        return self.uv / 1_000_000.0


@dataclass(frozen=True)
class Work:
    """What one inference costs: reference compute cycles and memory-bound time.

    ``threads`` is how many CPUs of the cluster the inference keeps busy (compute divides among
    them, dynamic power multiplies by them).
    """

    compute_mcycles: float
    mem_ms: float
    threads: int = 1

    @classmethod
    def from_split(cls, top_latency_ms: float, mem_fraction: float, top_speed_mhz: float,
                   threads: int = 1) -> Work:
        """Work whose latency on a cluster of reference speed ``top_speed_mhz`` is
        ``top_latency_ms`` with ``mem_fraction`` of it memory-bound."""
        compute_ms = top_latency_ms * (1.0 - mem_fraction)
        return cls(compute_mcycles=compute_ms * top_speed_mhz * threads / 1000.0,
                   mem_ms=top_latency_ms * mem_fraction, threads=threads)


@dataclass(frozen=True)
class Cluster:
    """A cpufreq policy: CPUs sharing one clock and one voltage."""

    name: str
    core: str
    cpus: tuple[int, ...]
    capacity_dmips_mhz: int
    dynamic_power_coefficient: float
    transition_latency_ns: int
    static_uw_at_1v: float
    static_exponent: float
    idle_uw: float
    opps: tuple[Opp, ...]
    static_temp_coeff_per_c: float = 0.0
    """k_T of the leakage: it grows by ``exp(k_T * (T - default_temp_c))`` (0: no temperature term)."""
    idle_dynamic_coefficient: float = 0.0
    """uW/MHz/V^2 of what stays clocked while the CPUs idle at an OPP (L2, SCU, clock tree)."""
    default_temp_c: float = 25.0
    """Temperature the power functions assume when given none (the profile's ``default_temp_c``)."""

    @property
    def max_khz(self) -> int:
        return self.opps[-1].khz

    @property
    def min_khz(self) -> int:
        return self.opps[0].khz

    def speed_mhz(self, opp_index: int) -> float:
        """Reference megacycles per second at this OPP (f scaled by per-clock performance)."""
        return self.opps[opp_index].mhz * self.capacity_dmips_mhz / REFERENCE_CAPACITY_DMIPS_MHZ

    def dynamic_power_uw(self, opp_index: int) -> float:
        """Energy Model dynamic power of one busy CPU, in microwatts."""
        opp = self.opps[opp_index]
        return self.dynamic_power_coefficient * opp.volts**2 * opp.mhz

    def em_power_uw_kernel(self, opp_index: int) -> int:
        """The same figure computed with the kernel's integer arithmetic (dev_pm_opp_calc_power)."""
        opp = self.opps[opp_index]
        mv = opp.uv // 1000
        return int(self.dynamic_power_coefficient) * mv * mv * (opp.khz * 1000 // 1_000_000) // 1_000_000

    def leakage_uw(self, opp_index: int, temp_c: float | None = None) -> float:
        """Leakage of the powered cluster at this OPP's voltage and ``temp_c`` (Celsius; the
        profile's ``default_temp_c`` when None): ``S * V^n * exp(k_T * (T - default_temp_c))``."""
        leak = self.static_uw_at_1v * self.opps[opp_index].volts ** self.static_exponent
        if self.static_temp_coeff_per_c and temp_c is not None:
            leak *= math.exp(self.static_temp_coeff_per_c * (temp_c - self.default_temp_c))
        return leak

    def static_power_uw(self, opp_index: int, temp_c: float | None = None) -> float:
        """Power of the whole cluster held at this OPP with no CPU busy (what a rail monitor reads
        while it idles there): leakage plus ``idle_dynamic_coefficient * V^2 * f``."""
        leak = self.leakage_uw(opp_index, temp_c)
        if self.idle_dynamic_coefficient:
            opp = self.opps[opp_index]
            leak += self.idle_dynamic_coefficient * opp.volts**2 * opp.mhz
        return leak

    def idle_lift_uw(self, opp_index: int, temp_c: float | None = None) -> float:
        """What the simulator adds to the static power at this OPP and ``temp_c`` so that a
        cluster held at an OPP draws no less than idle (0 unless leakage so cold that it would
        take the static power below ``idle_uw``, which has no temperature term)."""
        return max(0.0, self.idle_uw - self.static_power_uw(opp_index, temp_c))

    def busy_power_uw(self, opp_index: int, active_cpus: int = 1,
                      temp_c: float | None = None) -> float:
        """Cluster power with ``active_cpus`` CPUs busy at this OPP (at ``temp_c`` Celsius, the
        profile's default when None)."""
        n = max(1, min(active_cpus, len(self.cpus)))
        return self.dynamic_power_uw(opp_index) * n + self.static_power_uw(opp_index, temp_c)

    def opp_index_at_least(self, khz: float) -> int:
        """Index of the lowest OPP at or above ``khz`` (the top one if none is)."""
        for i, opp in enumerate(self.opps):
            if opp.khz >= khz:
                return i
        return len(self.opps) - 1

    def opp_index_of(self, khz: int) -> int:
        """Index of the OPP nearest to ``khz``."""
        return min(range(len(self.opps)), key=lambda i: abs(self.opps[i].khz - khz))


@dataclass(frozen=True)
class DeviceProfile:
    """A board: clusters, board floor power, memory-system scale, and where the numbers came from."""

    name: str
    soc: str
    clusters: tuple[Cluster, ...]
    board_floor_uw: float
    mem_time_scale: float
    typical_mem_fraction: float = 0.3
    """Memory-bound share of a model's latency at top speed when nothing better is known."""
    source: str = ""
    sources: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    thermal: ThermalSpec | None = None
    """The heat model and the kernel's throttling (:mod:`edgesched.thermal`); ``None``: none."""

    # computed once per profile (the profile is frozen): both are asked for at every decision
    @functools.cached_property
    def max_speed_mhz(self) -> float:
        """Fastest reference speed anywhere on the board (top OPP of the biggest cluster)."""
        return max(c.speed_mhz(len(c.opps) - 1) for c in self.clusters)

    @functools.cached_property
    def fastest_cluster(self) -> int:
        return max(range(len(self.clusters)),
                   key=lambda i: self.clusters[i].speed_mhz(len(self.clusters[i].opps) - 1))

    @property
    def idle_power_uw(self) -> float:
        """Power of all clusters idle (without the board floor)."""
        return sum(c.idle_uw for c in self.clusters)

    def capacity(self, cluster: int) -> float:
        """Kernel-normalised capacity (0..1024] of a cluster (topology_normalize_cpu_scale)."""
        c = self.clusters[cluster]
        top = max(k.capacity_dmips_mhz * k.max_khz for k in self.clusters)
        return 1024.0 * c.capacity_dmips_mhz * c.max_khz / top

    def latency_ms(self, work: Work, cluster: int, opp_index: int) -> float:
        c = self.clusters[cluster]
        threads = max(1, min(work.threads, len(c.cpus)))
        return (work.compute_mcycles * 1000.0 / (c.speed_mhz(opp_index) * threads)
                + work.mem_ms * self.mem_time_scale)

    def busy_energy_j(self, work: Work, cluster: int, opp_index: int) -> float:
        """Energy of the cluster running ``work`` at this OPP (dynamic + static), in joules."""
        c = self.clusters[cluster]
        power_uw = c.busy_power_uw(opp_index, work.threads)
        return power_uw * self.latency_ms(work, cluster, opp_index) * 1e-9

    def work_from_top_latency(self, top_latency_ms: float, mem_fraction: float | None = None,
                              threads: int = 1) -> Work:
        """Work that takes ``top_latency_ms`` at the top OPP of the fastest cluster.

        The daemon uses it with the host's measured service time standing for the top OPP.
        """
        frac = self.typical_mem_fraction if mem_fraction is None else mem_fraction
        c = self.clusters[self.fastest_cluster]
        n = max(1, min(threads, len(c.cpus)))
        compute_ms = top_latency_ms * (1.0 - frac)
        return Work(compute_mcycles=compute_ms * c.speed_mhz(len(c.opps) - 1) * n / 1000.0,
                    mem_ms=top_latency_ms * frac / self.mem_time_scale, threads=n)

    def min_latency_ms(self, work: Work) -> float:
        """Latency at the top OPP of the fastest cluster for this work."""
        return min(self.latency_ms(work, i, len(c.opps) - 1) for i, c in enumerate(self.clusters))


# ---------------------------------------------------------------------------------------------
# loading and validation


def _req(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], src: str, where: str,
         expected: str) -> Any:
    if key not in d:
        raise ProfileError(src, where + key, f"{expected} (missing)")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ProfileError(src, where + key, f"{expected}, got {type(value).__name__} {value!r}")
    return value


def _positive(value: float, src: str, fld: str, expected: str, allow_zero: bool = False) -> float:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ProfileError(src, fld, f"{expected}, got {value!r}")
    return value


def _parse_cluster(d: Any, src: str, idx: int, default_temp_c: float = 25.0) -> Cluster:
    where = f"clusters[{idx}]."
    if not isinstance(d, Mapping):
        raise ProfileError(src, f"clusters[{idx}]", "an object")
    num = (int, float)
    name = _req(d, "name", str, src, where, "a cluster name")
    cpus = _req(d, "cpus", list, src, where, "a non-empty list of CPU numbers")
    if not cpus or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
        raise ProfileError(src, where + "cpus", f"a non-empty list of CPU numbers >= 0, got {cpus!r}")
    if len(set(cpus)) != len(cpus):
        raise ProfileError(src, where + "cpus", f"distinct CPU numbers, got {cpus!r}")
    cap = _req(d, "capacity_dmips_mhz", int, src, where, "an integer capacity-dmips-mhz > 0")
    _positive(cap, src, where + "capacity_dmips_mhz", "an integer capacity-dmips-mhz > 0")
    dpc = _req(d, "dynamic_power_coefficient", num, src, where,
               "a dynamic-power-coefficient in uW/MHz/V^2 > 0")
    _positive(dpc, src, where + "dynamic_power_coefficient", "a coefficient in uW/MHz/V^2 > 0")
    lat = _req(d, "transition_latency_ns", int, src, where, "a transition latency in ns >= 0")
    _positive(lat, src, where + "transition_latency_ns", "a latency in ns >= 0", allow_zero=True)
    s1v = _req(d, "static_uw_at_1v", num, src, where, "static power in uW at 1 V >= 0")
    _positive(s1v, src, where + "static_uw_at_1v", "static power in uW >= 0", allow_zero=True)
    sexp = d.get("static_exponent", 2.0)
    if isinstance(sexp, bool) or not isinstance(sexp, num):
        raise ProfileError(src, where + "static_exponent", f"a number, got {sexp!r}")
    idle = _req(d, "idle_uw", num, src, where, "idle power in uW >= 0")
    _positive(idle, src, where + "idle_uw", "idle power in uW >= 0", allow_zero=True)
    ktemp = d.get("static_temp_coeff_per_c", 0.0)
    if isinstance(ktemp, bool) or not isinstance(ktemp, num) or not 0 <= ktemp <= 0.2:
        raise ProfileError(src, where + "static_temp_coeff_per_c", "a leakage temperature "
                           f"coefficient in 1/C between 0 and 0.2, got {ktemp!r}")
    idyn = d.get("idle_dynamic_coefficient", 0.0)
    if isinstance(idyn, bool) or not isinstance(idyn, num):
        raise ProfileError(src, where + "idle_dynamic_coefficient", f"a number, got {idyn!r}")
    _positive(idyn, src, where + "idle_dynamic_coefficient", "a coefficient in uW/MHz/V^2 >= 0",
              allow_zero=True)
    raw_opps = _req(d, "opps", list, src, where, "a non-empty list of {khz, uv}")
    if not raw_opps:
        raise ProfileError(src, where + "opps", "a non-empty list of {khz, uv}")
    opps: list[Opp] = []
    for j, o in enumerate(raw_opps):
        ow = f"{where}opps[{j}]."
        if not isinstance(o, Mapping):
            raise ProfileError(src, f"{where}opps[{j}]", "an object {khz, uv}")
        khz = _req(o, "khz", int, src, ow, "a frequency in kHz (integer > 0)")
        uv = _req(o, "uv", int, src, ow, "a voltage in microvolts (integer > 0)")
        _positive(khz, src, ow + "khz", "a frequency in kHz > 0")
        _positive(uv, src, ow + "uv", "a voltage in microvolts > 0")
        if opps and khz <= opps[-1].khz:
            raise ProfileError(src, ow + "khz", f"frequencies in increasing order, {khz} after "
                               f"{opps[-1].khz}")
        opps.append(Opp(khz=khz, uv=uv))
    if idle > (s1v * opps[0].volts ** float(sexp) + float(idyn) * opps[0].volts ** 2 * opps[0].mhz
               + 1e-9) and s1v > 0:
        raise ProfileError(src, where + "idle_uw", "idle power no higher than the static power at "
                           "the lowest OPP")
    return Cluster(name=name, core=str(d.get("core", "")), cpus=tuple(cpus),
                   capacity_dmips_mhz=cap, dynamic_power_coefficient=float(dpc),
                   transition_latency_ns=lat, static_uw_at_1v=float(s1v),
                   static_exponent=float(sexp), idle_uw=float(idle), opps=tuple(opps),
                   static_temp_coeff_per_c=float(ktemp), idle_dynamic_coefficient=float(idyn),
                   default_temp_c=default_temp_c)


def parse_profile(data: Any, source: str) -> DeviceProfile:
    """Validate a decoded profile document; errors name ``source``, the field and the expectation."""
    if not isinstance(data, Mapping):
        raise ProfileError(source, "<document>", "a JSON object")
    fmt = data.get("format")
    if fmt != PROFILE_FORMAT:
        raise ProfileError(source, "format", f"{PROFILE_FORMAT!r}, got {fmt!r}")
    name = _req(data, "name", str, source, "", "a profile name")
    floor = _req(data, "board_floor_uw", (int, float), source, "", "board floor power in uW >= 0")
    _positive(floor, source, "board_floor_uw", "board floor power in uW >= 0", allow_zero=True)
    mem = _req(data, "mem_time_scale", (int, float), source, "", "a memory-time scale > 0")
    _positive(mem, source, "mem_time_scale", "a memory-time scale > 0")
    frac = data.get("typical_mem_fraction", 0.3)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        raise ProfileError(source, "typical_mem_fraction", f"a fraction in [0, 1), got {frac!r}")
    raw = _req(data, "clusters", list, source, "", "a non-empty list of clusters")
    if not raw:
        raise ProfileError(source, "clusters", "a non-empty list of clusters")
    if len(raw) > MAX_PROFILE_CLUSTERS:
        raise ProfileError(source, "clusters", f"one to {MAX_PROFILE_CLUSTERS} clusters (DVFS domains), "
                           f"got {len(raw)}")
    temp = data.get("default_temp_c", 25.0)
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not -40 <= temp <= 125:
        raise ProfileError(source, "default_temp_c", f"a temperature in Celsius between -40 and "
                           f"125, got {temp!r}")
    clusters = tuple(_parse_cluster(c, source, i, float(temp)) for i, c in enumerate(raw))
    seen: set[int] = set()
    for i, c in enumerate(clusters):
        if seen & set(c.cpus):
            raise ProfileError(source, f"clusters[{i}].cpus", "CPUs not listed in another cluster")
        seen |= set(c.cpus)
    sources = data.get("sources", {})
    return DeviceProfile(name=name, soc=str(data.get("soc", "")), clusters=clusters,
                         board_floor_uw=float(floor), mem_time_scale=float(mem),
                         typical_mem_fraction=float(frac), source=source,
                         sources=sources if isinstance(sources, Mapping) else {},
                         thermal=parse_thermal(data.get("thermal"), source,
                                               [c.name for c in clusters]))


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    folder = resources.files("edgesched") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a shipped profile by name (``rk3399``) or any profile file by path; a device-tree
    extract (:mod:`edgesched.devicetree`) is turned into a profile first."""
    text: str
    source = str(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in builtin_profiles():
        ref = resources.files("edgesched") / "profiles" / f"{name_or_path}.json"
        text = ref.read_text(encoding="utf-8")
        source = f"{name_or_path} (built-in)"
    else:
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(source, "<file>", "an existing profile file or one of "
                               f"{', '.join(builtin_profiles())}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(source, "<file>", f"a readable UTF-8 file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(source, f"<json line {exc.lineno}>", f"valid JSON ({exc.msg})") from None
    from edgesched.devicetree import looks_like_extract, profile_from_extract

    if looks_like_extract(data):  # a device tree's CPU and OPP data: filled in, sources named
        data = profile_from_extract(data, Path(name_or_path).stem, source)
    return parse_profile(data, source)


def profile_to_dict(profile: DeviceProfile) -> dict[str, Any]:
    """The profile as a document in the same format ``load_profile`` reads."""
    return {
        "format": PROFILE_FORMAT,
        "name": profile.name,
        "soc": profile.soc,
        "sources": dict(profile.sources),
        "board_floor_uw": profile.board_floor_uw,
        "mem_time_scale": profile.mem_time_scale,
        "typical_mem_fraction": profile.typical_mem_fraction,
        **({"default_temp_c": profile.clusters[0].default_temp_c}
           if profile.clusters[0].default_temp_c != 25.0 else {}),
        "clusters": [
            {
                "name": c.name, "core": c.core, "cpus": list(c.cpus),
                "capacity_dmips_mhz": c.capacity_dmips_mhz,
                "dynamic_power_coefficient": c.dynamic_power_coefficient,
                "transition_latency_ns": c.transition_latency_ns,
                "static_uw_at_1v": c.static_uw_at_1v, "static_exponent": c.static_exponent,
                "idle_uw": c.idle_uw,
                **({"static_temp_coeff_per_c": c.static_temp_coeff_per_c}
                   if c.static_temp_coeff_per_c else {}),
                **({"idle_dynamic_coefficient": c.idle_dynamic_coefficient}
                   if c.idle_dynamic_coefficient else {}),
                "opps": [{"khz": o.khz, "uv": o.uv} for o in c.opps],
            }
            for c in profile.clusters
        ],
        **({"thermal": thermal_to_dict(profile.thermal, [c.name for c in profile.clusters])}
           if profile.thermal is not None else {}),
    }


def opp_table(profile: DeviceProfile) -> Sequence[tuple[int, int]]:
    """Flat (cluster, opp_index) pairs of the board, in cluster then frequency order."""
    return [(ci, oi) for ci, c in enumerate(profile.clusters) for oi in range(len(c.opps))]
