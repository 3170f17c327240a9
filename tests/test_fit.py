"""``edgesched fit``: parameters recovered from noisy synthetic measurements, hold-out error,
clear errors for malformed CSV files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgesched.cli import main
from edgesched.device import DeviceProfile, Work, load_profile, parse_profile, profile_to_dict
from edgesched.fit import (
    CSV_COLUMNS,
    FitError,
    Measurement,
    MeasurementError,
    fit_profile,
    prediction_errors,
    read_measurements,
    split_holdout,
    synthesize_measurements,
    voltage_uv,
    write_measurements,
)

WORKS = {
    "mobilenet": Work(compute_mcycles=100.0, mem_ms=50.0),
    "detector": Work(compute_mcycles=8.0, mem_ms=1.5),
    "keyword": Work(compute_mcycles=0.4, mem_ms=0.02),
}


def generating_profile() -> DeviceProfile:
    """rk3399's clusters and voltages with other latency and power numbers."""
    doc = copy.deepcopy(profile_to_dict(load_profile("rk3399")))
    doc["board_floor_uw"] = 2_100_000
    little, big = doc["clusters"]
    little.update(capacity_dmips_mhz=540, dynamic_power_coefficient=85, static_uw_at_1v=80_000)
    big.update(dynamic_power_coefficient=470, static_uw_at_1v=140_000)
    return parse_profile(doc, "generating")


