"""Domain randomisation: seeded plausible boards and workloads, and the held-out boards.

Boards
======

:func:`random_board` draws a :class:`~edgesched.device.DeviceProfile` from a seed: one to four
clusters (cpufreq policies), each with its OPP table (kHz, uV), capacity-dmips-mhz, Energy Model
dynamic-power-coefficient, leakage, idle power and transition latency, plus the board's floor
power and memory system. The same seed gives the same board on every machine (numpy's PCG64).
Every value is drawn inside the range the device trees below show, widened a little:

=============================  ===================  ==========================================
quantity                       range drawn          seen in
=============================  ===================  ==========================================
clusters                       1-4                  1 bcm2711 (4x A72), msm8916 (4x A53);
                                                    2 rk3399, exynos5422, rk3568 (1, A55);
                                                    3 rk3588 (A55 + 2x A76), sm8150
                                                    (silver/gold/prime)
CPUs per cluster               1-4                  sm8150 prime: 1; rk3588 A76 domains: 2;
                                                    rk3399 big: 2; most little clusters: 4
capacity-dmips-mhz             380-1024, the        rk3399 A53 485, exynos5422 A7 539,
                               fastest cluster      rk3588 A55 530, sm8150 silver 488, every
                               1024                 big core 1024 (A72, A15, A76, Kryo gold
                                                    and prime)
dynamic-power-coefficient      0.16-0.50 x the      rk3399 A53 100 (0.21), A72 436 (0.43);
(uW/MHz/V^2)                   capacity             exynos5422 A7 90 (0.17), A15 310 (0.30);
                                                    rk3588 A55 228 (0.43); rk3568 A55 187;
                                                    sm8150 silver 232 (0.48), gold 369 (0.36),
                                                    prime 421 (0.41)
lowest OPP                     200-600 MHz          exynos5422 200, rk3399 408, bcm2711 600
top OPP                        0.8-2.8 GHz          exynos5422 A7 1.4, A15 2.0; rk3399 1.416 /
                                                    1.8; bcm2711 1.5; rk3588 A76 2.4; sm8150
                                                    prime 2.84
OPPs per cluster               4-20                 bcm2711 10, rk3399 6 / 8, exynos5422 13 / 19
voltage, lowest OPP            0.65-0.90 V          rk3588 0.675-0.75, rk3399 0.825,
                                                    bcm2711 0.825, exynos5422 0.90
voltage, top OPP               0.95-1.35 V          rk3588 A76 1.0, bcm2711 1.0625, rk3399
                                                    1.125 / 1.2, exynos5422 1.275 / 1.3125
transition latency             20-500 us            rk3399 and rk3588 40 us (clock-latency-ns),
                                                    exynos5422 140 us, bcm2711 500 us
static power at 1 V            40-320 mW/cluster    shipped profiles 50-300 mW
idle power                     0.15-0.5 x static    shipped profiles 0.25-0.49 x the static
                               at the lowest OPP    power at the lowest OPP
static exponent                2.0-3.0              shipped profiles 2.0 (leakage grows at
                                                    least with V^2)
board floor                    1.0-4.0 W            shipped 1.8 (rk3399), 2.0 (exynos5422),
                                                    3.0 (bcm2711)
memory-time scale              0.5-1.5              shipped 0.5-1.0
typical memory-bound share     0.15-0.55            shipped 0.2-0.49
=============================  ===================  ==========================================

Sources: the shipped profiles (``edgesched/profiles/``) and the device-tree extracts in
``edgesched/data/devicetree/`` (rk3399, exynos5422, bcm2711); Linux ``rk3588s.dtsi`` /
``rk3588-base.dtsi`` (A55 capacity-dmips-mhz 530, dynamic-power-coefficient 228,
clock-latency-ns 40000, OPP voltages from 675 mV), ``rk356x.dtsi`` (A55 dynamic-power-coefficient
187), ``qcom/sm8150.dtsi`` (Kryo 485 silver 488 / 232, gold 1024 / 369, prime 1024 / 421),
``qcom/msm8916.dtsi`` (4x A53, one policy), ``nvidia/tegra210.dtsi`` (4x A57, one policy),
``amlogic/meson-g12b.dtsi`` (A53 + A73), ``allwinner/sun50i-h616.dtsi`` (4x A53), read through
the project's search tool. The top OPPs of rk3588 A76 (2.4 GHz) and sm8150 prime (2.84 GHz) are
the vendors' published clocks.

Consistency rules every board obeys (and :func:`check_board` tests):

- clusters in order of top speed (capacity x top frequency, strictly increasing), capacities
  and top frequencies non-decreasing (as in every tree above), the last cluster's 1024;
- frequencies strictly increasing, voltages non-decreasing with frequency (a convex curve
  ``V = Vmin + (Vmax - Vmin) x t^g``, g in 1-2.5, on the 6.25 mV grid of common PMICs);
- a bigger core costs at least as much per cycle: dynamic-power-coefficient / capacity is
  non-decreasing along the clusters, and so is the cluster's static power;
- idle power at most the static power at the lowest OPP (what ``parse_profile`` checks).

Workloads
=========

:func:`random_scenario` draws a :class:`~edgesched_sim.scenarios.Scenario` for a board: the
arrival process (Poisson, two-state MMPP bursts, or replay of the shipped Azure LLM trace from a
random offset, randomly thinned and time-scaled), a mix of two to four of the simulator's
models, each class's priority (shares drawn from a Dirichlet) and deadline (a multiple of the
model's top-speed service time, covering the blocking of the largest model of the mix), and a
load between 5 % and 50 % of the board's top speed (MMPP bursts 50-110 %). About a fifth of
the job sets are infeasible (no schedule serves every request: bursts, and small models queued
behind a running MobileNet), as on a real overloaded board; ``edgesched eval`` says which. The job set is
:func:`edgesched_sim.scenarios.generate` of that scenario, so it is deterministic in the seed.

Held-out boards
===============

``HELDOUT_SEEDS`` (``range(900_000, 900_020)``) are 20 board seeds kept out of training:
:func:`training_board_seed` never returns one (it draws again), and the training sampler
(:class:`TrainingSampler`) only draws its seeds through it. ``edgesched eval --device
random:SEED`` evaluates one generated board, ``--device heldout`` all 20 in turn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesched.device import REFERENCE_CAPACITY_DMIPS_MHZ, Cluster, DeviceProfile, Opp, load_profile
from edgesched.errors import ProfileError
from edgesched_sim.scenarios import JobSet, RequestClass, Scenario, generate, load_scenario
from edgesched_sim.workloads import MODELS

HELDOUT_SEEDS: tuple[int, ...] = tuple(range(900_000, 900_020))
"""Board seeds never used in training (see the module notes)."""

RANDOM_PREFIX = "random:"
HELDOUT = "heldout"

VOLT_STEP_UV = 6250
"""Voltage grid (uV): the step of the RK808/RK806-class PMIC bucks."""

RANGES: dict[str, tuple[float, float]] = {
    "clusters": (1, 4),
    "cpus_per_cluster": (1, 4),
    "capacity_dmips_mhz": (380, 1024),
    "dpc_per_capacity": (0.16, 0.50),
    "min_mhz": (200, 600),
    "max_mhz": (800, 2800),
    "opps": (4, 20),
    "vmin_v": (0.65, 0.90),
    "vmax_v": (0.95, 1.35),
    "voltage_curve_exponent": (1.0, 2.5),
    "transition_us": (20, 500),
    "static_uw_at_1v": (40_000, 320_000),
    "idle_share_of_static": (0.15, 0.5),
    "static_exponent": (2.0, 3.0),
    "board_floor_uw": (1_000_000, 4_000_000),
    "mem_time_scale": (0.5, 1.5),
    "typical_mem_fraction": (0.15, 0.55),
}
"""Every drawn quantity's range (see the module table)."""

