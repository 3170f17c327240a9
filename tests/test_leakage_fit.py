"""Leakage that grows with voltage and temperature; per-rail (cluster-scope) fits; the fit report;
calibration from per-cluster hwmon rails on a fake tree on disk."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from importlib import resources
from pathlib import Path

import pytest

from edgesched.calibrate import EmulatedClock, ScriptedWorkload, calibrate, open_rail_meters
from edgesched.cli import main
from edgesched.device import DeviceProfile, Work, load_profile, parse_profile, profile_to_dict
from edgesched.errors import ConfigError, ProfileError
from edgesched.fit import (
    Measurement,
    MeasurementError,
    fit_profile,
    prediction_errors,
    read_measurements,
    synthesize_measurements,
    write_measurements,
)
from edgesched.power.backends import VirtualBoard, _price_model_j
from edgesched.power.meters import PowerChannel, cluster_rail_channels
from edgesched_sim.engine import BoardTables

OLD_PROFILES = ("rk3399", "exynos5422", "bcm2711")
MEASUREMENTS = resources.files("edgesched") / "data" / "measurements"


def leaky_doc() -> dict:
    doc = copy.deepcopy(profile_to_dict(load_profile("rk3399")))
    doc["default_temp_c"] = 25.0
    big = doc["clusters"][1]
    big.update(dynamic_power_coefficient=300, static_uw_at_1v=100_000, static_exponent=2.0,
               static_temp_coeff_per_c=0.03, idle_dynamic_coefficient=10.0, idle_uw=10_000,
               opps=[{"khz": 1_000_000, "uv": 1_100_000}, {"khz": 1_800_000, "uv": 1_200_000}])
    return doc


def test_leakage_form_against_hand_worked_numbers() -> None:
    big = parse_profile(leaky_doc(), "leaky").clusters[1]
    # V = 1.1 V, f = 1000 MHz, T = 45 C, T0 = 25 C:
    # leakage = 100000 * 1.1^2 * exp(0.03 * 20) = 121000 * 1.8221188 = 220476.37 uW
    assert big.leakage_uw(0, 45.0) == pytest.approx(220_476.37, abs=0.01)
    # + idle clocks 10 * 1.21 * 1000 = 12100 uW
    assert big.static_power_uw(0, 45.0) == pytest.approx(232_576.37, abs=0.01)
    # + one busy CPU 300 * 1.21 * 1000 = 363000 uW; two CPUs twice that
    assert big.busy_power_uw(0, 1, 45.0) == pytest.approx(595_576.37, abs=0.01)
    assert big.busy_power_uw(0, 2, 45.0) == pytest.approx(958_576.37, abs=0.01)
    # no temperature: the profile's default (25 C), where the exponential is 1
    assert big.static_power_uw(0) == pytest.approx(121_000 + 12_100, abs=1e-6)
    assert big.static_power_uw(0, 25.0) == big.static_power_uw(0)
    # 10 C colder: 121000 * exp(-0.3) = 121000 * 0.74081822 = 89639.00 uW
    assert big.leakage_uw(0, 15.0) == pytest.approx(89_639.00, abs=0.01)
    # the simulator's tables and the virtual board price with the same functions
    prof = parse_profile(leaky_doc(), "leaky")
    hot = BoardTables(prof, ["mobilenet_v1"], temp_c=45.0)
    assert hot.static_uw[1][0] == pytest.approx(232_576.37, abs=0.01)
    assert BoardTables(prof, ["mobilenet_v1"]).static_uw[1][0] == pytest.approx(133_100.0)
    assert _price_model_j(prof, 1, 0, 2.0, 45.0) == pytest.approx(595_576.37 * 2e-6)


def test_the_document_round_trips_and_bad_leakage_keys_are_clear_errors() -> None:
    doc = leaky_doc()
    prof = parse_profile(doc, "leaky")
    again = profile_to_dict(prof)
    assert again["clusters"][1]["static_temp_coeff_per_c"] == 0.03
    assert again["clusters"][1]["idle_dynamic_coefficient"] == 10.0
    assert parse_profile(again, "again").clusters == prof.clusters
    for key, value, expected in (("static_temp_coeff_per_c", -0.1, "between 0 and 0.2"),
                                 ("static_temp_coeff_per_c", "hot", "between 0 and 0.2"),
                                 ("idle_dynamic_coefficient", -1, ">= 0")):
        bad = copy.deepcopy(doc)
        bad["clusters"][1][key] = value
        with pytest.raises(ProfileError, match=expected) as info:
            parse_profile(bad, "bad.json")
        assert f"clusters[1].{key}" in str(info.value)
    bad = copy.deepcopy(doc)
    bad["default_temp_c"] = 500
    with pytest.raises(ProfileError, match="default_temp_c"):
        parse_profile(bad, "bad.json")


@pytest.mark.parametrize("name", OLD_PROFILES)
def test_an_old_profile_loads_and_prices_exactly_as_before(name: str) -> None:
    text = (resources.files("edgesched") / "profiles" / f"{name}.json").read_text()
    raw = json.loads(text)
    for c in raw["clusters"]:
        assert "static_temp_coeff_per_c" not in c and "idle_dynamic_coefficient" not in c
    prof = load_profile(name)
    for rc, c in zip(raw["clusters"], prof.clusters, strict=True):
        for oi, o in enumerate(rc["opps"]):
            # the expressions of the constant-temperature model, term for term
            v, mhz = o["uv"] / 1_000_000.0, o["khz"] / 1000.0
            static = float(rc["static_uw_at_1v"]) * v ** float(rc.get("static_exponent", 2.0))
            dyn = float(rc["dynamic_power_coefficient"]) * v**2 * mhz
            for temp in (None, -10.0, 25.0, 90.0):  # no temperature term in an old profile
                assert c.static_power_uw(oi, temp) == static
                assert c.busy_power_uw(oi, 2, temp) == dyn * min(2, len(c.cpus)) + static
    # the document written back has no new keys: old readers read it
    doc = profile_to_dict(prof)
    assert "default_temp_c" not in doc
    assert not any("static_temp_coeff_per_c" in c or "idle_dynamic_coefficient" in c
                   for c in doc["clusters"])


def rail_truth() -> DeviceProfile:
    doc = copy.deepcopy(profile_to_dict(load_profile("exynos5422")))
    little, big = doc["clusters"]
    little.update(dynamic_power_coefficient=120, static_uw_at_1v=15_000, static_exponent=3.0,
                  idle_dynamic_coefficient=2.0, idle_uw=5_000)
    big.update(dynamic_power_coefficient=800, static_uw_at_1v=40_000, static_exponent=5.0,
               idle_dynamic_coefficient=8.0, idle_uw=20_000)
    return parse_profile(doc, "rail-truth")


def test_cluster_scope_recovers_leakage_where_board_scope_reads_the_board() -> None:
    truth = rail_truth()
    works = {"a": Work(80.0, 20.0), "b": Work(8.0, 1.0)}
    rows = synthesize_measurements(truth, works, cluster_rails=True)
    result = fit_profile(rows, load_profile("exynos5422"), power_scope="cluster")
    for f, t in zip(result.profile.clusters, truth.clusters, strict=True):
        assert f.static_exponent == t.static_exponent
        assert f.static_uw_at_1v == pytest.approx(t.static_uw_at_1v, rel=1e-6)
        assert f.idle_dynamic_coefficient == pytest.approx(t.idle_dynamic_coefficient, rel=1e-6)
        assert f.dynamic_power_coefficient == pytest.approx(t.dynamic_power_coefficient, rel=1e-6)
    assert max(result.errors.values()) < 1e-6
    assert result.profile.sources["calibration"]["power_scope"] == "cluster"
    # the same rows read as board-level: idle is taken as the board's, which the rails are not
    board = fit_profile(rows, load_profile("exynos5422"))
    assert board.errors["idle_power_w"] > 0.5
    with pytest.raises(Exception, match="power scope"):
        fit_profile(rows, load_profile("exynos5422"), power_scope="rail")


def run_fit(tmp_path: Path, csv_name: str, base: str, scope: str) -> dict:
    out, report = tmp_path / "fitted.json", tmp_path / "report.json"
    with resources.as_file(MEASUREMENTS / csv_name) as csv_path:
        rc = main(["fit", "--measurements", str(csv_path), "--base", base, "--out", str(out),
                   "--power-scope", scope, "--holdout", "0.2", "--seed", "0",
                   "--json", str(report)])
    assert rc == 0
    load_profile(out)
    return json.loads(report.read_text())


def assert_bounds_and_shape(report: dict) -> None:
    held = report["holdout_rms"]
    assert report["rows_held_out"] > 0
    assert set(held) >= {"latency", "busy_power", "idle_power", "active_power"}
    assert held["latency"] <= 0.05
    assert held["busy_power"] <= 0.10
    assert held["idle_power"] <= 0.15
    for name, shape in report["active_power_shape"].items():
        meas, fit = shape["measured_w"], shape["fitted_w"]
        assert len(meas) >= 5, name
        # the fitted active power follows the measured curve: within 20 % at every measured
        # frequency, rising wherever the measured one rises, same top/bottom ratio within 20 %
        assert max(abs(f / m - 1.0) for f, m in zip(fit, meas, strict=True)) <= 0.20, name
        assert all(b >= a for a, b in itertools.pairwise(fit)), name
        assert shape["ratio_fitted"] == pytest.approx(shape["ratio_measured"], rel=0.20), name


def test_cluster_scope_fit_of_the_shipped_xu3_rail_rows_meets_the_bounds(tmp_path: Path) -> None:
    report = run_fit(tmp_path, "xu3_rails.csv", "exynos5422", "cluster")
    assert report["power_scope"] == "cluster"
    assert_bounds_and_shape(report)
    big = report["fitted"]["clusters"]["big"]
    assert big["static_uw_at_1v"] > 0 and big["dynamic_power_coefficient"] > 0


def test_board_scope_fit_of_the_shipped_pi_rows_meets_the_bounds(tmp_path: Path) -> None:
    report = run_fit(tmp_path, "pi4_board.csv", "bcm2711", "board")
    assert report["power_scope"] == "board"
    assert_bounds_and_shape(report)


def test_xu3_rail_rows_read_as_board_level_do_not_fit() -> None:
    """The failure the cluster scope exists for: rail idle readings taken as the board's."""
    with resources.as_file(MEASUREMENTS / "xu3_rails.csv") as path:
        rows = read_measurements(path)
    base = load_profile("exynos5422")
    board = fit_profile(rows, base)
    cluster = fit_profile(rows, base, power_scope="cluster")
    assert board.errors["idle_power_w"] > 1.0 > 0.15 > cluster.errors["idle_power_w"]
    assert prediction_errors(cluster.profile, cluster.works, rows, "cluster") == cluster.errors


