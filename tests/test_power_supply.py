"""The power source reader on fake ``class/power_supply`` trees on disk, and the metrics it
sits beside (OPP time, deadline outcomes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, wait_for_status

from edgesched.power.fakesysfs import power_supply
from edgesched.power.meters import CarbonAccount
from edgesched.power.supply import policy_for_source, read_power_source
from edgesched.server.metrics import Metrics


def test_no_supply_class_is_unknown(tmp_path: Path) -> None:
    src = read_power_source(tmp_path)
    assert src.source == "unknown" and src.batteries == () and src.time_to_empty_s is None


def test_mains_online_is_ac_even_with_a_battery(tmp_path: Path) -> None:
    power_supply(tmp_path, "AC", type="Mains", online=1)
    power_supply(tmp_path, "BAT0", type="Battery", status="Charging", capacity=40,
                 energy_now=20_000_000, energy_full=50_000_000, power_now=15_000_000)
    src = read_power_source(tmp_path)
    assert src.source == "ac"
    assert src.mains_online == ("AC",)
    bat = src.batteries[0]
    assert bat.capacity_pct == 40
    assert bat.time_to_empty_s is None
    assert bat.time_to_full_s == pytest.approx(2.0 * 3600)  # 30 Wh to go at 15 W
    assert src.time_to_empty_s is None


def test_battery_discharging_with_energy_and_power(tmp_path: Path) -> None:
    power_supply(tmp_path, "AC", type="Mains", online=0)
    power_supply(tmp_path, "BAT0", type="Battery", status="Discharging", capacity=60,
                 energy_now=30_000_000, energy_full=50_000_000, power_now=-10_000_000)
    src = read_power_source(tmp_path)
    assert src.source == "battery"
    assert src.batteries[0].power_uw == 10_000_000  # a negative rate counts by its magnitude
    assert src.time_to_empty_s == pytest.approx(3.0 * 3600)
    doc = src.to_dict()
    assert doc["source"] == "battery" and doc["time_to_empty_s"] == 10800.0


def test_charge_based_battery_uses_current_and_voltage(tmp_path: Path) -> None:
    power_supply(tmp_path, "usb", type="USB", online=0)
    power_supply(tmp_path, "battery", type="Battery", status="Discharging",
                 charge_now=2_000_000, charge_full=4_000_000, current_now=500_000,
                 voltage_now=3_700_000)
    src = read_power_source(tmp_path)
    bat = src.batteries[0]
    assert src.source == "battery"
    assert bat.time_to_empty_s == pytest.approx(4.0 * 3600)  # 2 Ah at 0.5 A
    assert bat.energy_uwh == pytest.approx(2_000_000 * 3.7)
    assert bat.power_uw == pytest.approx(500_000 * 3.7)
    assert src.time_to_empty_s == pytest.approx(4.0 * 3600)


def test_peripheral_batteries_and_unplugging(tmp_path: Path) -> None:
    power_supply(tmp_path, "hid-mouse", type="Battery", scope="Device", status="Discharging",
                 energy_now=1_000, power_now=1)
    power_supply(tmp_path, "AC", type="Mains", online=1)
    assert read_power_source(tmp_path).source == "ac"
    assert read_power_source(tmp_path).batteries == ()
    power_supply(tmp_path, "AC", online=0)  # the cable pulled; the mouse does not power the board
    assert read_power_source(tmp_path).source == "unknown"


def test_battery_without_a_rate_has_no_time(tmp_path: Path) -> None:
    power_supply(tmp_path, "BAT0", type="Battery", status="Discharging", energy_now=5_000_000,
                 power_now=0)
    src = read_power_source(tmp_path)
    assert src.source == "battery" and src.time_to_empty_s is None


def test_policy_for_source() -> None:
    table = {"battery": "powersave", "ac": ""}
    assert policy_for_source("battery", table, "schedutil") == "powersave"
    assert policy_for_source("ac", table, "schedutil") == "schedutil"
    assert policy_for_source("unknown", table, "schedutil") == "schedutil"


def test_opp_time_and_deadline_outcomes_are_counted() -> None:
    m = Metrics(CarbonAccount(400.0))
    m.frequencies(10.0, [("little", 408000), ("big", 816000)])
    m.frequencies(12.5, [("little", 408000), ("big", 1800000)])
    m.frequencies(12.5, [("little", 408000), ("big", 1800000)])  # unchanged: nothing
    times = m.opp_seconds(13.0)
    assert times[("little", 408000)] == pytest.approx(3.0)
    assert times[("big", 816000)] == pytest.approx(2.5)
    assert times[("big", 1800000)] == pytest.approx(0.5)
    for outcome in ("ok", "ok", "late", "deadline_missed", "shed", "rejected"):
        m.count("okay_nabu", 1, outcome)
    m.count("okay_nabu", 3, "ok")
    text = m.render({}, [("little", 408000), ("big", 1800000)], [], now_s=14.0)
    assert 'edgesched_opp_seconds_total{cluster="big",khz="1800000"} 1.5' in text
    assert 'edgesched_opp_seconds_total{cluster="little",khz="408000"} 4.0' in text
    assert 'edgesched_deadline_outcomes_total{priority="1",outcome="met"} 2' in text
    assert 'edgesched_deadline_outcomes_total{priority="1",outcome="late"} 1' in text
    assert 'edgesched_deadline_outcomes_total{priority="1",outcome="expired"} 1' in text
    assert 'edgesched_deadline_outcomes_total{priority="1",outcome="shed"} 1' in text
    assert 'edgesched_deadline_outcomes_total{priority="3",outcome="met"} 1' in text
    lines = [ln for ln in text.splitlines() if ln.startswith("edgesched_deadline_outcomes_total")]
    assert len(lines) == 5 and not any("rejected" in ln for ln in lines)


def test_daemon_picks_the_policy_of_the_power_source_and_shows_battery_time(
        tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    root = tmp_path / "sys"
    power_supply(root, "AC", type="Mains", online=0)
    power_supply(root, "BAT0", type="Battery", status="Discharging", capacity=60,
                 energy_now=30_000_000, energy_full=50_000_000, power_now=10_000_000)
    d = start_daemon(config={"power_source": {"sysfs_root": str(root), "poll_s": 0.05},
                             "power_source.battery": {"policy": "powersave"}})
    doc = wait_for_status(d, "on battery", lambda s: s["policy_running"] == "powersave")
    assert doc["policy_from"] == "power_source"
    assert doc["power_source"]["source"] == "battery"
    assert doc["power_source"]["time_to_empty_s"] == 10800.0
    assert doc["power_source"]["batteries"][0]["capacity_pct"] == 60
    power_supply(root, "AC", online=1)  # plugged in: no [power_source.ac] policy, the config's
    power_supply(root, "BAT0", status="Charging")
    doc = wait_for_status(d, "on mains", lambda s: s["policy_running"] == "schedutil")
    assert doc["policy_from"] == "config" and doc["power_source"]["source"] == "ac"
    assert doc["power_source"]["time_to_empty_s"] is None
    assert doc["power_source"]["batteries"][0]["time_to_full_s"] == pytest.approx(7200.0)


def test_grafana_dashboard_uses_the_exported_metric_names() -> None:
    import re

    path = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "edgesched-dashboard.json"
    dash = json.loads(path.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bedgesched_[a-z_]+", e)}
    m = Metrics(CarbonAccount(400.0))
    m.frequencies(0.0, [("big", 1800000)])
    m.count("okay_nabu", 1, "ok")
    exported = set(re.findall(r"^# TYPE (\w+)", m.render({1: 0}, [("big", 1800000)],
                                                         [("okay_nabu", 0.001)], now_s=1.0),
                              re.MULTILINE))
    assert used <= exported, used - exported
    assert {"edgesched_opp_seconds_total", "edgesched_deadline_outcomes_total"} <= used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