CLUSTER_NAMES = {1: ("cpu",), 2: ("little", "big"), 3: ("little", "mid", "big"),
                 4: ("little", "mid", "big", "prime")}


def _uniform(rng: np.random.Generator, key: str) -> float:
    lo, hi = RANGES[key]
    return float(rng.uniform(lo, hi))


def _log_uniform(rng: np.random.Generator, key: str) -> float:
    lo, hi = RANGES[key]
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _opps(rng: np.random.Generator, max_mhz: float) -> tuple[Opp, ...]:
    lo_mhz = min(_uniform(rng, "min_mhz"), max_mhz * 0.5)
    lo_n, hi_n = RANGES["opps"]
    n = int(rng.integers(int(lo_n), int(hi_n) + 1))
    # evenly spaced with jitter, on a 1 MHz grid, strictly increasing
    grid = np.linspace(lo_mhz, max_mhz, n)
    step = (max_mhz - lo_mhz) / max(1, n - 1)
    jitter = rng.uniform(-0.3, 0.3, size=n) * step
    jitter[0] = jitter[-1] = 0.0
    mhz = sorted({round(float(x)) for x in grid + jitter})
    vmin = _uniform(rng, "vmin_v")
    vmax = max(_uniform(rng, "vmax_v"), vmin + 0.05)
    g = _uniform(rng, "voltage_curve_exponent")
    opps: list[Opp] = []
    last_uv = 0
    span = max(1, mhz[-1] - mhz[0])
    for f in mhz:
        t = (f - mhz[0]) / span
        uv = math.ceil((vmin + (vmax - vmin) * t**g) * 1e6 / VOLT_STEP_UV) * VOLT_STEP_UV
        last_uv = max(last_uv, uv)
        opps.append(Opp(khz=f * 1000, uv=last_uv))
    return tuple(opps)