def write_hwmon(root: Path, n: int, chip: str, label: str, power_uw: int) -> Path:
    d = root / "class/hwmon" / f"hwmon{n}"
    d.mkdir(parents=True)
    (d / "name").write_text(chip + "\n")
    (d / "power1_label").write_text(label + "\n")
    (d / "power1_input").write_text(f"{power_uw}\n")
    return d / "power1_input"


def test_calibrate_reads_each_clusters_rail_from_a_fake_hwmon_tree(tmp_path: Path) -> None:
    """An Odroid-XU3-like tree: INA231s on the A15 (VDD_ARM) and A7 (VDD_KFC) rails and the
    board input; each cluster's rows carry its own rail's readings, never the board's."""
    root = tmp_path / "sys"
    arm = write_hwmon(root, 0, "ina231", "VDD_ARM", 1_500_000)
    write_hwmon(root, 1, "ina231", "VDD_IN", 5_000_000)
    kfc = write_hwmon(root, 2, "ina231", "VDD_KFC", 250_000)
    profile = load_profile("exynos5422")
    board_time, host = EmulatedClock(), EmulatedClock()
    board = VirtualBoard(profile, runtime_dir=tmp_path / "run", clock=board_time.now,
                         sleep=board_time.sleep)
    meters = open_rail_meters(profile, sysfs_root=root, clock=board_time.now)
    assert {ci: m.describe() for ci, m in meters.items()} == {
        0: "hwmon ina231:VDD_KFC", 1: "hwmon ina231:VDD_ARM"}
    rails = {"little": kfc, "big": arm}
    workloads = [ScriptedWorkload("m", 0.002, host)]
    rows = calibrate(board, workloads, runs=2, warmup_runs=0, idle_s=0.5, min_window_s=0.0,
                     clock=board_time.now, sleep=board_time.sleep, host_clock=host.now,
                     cluster_meters=meters)
    assert {r.cluster for r in rows} == {"little", "big"}
    assert len(rows) == sum(len(c.opps) for c in profile.clusters)
    for r in rows:
        want_w = int(rails[r.cluster].read_text()) * 1e-6
        assert r.idle_power_w == pytest.approx(want_w, rel=1e-9)
        assert r.busy_power_w == pytest.approx(want_w, rel=1e-9)


