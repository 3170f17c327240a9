"""The evaluation documents are strict JSON: a figure with no finite value (energy per request
served when none was, ...) is null, never Infinity or NaN, and the table prints it as "-"."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesched_sim.evaluate import dumps_json, evaluate, format_table, json_safe
from edgesched_sim.report import device_summary

# every request's deadline is shorter than any inference: no policy serves one in time
UNSERVABLE = """\
name = "unservable"
duration_s = 5.0
[arrivals]
process = "poisson"
rate_hz = 4.0
[[classes]]
model = "face_detection_short_range"
weight = 1.0
priority = 1
deadline_ms = 0.001
"""


def strict_loads(text: str) -> Any:
    """json.loads that refuses the non-standard Infinity, -Infinity and NaN."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def unservable(tmp_path: Path) -> Path:
    path = tmp_path / "unservable.toml"
    path.write_text(UNSERVABLE, encoding="utf-8")
    return path


def test_eval_json_writes_null_for_a_policy_that_served_nothing(tmp_path: Path,
                                                                unservable: Path) -> None:
    out = tmp_path / "e.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesched", "eval", "--device", "rk3399", "--scenario",
         str(unservable), "--policy", "powersave", "--policy", "oracle", "--seed", "1",
         "--json", str(out)], capture_output=True, text=True, check=True)
    doc = strict_loads(out.read_text(encoding="utf-8"))
    powersave = doc["results"][0]
    assert powersave["policy"] == "powersave" and powersave["served"] == 0
    assert powersave["received"] > 0
    assert powersave["energy_per_served_j"] is None
    assert powersave["energy_per_inference_j"] is None
    assert powersave["energy_per_received_j"] == pytest.approx(
        powersave["energy_j"] / powersave["received"])
    # the table: "-" where the JSON has null, never "inf"
    row = next(line for line in proc.stdout.splitlines() if line.startswith("powersave"))
    assert row.split()[3] == "-"  # mJ/served
    assert "inf" not in proc.stdout and "nan" not in proc.stdout


def test_json_safe_replaces_every_non_finite_number() -> None:
    doc = {"a": math.inf, "b": [1.0, -math.inf, (math.nan, 2)], "c": {"d": np.float64("inf")},
           "e": np.float64(0.5), "f": None, "g": "inf", "h": True, "i": 3}
    safe = json_safe(doc)
    assert safe == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": None}, "e": 0.5,
                    "f": None, "g": "inf", "h": True, "i": 3}
    assert strict_loads(dumps_json(doc)) == safe
    assert "Infinity" not in dumps_json(doc, indent=None)
    # the source document is left as it was
    assert doc["a"] == math.inf


def test_format_table_prints_none_as_a_dash(unservable: Path) -> None:
    doc = json_safe(evaluate("rk3399", str(unservable), ["powersave", "oracle"], seed=1))
    # what a document read back from JSON may hold: null p99 and demand
    doc["results"][0]["p99_latency_ms"] = None
    doc["demand"]["max_load"] = None
    table = format_table(doc)
    header, cols, powersave = table.splitlines()[:3]
    assert "peak demand -x" in header
    # policy, energy J, served, mJ/served, mJ/received, miss %, miss p1 %, p99 ms
    assert cols.split()[11:13] == ["p99", "ms"]
    assert powersave.split()[3] == "-" and powersave.split()[7] == "-"
    assert "inf" not in table and "nan" not in table


def test_report_summary_has_no_figure_when_nothing_was_served(unservable: Path) -> None:
    runs = [evaluate("rk3399", str(unservable), ["powersave", "schedutil", "oracle"], seed=s,
                     duration_s=3.0) for s in (1, 2)]
    assert all(r["served"] == 0 for run in runs for r in run["results"][:2])
    summary = device_summary(runs)["summary"]  # warnings are errors: no inf / inf
    assert summary["powersave"]["energy_per_served_j"] is None
    assert summary["powersave"]["vs_schedutil"] is None
    assert summary["schedutil"]["energy_per_received_j"] is not None
    strict_loads(dumps_json(summary))
