"""Fit a device profile to measurements: latency and power at each (cluster, OPP, model).

The measurements are a CSV file with the columns :data:`CSV_COLUMNS` (any order, one header line)::

    cluster,freq_khz,model,latency_ms,busy_power_w,idle_power_w
    big,1800000,mobilenet,112.0,2.61,1.84

An optional seventh column ``temp_c`` gives the die temperature of the reading in Celsius.
``cluster`` is a cluster name of the base profile (or its index), ``freq_khz`` the frequency the
cluster ran at, ``latency_ms`` the median latency of one single-threaded inference of ``model``.
``busy_power_w`` and ``idle_power_w`` are what a power meter read while the model ran and while
the cluster idled at the same frequency. With the power scope ``board`` (the default) both are
board-level (a USB-C meter, an INA on the supply, RAPL); with ``cluster`` both are the cluster's
own rail (the Odroid-XU3's INA231 on the A15 and A7 supplies), so an idle reading is that
cluster's leakage and clocks at that OPP, not the board's. A row with ``busy_power_w`` but no
``idle_power_w`` is taken as the cluster's own power (a rail monitor, a published table). Empty
cells are unknown. ``edgesched calibrate`` writes
this file; published tables and external meters can be written in the same shape for
``edgesched fit``.

What is fitted (see ``edgesched/profiles/README.md`` for the models):

latency
    per model and cluster, weighted least squares on ``t = a / f + b`` (relative error);
    the ratio of ``a`` between a cluster and the base profile's fastest cluster gives the
    cluster's ``capacity_dmips_mhz`` (the fastest cluster keeps the base's, the anchor); then per
    model one joint fit over every cluster gives its reference compute megacycles and its
    memory-bound time (stored in ``sources.calibration.models``); ``typical_mem_fraction`` is the
    median memory-bound share at the top OPP of the fastest cluster.
power, scope ``board``
    per cluster, ``P_busy - P_idle + idle_uw = C * V^2 * f * n + S * V^static_exponent``
    (weighted least squares, C and S >= 0, ``n = 1`` thread), with ``V`` from the base profile's
    device-tree voltages (interpolated for a frequency the base does not list) and ``idle_uw``
    and ``static_exponent`` kept from the base: board-level readings cannot tell a cluster's
    idle power from the board's, and leaving it free makes the fit ill-conditioned. The board
    floor is the mean idle reading minus every cluster's idle power.
power, scope ``cluster``
    per cluster, the idle rail is the cluster's static power at the OPP (leakage and what stays
    clocked, ``edgesched/device.py``): ``P_idle = S * V^n + D0 * V^2 * f`` by relative weighted
    least squares (S, D0 >= 0; the exponent ``n`` by search over 0.5..10, kept from the base
    with fewer than three voltages); then ``P_busy - P_idle = C * V^2 * f`` (one busy CPU).
    The board floor and ``idle_uw`` (the cluster in its idle state) are kept from the base,
    ``idle_uw`` lowered to the static power at the lowest OPP if above it. Rail readings carry
    no temperature unless the optional ``temp_c`` column gives one: when every idle row has a
    temperature and they span at least 5 C, ``P_idle = S * V^n * exp(k_T * (T - T0)) + D0 * V^2
    * f`` with k_T searched over 0..0.1 /C (T0 the base's ``default_temp_c``); otherwise
    ``static_temp_coeff_per_c`` is kept from the base and S is the leakage at the temperature
    the rows were measured at. Predictions use each row's temperature where it has one.

Each quantity's error is the RMS relative error of the fitted profile's prediction against the
rows (``latency_ms``, ``busy_power_w``, ``idle_power_w``, ``active_power_w`` = busy - idle); with a
hold-out fraction the rows held out are predicted by a fit that never saw them.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.device import (
    REFERENCE_CAPACITY_DMIPS_MHZ,
    Cluster,
    DeviceProfile,
    Opp,
    Work,
    parse_profile,
    profile_to_dict,
)
from edgesched.errors import EdgeschedError, ProfileError

CSV_COLUMNS = ("cluster", "freq_khz", "model", "latency_ms", "busy_power_w", "idle_power_w")
OPTIONAL_COLUMNS = ("temp_c",)
CALIBRATION_FORMAT = "edgesched-calibration/1"
FIT_REPORT_FORMAT = "edgesched-fit-report/1"
QUANTITIES = ("latency_ms", "busy_power_w", "idle_power_w", "active_power_w")
_SHORT = {"latency_ms": "latency", "busy_power_w": "busy_power", "idle_power_w": "idle_power",
          "active_power_w": "active_power"}


class MeasurementError(EdgeschedError):
    """A measurements CSV is malformed; the message names the file, the line and the column."""

    def __init__(self, source: str, line: int | None, column: str | None, expected: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        where = source
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: expected {expected}")


class FitError(EdgeschedError):
    """The measurements cannot determine a profile (too few points, nothing positive)."""


@dataclass(frozen=True)
class Measurement:
    """One CSV row. ``cluster`` is as written (a name or an index); ``line`` is for messages."""

    cluster: str
    freq_khz: int
    model: str
    latency_ms: float | None
    busy_power_w: float | None
    idle_power_w: float | None
    line: int = 0
    temp_c: float | None = None
    """Die or cluster temperature during the reading, Celsius (optional column ``temp_c``)."""

    def csv_row(self, with_temp: bool = False) -> list[str]:
        def num(x: float | None) -> str:
            return "" if x is None else f"{x:.9g}"
        cells = [self.cluster, str(self.freq_khz), self.model, num(self.latency_ms),
                 num(self.busy_power_w), num(self.idle_power_w)]
        return [*cells, num(self.temp_c)] if with_temp else cells


# ---------------------------------------------------------------------------------------------
# the CSV file


def write_measurements(path: str | Path, rows: Iterable[Measurement]) -> None:
    """The rows as CSV; the optional ``temp_c`` column only when some row has a temperature."""
    rows = list(rows)
    with_temp = any(r.temp_c is not None for r in rows)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*CSV_COLUMNS, *OPTIONAL_COLUMNS] if with_temp else CSV_COLUMNS)
        for r in rows:
            w.writerow(r.csv_row(with_temp))


def _number(text: str, source: str, line: int, column: str, *, optional: bool,
            integer: bool = False) -> float | None:
    text = text.strip()
    what = "a frequency in kHz (integer > 0)" if integer else f"a number > 0 ({column})"
    if not text:
        if optional:
            return None
        raise MeasurementError(source, line, column, f"{what}, got an empty cell")
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        raise MeasurementError(source, line, column, f"{what}, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise MeasurementError(source, line, column, f"{what}, got {text!r}")
    return value


def parse_measurements(lines: Iterable[str], source: str) -> list[Measurement]:
    """Rows of a measurements CSV (see the module docstring); errors name file, line, column."""
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise MeasurementError(source, 1, None, f"a CSV header ({exc})") from None
    if header is None or not any(h.strip() for h in header):
        raise MeasurementError(source, 1, None, "a header line " + ",".join(CSV_COLUMNS)
                               + (" (the file is empty)" if header is None
                                  else " (the first line is empty)"))
    names = [h.strip() for h in header]
    unknown = [n for n in names if n not in CSV_COLUMNS and n not in OPTIONAL_COLUMNS]
    if unknown:
        raise MeasurementError(source, 1, unknown[0], "one of the columns "
                               + ", ".join(CSV_COLUMNS) + " (and optionally "
                               + ", ".join(OPTIONAL_COLUMNS) + ")")
    missing = [c for c in CSV_COLUMNS if c not in names]
    if missing:
        raise MeasurementError(source, 1, missing[0], "this column in the header (columns: "
                               + ", ".join(CSV_COLUMNS) + ")")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise MeasurementError(source, 1, dup, "each column once")
    col = {n: i for i, n in enumerate(names)}
    rows: list[Measurement] = []
    while True:
        try:
            rec = next(reader, None)
        except csv.Error as exc:
            raise MeasurementError(source, reader.line_num, None, f"valid CSV ({exc})") from None
        if rec is None:
            break
        line = reader.line_num
        if not rec or all(not x.strip() for x in rec):
            continue
        if len(rec) != len(names):
            raise MeasurementError(source, line, None, f"{len(names)} cells as in the header, "
                                   f"got {len(rec)}")
        cell = {n: rec[i] for n, i in col.items()}
        cluster = cell["cluster"].strip()
        if not cluster:
            raise MeasurementError(source, line, "cluster", "a cluster name or index, got an "
                                   "empty cell")
        khz = _number(cell["freq_khz"], source, line, "freq_khz", optional=False, integer=True)
        lat = _number(cell["latency_ms"], source, line, "latency_ms", optional=True)
        busy = _number(cell["busy_power_w"], source, line, "busy_power_w", optional=True)
        idle = _number(cell["idle_power_w"], source, line, "idle_power_w", optional=True)
        model = cell["model"].strip()
        if lat is not None and not model:
            raise MeasurementError(source, line, "model", "the model a latency belongs to, got "
                                   "an empty cell")
        if lat is None and busy is None:
            raise MeasurementError(source, line, "latency_ms", "a latency or a busy power (the "
                                   "row has neither)")
        if idle is not None and busy is None:
            raise MeasurementError(source, line, "busy_power_w", "a busy power where an idle "
                                   "power is given")
        temp: float | None = None
        if "temp_c" in cell and cell["temp_c"].strip():
            try:
                temp = float(cell["temp_c"])
            except ValueError:
                temp = math.nan
            if not -40.0 <= temp <= 150.0:
                raise MeasurementError(source, line, "temp_c", "a temperature in Celsius "
                                       f"between -40 and 150, got {cell['temp_c'].strip()!r}")
        rows.append(Measurement(cluster, int(khz or 0), model, lat, busy, idle, line, temp))
    if not rows:
        raise MeasurementError(source, None, None, "at least one measurement row")
    return rows


def read_measurements(path: str | Path) -> list[Measurement]:
    source = str(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return parse_measurements(f, source)
    except FileNotFoundError:
        raise MeasurementError(source, None, None, "an existing measurements CSV file") from None
    except UnicodeDecodeError as exc:
        raise MeasurementError(source, None, None, f"a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise MeasurementError(source, None, None,
                               f"a readable file ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class FitResult:
    """A fitted profile, the per-model work it was fitted with, and its errors."""

    profile: DeviceProfile
    works: Mapping[str, Work]
    errors: Mapping[str, float]
    """RMS relative error per quantity (:data:`QUANTITIES`) over the rows fitted."""
    holdout_errors: Mapping[str, float] = field(default_factory=dict)
    """The same over held-out rows (empty without a hold-out)."""
    notes: tuple[str, ...] = ()
    rows_fitted: int = 0
    rows_held_out: int = 0
    power_scope: str = "board"
    shape: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Measured and fitted active power per cluster and frequency (:func:`active_power_shape`)."""

    def document(self) -> dict[str, Any]:
        """The fitted profile as an ``edgesched-device/1`` document."""
        return profile_to_dict(self.profile)

    def report(self) -> dict[str, Any]:
        """The fitted numbers and the errors, as ``edgesched fit --json`` writes them: RMS
        relative error per quantity over the fitted rows (``rms``) and the held-out rows
        (``holdout_rms``, empty without a hold-out), keys ``latency``, ``busy_power``,
        ``idle_power``, ``active_power``."""
        def short(errors: Mapping[str, float]) -> dict[str, float]:
            return {_SHORT[q]: round(v, 6) for q, v in errors.items()}
        p = self.profile
        return {
            "format": FIT_REPORT_FORMAT,
            "profile": p.name,
            "power_scope": self.power_scope,
            "rows_fitted": self.rows_fitted,
            "rows_held_out": self.rows_held_out,
            "rms": short(self.errors),
            "holdout_rms": short(self.holdout_errors),
            "fitted": {
                "board_floor_uw": round(p.board_floor_uw, 3),
                "typical_mem_fraction": round(p.typical_mem_fraction, 6),
                "clusters": {c.name: {
                    "capacity_dmips_mhz": c.capacity_dmips_mhz,
                    "dynamic_power_coefficient": round(c.dynamic_power_coefficient, 4),
                    "static_uw_at_1v": round(c.static_uw_at_1v, 3),
                    "static_exponent": c.static_exponent,
                    "static_temp_coeff_per_c": c.static_temp_coeff_per_c,
                    "idle_dynamic_coefficient": round(c.idle_dynamic_coefficient, 4),
                    "idle_uw": round(c.idle_uw, 3)} for c in p.clusters},
                "models": {m: {"compute_mcycles": round(w.compute_mcycles, 6),
                               "mem_ms": round(w.mem_ms, 6)}
                           for m, w in sorted(self.works.items())},
            },
            "active_power_shape": dict(self.shape),
            "notes": list(self.notes),
        }


