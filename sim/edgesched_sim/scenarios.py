"""Scenarios: arrival process plus request classes, built in by name or read from a TOML file.

A scenario file::

    name = "my-scenario"
    duration_s = 60.0
    [arrivals]
    process = "poisson"          # poisson | mmpp | trace
    rate_hz = 8.0                # poisson
    # mmpp: rates_hz = [2.0, 40.0] and mean_dwell_s = [3.0, 0.5] (state 0 first)
    # trace: path = "trace.csv" (relative to the scenario file; columns t_s and optionally
    #        model, priority, deadline_ms, size), time_scale = 1.0, thin = 1.0,
    #        size_classes = [600, 1500] (a row's size picks classes[k], k = bounds below it)
    # a public trace as published (CSV, or JSON lines when the path ends in .jsonl):
    #        time_column = "TIMESTAMP" (numbers in time_unit "s", "ms",
    #        "us" or "ns", or date-times such as 2023-11-16 18:15:46.6805900, counted from the
    #        earliest row), start = "zero" (numbers as given) or "first" (from the earliest
    #        row), size_columns = ["ContextTokens", "GeneratedTokens"] (summed into the size),
    #        minus_column = "duration" (taken off each time, in the same unit: a trace of end
    #        times and durations, as Azure Functions 2021)
    # a count trace (requests per time bin, one row per function, as Azure Functions 2019):
    #        count_columns = "numbered" (every column named by a whole number, bin = number -
    #        the least) or a list of columns in bin order, bin_s = 60.0, where = {Trigger =
    #        "http"} (rows kept: every named column equal to the text); the requests of a bin
    #        arrive uniformly at random within it (per seed); thin and time_scale as above
    [[classes]]                  # what a request is; picked by weight (trace rows may override)
    model = "face_detection_short_range"
    weight = 1.0
    priority = 2                 # Triton convention, 1 = highest
    deadline_ms = 100.0
    [qos.miss_budget]            # optional: share of each class that may miss (these are the
    p1 = 0.001                   # defaults, edgesched.qos.MissBudget); `edgesched eval` reports
    p2 = 0.01                    # per class whether each policy stayed inside, and guards the
    p3 = 0.05                    # learned policies and slack with them (edgesched.qos.QosGuard)
    [thermal]                    # optional: conditions for the board's heat model (profiles
    ambient_c = 35.0             # with a thermal section, edgesched.thermal): ambient C and one
    cooling = "none"             # of the profile's cooling settings; default: the profile's

Generation is deterministic in the seed: the same (scenario, seed, duration) gives the same jobs.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import ConfigError
from edgesched.qos import MissBudget
from edgesched_sim.workloads import MODELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class RequestClass:
    model: str
    weight: float
    priority: int
    deadline_ms: float


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    process: str
    params: Mapping[str, Any]
    classes: tuple[RequestClass, ...]
    trace_rows: tuple[tuple[float, str | None, int | None, float | None], ...] = field(
        default=(), repr=False)
    trace_counts: tuple[int, ...] = field(default=(), repr=False)
    """A count trace's requests per bin (``arrivals.count_columns``), summed over its rows; the
    bins are ``arrivals.bin_s`` long, the first starts at 0."""
    miss_budget: MissBudget = field(default_factory=MissBudget)
    thermal: Mapping[str, Any] = field(default_factory=dict)
    """Conditions for the board's heat model (``[thermal]``: ``ambient_c`` and ``cooling``, a
    cooling setting of the profile's thermal section); empty: the profile's own."""


@dataclass(frozen=True)
class JobSet:
    """The jobs of one run, in release order (arrays of equal length)."""

    release_s: np.ndarray
    model: tuple[str, ...]
    priority: np.ndarray
    deadline_s: np.ndarray

    def __len__(self) -> int:
        return len(self.model)


BUILTIN: dict[str, dict[str, Any]] = {
    "steady-light": {
        "duration_s": 60.0,
        "arrivals": {"process": "poisson", "rate_hz": 6.0},
        "classes": [
            {"model": "face_detection_short_range", "weight": 0.6, "priority": 2,
             "deadline_ms": 120.0},
            {"model": "hand_landmark_lite", "weight": 0.3, "priority": 2, "deadline_ms": 200.0},
            {"model": "mobilenet_v1", "weight": 0.1, "priority": 3, "deadline_ms": 1000.0},
        ],
    },
    "steady-heavy": {
        "duration_s": 60.0,
        "arrivals": {"process": "poisson", "rate_hz": 18.0},
        "classes": [
            {"model": "face_detection_short_range", "weight": 0.6, "priority": 2,
             "deadline_ms": 150.0},
            {"model": "hand_landmark_lite", "weight": 0.3, "priority": 2, "deadline_ms": 250.0},
            {"model": "mobilenet_v1", "weight": 0.1, "priority": 3, "deadline_ms": 1500.0},
        ],
    },
    "bursty": {
        "duration_s": 60.0,
        "arrivals": {"process": "mmpp", "rates_hz": [3.0, 35.0], "mean_dwell_s": [4.0, 1.0]},
        "classes": [
            {"model": "face_detection_short_range", "weight": 0.7, "priority": 2,
             "deadline_ms": 150.0},
            {"model": "hand_landmark_lite", "weight": 0.3, "priority": 1, "deadline_ms": 250.0},
        ],
    },
    "mixed-priority": {
        "duration_s": 60.0,
        "arrivals": {"process": "poisson", "rate_hz": 14.0},
        "classes": [
            # the keyword model is tiny but waits behind a running MobileNet (non-preemptive):
            # its deadline must cover that blocking at the top speed
            {"model": "okay_nabu", "weight": 0.4, "priority": 1, "deadline_ms": 200.0},
            {"model": "face_detection_short_range", "weight": 0.35, "priority": 2,
             "deadline_ms": 150.0},
            {"model": "hand_landmark_lite", "weight": 0.15, "priority": 2, "deadline_ms": 300.0},
            {"model": "mobilenet_v1", "weight": 0.1, "priority": 3, "deadline_ms": 2000.0},
        ],
    },
    "hot-sustained": {
        # a camera pipeline that never pauses, on a bare board (natural convection only) in a 35 C
        # enclosure: enough heat at the top OPP to cross the first passive trip within minutes
        "duration_s": 600.0,
        "thermal": {"ambient_c": 35.0, "cooling": "none"},
        "arrivals": {"process": "poisson", "rate_hz": 11.0},
        "classes": [
            {"model": "hand_landmark_lite", "weight": 0.5, "priority": 2, "deadline_ms": 300.0},
            {"model": "mobilenet_v1", "weight": 0.4, "priority": 3, "deadline_ms": 2000.0},
            {"model": "okay_nabu", "weight": 0.1, "priority": 1, "deadline_ms": 200.0},
        ],
    },
    "hot-bursty": {
        # the same board and enclosure, load in bursts: heat builds in a burst, drains between
        "duration_s": 600.0,
        "thermal": {"ambient_c": 35.0, "cooling": "none"},
        "arrivals": {"process": "mmpp", "rates_hz": [2.0, 11.5], "mean_dwell_s": [20.0, 120.0]},
        "classes": [
            {"model": "hand_landmark_lite", "weight": 0.5, "priority": 2, "deadline_ms": 300.0},
            {"model": "mobilenet_v1", "weight": 0.4, "priority": 3, "deadline_ms": 2000.0},
            {"model": "okay_nabu", "weight": 0.1, "priority": 1, "deadline_ms": 200.0},
        ],
    },
    "azure-conv": {
        # the Azure LLM conversation trace (CC BY 4.0, see data/README.md) thinned to one board:
        # 1 in 2 requests kept (about 2.8 req/s); the request's size (tokens) picks the class:
        # short prompts are latency-critical face detections, long ones background MobileNets.
        "duration_s": 300.0,
        "arrivals": {"process": "trace", "path": "@azure_llm_2023_conv.csv", "time_scale": 1.0,
                     "thin": 0.5, "size_classes": [600, 1500]},
        "classes": [
            {"model": "face_detection_short_range", "weight": 1.0, "priority": 1,
             "deadline_ms": 100.0},
            {"model": "hand_landmark_lite", "weight": 1.0, "priority": 2, "deadline_ms": 250.0},
            {"model": "mobilenet_v1", "weight": 1.0, "priority": 3, "deadline_ms": 2000.0},
        ],
    },
}
BUILTIN_NAMES = ("steady-light", "steady-heavy", "bursty", "mixed-priority")


def builtin_scenarios() -> list[str]:
    return list(BUILTIN)


def _num(d: Mapping[str, Any], key: str, src: str, default: float | None = None,
         positive: bool = True) -> float:
    value = d.get(key, default)
    if value is None:
        raise ConfigError(f"{src}: missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{src}: {key!r} must be a number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{src}: {key!r} must be > 0, got {value!r}")
    return float(value)


def parse_scenario(doc: Mapping[str, Any], name: str, src: str, base_dir: Path | None) -> Scenario:
    known = {"name", "duration_s", "arrivals", "classes", "description", "qos", "thermal"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"{src}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    arrivals = doc.get("arrivals")
    if not isinstance(arrivals, Mapping):
        raise ConfigError(f"{src}: missing [arrivals] table")
    process = arrivals.get("process")
    if process not in ("poisson", "mmpp", "trace"):
        raise ConfigError(f"{src}: arrivals.process must be poisson, mmpp or trace, got {process!r}")
    raw_classes = doc.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes:
        raise ConfigError(f"{src}: needs at least one [[classes]] entry")
    classes = []
    for i, c in enumerate(raw_classes):
        csrc = f"{src}: classes[{i}]"
        if not isinstance(c, Mapping):
            raise ConfigError(f"{csrc}: must be a table")
        model = c.get("model")
        if model not in MODELS:
            raise ConfigError(f"{csrc}: unknown model {model!r} (known: {', '.join(sorted(MODELS))})")
        prio = c.get("priority", 2)
        if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 3:
            raise ConfigError(f"{csrc}: priority must be 1, 2 or 3, got {prio!r}")
        classes.append(RequestClass(model=str(model), weight=_num(c, "weight", csrc, 1.0),
                                    priority=prio, deadline_ms=_num(c, "deadline_ms", csrc)))
    params: dict[str, Any] = dict(arrivals)
    rows: tuple[tuple[float, str | None, int | None, float | None], ...] = ()
    counts: tuple[int, ...] = ()
    if process == "poisson":
        _num(arrivals, "rate_hz", f"{src}: arrivals")
    elif process == "mmpp":
        for key in ("rates_hz", "mean_dwell_s"):
            v = arrivals.get(key)
            if (not isinstance(v, list) or len(v) != 2
                    or not all(isinstance(x, (int, float)) and x > 0 for x in v)):
                raise ConfigError(f"{src}: arrivals.{key} must be two positive numbers, got {v!r}")
    else:
        _trace_scaling(arrivals, src)
        if "count_columns" in arrivals:
            counts = _read_counts(arrivals, src, base_dir)
        else:
            for key in COUNT_KEYS - {"count_columns"}:
                if key in arrivals:
                    raise ConfigError(f"{src}: arrivals.{key} is for a count trace; name its "
                                      "count columns with arrivals.count_columns")
            rows = _read_trace(arrivals, src, base_dir)
    return Scenario(name=str(doc.get("name", name)),
                    duration_s=_num(doc, "duration_s", src, 60.0), process=process,
                    params=params, classes=tuple(classes), trace_rows=rows, trace_counts=counts,
                    miss_budget=_miss_budget(doc.get("qos", {}), src),
                    thermal=_thermal_conditions(doc.get("thermal", {}), src))


def _thermal_conditions(thermal: Any, src: str) -> dict[str, Any]:
    """``[thermal]`` of a scenario: ``ambient_c`` (C) and ``cooling`` (a setting's name)."""
    if not isinstance(thermal, Mapping) or not set(thermal) <= {"ambient_c", "cooling"}:
        raise ConfigError(f"{src}: [thermal] may set ambient_c (C) and cooling (a cooling setting "
                          f"of the profile, e.g. \"none\"), got {thermal!r}")
    if "ambient_c" in thermal:
        _num(thermal, "ambient_c", f"{src}: thermal", positive=False)
    if "cooling" in thermal and not isinstance(thermal["cooling"], str):
        raise ConfigError(f"{src}: thermal.cooling must be a name such as \"none\" or \"fan\"")
    return dict(thermal)


def _miss_budget(qos: Any, src: str) -> MissBudget:
    """``[qos]`` of a scenario: only ``miss_budget`` (see :mod:`edgesched.qos`)."""
    if not isinstance(qos, Mapping):
        raise ConfigError(f"{src}: [qos] must be a table with a [qos.miss_budget] table")
    for key in qos:
        if key != "miss_budget":
            raise ConfigError(f"{src}: unknown key qos.{key!r} (known: miss_budget)")
    return MissBudget.from_mapping(qos.get("miss_budget", {}), src)


_TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
                       r"\s*(Z|[+-]\d{2}:?\d{2})?")


