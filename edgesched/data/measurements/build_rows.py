"""Build the shipped XU3-like and Pi-like measurement rows from published figures.

Run from the repository root: ``python edgesched/data/measurements/build_rows.py``; it rewrites
``xu3_rails.csv`` and ``pi4_board.csv`` beside it. The rows are CONSTRUCTED from the published
figures below (each named with its source in ``README.md``), not measured row by row; how each
cell is made is said next to the figure it comes from. No other number enters.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from edgesched.device import load_profile
from edgesched.fit import Measurement, write_measurements

HERE = Path(__file__).resolve().parent

# --- Odroid-XU3 / Exynos 5422 -----------------------------------------------------------------
# segemena/DS3 config_Files/config_file.ini [POWER MANAGEMENT] and DTPM_power_models.py
# compute_static_power_dissipation: big-cluster leakage P = V * (C1 * T_K^2 * exp(-C2 / T_K) + Igate),
# the LITTLE cluster a quarter of it; T_ambient 42 C.
DS3_C1 = 0.002488
DS3_C2_K = 2660.0
DS3_IGATE_A = 0.000519
DS3_AMBIENT_C = 42.0
# segemena/DS3 config_SoC/SoC.BAL_only.txt: power of the cluster with one core busy
# (power_profile, first column) at (MHz, mV of that file's OPP table, W).
DS3_A15_ONE_CORE = ((1000, 1000, 0.85), (2000, 1362, 3.32))
DS3_A7_ONE_CORE = ((1000, 1150, 0.19), (1400, 1300, 0.39))
# ThomasKaiser/sbc-bench Efficiency_Graphing.md, ODROID-HC2 (Exynos 5422), big cores cpu4-7
# walking the OPPs: (sysfs MHz, 7-zip MIPS, SoC temperature C).
SBC_BENCH_A15 = ((500, 1776, 29.0), (600, 2101, 31.0), (700, 2392, 32.0), (800, 2699, 33.0),
                 (900, 2973, 33.5), (1000, 3246, 35.5), (1100, 3518, 36.5), (1200, 3770, 38.0),
                 (1300, 4029, 39.5), (1400, 4248, 41.0), (1500, 4495, 43.0), (1600, 4713, 45.0),
                 (1700, 4943, 47.5), (1800, 5161, 53.0), (1900, 5363, 57.5), (2000, 5522, 63.5))

# --- Raspberry Pi 4 (BCM2711) -------------------------------------------------------------------
# Raspberry Pi power-supply documentation (as cited in edgesched/profiles/bcm2711.json): the
# board idles at about 3.1 W and draws about 6.1 W with all four cores stressed at 1500 MHz.
PI_IDLE_W = 3.1
PI_STRESS_4_CORES_W = 6.1
# issue 17 of this project: the Pi's board-level busy-minus-idle power with one core busy grows
# 2.86x from 600 to 1500 MHz.
PI_ACTIVE_GROWTH_600_1500 = 2.86
# MobileNet, four threads (as cited in bcm2711.json sources.memory): 72 ms at 1500 MHz, 61 ms at
# 1800 MHz.
PI_MOBILENET_MS = ((1500, 72.0), (1800, 61.0))


def ds3_leakage_w(volts: float, temp_c: float, little: bool) -> float:
    temp_k = 273.0 + temp_c
    leak = volts * (DS3_C1 * temp_k * temp_k * math.exp(-DS3_C2_K / temp_k) + DS3_IGATE_A)
    return leak / 4.0 if little else leak


def _dynamic_coefficients(anchors: tuple[tuple[int, int, float], ...], little: bool
                          ) -> list[tuple[int, float]]:
    """(MHz, W / (V^2 MHz)) of one busy core at each anchor: its power less the leakage at DS3's
    ambient temperature."""
    out = []
    for mhz, mv, watts in anchors:
        v = mv / 1000.0
        out.append((mhz, (watts - ds3_leakage_w(v, DS3_AMBIENT_C, little)) / (v * v * mhz)))
    return out


def _interp(points: list[tuple[int, float]], x: float) -> float:
    """Linear in x between the points, held constant outside them."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def xu3_rows() -> list[Measurement]:
    """A15 at the sbc-bench OPPs (500-2000 MHz), A7 at every OPP, mainline device-tree voltages
    (edgesched/profiles/exynos5422.json). Idle rail: DS3 leakage at the OPP's voltage and the
    temperature sbc-bench logged at that frequency (A7: DS3's 42 C). Busy rail: idle plus one
    core's C * V^2 * f, C interpolated in f between the DS3 anchors. Latency (A15 only): the time
    of 10^9 7-zip instructions at the sbc-bench MIPS. ``temp_c``: the temperature used."""
    profile = load_profile("exynos5422")
    little, big = profile.clusters
    rows: list[Measurement] = []
    coeff = _dynamic_coefficients(DS3_A15_ONE_CORE, little=False)
    for mhz, mips, temp_c in SBC_BENCH_A15:
        oi = big.opp_index_of(mhz * 1000)
        v = big.opps[oi].volts
        idle = ds3_leakage_w(v, temp_c, little=False)
        busy = idle + _interp(coeff, mhz) * v * v * mhz
        rows.append(Measurement("big", mhz * 1000, "7zip_4cores", round(1e6 / mips, 4),
                                round(busy, 5), round(idle, 5), temp_c=temp_c))
    coeff = _dynamic_coefficients(DS3_A7_ONE_CORE, little=True)
    for o in little.opps:
        mhz = o.khz // 1000
        idle = ds3_leakage_w(o.volts, DS3_AMBIENT_C, little=True)
        busy = idle + _interp(coeff, mhz) * o.volts * o.volts * mhz
        rows.append(Measurement("little", o.khz, "", None, round(busy, 5), round(idle, 5),
                                temp_c=DS3_AMBIENT_C))
    return rows


def pi_rows() -> list[Measurement]:
    """600-1500 MHz in the firmware's 100 MHz steps. Idle: the documented board idle. Busy: idle
    plus one core's share of the documented stress power at 1500 MHz, scaled to other
    frequencies by the power law through issue 17's growth ratio. Latency: ``a / f + b`` through
    the two MobileNet figures."""
    per_core_w = (PI_STRESS_4_CORES_W - PI_IDLE_W) / 4.0
    gamma = math.log(PI_ACTIVE_GROWTH_600_1500) / math.log(1500 / 600)
    (f0, t0), (f1, t1) = PI_MOBILENET_MS
    a = (t0 - t1) / (1.0 / f0 - 1.0 / f1)
    b = t0 - a / f0
    rows = []
    for mhz in range(600, 1501, 100):
        busy = PI_IDLE_W + per_core_w * (mhz / 1500) ** gamma
        rows.append(Measurement("cpu", mhz * 1000, "mobilenet_4threads", round(a / mhz + b, 4),
                                round(busy, 5), PI_IDLE_W))
    return rows


if __name__ == "__main__":
    write_measurements(HERE / "xu3_rails.csv", xu3_rows())
    write_measurements(HERE / "pi4_board.csv", pi_rows())
    print(f"wrote {HERE / 'xu3_rails.csv'} and {HERE / 'pi4_board.csv'}")