def random_board(seed: int, n_clusters: int | None = None,
                 max_clusters: int = 4) -> DeviceProfile:
    """The generated board of ``seed`` (``n_clusters`` forces the count; otherwise 1 to
    ``max_clusters``, uniformly)."""
    rng = np.random.default_rng([seed, 0x0B0A7D])
    lo, hi = (int(x) for x in RANGES["clusters"])
    hi = min(hi, max_clusters)
    n = int(rng.integers(lo, hi + 1)) if n_clusters is None else int(n_clusters)
    if not lo <= n <= int(RANGES["clusters"][1]):
        raise ValueError(f"n_clusters must be in 1..4, got {n}")
    for _ in range(100):  # rejection: top speeds strictly increasing, frequencies in range
        caps = sorted(round(_uniform(rng, "capacity_dmips_mhz")) for _ in range(n - 1))
        caps.append(REFERENCE_CAPACITY_DMIPS_MHZ)
        tops = sorted(_uniform(rng, "max_mhz") for _ in range(n))
        speeds = [c * f for c, f in zip(caps, tops, strict=True)]
        if all(b > a * 1.05 for a, b in itertools.pairwise(speeds)):
            break
    else:  # pragma: no cover - the ranges make this vanishingly rare
        raise RuntimeError(f"no consistent board for seed {seed}")
    ratios = sorted(_uniform(rng, "dpc_per_capacity") for _ in range(n))
    statics = sorted(_uniform(rng, "static_uw_at_1v") for _ in range(n))
    clusters: list[Cluster] = []
    first_cpu = 0
    for i in range(n):
        opps = _opps(rng, tops[i])
        ncpu = int(rng.integers(int(RANGES["cpus_per_cluster"][0]),
                                int(RANGES["cpus_per_cluster"][1]) + 1))
        sexp = _uniform(rng, "static_exponent")
        static_low = statics[i] * opps[0].volts ** sexp
        name = CLUSTER_NAMES[n][i]
        clusters.append(Cluster(
            name=name, core=f"generated-{caps[i]}",
            cpus=tuple(range(first_cpu, first_cpu + ncpu)), capacity_dmips_mhz=caps[i],
            dynamic_power_coefficient=round(ratios[i] * caps[i], 1),
            transition_latency_ns=round(_log_uniform(rng, "transition_us")) * 1000,
            static_uw_at_1v=round(statics[i], 1), static_exponent=round(sexp, 3),
            idle_uw=round(static_low * _uniform(rng, "idle_share_of_static"), 1), opps=opps))
        first_cpu += ncpu
    return DeviceProfile(
        name=f"random-{seed}", soc=f"generated (seed {seed})", clusters=tuple(clusters),
        board_floor_uw=round(_uniform(rng, "board_floor_uw"), 1),
        mem_time_scale=round(_uniform(rng, "mem_time_scale"), 3),
        typical_mem_fraction=round(_uniform(rng, "typical_mem_fraction"), 3),
        source=f"{RANDOM_PREFIX}{seed}",
        sources={"generator": "edgesched_sim.randomise.random_board", "seed": seed})