def test_rail_matching_by_label_and_by_name_and_clear_errors(tmp_path: Path) -> None:
    chans = [PowerChannel("ina3221:VDD_CPU_BIG"), PowerChannel("ina3221:VDD_CPU_LITTLE"),
             PowerChannel("ina3221:VDD_IN"), PowerChannel("ina231:sensor7")]
    clusters = [("little", "arm,cortex-a53"), ("big", "arm,cortex-a72")]
    got = cluster_rail_channels(chans, clusters)
    assert {ci: c.label for ci, c in got.items()} == {0: "ina3221:VDD_CPU_LITTLE",
                                                      1: "ina3221:VDD_CPU_BIG"}
    got = cluster_rail_channels(chans, clusters, rails={"big": "sensor7"})
    assert got[1].label == "ina231:sensor7"
    # one channel that names both clusters belongs to neither
    both = [PowerChannel("ina3221:VDD_BIG_LITTLE")]
    assert cluster_rail_channels(both, clusters) == {}
    root = tmp_path / "sys"
    write_hwmon(root, 0, "ina231", "VDD_ARM", 1_000_000)
    with pytest.raises(ConfigError, match=r"no power rail found for cluster little.*VDD_ARM.*"
                                          r"--rail little=LABEL"):
        open_rail_meters(load_profile("exynos5422"), sysfs_root=root, clock=lambda: 0.0)
    with pytest.raises(ConfigError, match="no such cluster"):
        open_rail_meters(load_profile("exynos5422"), sysfs_root=root, clock=lambda: 0.0,
                         rails={"middle": "VDD_ARM"})