def _datetime_s(text: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 date-time (any number of fractional digits, an
    optional zone, UTC when none); None when ``text`` is not one."""
    m = _DATETIME.fullmatch(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7), m.group(8)
    t = datetime(year, month, day, hour, minute, sec, tzinfo=timezone.utc).timestamp()
    if frac:
        t += int(frac) / 10 ** len(frac)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return t


def _trace_columns(arrivals: Mapping[str, Any], src: str) -> tuple[str, float, str, list[str]]:
    """``time_column``, the seconds per unit of its numbers, ``start`` and ``size_columns``."""
    time_col = arrivals.get("time_column", "t_s")
    if not isinstance(time_col, str) or not time_col:
        raise ConfigError(f"{src}: arrivals.time_column must name a column, got {time_col!r}")
    unit = arrivals.get("time_unit", "s")
    if unit not in _TIME_UNITS_S:
        raise ConfigError(f"{src}: arrivals.time_unit must be one of {', '.join(_TIME_UNITS_S)}, "
                          f"got {unit!r}")
    start = arrivals.get("start", "zero")
    if start not in ("zero", "first"):
        raise ConfigError(f"{src}: arrivals.start must be \"zero\" (times as given) or \"first\" "
                          f"(counted from the earliest request), got {start!r}")
    sizes = arrivals.get("size_columns", ["size"])
    if isinstance(sizes, str):
        sizes = [sizes]
    if not isinstance(sizes, list) or not sizes or not all(isinstance(c, str) for c in sizes):
        raise ConfigError(f"{src}: arrivals.size_columns must be a list of column names, got "
                          f"{sizes!r}")
    return time_col, _TIME_UNITS_S[unit], start, sizes


def _json_lines(text: str, src: str, path_s: str) -> list[tuple[int, dict[str, str]]]:
    """The records of a JSON-lines trace with their line numbers, every value as text (as a
    CSV row's)."""
    rows: list[tuple[int, dict[str, str]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{src}: trace {path_s} line {lineno}: not JSON ({exc.msg})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{src}: trace {path_s} line {lineno}: a JSON object per line, got "
                              f"{type(doc).__name__}")
        rows.append((lineno, {k: "" if v is None else str(v) for k, v in doc.items()
                              if not isinstance(v, (list, dict))}))
    return rows


def _csv_lines(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """A CSV trace's rows with the number of the line each ends on (blank lines skipped)."""
    for row in reader:
        yield reader.line_num, row


def _trace_text(arrivals: Mapping[str, Any], src: str, base_dir: Path | None) -> tuple[str, str]:
    """(``arrivals.path``, the text of the file it names)."""
    path_s = arrivals.get("path")
    if not isinstance(path_s, str):
        raise ConfigError(f"{src}: arrivals.path must name a CSV or .jsonl file")
    if path_s.startswith("@"):
        text = (resources.files("edgesched_sim") / "data" / path_s[1:]).read_text(encoding="utf-8")
    else:
        path = Path(path_s) if base_dir is None else base_dir / path_s
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"{src}: cannot read trace {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{src}: trace {path} is not UTF-8 text: {exc.reason}") from None
    return path_s, text


def _read_trace(arrivals: Mapping[str, Any], src: str, base_dir: Path | None,
                ) -> tuple[tuple[float, str | None, int | None, float | None], ...]:
    """The trace's rows as (seconds, model, priority, deadline_ms), sorted by time (stable)."""
    time_col, per_unit_s, start, size_cols = _trace_columns(arrivals, src)
    path_s, text = _trace_text(arrivals, src, base_dir)
    reader: Iterable[tuple[int, Mapping[str, Any]]]
    if path_s.endswith(".jsonl"):  # one JSON object per line (e.g. the Mooncake traces)
        records = _json_lines(text, src, path_s)
        header = sorted({k for _, r in records for k in r})
        reader = records
    else:
        table = csv.DictReader(text.splitlines())
        header = list(table.fieldnames or [])
        reader = _csv_lines(table)
    if time_col not in header:
        raise ConfigError(f"{src}: trace {path_s} has no {time_col!r} column (its columns: "
                          f"{', '.join(header) or 'none'}); name the arrival times' column with "
                          "arrivals.time_column")
    minus_col = arrivals.get("minus_column")
    if minus_col is not None and (not isinstance(minus_col, str) or minus_col not in header):
        raise ConfigError(f"{src}: arrivals.minus_column must name a column of trace {path_s} "
                          f"(its columns: {', '.join(header)}), got {minus_col!r}")
    bounds = arrivals.get("size_classes")
    if bounds:
        missing = [c for c in size_cols if c not in header]
        if missing:
            raise ConfigError(f"{src}: arrivals.size_classes needs the size column(s) "
                              f"{', '.join(missing)}, which trace {path_s} lacks (its columns: "
                              f"{', '.join(header)}); name them with arrivals.size_columns")
    rows = []
    dated = False
    for lineno, row in reader:
        try:
            raw_t = row.get(time_col) or ""
            try:
                t = float(raw_t) * per_unit_s
            except ValueError:
                stamp = _datetime_s(raw_t)
                if stamp is None:
                    raise ValueError(f"{time_col} {raw_t!r} is neither a number nor a date-time "
                                     "such as 2023-11-16 18:15:46.68") from None
                t, dated = stamp, True
            if minus_col is not None:  # e.g. an end time less the run's duration
                t -= float(row.get(minus_col) or "nan") * per_unit_s
            if not math.isfinite(t):
                raise ValueError(f"{time_col} {raw_t!r} is not a finite time"
                                 + (f" (less {minus_col} {row.get(minus_col)!r})"
                                    if minus_col is not None else ""))
            model = row.get("model") or None
            prio = int(row["priority"]) if row.get("priority") else None
            deadline = float(row["deadline_ms"]) if row.get("deadline_ms") else None
            if model is None and bounds:
                size = sum(float(row.get(c) or 0.0) for c in size_cols)
                model = f"#{sum(1 for b in bounds if size > b)}"
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{src}: trace {path_s} line {lineno}: {exc}") from None
        rows.append((t, model, prio, deadline))
    rows.sort(key=lambda r: r[0])
    if rows and (dated or start == "first"):
        t0 = rows[0][0]
        rows = [(t - t0, m, p, d) for t, m, p, d in rows]
    return tuple(rows)


def _trace_scaling(arrivals: Mapping[str, Any], src: str) -> None:
    """Checks a trace's ``time_scale`` (> 0) and ``thin`` (in (0, 1])."""
    _num(arrivals, "time_scale", f"{src}: arrivals", 1.0)
    thin = _num(arrivals, "thin", f"{src}: arrivals", 1.0)
    if thin > 1.0:
        raise ConfigError(f"{src}: arrivals.thin is the share of the trace's requests kept, in "
                          f"(0, 1], got {thin!r}")


COUNT_KEYS = frozenset({"count_columns", "bin_s", "where"})
BIN_S = 60.0
"""A count trace's bin length when ``arrivals.bin_s`` is not given (Azure Functions': a minute)."""
"""The keys of a count trace; the keys of a trace of arrival times do not apply to it."""


def _read_counts(arrivals: Mapping[str, Any], src: str, base_dir: Path | None,
                 ) -> tuple[int, ...]:
    """A count trace's requests per bin, summed over the rows ``arrivals.where`` keeps."""
    for key in ("time_column", "time_unit", "start", "size_columns", "size_classes",
                "minus_column"):
        if key in arrivals:
            raise ConfigError(f"{src}: arrivals.{key} is for a trace of arrival times; a count "
                              "trace (arrivals.count_columns) has none")
    _num(arrivals, "bin_s", f"{src}: arrivals", BIN_S)
    where = arrivals.get("where", {})
    if not isinstance(where, Mapping) or not all(isinstance(v, str) for v in where.values()):
        raise ConfigError(f"{src}: arrivals.where must be a table of column = \"text\", got "
                          f"{where!r}")
    path_s, text = _trace_text(arrivals, src, base_dir)
    if path_s.endswith(".jsonl"):
        raise ConfigError(f"{src}: a count trace is a CSV file, got {path_s}")
    reader = csv.reader(text.splitlines())
    header = next(reader, [])
    index = {name: i for i, name in enumerate(header)}
    wanted = arrivals.get("count_columns")
    if wanted == "numbered":
        numbered = [(int(n), i) for n, i in index.items() if n.strip().isdigit()]
        if not numbered:
            raise ConfigError(f"{src}: trace {path_s} has no column named by a whole number "
                              f"(its columns: {', '.join(header[:12]) or 'none'}); list the "
                              "count columns in arrivals.count_columns")
        first = min(n for n, _ in numbered)
        cols = [(n - first, i) for n, i in numbered]
    elif isinstance(wanted, list) and wanted and all(isinstance(c, str) for c in wanted):
        missing = [c for c in wanted if c not in index]
        if missing:
            raise ConfigError(f"{src}: trace {path_s} has no column(s) {', '.join(missing)} of "
                              "arrivals.count_columns")
        cols = [(k, index[c]) for k, c in enumerate(wanted)]
    else:
        raise ConfigError(f"{src}: arrivals.count_columns must be \"numbered\" or a list of "
                          f"column names, got {wanted!r}")
    missing = [c for c in where if c not in index]
    if missing:
        raise ConfigError(f"{src}: trace {path_s} has no column(s) {', '.join(missing)} of "
                          "arrivals.where")
    match = [(index[c], v) for c, v in where.items()]
    counts = [0] * (max(k for k, _ in cols) + 1)
    kept = 0
    for row in reader:
        lineno = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if any(i >= len(row) or row[i] != v for i, v in match):
            continue
        kept += 1
        for k, i in cols:
            cell = row[i].strip() if i < len(row) else ""
            try:
                n = int(cell) if cell else 0
            except ValueError:
                n = -1
            if n < 0:
                raise ConfigError(f"{src}: trace {path_s} line {lineno}: column {header[i]!r} "
                                  f"holds {cell!r}, not a count of requests (a whole number "
                                  ">= 0)")
            counts[k] += n
    if not kept:
        raise ConfigError(f"{src}: no row of trace {path_s} matches arrivals.where {dict(where)}")
    return tuple(counts)


def _count_arrivals(sc: Scenario, rng: np.random.Generator, duration_s: float) -> np.ndarray:
    """A count trace's arrival times: each bin's requests (thinned) uniformly within it."""
    width_s = float(sc.params.get("bin_s", BIN_S)) * float(sc.params.get("time_scale", 1.0))
    counts = np.asarray(sc.trace_counts, dtype=np.int64)
    starts = np.arange(len(counts)) * width_s
    inside = starts < duration_s
    if counts.any() and not counts[inside].any():
        first = float(starts[np.argmax(counts > 0)])
        raise ConfigError(f"{sc.name}: the trace's first request comes in the bin at "
                          f"{first:.6g} s, after the {duration_s:g} s run")
    kept = rng.binomial(counts[inside], float(sc.params.get("thin", 1.0)))
    times = np.repeat(starts[inside], kept) + rng.uniform(0.0, width_s, size=int(kept.sum()))
    return np.sort(times[times < duration_s])


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario TOML file by path."""
    if name_or_path in BUILTIN:
        return parse_scenario(BUILTIN[name_or_path], name_or_path, f"{name_or_path} (built-in)",
                              None)
    path = Path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name_or_path}: no such scenario file and not a built-in scenario "
                          f"({', '.join(BUILTIN)})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{name_or_path}: {exc}") from None
    return parse_scenario(doc, path.stem, str(path), path.parent)


def _arrival_times(sc: Scenario, rng: np.random.Generator, duration_s: float) -> np.ndarray:
    p = sc.params
    if sc.process == "poisson":
        rate = float(p["rate_hz"])
        n = int(rng.poisson(rate * duration_s))
        return np.sort(rng.uniform(0.0, duration_s, size=n))
    if sc.process == "mmpp":
        rates = [float(x) for x in p["rates_hz"]]
        dwell = [float(x) for x in p["mean_dwell_s"]]
        times: list[np.ndarray] = []
        t, state = 0.0, 0
        while t < duration_s:
            span = min(float(rng.exponential(dwell[state])), duration_s - t)
            n = int(rng.poisson(rates[state] * span))
            times.append(t + rng.uniform(0.0, span, size=n))
            t += span
            state = 1 - state
        return np.sort(np.concatenate(times)) if times else np.zeros(0)
    raise AssertionError(sc.process)


def generate(sc: Scenario, seed: int, duration_s: float | None = None) -> JobSet:
    """The job set of ``sc`` for ``seed``; ``duration_s`` overrides the scenario's length."""
    rng = np.random.default_rng(seed)
    dur = sc.duration_s if duration_s is None else float(duration_s)
    weights = np.array([c.weight for c in sc.classes], dtype=float)
    weights /= weights.sum()
    if sc.process == "trace" and sc.trace_counts:
        release = _count_arrivals(sc, rng, dur)
    elif sc.process == "trace":
        scale = float(sc.params.get("time_scale", 1.0))
        thin = float(sc.params.get("thin", 1.0))
        rows = [r for r in sc.trace_rows if r[0] * scale < dur]
        if sc.trace_rows and not rows:
            first = sc.trace_rows[0][0] * scale
            raise ConfigError(f"{sc.name}: the trace's first request comes at {first:.6g} s, after "
                              f"the {dur:g} s run; count from the earliest request with "
                              "arrivals.start = \"first\"")
        keep = rng.random(len(rows)) < thin
        rows = [r for r, k in zip(rows, keep, strict=False) if k]
        release = np.array([r[0] * scale for r in rows], dtype=float)
        picks = rng.choice(len(sc.classes), size=len(rows), p=weights)
        models, prios, dls = [], [], []
        for r, k in zip(rows, picks, strict=False):
            cls = sc.classes[k]
            if r[1] is not None and r[1].startswith("#"):
                cls = sc.classes[min(int(r[1][1:]), len(sc.classes) - 1)]
            models.append(r[1] if r[1] is not None and not r[1].startswith("#") else cls.model)
            prios.append(r[2] if r[2] is not None else cls.priority)
            dls.append(r[3] if r[3] is not None else cls.deadline_ms)
        for m in models:
            if m not in MODELS:
                raise ConfigError(f"{sc.name}: trace names unknown model {m!r}")
        return JobSet(release_s=release, model=tuple(models),
                      priority=np.array(prios, dtype=np.int64),
                      deadline_s=release + np.array(dls, dtype=float) / 1000.0)
    else:
        release = _arrival_times(sc, rng, dur)
    picks = rng.choice(len(sc.classes), size=len(release), p=weights)
    class_models = tuple(c.model for c in sc.classes)
    priority = np.array([c.priority for c in sc.classes], dtype=np.int64)
    deadline_ms = np.array([c.deadline_ms for c in sc.classes], dtype=float)
    return JobSet(release_s=release,
                  model=tuple(map(class_models.__getitem__, picks.tolist())),
                  priority=priority[picks],
                  deadline_s=release + deadline_ms[picks] / 1000.0)


def scenario_models(sc: Scenario) -> Sequence[str]:
    return sorted({c.model for c in sc.classes})