def check_board(profile: DeviceProfile) -> list[str]:
    """What in ``profile`` breaks the documented ranges or consistency rules (empty: none)."""
    bad: list[str] = []

    def within(key: str, value: float, slack: float = 1e-9) -> None:
        lo, hi = RANGES[key]
        if not lo - slack <= value <= hi + slack:
            bad.append(f"{key} {value} outside [{lo}, {hi}]")

    cl = profile.clusters
    within("clusters", len(cl))
    within("board_floor_uw", profile.board_floor_uw)
    within("mem_time_scale", profile.mem_time_scale)
    within("typical_mem_fraction", profile.typical_mem_fraction)
    if cl[-1].capacity_dmips_mhz != REFERENCE_CAPACITY_DMIPS_MHZ:
        bad.append("the fastest cluster's capacity is not 1024")
    for i, c in enumerate(cl):
        within("cpus_per_cluster", len(c.cpus))
        within("capacity_dmips_mhz", c.capacity_dmips_mhz)
        within("dpc_per_capacity", c.dynamic_power_coefficient / c.capacity_dmips_mhz, 1e-3)
        within("opps", len(c.opps))
        within("max_mhz", c.opps[-1].mhz, 1.0)
        within("min_mhz", c.opps[0].mhz, 1.0)
        within("vmin_v", c.opps[0].volts, VOLT_STEP_UV / 1e6)
        within("vmax_v", c.opps[-1].volts, 0.05 + VOLT_STEP_UV / 1e6)
        within("transition_us", c.transition_latency_ns / 1000.0, 0.5)
        within("static_uw_at_1v", c.static_uw_at_1v, 0.1)
        within("static_exponent", c.static_exponent, 1e-3)
        if any(b.khz <= a.khz for a, b in zip(c.opps, c.opps[1:], strict=False)):
            bad.append(f"cluster {i}: frequencies not strictly increasing")
        if any(b.uv < a.uv for a, b in zip(c.opps, c.opps[1:], strict=False)):
            bad.append(f"cluster {i}: voltage falls as frequency rises")
        if c.idle_uw > c.static_power_uw(0) + 1e-6:
            bad.append(f"cluster {i}: idle power above the static power at the lowest OPP")
        if i:
            p = cl[i - 1]
            if c.capacity_dmips_mhz < p.capacity_dmips_mhz:
                bad.append(f"cluster {i}: capacity below the previous cluster's")
            if c.speed_mhz(len(c.opps) - 1) <= p.speed_mhz(len(p.opps) - 1):
                bad.append(f"cluster {i}: top speed not above the previous cluster's")
            if (c.dynamic_power_coefficient / c.capacity_dmips_mhz
                    < p.dynamic_power_coefficient / p.capacity_dmips_mhz - 1e-3):
                bad.append(f"cluster {i}: cheaper per cycle than a smaller core")
            if c.static_uw_at_1v < p.static_uw_at_1v:
                bad.append(f"cluster {i}: less leakage than a smaller core")
    cpus = [x for c in cl for x in c.cpus]
    if len(set(cpus)) != len(cpus):
        bad.append("a CPU is in two clusters")
    return bad


# ---------------------------------------------------------------------------------------------
# workloads

PROCESSES = ("poisson", "mmpp", "trace")
LOAD_RANGE = (0.05, 0.5)
"""Mean demand as a share of the board's top speed."""
BURST_LOAD_RANGE = (0.5, 1.1)
"""Demand during an MMPP burst."""


def _azure_rows() -> tuple[tuple[float, str | None, int | None, float | None], ...]:
    return load_scenario("azure-conv").trace_rows


_AZURE: list[tuple[tuple[float, str | None, int | None, float | None], ...]] = []


def random_scenario(seed: int, profile: DeviceProfile, duration_s: float = 60.0) -> Scenario:
    """A workload for ``profile`` drawn from ``seed`` (see the module notes)."""
    rng = np.random.default_rng([seed, 0x5CE7A])
    process = PROCESSES[int(rng.choice(len(PROCESSES), p=[0.4, 0.35, 0.25]))]
    names = sorted(MODELS)
    k = int(rng.integers(2, min(4, len(names)) + 1))
    models = [names[i] for i in rng.choice(len(names), size=k, replace=False)]
    top_ms = {m: profile.min_latency_ms(MODELS[m].work) for m in models}
    # trace replay picks classes by request size: short first (as azure-conv does)
    models.sort(key=top_ms.__getitem__)
    blocking_ms = max(top_ms.values())
    shares = rng.dirichlet(np.ones(3))  # priority 1, 2, 3
    weights = rng.dirichlet(np.ones(k))
    classes = []
    for i, m in enumerate(models):
        prio = int(rng.choice(3, p=shares)) + 1
        if process == "trace":
            prio = min(3, i + 1)
        factor = float(rng.uniform(2.0, 10.0)) * (float(rng.uniform(2.0, 6.0)) if prio == 3 else 1.0)
        deadline = max(top_ms[m] * factor, top_ms[m] + blocking_ms * float(rng.uniform(1.1, 2.0)))
        classes.append(RequestClass(model=m, weight=float(weights[i]), priority=prio,
                                    deadline_ms=round(deadline, 1)))
    mean_service_s = sum(float(w) * top_ms[m] for w, m in zip(weights, models, strict=True)) / 1e3
    load = float(rng.uniform(*LOAD_RANGE))
    rate_hz = load / mean_service_s
    params: dict[str, Any] = {"process": process}
    rows: tuple[tuple[float, str | None, int | None, float | None], ...] = ()
    if process == "poisson":
        params["rate_hz"] = rate_hz
    elif process == "mmpp":
        burst = float(rng.uniform(*BURST_LOAD_RANGE)) / mean_service_s
        low = max(rate_hz * float(rng.uniform(0.2, 0.8)), 0.05)
        params["rates_hz"] = [low, max(burst, low * 1.5)]
        params["mean_dwell_s"] = [float(rng.uniform(2.0, 6.0)), float(rng.uniform(0.3, 1.5))]
    else:
        if not _AZURE:
            _AZURE.append(_azure_rows())
        azure = _AZURE[0]
        end_s = azure[-1][0]
        scale = float(rng.uniform(0.5, 2.0))
        offset = float(rng.uniform(0.0, max(0.0, end_s - duration_s / scale)))
        rows = tuple((t - offset, model, prio, dl) for t, model, prio, dl in azure if offset <= t)
        base_hz = len(azure) / end_s / scale
        params.update(path="@azure_llm_2023_conv.csv", time_scale=scale, offset_s=offset,
                      thin=min(1.0, rate_hz / base_hz), size_classes=[600, 1500])
    return Scenario(name=f"random-{seed}", duration_s=float(duration_s), process=process,
                    params=params, classes=tuple(classes), trace_rows=rows)