def test_fit_cli_rejects_an_unknown_scope_and_an_unwritable_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [Measurement("big", k, "m", 100.0 * 1_800_000 / k + 1.0, None, None)
            for k in (1_000_000, 1_800_000)]
    path = tmp_path / "m.csv"
    write_measurements(path, rows)
    with pytest.raises(SystemExit):
        main(["fit", "--measurements", str(path), "--base", "rk3399", "--out",
              str(tmp_path / "o.json"), "--power-scope", "rail"])
    assert "--power-scope" in capsys.readouterr().err
    rc = main(["fit", "--measurements", str(path), "--base", "rk3399", "--out",
               str(tmp_path / "o.json"), "--json", str(tmp_path / "no/such/r.json")])
    assert rc == 2
    assert "mkdir -p" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_rows_with_temperatures_give_the_leakage_temperature_coefficient(tmp_path: Path) -> None:
    doc = copy.deepcopy(profile_to_dict(rail_truth()))
    doc["default_temp_c"] = 40.0
    for c, kt in zip(doc["clusters"], (0.02, 0.035), strict=True):
        c["static_temp_coeff_per_c"] = kt
    truth = parse_profile(doc, "hot-truth")
    rows: list[Measurement] = []
    for c in truth.clusters:
        for oi, o in enumerate(c.opps):
            for temp in (35.0 + 2.0 * oi, 60.0 + oi):  # warmer with frequency, and two loads
                idle_w = c.static_power_uw(oi, temp) * 1e-6
                rows.append(Measurement(c.name, o.khz, "", None,
                                        c.busy_power_uw(oi, 1, temp) * 1e-6, idle_w, temp_c=temp))
    path = tmp_path / "hot.csv"
    write_measurements(path, rows)
    assert path.read_text().splitlines()[0].endswith(",temp_c")
    back = read_measurements(path)
    assert [r.temp_c for r in back] == [r.temp_c for r in rows]
    base = parse_profile({**profile_to_dict(load_profile("exynos5422")), "default_temp_c": 40.0},
                         "base")
    result = fit_profile(back, base, power_scope="cluster")
    for f, t in zip(result.profile.clusters, truth.clusters, strict=True):
        assert f.static_temp_coeff_per_c == pytest.approx(t.static_temp_coeff_per_c, abs=1e-9)
        assert f.static_exponent == t.static_exponent
        assert f.static_uw_at_1v == pytest.approx(t.static_uw_at_1v, rel=1e-4)
    assert result.errors["idle_power_w"] < 1e-4
    # without the temperatures the same readings cannot be told apart from voltage alone
    blind = fit_profile([dataclasses.replace(r, temp_c=None) for r in back], base,
                        power_scope="cluster")
    assert blind.errors["idle_power_w"] > 0.05
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace(rows[0].csv_row(True)[-1], "hot", 1))
    with pytest.raises(MeasurementError, match="temperature in Celsius") as info:
        read_measurements(bad)
    assert info.value.column == "temp_c" and info.value.line == 2