def _cluster_index(base: DeviceProfile, name: str, source: str, line: int) -> int:
    for i, c in enumerate(base.clusters):
        if c.name == name:
            return i
    if name.isdigit() and int(name) < len(base.clusters):
        return int(name)
    raise MeasurementError(source, line or None, "cluster", "a cluster of the base profile "
                           f"{base.name!r} ({', '.join(c.name for c in base.clusters)} or an "
                           f"index), got {name!r}")


def voltage_uv(cluster: Cluster, khz: int) -> int:
    """The base cluster's voltage at ``khz``: the device-tree value, else linear interpolation
    between its neighbours (clamped at the ends)."""
    opps = cluster.opps
    for o in opps:
        if o.khz == khz:
            return o.uv
    if khz <= opps[0].khz:
        return opps[0].uv
    if khz >= opps[-1].khz:
        return opps[-1].uv
    for lo, hi in itertools.pairwise(opps):
        if lo.khz < khz < hi.khz:
            frac = (khz - lo.khz) / (hi.khz - lo.khz)
            return round(lo.uv + frac * (hi.uv - lo.uv))
    return opps[-1].uv  # not reached


def _wlstsq(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = weights[:, None]
    sol, *_ = np.linalg.lstsq(x * w, y * weights, rcond=None)
    return np.asarray(sol, dtype=float)


def _nonneg_wlstsq(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least squares with every coefficient >= 0 (exact for 2 columns: the
    unconstrained solution if feasible, else the best one-column fit)."""
    sol = _wlstsq(x, y, weights)
    if np.all(sol >= 0):
        return sol
    best: np.ndarray | None = None
    best_err = math.inf
    for j in range(x.shape[1]):
        one = _wlstsq(x[:, [j]], y, weights)
        if one[0] < 0:
            continue
        cand = np.zeros(x.shape[1])
        cand[j] = one[0]
        err = float(np.sum((weights * (x @ cand - y)) ** 2))
        if err < best_err:
            best, best_err = cand, err
    return best if best is not None else np.zeros(x.shape[1])


def _rms_rel(pairs: Sequence[tuple[float, float]]) -> float:
    """RMS of (predicted - measured) / measured."""
    if not pairs:
        return math.nan
    return math.sqrt(sum(((p - m) / m) ** 2 for p, m in pairs) / len(pairs))


@dataclass
class _Resolved:
    cluster: int
    row: Measurement


def _resolve(rows: Sequence[Measurement], base: DeviceProfile, source: str) -> list[_Resolved]:
    return [_Resolved(_cluster_index(base, r.cluster, source, r.line), r) for r in rows]


def _fit_latency(res: Sequence[_Resolved], base: DeviceProfile, notes: list[str]
                 ) -> tuple[list[int], dict[str, Work], dict[str, Any]]:
    """Capacities per cluster and Work per model."""
    n = len(base.clusters)
    by: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in res:
        if r.row.latency_ms is not None:
            by.setdefault((r.row.model, r.cluster), []).append((r.row.freq_khz / 1000.0,
                                                                r.row.latency_ms))
    models = sorted({m for m, _ in by})
    if not models:
        return [c.capacity_dmips_mhz for c in base.clusters], {}, {}
    per: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    slope: dict[tuple[str, int], float] = {}
    for (m, ci), pts in by.items():
        if len({f for f, _ in pts}) < 2:
            continue
        f = np.array([p[0] for p in pts])
        t = np.array([p[1] for p in pts])
        a, b = _wlstsq(np.c_[1.0 / f, np.ones_like(f)], t, 1.0 / t)
        per[m][base.clusters[ci].name] = {"a_ms_mhz": float(a), "b_ms": float(b)}
        if a > 0:
            slope[(m, ci)] = float(a)
    ref = base.fastest_cluster
    caps = [c.capacity_dmips_mhz for c in base.clusters]
    for ci in range(n):
        if ci == ref:
            continue
        ratios = [slope[(m, ref)] / slope[(m, ci)] for m in models
                  if (m, ref) in slope and (m, ci) in slope]
        if ratios:
            caps[ci] = max(1, round(caps[ref] * statistics.median(ratios)))
        elif any(ci == k for _, k in by):
            notes.append(f"cluster {base.clusters[ci].name}: no model measured at two "
                         f"frequencies here and on {base.clusters[ref].name}; capacity kept from "
                         "the base profile")
    # alternate: per-model work given the capacities, capacities given the work (the joint
    # weighted least squares over every row); the ratio estimate above is the starting point
    fcaps = [float(c) for c in caps]
    fitted_caps = [ci for ci in range(n) if ci != ref and any(k == ci for _, k in slope)]
    for _ in range(LATENCY_ITERATIONS):
        raw = _works_given_caps(by, models, fcaps)
        for ci in fitted_caps:
            num = den = 0.0
            for (m, k), pts in by.items():
                if k != ci:
                    continue
                comp, mem = raw[m]
                for f_mhz, t_ms in pts:
                    z = comp * 1000.0 * REFERENCE_CAPACITY_DMIPS_MHZ / f_mhz
                    w2 = 1.0 / (t_ms * t_ms)
                    num += w2 * z * (t_ms - mem)
                    den += w2 * z * z
            if num > 0 and den > 0:
                fcaps[ci] = den / num
    caps = [c if ci not in fitted_caps else max(1, round(fcaps[ci])) for ci, c in enumerate(caps)]
    raw = _works_given_caps(by, models, [float(c) for c in caps])
    works = {m: Work(compute_mcycles=comp, mem_ms=mem / base.mem_time_scale)
             for m, (comp, mem) in raw.items()}
    return caps, works, per


LATENCY_ITERATIONS = 30


def _works_given_caps(by: Mapping[tuple[str, int], Sequence[tuple[float, float]]],
                      models: Sequence[str], caps: Sequence[float]
                      ) -> dict[str, tuple[float, float]]:
    """Per model (reference compute megacycles, memory-bound ms) fitted over every cluster."""
    out: dict[str, tuple[float, float]] = {}
    for m in models:
        xs: list[float] = []
        ts: list[float] = []
        for (mm, ci), pts in by.items():
            if mm != m:
                continue
            for f_mhz, t_ms in pts:
                xs.append(1000.0 * REFERENCE_CAPACITY_DMIPS_MHZ / (f_mhz * caps[ci]))
                ts.append(t_ms)
        if len(set(xs)) < 2:
            raise FitError(f"model {m!r}: latency measured at fewer than two distinct speeds; "
                           "measure it at two frequencies at least")
        x = np.array(xs)
        t_arr = np.array(ts)
        comp, mem = _nonneg_wlstsq(np.c_[x, np.ones_like(x)], t_arr, 1.0 / t_arr)
        if comp <= 0:
            raise FitError(f"model {m!r}: its latency does not fall with frequency; cannot fit "
                           "a compute part (is the frequency really changing?)")
        out[m] = (float(comp), float(mem))
    return out


POWER_SCOPES = ("board", "cluster")
STATIC_EXPONENT_GRID = tuple(round(0.5 + 0.1 * i, 1) for i in range(96))
"""Leakage voltage exponents tried by the cluster-scope fit (0.5 to 10)."""
TEMP_COEFF_GRID = tuple(round(0.0025 * i, 4) for i in range(41))
"""Leakage temperature coefficients (1/C) tried when the rows carry temperatures (0 to 0.1)."""
MIN_TEMP_SPAN_C = 5.0


@dataclass(frozen=True)
class _PowerFit:
    """The power numbers of one cluster."""

    dyn: float
    static: float
    exponent: float
    idle_dyn: float
    temp_coeff: float = 0.0


def _check_scope(power_scope: str) -> None:
    if power_scope not in POWER_SCOPES:
        raise FitError(f"power scope must be one of {', '.join(POWER_SCOPES)}, got "
                       f"{power_scope!r}")


def _fit_leakage(vs: np.ndarray, fs: np.ndarray, idle_uw: np.ndarray,
                 temps: np.ndarray | None, base: Cluster, notes: list[str]
                 ) -> tuple[float, float, float, float]:
    """(S, n, D0, k_T) of ``idle = S * V^n * exp(k_T * (T - T0)) + D0 * V^2 * f`` (relative
    weighted least squares, S and D0 >= 0, n from :data:`STATIC_EXPONENT_GRID`, k_T from
    :data:`TEMP_COEFF_GRID` when every row has a temperature and they span at least
    :data:`MIN_TEMP_SPAN_C`, else the base's); n is kept from ``base`` when the rows have fewer
    than three voltages."""
    weights = 1.0 / np.maximum(idle_uw, 1e-3 * float(np.max(idle_uw)))
    grid = STATIC_EXPONENT_GRID if len(set(np.round(vs, 6).tolist())) >= 3 else (
        base.static_exponent,)
    if len(grid) == 1:
        notes.append(f"cluster {base.name}: idle rail measured at fewer than three voltages; "
                     f"leakage exponent kept from the base ({base.static_exponent:g})")
    ktemps: tuple[float, ...] = (base.static_temp_coeff_per_c,)
    dt = np.zeros_like(vs)
    if temps is not None:
        dt = temps - base.default_temp_c
        if float(np.ptp(temps)) >= MIN_TEMP_SPAN_C:
            ktemps = TEMP_COEFF_GRID
        else:
            notes.append(f"cluster {base.name}: idle-rail temperatures span less than "
                         f"{MIN_TEMP_SPAN_C:g} C; leakage temperature coefficient kept from the "
                         "base")
    best: tuple[float, float, float, float] | None = None
    best_err = math.inf
    dyn_col = vs * vs * fs
    for kt in ktemps:
        heat = np.exp(kt * dt)
        for n in grid:
            x = np.c_[vs ** n * heat, dyn_col]
            sol = _nonneg_wlstsq(x, idle_uw, weights)
            err = float(np.sum((weights * (x @ sol - idle_uw)) ** 2))
            if err < best_err - 1e-12:
                best, best_err = (float(sol[0]), float(n), float(sol[1]), float(kt)), err
    assert best is not None
    return best


def _fit_power(res: Sequence[_Resolved], base: DeviceProfile, notes: list[str],
               power_scope: str = "board") -> tuple[list[_PowerFit], float]:
    """Power numbers per cluster and the board floor in uW (see the module docstring)."""
    out: list[_PowerFit] = []
    for ci, c in enumerate(base.clusters):
        kept = _PowerFit(c.dynamic_power_coefficient, c.static_uw_at_1v, c.static_exponent,
                         c.idle_dynamic_coefficient, c.static_temp_coeff_per_c)
        rows = [r.row for r in res if r.cluster == ci and r.row.busy_power_w is not None]
        if power_scope == "cluster":
            out.append(_fit_cluster_rail(rows, c, kept, notes))
            continue
        xs: list[list[float]] = []
        ys: list[float] = []
        for row in rows:
            assert row.busy_power_w is not None
            v = voltage_uv(c, row.freq_khz) / 1e6
            f_mhz = row.freq_khz / 1000.0
            idle_w = row.idle_power_w
            active_uw = (row.busy_power_w - idle_w) * 1e6 + c.idle_uw if idle_w is not None \
                else row.busy_power_w * 1e6
            xs.append([v * v * f_mhz, v ** c.static_exponent])
            ys.append(active_uw - c.idle_dynamic_coefficient * v * v * f_mhz)
        if len({(round(a), round(b, 9)) for a, b in xs}) < 2:
            if xs:
                notes.append(f"cluster {c.name}: power measured at fewer than two operating "
                             "points; power model kept from the base profile")
            out.append(kept)
            continue
        y = np.array(ys)
        if np.all(y <= 0):
            notes.append(f"cluster {c.name}: busy power never above idle power; power model "
                         "kept from the base profile")
            out.append(kept)
            continue
        weights = 1.0 / np.maximum(np.abs(y), 1e-3 * float(np.max(np.abs(y))))
        dyn, static = _nonneg_wlstsq(np.array(xs), y, weights)
        if dyn <= 0:
            notes.append(f"cluster {c.name}: fitted dynamic coefficient not positive; kept from "
                         "the base profile")
            dyn = c.dynamic_power_coefficient
        out.append(_PowerFit(float(dyn), float(static), c.static_exponent,
                             c.idle_dynamic_coefficient, c.static_temp_coeff_per_c))
    idles = [r.row.idle_power_w for r in res if r.row.idle_power_w is not None]
    floor = base.board_floor_uw
    if idles and power_scope == "board":
        floor = statistics.fmean(idles) * 1e6 - base.idle_power_uw
        if floor < 0:
            notes.append(f"mean idle reading {statistics.fmean(idles):.3f} W is below the "
                         "clusters' idle power of the base profile; board floor set to 0")
            floor = 0.0
    return out, floor


def _fit_cluster_rail(rows: Sequence[Measurement], c: Cluster, kept: _PowerFit,
                      notes: list[str]) -> _PowerFit:
    """Cluster scope: idle readings are the cluster's rail idling at the OPP (its static power:
    leakage plus what stays clocked), busy minus idle is one CPU's dynamic power."""
    idle = [r for r in rows if r.idle_power_w is not None]
    static, exponent, idle_dyn, ktemp = kept.static, kept.exponent, kept.idle_dyn, kept.temp_coeff
    if len({r.freq_khz for r in idle}) >= 2:
        vs = np.array([voltage_uv(c, r.freq_khz) / 1e6 for r in idle])
        fs = np.array([r.freq_khz / 1000.0 for r in idle])
        y = np.array([(r.idle_power_w or 0.0) * 1e6 for r in idle])
        temps = (np.array([float(r.temp_c or 0.0) for r in idle])
                 if all(r.temp_c is not None for r in idle) else None)
        static, exponent, idle_dyn, ktemp = _fit_leakage(vs, fs, y, temps, c, notes)
    elif rows:
        notes.append(f"cluster {c.name}: idle rail measured at fewer than two frequencies; "
                     "static power kept from the base profile")
    probe = dataclasses.replace(c, static_uw_at_1v=static, static_exponent=exponent,
                                idle_dynamic_coefficient=idle_dyn, static_temp_coeff_per_c=ktemp)
    xs: list[float] = []
    ys: list[float] = []
    for r in rows:
        assert r.busy_power_w is not None
        v = voltage_uv(c, r.freq_khz) / 1e6
        f_mhz = r.freq_khz / 1000.0
        if r.idle_power_w is not None:
            active_w = r.busy_power_w - r.idle_power_w
        else:
            tmp = dataclasses.replace(probe, opps=(Opp(r.freq_khz, voltage_uv(c, r.freq_khz)),))
            active_w = r.busy_power_w - tmp.static_power_uw(0, r.temp_c) * 1e-6
        xs.append(v * v * f_mhz)
        ys.append(active_w * 1e6)
    dyn = kept.dyn
    if len({round(x) for x in xs}) >= 1 and any(y > 0 for y in ys):
        x = np.array(xs)
        y = np.array(ys)
        weights = 1.0 / np.maximum(np.abs(y), 1e-3 * float(np.max(np.abs(y))))
        sol = _nonneg_wlstsq(x[:, None], y, weights)
        if sol[0] > 0:
            dyn = float(sol[0])
        else:
            notes.append(f"cluster {c.name}: fitted dynamic coefficient not positive; kept from "
                         "the base profile")
    elif rows:
        notes.append(f"cluster {c.name}: busy rail never above idle rail; dynamic coefficient "
                     "kept from the base profile")
    return _PowerFit(dyn, static, exponent, idle_dyn, ktemp)


def _fitted_cluster(base: Cluster, res: Sequence[_Resolved], ci: int, cap: int,
                    power: _PowerFit, notes: list[str]) -> Cluster:
    """The base cluster with the fitted numbers; its OPPs are the base's plus any frequency
    measured that the base does not list."""
    known = {o.khz for o in base.opps}
    measured = {r.row.freq_khz for r in res if r.cluster == ci}
    khzs = sorted(known | measured)
    guessed = sorted(measured - known)
    if guessed:
        notes.append(f"cluster {base.name}: no device-tree voltage for "
                     f"{', '.join(str(k) for k in guessed)} kHz; interpolated from the base")
    opps = tuple(Opp(khz=k, uv=voltage_uv(base, k)) for k in khzs)
    fitted = dataclasses.replace(base, capacity_dmips_mhz=cap, dynamic_power_coefficient=power.dyn,
                                 static_uw_at_1v=power.static, static_exponent=power.exponent,
                                 idle_dynamic_coefficient=power.idle_dyn,
                                 static_temp_coeff_per_c=power.temp_coeff, opps=opps)
    idle = base.idle_uw
    lowest_static = fitted.static_power_uw(0)
    if power.static > 0 and idle > lowest_static:
        notes.append(f"cluster {base.name}: idle power {idle:.0f} uW of the base is above the "
                     f"fitted static power at the lowest OPP; lowered to {lowest_static:.0f} uW")
        idle = lowest_static
    return dataclasses.replace(fitted, idle_uw=idle)


def predict(profile: DeviceProfile, works: Mapping[str, Work], row: Measurement,
            power_scope: str = "board") -> dict[str, float]:
    """What ``profile`` says the row's quantities are (the ones it can say).

    ``power_scope`` ``board``: idle readings are the board's (floor and every cluster idle);
    ``cluster``: they are the cluster's rail idling at the row's OPP (its static power)."""
    ci = _cluster_index(profile, row.cluster, profile.source, row.line)
    c = profile.clusters[ci]
    oi = c.opp_index_of(row.freq_khz)
    out: dict[str, float] = {}
    work = works.get(row.model)
    if work is not None:
        out["latency_ms"] = profile.latency_ms(work, ci, oi)
    cluster_busy_w = c.busy_power_uw(oi, 1, row.temp_c) * 1e-6
    if row.idle_power_w is None:
        out["busy_power_w"] = out["active_power_w"] = cluster_busy_w
    elif power_scope == "cluster":
        out["idle_power_w"] = c.static_power_uw(oi, row.temp_c) * 1e-6
        out["busy_power_w"] = cluster_busy_w
        out["active_power_w"] = cluster_busy_w - out["idle_power_w"]
    else:
        board_idle_w = (profile.board_floor_uw + profile.idle_power_uw) * 1e-6
        out["idle_power_w"] = board_idle_w
        out["active_power_w"] = cluster_busy_w - c.idle_uw * 1e-6
        out["busy_power_w"] = board_idle_w + out["active_power_w"]
    return out


def _measured(r: Measurement) -> dict[str, float | None]:
    return {"latency_ms": r.latency_ms, "busy_power_w": r.busy_power_w,
            "idle_power_w": r.idle_power_w,
            "active_power_w": (r.busy_power_w - r.idle_power_w
                               if r.busy_power_w is not None and r.idle_power_w is not None
                               else r.busy_power_w)}


def prediction_errors(profile: DeviceProfile, works: Mapping[str, Work],
                      rows: Sequence[Measurement], power_scope: str = "board"
                      ) -> dict[str, float]:
    """RMS relative error per quantity of ``profile``'s predictions over ``rows``."""
    pairs: dict[str, list[tuple[float, float]]] = {q: [] for q in QUANTITIES}
    for r in rows:
        p = predict(profile, works, r, power_scope)
        measured = _measured(r)
        for q in QUANTITIES:
            m = measured[q]
            if q in p and m is not None and m > 0:
                pairs[q].append((p[q], m))
    return {q: _rms_rel(v) for q, v in pairs.items() if v}


def active_power_shape(profile: DeviceProfile, rows: Sequence[Measurement],
                       power_scope: str = "board") -> dict[str, dict[str, Any]]:
    """Per cluster, the measured active power (busy - idle, or busy alone where idle is not
    given; mean over models) and the fitted profile's at each measured frequency, and the ratio
    of the highest frequency's to the lowest's of both: does the fitted curve follow the
    measured shape."""
    works: dict[str, Work] = {}
    by: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for r in rows:
        m = _measured(r)["active_power_w"]
        if m is None:
            continue
        p = predict(profile, works, r, power_scope)["active_power_w"]
        by.setdefault(r.cluster, {}).setdefault(r.freq_khz, []).append((m, p))
    out: dict[str, dict[str, Any]] = {}
    for name, per in by.items():
        khzs = sorted(per)
        meas = [statistics.fmean(m for m, _ in per[k]) for k in khzs]
        fit = [statistics.fmean(p for _, p in per[k]) for k in khzs]
        out[name] = {"freq_khz": khzs, "measured_w": [round(x, 6) for x in meas],
                     "fitted_w": [round(x, 6) for x in fit],
                     "ratio_measured": round(meas[-1] / meas[0], 4) if meas[0] > 0 else None,
                     "ratio_fitted": round(fit[-1] / fit[0], 4) if fit[0] > 0 else None}
    return out


def split_holdout(rows: Sequence[Measurement], fraction: float, seed: int
                  ) -> tuple[list[Measurement], list[Measurement]]:
    """(train, held out): ``fraction`` of each (cluster, model) group's rows at random, keeping
    at least two rows of every group for the fit."""
    if not 0.0 <= fraction < 1.0:
        raise FitError(f"hold-out fraction must be in [0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.cluster, r.model), []).append(i)
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key]
        k = min(round(fraction * len(idx)), max(0, len(idx) - 2))
        if k > 0:
            held.update(int(i) for i in rng.choice(idx, size=k, replace=False))
    train = [r for i, r in enumerate(rows) if i not in held]
    test = [r for i, r in enumerate(rows) if i in held]
    return train, test


def fit_profile(rows: Sequence[Measurement], base: DeviceProfile, *, name: str | None = None,
                source: str = "<measurements>", holdout: Sequence[Measurement] = (),
                meta: Mapping[str, Any] | None = None, power_scope: str = "board") -> FitResult:
    """Fit ``base``'s latency and power parameters to ``rows`` (see the module docstring).

    ``power_scope``: ``board`` (idle readings are the whole board's) or ``cluster`` (busy and
    idle readings are the row's cluster's own rail).

    The result's profile is a valid ``edgesched-device/1`` profile; its
    ``sources["calibration"]`` holds the method, the per-model work, the errors and ``meta``.
    """
    _check_scope(power_scope)
    notes: list[str] = []
    res = _resolve(rows, base, source)
    held_res = _resolve(holdout, base, source)
    caps, works, per_cluster = _fit_latency(res, base, notes)
    power, floor = _fit_power(res, base, notes, power_scope)
    clusters = tuple(_fitted_cluster(c, [*res, *held_res], ci, caps[ci], power[ci], notes)
                     for ci, c in enumerate(base.clusters))
    fitted = dataclasses.replace(base, name=name or base.name, clusters=clusters,
                                 board_floor_uw=float(floor), source=source)
    if works:
        top = fitted.fastest_cluster
        top_opp = len(fitted.clusters[top].opps) - 1
        fracs = [w.mem_ms * fitted.mem_time_scale / fitted.latency_ms(w, top, top_opp)
                 for w in works.values()]
        fitted = dataclasses.replace(fitted, typical_mem_fraction=min(0.95, statistics.median(
            fracs)))
    errors = prediction_errors(fitted, works, rows, power_scope)
    held = prediction_errors(fitted, works, holdout, power_scope) if holdout else {}
    calibration: dict[str, Any] = {
        "format": CALIBRATION_FORMAT,
        "base_profile": base.source or base.name,
        "measurements": source,
        "rows_fitted": len(rows),
        "rows_held_out": len(holdout),
        "power_scope": power_scope,
        "method": "latency: weighted least squares t = a/f + b per model and cluster, "
                  "capacity from the ratio of a to the fastest cluster's (anchor: base "
                  "capacity), then one joint fit per model; power: " + (
                      "per cluster rail, idle = S*V^n + D0*V^2*f (n on a grid, S, D0 >= 0), "
                      "busy - idle = C*V^2*f, V from the base's device-tree OPPs"
                      if power_scope == "cluster" else
                      "weighted least squares P_busy - P_idle + idle_uw = C*V^2*f + "
                      "S*V^static_exponent per cluster, V from the base's device-tree OPPs, "
                      "idle_uw and static_exponent from the base"),
        "rms_relative_error": {q: round(v, 6) for q, v in errors.items()},
        "models": {m: {"compute_mcycles": round(w.compute_mcycles, 6),
                       "mem_ms": round(w.mem_ms, 6), "threads": w.threads,
                       "per_cluster": per_cluster.get(m, {})}
                   for m, w in sorted(works.items())},
        "notes": list(notes),
    }
    if held:
        calibration["holdout_rms_relative_error"] = {q: round(v, 6) for q, v in held.items()}
    if meta:
        calibration.update(meta)
    sources = {**dict(base.sources), "calibration": calibration}
    fitted = dataclasses.replace(fitted, sources=sources)
    try:  # the contract: whatever is written loads again
        parse_profile(profile_to_dict(fitted), fitted.name)
    except ProfileError as exc:
        raise FitError(f"the fitted profile is not valid ({exc}); check the measurements") \
            from None
    return FitResult(profile=fitted, works=works, errors=errors, holdout_errors=held,
                     notes=tuple(notes), rows_fitted=len(rows), rows_held_out=len(holdout),
                     power_scope=power_scope,
                     shape=active_power_shape(fitted, [*rows, *holdout], power_scope))


# ---------------------------------------------------------------------------------------------
# a shipped fake: measurements generated from known parameters


def synthesize_measurements(profile: DeviceProfile, works: Mapping[str, Work], *,
                            noise: float = 0.0, seed: int = 0,
                            board_level: bool = True, cluster_rails: bool = False,
                            temp_c: float | None = None) -> list[Measurement]:
    """Rows ``profile`` and ``works`` would produce, each reading multiplied by
    ``1 + noise * N(0, 1)``.

    ``board_level``: idle readings are the board's (floor + every cluster idle) and busy readings
    add the cluster's busy-minus-idle power; noise is applied to the cluster's share only (a
    meter whose error scales with what it measures above the floor). Otherwise busy readings are
    the cluster's own power and idle is empty. ``cluster_rails`` (overrides ``board_level``):
    busy and idle readings are the cluster's own rail, idle being its static power at the OPP
    (what ``edgesched fit --power-scope cluster`` reads). ``temp_c``: the die temperature the
    power is priced at (the profile's default when None).
    """
    rng = np.random.default_rng(seed)

    def jitter(x: float) -> float:
        return x * (1.0 + noise * float(rng.standard_normal())) if noise else x

    rows: list[Measurement] = []
    board_idle_w = (profile.board_floor_uw + profile.idle_power_uw) * 1e-6
    for ci, c in enumerate(profile.clusters):
        for oi, o in enumerate(c.opps):
            busy_cluster_w = c.busy_power_uw(oi, 1, temp_c) * 1e-6
            rail_idle_w = c.static_power_uw(oi, temp_c) * 1e-6
            for m, w in sorted(works.items()):
                lat = jitter(profile.latency_ms(w, ci, oi))
                if cluster_rails:
                    idle_w = jitter(rail_idle_w)
                    rows.append(Measurement(c.name, o.khz, m, lat,
                                            idle_w + jitter(busy_cluster_w - rail_idle_w), idle_w,
                                            temp_c=temp_c))
                elif board_level:
                    idle_w = board_idle_w + jitter(c.idle_uw * 1e-6) - c.idle_uw * 1e-6
                    busy_w = idle_w + jitter(busy_cluster_w - c.idle_uw * 1e-6)
                    rows.append(Measurement(c.name, o.khz, m, lat, busy_w, idle_w))
                else:
                    rows.append(Measurement(c.name, o.khz, m, lat, jitter(busy_cluster_w), None))
    return rows


def format_errors(errors: Mapping[str, float]) -> str:
    return ", ".join(f"{q} {v * 100:.2f}%" for q, v in errors.items())


def format_summary(result: FitResult) -> str:
    """The fitted parameters and errors, for the terminal."""
    p = result.profile
    lines = [f"profile {p.name}: board floor {p.board_floor_uw / 1e6:.3f} W, typical memory-bound "
             f"share {p.typical_mem_fraction:.3f}"]
    for c in p.clusters:
        lines.append(f"  {c.name}: capacity-dmips-mhz {c.capacity_dmips_mhz}, dynamic coefficient "
                     f"{c.dynamic_power_coefficient:.1f} uW/MHz/V^2, static "
                     f"{c.static_uw_at_1v:.0f} uW at 1 V x V^{c.static_exponent:g}"
                     + (f" x exp({c.static_temp_coeff_per_c:g} (T - {c.default_temp_c:g} C))"
                        if c.static_temp_coeff_per_c else "")
                     + (f" + {c.idle_dynamic_coefficient:.1f} uW/MHz/V^2 clocked while idle"
                        if c.idle_dynamic_coefficient else "")
                     + f", idle {c.idle_uw:.0f} uW")
    for m, w in sorted(result.works.items()):
        lines.append(f"  model {m}: {w.compute_mcycles:.3f} reference Mcycles + "
                     f"{w.mem_ms:.3f} ms memory-bound")
    lines.append(f"power scope: {result.power_scope}")
    lines.append(f"fit error over {result.rows_fitted} rows (RMS relative): "
                 f"{format_errors(result.errors)}")
    if result.rows_held_out:
        lines.append(f"prediction error over {result.rows_held_out} held-out rows (RMS relative): "
                     f"{format_errors(result.holdout_errors)}")
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)