def random_workload(seed: int, profile: DeviceProfile,
                    duration_s: float = 60.0) -> tuple[Scenario, JobSet]:
    """The scenario of ``seed`` for ``profile`` and its job set (same seed)."""
    sc = random_scenario(seed, profile, duration_s)
    return sc, generate(sc, seed, duration_s)


# ---------------------------------------------------------------------------------------------
# training sampler and device specs


def training_board_seed(rng: Any) -> int:
    """A board seed for training from ``rng`` (anything with numpy's ``integers``); never one of
    ``HELDOUT_SEEDS``."""
    held = set(HELDOUT_SEEDS)
    while True:
        seed = int(rng.integers(0, 2**31 - 1))
        if seed not in held:
            return seed


@dataclass
class TrainingSampler:
    """Per-episode board and workload for training (``edgesched train --device random``).

    ``max_clusters`` bounds the generated boards to what the observation encodes (its
    ``MAX_CLUSTERS``). Boards come from :func:`training_board_seed`, so never a held-out one.
    With ``profiles`` and ``scenarios``, a share ``builtin_share`` of the episodes takes one of
    those boards and one of those scenarios instead (each drawn uniformly).
    """

    max_clusters: int = 4
    duration_s: float = 30.0
    profiles: Sequence[DeviceProfile] = ()
    scenarios: Sequence[Scenario] = ()
    builtin_share: float = 0.0

    def __call__(self, rng: np.random.Generator) -> tuple[DeviceProfile, Scenario]:
        if self.profiles and self.scenarios and rng.random() < self.builtin_share:
            return (self.profiles[int(rng.integers(len(self.profiles)))],
                    self.scenarios[int(rng.integers(len(self.scenarios)))])
        board_seed = training_board_seed(rng)
        profile = random_board(board_seed, max_clusters=self.max_clusters)
        sc = random_scenario(int(rng.integers(0, 2**31 - 1)), profile, self.duration_s)
        return profile, sc


def heldout_boards() -> list[DeviceProfile]:
    """The 20 held-out boards, in ``HELDOUT_SEEDS`` order."""
    return [random_board(s) for s in HELDOUT_SEEDS]


def is_random_spec(spec: str) -> bool:
    return spec == HELDOUT or spec.startswith(RANDOM_PREFIX)


def resolve_devices(spec: str) -> list[DeviceProfile]:
    """``random:SEED`` (one generated board), ``heldout`` (the 20), or a profile name or path."""
    if spec == HELDOUT:
        return heldout_boards()
    if spec.startswith(RANDOM_PREFIX):
        raw = spec[len(RANDOM_PREFIX):]
        if not raw.isdigit():
            raise ProfileError(spec, "<device>", "random:SEED with SEED an integer >= 0, e.g. "
                               "random:7 (or 'heldout' for the 20 held-out boards)")
        return [random_board(int(raw))]
    return [load_profile(spec)]


BoardSampler = Callable[[np.random.Generator], tuple[DeviceProfile, Scenario]]


__all__ = ["HELDOUT", "HELDOUT_SEEDS", "RANGES", "BoardSampler", "TrainingSampler", "check_board",
           "heldout_boards", "is_random_spec", "random_board", "random_scenario",
           "random_workload", "resolve_devices", "training_board_seed"]
