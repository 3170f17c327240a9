"""Energy meters on fake powercap/hwmon trees with a fake clock; carbon accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesched.device import load_profile
from edgesched.errors import ConfigError, MeterError
from edgesched.power.meters import (
    CarbonAccount,
    HwmonMeter,
    ModelMeter,
    RaplMeter,
    detect_meter,
    hwmon_channels,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def rapl_zone(root: Path, name: str, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    z = root / "devices/virtual/powercap/intel-rapl" / name
    z.mkdir(parents=True)
    (z / "name").write_text("package-0\n" if name.count(":") == 1 else "core\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z / "energy_uj"


def hwmon(root: Path, n: int, name: str, files: dict[str, str]) -> Path:
    d = root / "class/hwmon" / f"hwmon{n}"
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    for k, v in files.items():
        (d / k).write_text(v + "\n")
    return d


def test_rapl_counts_and_wraps(tmp_path: Path) -> None:
    counter = rapl_zone(tmp_path, "intel-rapl:0", 1_000, max_uj=10_000_000)
    sub = rapl_zone(tmp_path, "intel-rapl:0:0", 500)
    meter = RaplMeter(tmp_path)
    assert [z.name for z in meter.zones] == ["package-0"], "sub-zones are inside the package"
    counter.write_text("2501000\n")
    sub.write_text("999999\n")
    assert meter.energy_j() == pytest.approx(2.5)
    counter.write_text("500000\n")  # wrapped past 10 J
    assert meter.energy_j() == pytest.approx(2.5 + (10_000_000 - 2_501_000 + 500_000) * 1e-6)


def test_hwmon_power_is_integrated_over_the_injected_clock(tmp_path: Path) -> None:
    d = hwmon(tmp_path, 0, "ina226", {"power1_input": "2000000"})
    clock = FakeClock()
    meter = HwmonMeter(tmp_path, clock=clock)
    clock.now_s = 3.0
    assert meter.energy_j() == pytest.approx(6.0)  # 2 W for 3 s
    (d / "power1_input").write_text("4000000\n")
    clock.now_s = 4.0
    assert meter.energy_j() == pytest.approx(6.0 + 3.0)  # trapezoid 2 W -> 4 W over 1 s
    assert meter.energy_j() == pytest.approx(9.0), "no time passed, no energy"


def test_ina3221_rails_from_voltage_and_current(tmp_path: Path) -> None:
    hwmon(tmp_path, 1, "ina3221", {
        "in1_label": "VDD_IN", "in1_input": "5000", "curr1_input": "1200",
        "in2_label": "VDD_CPU_GPU_CV", "in2_input": "5000", "curr2_input": "400",
    })
    hwmon(tmp_path, 2, "nct6775", {"power1_input": "99"})  # not a power monitor we know
    channels = hwmon_channels(tmp_path)
    assert [c.label for c in channels] == ["ina3221:VDD_IN"], "the board input alone"
    clock = FakeClock()
    meter = HwmonMeter(tmp_path, clock=clock)
    assert meter.power_uw() == 6_000_000
    clock.now_s = 0.5
    assert meter.energy_j() == pytest.approx(3.0)


def test_detect_meter_picks_what_exists(tmp_path: Path) -> None:
    assert detect_meter(tmp_path / "nothing") is None
    hwmon(tmp_path / "a", 0, "ina219", {"power1_input": "1000"})
    assert isinstance(detect_meter(tmp_path / "a"), HwmonMeter)
    rapl_zone(tmp_path / "b", "intel-rapl:0", 0)
    hwmon(tmp_path / "b", 0, "ina219", {"power1_input": "1000"})
    assert isinstance(detect_meter(tmp_path / "b"), RaplMeter)


def test_vanished_sensor_is_a_meter_error(tmp_path: Path) -> None:
    counter = rapl_zone(tmp_path, "intel-rapl:0", 0)
    meter = RaplMeter(tmp_path)
    counter.unlink()
    with pytest.raises(MeterError, match="gone"):
        meter.energy_j()


def test_model_meter_uses_the_profile_power_model() -> None:
    profile = load_profile("rk3399")
    meter = ModelMeter(profile)
    e = meter.charge(1, 7, 0.5)
    assert e == pytest.approx(profile.clusters[1].busy_power_uw(7) * 0.5e-6)
    assert meter.charge(1, 0, 0.5) < e
    assert meter.energy_j() == pytest.approx(e + meter.price_j(1, 0, 0.5))


def test_carbon_account() -> None:
    acct = CarbonAccount(grid_gco2_per_kwh=400.0, renewable_fraction=0.25)
    assert acct.grams_co2e(3.6e6) == pytest.approx(300.0)
    assert CarbonAccount(100.0).grams_co2e(0.0) == 0.0
    with pytest.raises(ConfigError):
        CarbonAccount(-1.0)
    with pytest.raises(ConfigError):
        CarbonAccount(100.0, renewable_fraction=1.5)