def test_fit_recovers_generating_parameters_from_noisy_csv(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = generating_profile()
    csv_path = tmp_path / "m.csv"
    write_measurements(csv_path, synthesize_measurements(truth, WORKS, noise=0.02, seed=7))
    out = tmp_path / "board.json"
    rc = main(["fit", "--measurements", str(csv_path), "--base", "rk3399", "--out", str(out),
               "--holdout", "0.25", "--seed", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "prediction error over" in printed and "held-out rows" in printed
    fitted = load_profile(out)
    assert fitted.name == "board"
    # tolerances: about 3 standard deviations of each estimate at 2% noise (60 seeds)
    for f, t in zip(fitted.clusters, truth.clusters, strict=True):
        assert f.capacity_dmips_mhz == pytest.approx(t.capacity_dmips_mhz, rel=0.04)
        assert f.dynamic_power_coefficient == pytest.approx(t.dynamic_power_coefficient, rel=0.08)
        assert f.static_uw_at_1v == pytest.approx(t.static_uw_at_1v, rel=0.12)
    assert fitted.board_floor_uw == pytest.approx(truth.board_floor_uw, rel=0.01)
    cal = fitted.sources["calibration"]
    for name, w in WORKS.items():
        got = cal["models"][name]
        top_ms = truth.latency_ms(w, 1, len(truth.clusters[1].opps) - 1)
        assert got["compute_mcycles"] == pytest.approx(w.compute_mcycles, rel=0.08)
        assert got["mem_ms"] == pytest.approx(w.mem_ms, abs=0.08 * top_ms)
    # held-out rows are predicted about as well as the generating profile itself predicts them
    # (the noise floor)
    train, held = split_holdout(read_measurements(csv_path), 0.25, seed=3)
    assert cal["rows_held_out"] == len(held) > 0 and cal["rows_fitted"] == len(train)
    floor = prediction_errors(truth, WORKS, held)
    got_err = cal["holdout_rms_relative_error"]
    for q in ("latency_ms", "active_power_w", "busy_power_w"):
        assert got_err[q] < 1.5 * floor[q] + 0.002, q
    assert 0.01 < got_err["latency_ms"] < 0.04
    assert cal["rms_relative_error"]["latency_ms"] < 0.04


def test_noiseless_fit_is_exact_and_cluster_level_power_works() -> None:
    truth = generating_profile()
    rows = synthesize_measurements(truth, WORKS, board_level=False)
    assert all(r.idle_power_w is None for r in rows)
    result = fit_profile(rows, load_profile("rk3399"))
    for f, t in zip(result.profile.clusters, truth.clusters, strict=True):
        assert f.dynamic_power_coefficient == pytest.approx(t.dynamic_power_coefficient,
                                                            rel=1e-6)
        assert f.static_uw_at_1v == pytest.approx(t.static_uw_at_1v, rel=1e-6)
        assert f.capacity_dmips_mhz == t.capacity_dmips_mhz
    # no idle readings: the board floor stays the base's
    assert result.profile.board_floor_uw == load_profile("rk3399").board_floor_uw
    assert max(result.errors.values()) < 1e-3


def test_holdout_split_is_seeded_and_keeps_two_rows_per_group() -> None:
    rows = synthesize_measurements(generating_profile(), WORKS)
    a = split_holdout(rows, 0.5, seed=1)
    assert a == split_holdout(rows, 0.5, seed=1)
    assert a != split_holdout(rows, 0.5, seed=2)
    train, held = a
    assert len(train) + len(held) == len(rows)
    for cluster in ("little", "big"):
        for m in WORKS:
            assert sum(r.cluster == cluster and r.model == m for r in train) >= 2
    with pytest.raises(FitError, match="hold-out fraction"):
        split_holdout(rows, 1.0, seed=0)


def test_frequency_missing_from_the_device_tree_gets_an_interpolated_voltage() -> None:
    base = load_profile("rk3399")
    big = base.clusters[1]
    assert voltage_uv(big, 1_704_000) == round((1_100_000 + 1_200_000) / 2)
    rows = [Measurement("big", khz, "m", 10.0 * 1_800_000 / khz + 2.0, None, None)
            for khz in (1_000_000, 1_704_000)]
    result = fit_profile(rows, base)
    assert any("1704000 kHz" in n and "interpolated" in n for n in result.notes)
    opps = {o.khz: o.uv for o in result.profile.clusters[1].opps}
    assert set(opps) == {o.khz for o in big.opps} | {1_000_000, 1_704_000}
    assert opps[1_704_000] == 1_150_000


def test_a_model_at_one_speed_only_is_a_clear_error() -> None:
    rows = [Measurement("big", 1_800_000, "m", 10.0, None, None)]
    with pytest.raises(FitError, match=r"'m'.*two"):
        fit_profile(rows, load_profile("rk3399"))


def test_round_trip_with_empty_cells(tmp_path: Path) -> None:
    rows = [Measurement("big", 1_800_000, "m", 12.5, None, None, line=2),
            Measurement("little", 408_000, "m", 40.0, 2.1, 1.9, line=3)]
    path = tmp_path / "r.csv"
    write_measurements(path, rows)
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert path.read_text().splitlines()[1] == "big,1800000,m,12.5,,"
    assert read_measurements(path) == rows


HEADER = ",".join(CSV_COLUMNS)
GOOD = "big,1800000,m,12.5,2.5,1.9"


@pytest.mark.parametrize(("text", "line", "column", "expected"), [
    ("", 1, None, "header"),
    ("cluster,freq_khz,model,latency_ms,busy_power_w\n" + GOOD, 1, "idle_power_w", "column"),
    (HEADER + ",voltage_mv\n" + GOOD + ",900", 1, "voltage_mv", "one of the columns"),
    (HEADER + "\n" + GOOD + "\nbig,1608000,m,fast,2.4,1.9", 3, "latency_ms", "'fast'"),
    (HEADER + "\n" + GOOD + "\nbig,1.6GHz,m,13,2.4,1.9", 3, "freq_khz", "integer"),
    (HEADER + "\n" + GOOD + "\nbig,1608000,m,-3,2.4,1.9", 3, "latency_ms", "'-3'"),
    (HEADER + "\n" + GOOD + "\nbig,1608000,m,13,2.4", 3, None, "6 cells"),
    (HEADER + "\n\n" + GOOD + "\nbig,1608000,m,13,nan,1.9", 4, "busy_power_w", "'nan'"),
    (HEADER + "\nbig,1608000,,13,2.4,1.9", 2, "model", "model"),
    (HEADER + "\nbig,1608000,m,13,,1.9", 2, "busy_power_w", "busy power"),
    (HEADER + "\n,1608000,m,13,2.4,1.9", 2, "cluster", "cluster"),
    (HEADER + "\n", None, None, "at least one"),
])
def test_malformed_csv_names_file_line_and_column(tmp_path: Path, text: str, line: int | None,
                                                  column: str | None, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(MeasurementError) as info:
        read_measurements(path)
    exc = info.value
    assert (exc.source, exc.line, exc.column) == (str(path), line, column)
    msg = str(exc)
    assert msg.startswith(str(path))
    if line is not None:
        assert f"line {line}" in msg
    if column is not None:
        assert f"column {column!r}" in msg
    assert expected in msg


def test_unknown_cluster_is_reported_with_its_line_through_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"{HEADER}\n{GOOD}\nmiddle,1000000,m,20,2.2,1.9\n", encoding="utf-8")
    rc = main(["fit", "--measurements", str(path), "--base", "rk3399",
               "--out", str(tmp_path / "o.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3, column 'cluster'" in err
    assert "little, big" in err
    assert not (tmp_path / "o.json").exists()


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="existing"):
        read_measurements(tmp_path / "nope.csv")
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MeasurementError, match="UTF-8"):
        read_measurements(tmp_path / "b.csv")


def test_fitted_document_is_json_and_keeps_base_sources(tmp_path: Path) -> None:
    rows = synthesize_measurements(generating_profile(), WORKS, noise=0.01, seed=2)
    result = fit_profile(rows, load_profile("rk3399"), name="x", source="m.csv")
    doc = json.loads(json.dumps(result.document()))
    assert doc["format"] == "edgesched-device/1"
    assert "opps_capacity_dpc" in doc["sources"]
    assert doc["sources"]["calibration"]["measurements"] == "m.csv"
