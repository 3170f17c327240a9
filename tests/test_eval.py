"""`edgesched eval`: the contract's JSON shape and the baselines' ordering on every shipped board
and built-in scenario, against the energy floor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgesched_sim.evaluate import evaluate
from edgesched_sim.scenarios import BUILTIN_NAMES

BASELINES = ["performance", "powersave", "ondemand", "conservative", "schedutil"]


@pytest.mark.parametrize("device", ["rk3399", "exynos5422", "bcm2711"])
@pytest.mark.parametrize("scenario", BUILTIN_NAMES)
def test_baselines_order_and_floor(device: str, scenario: str) -> None:
    doc = evaluate(device, scenario, [*BASELINES, "oracle"], seed=3, duration_s=20.0)
    r = {x["policy"]: x for x in doc["results"]}
    for name in BASELINES:
        # every row respects the floor of the requests it served in time
        assert r[name]["floor_j"] <= r[name]["energy_j"], name
        if doc["feasible"] and r[name]["served"] == doc["jobs"]:
            assert r["oracle"]["energy_j"] <= r[name]["energy_j"], name
    miss = {k: v["deadline_miss_rate"] for k, v in r.items()}
    assert miss["performance"] == min(miss[k] for k in BASELINES)
    freq = {k: r[k]["mean_busy_khz"] for k in BASELINES}
    assert freq["powersave"] == min(freq.values())
    assert freq["performance"] == max(freq.values())
    for gov in ("schedutil", "ondemand"):
        assert freq["powersave"] < freq[gov] < freq["performance"], gov
        assert miss["performance"] <= miss[gov] <= miss["powersave"], gov


def test_same_job_set_for_all_policies_and_cli_contract(tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    png = tmp_path / "e.png"
    cmd = [sys.executable, "-m", "edgesched", "eval", "--device", "rk3399", "--scenario", "bursty",
           "--policy", "performance", "--policy", "schedutil", "--policy", "oracle",
           "--seed", "7", "--duration-s", "10", "--json", str(out), "--plot", str(png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "schedutil" in proc.stdout and "mJ/served" in proc.stdout
    doc = json.loads(out.read_text())
    assert {"device", "scenario", "seed", "results"} <= set(doc)
    assert (doc["device"], doc["scenario"], doc["seed"]) == ("rk3399", "bursty", 7)
    keys = {"policy", "energy_j", "inferences", "energy_per_inference_j", "deadline_miss_rate",
            "miss_rate_by_priority", "p99_latency_ms"}
    for res in doc["results"]:
        assert keys <= set(res)
    assert png.stat().st_size > 1000
    again = evaluate("rk3399", "bursty", ["schedutil"], seed=7, duration_s=10.0)
    # the same run; only the floor figures need the oracle
    with_floor = {k: v for k, v in doc["results"][1].items() if k not in ("floor_j", "vs_oracle")}
    assert {k: v for k, v in again["results"][0].items()
            if k not in ("floor_j", "vs_oracle")} == with_floor
    assert again["results"][0]["vs_oracle"] is None and doc["results"][1]["vs_oracle"] > 1.0


def test_unknown_policy_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "edgesched", "eval", "--device", "rk3399",
                           "--scenario", "bursty", "--policy", "fastest"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown policy 'fastest'" in proc.stderr
