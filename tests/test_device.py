"""Device profiles: loading, validation, and the power/latency models against hand computations."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from edgesched.device import Work, builtin_profiles, load_profile, profile_to_dict
from edgesched.errors import ProfileError


def _devicetree(name: str) -> dict:
    ref = resources.files("edgesched") / "data" / "devicetree" / f"{name}.json"
    return json.loads(ref.read_text(encoding="utf-8"))


def test_builtin_profiles_present() -> None:
    assert {"rk3399", "exynos5422", "bcm2711"} <= set(builtin_profiles())


@pytest.mark.parametrize("name", ["rk3399", "exynos5422"])
def test_em_power_matches_kernel_integer_math(name: str) -> None:
    """The kernel's dev_pm_opp_calc_power figures recorded from the device tree."""
    tree = _devicetree(name)
    prof = load_profile(name)
    for cl, raw in zip(prof.clusters, tree["clusters"], strict=False):
        assert [o.khz * 1000 for o in cl.opps] == [o["hz"] for o in raw["opps"]]
        for i, o in enumerate(raw["opps"]):
            assert cl.em_power_uw_kernel(i) == o["em_power_uW_kernel"]
            # float form within the kernel's integer truncation
            assert cl.dynamic_power_uw(i) == pytest.approx(o["em_power_uW_kernel"], rel=2e-3)


def test_rk3399_hand_values() -> None:
    prof = load_profile("rk3399")
    big = prof.clusters[1]
    # A72 at 1.8 GHz, 1.2 V: 436 * 1.2^2 * 1800 = 1,130,112 uW
    assert big.dynamic_power_uw(7) == pytest.approx(436 * 1.44 * 1800)
    # static 180 mW at 1 V scaled by V^2 at 1.2 V
    assert big.static_power_uw(7) == pytest.approx(180000 * 1.44)
    assert big.busy_power_uw(7, 2) == pytest.approx(2 * 436 * 1.44 * 1800 + 180000 * 1.44)
    # normalised capacities as the kernel computes them (topology_normalize_cpu_scale)
    assert prof.capacity(1) == 1024
    assert prof.capacity(0) == pytest.approx(1024 * 485 * 1416 / (1024 * 1800))


def test_latency_model_reproduces_published_mobilenet_split() -> None:
    """RK3399 MobileNet, one thread: 112 ms big core vs 208 ms little core (not 2.1x)."""
    prof = load_profile("rk3399")
    work = prof.work_from_top_latency(112.0)
    assert prof.latency_ms(work, 1, 7) == pytest.approx(112.0)
    little = prof.latency_ms(work, 0, 5)
    assert little == pytest.approx(208.0, rel=0.01)
    assert little / 112.0 < 1024 * 1800 / (485 * 1416)  # memory-bound part does not scale


def test_latency_hand_value() -> None:
    prof = load_profile("bcm2711")
    w = Work(compute_mcycles=90.0, mem_ms=10.0)
    # 90 Mcycles at 1.5 GHz = 60 ms, plus 10 ms * mem_time_scale 0.5
    assert prof.latency_ms(w, 0, 9) == pytest.approx(60.0 + 5.0)
    assert prof.busy_energy_j(w, 0, 9) == pytest.approx(
        prof.clusters[0].busy_power_uw(9) * 65.0 * 1e-9)


def test_load_by_path_roundtrip(tmp_path: Path) -> None:
    doc = profile_to_dict(load_profile("exynos5422"))
    doc["name"] = "my-board"
    path = tmp_path / "my-board.json"
    path.write_text(json.dumps(doc))
    prof = load_profile(str(path))
    assert prof.name == "my-board"
    assert prof.clusters == load_profile("exynos5422").clusters


@pytest.mark.parametrize(
    ("mutate", "field", "expected"),
    [
        (lambda d: d.pop("clusters"), "clusters", "list of clusters"),
        (lambda d: d["clusters"][0]["opps"][1].__setitem__("khz", "fast"), "clusters[0].opps[1].khz",
         "kHz"),
        (lambda d: d["clusters"][0]["opps"].reverse(), "clusters[0].opps[1].khz", "increasing"),
        (lambda d: d["clusters"][1].__setitem__("cpus", [0, 9]), "clusters[1].cpus",
         "another cluster"),
        (lambda d: d.__setitem__("format", "v0"), "format", "edgesched-device/1"),
        (lambda d: d["clusters"][0].__setitem__("dynamic_power_coefficient", -1),
         "clusters[0].dynamic_power_coefficient", "> 0"),
    ],
)
def test_malformed_profile_names_file_field_expectation(tmp_path: Path, mutate, field: str,
                                                        expected: str) -> None:
    doc = profile_to_dict(load_profile("rk3399"))
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert field in msg
    assert expected in msg


def test_unparseable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="valid JSON"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="existing profile file"):
        load_profile(str(tmp_path / "missing.json"))
