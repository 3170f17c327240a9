"""Device-tree extracts taken as boards (edgesched.devicetree): filled in, sources named."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edgesched.cli import main
from edgesched.device import load_profile
from edgesched.devicetree import looks_like_extract, profile_from_extract
from edgesched.errors import ProfileError
from edgesched_sim.evaluate import evaluate

EXTRACTS = resources.files("edgesched") / "data" / "devicetree"


def _extract(name: str) -> Path:
    return Path(str(EXTRACTS / f"{name}.json"))


def _table(prof: Any) -> list[Any]:
    return [(c.cpus, c.capacity_dmips_mhz, c.dynamic_power_coefficient, c.transition_latency_ns,
             [(o.khz, o.uv) for o in c.opps]) for c in prof.clusters]


@pytest.mark.parametrize("name", ["rk3399", "rk3588", "rk3566", "bcm2711", "exynos5422"])
def test_shipped_extracts_give_the_shipped_profiles_device_tree_numbers(name: str) -> None:
    """The shipped profiles were made from these extracts by the same rules: CPUs, capacities,
    power coefficients, latencies and OPPs come out the same (the Raspberry Pi's voltages
    included, which its device tree does not give)."""
    from_dt = load_profile(_extract(name))
    assert _table(from_dt) == _table(load_profile(name))
    assert from_dt.sources["devicetree"]
    assert "board" in from_dt.sources and "static_power" in from_dt.sources


def test_filled_numbers_are_named_in_the_sources() -> None:
    prof = load_profile(_extract("bcm2711"))
    for key in ("capacity", "dynamic_power_coefficient", "transition_latency", "voltages"):
        assert "not in the device tree" in prof.sources[key] or "no clock-latency" in \
            prof.sources[key]
    assert "capacity" not in load_profile(_extract("rk3399")).sources


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "board.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


UNKNOWN = {
    "soc": "an SoC of two kinds of core none of the shipped boards has",
    "source": "linux arch/arm64/boot/dts/vendor/soc.dtsi",
    "clusters": [
        {"cpus": ["cpu@0", "cpu@1"], "core": "arm,cortex-a510",
         "opps": [{"hz": 1_200_000_000, "microvolt": [800000, 750000, 850000]},
                  {"hz": 600_000_000, "microvolt": 700000},
                  {"hz": 600_000_000, "microvolt": 710000}]},
        {"cpus": ["cpu@100", "cpu@101"], "core": "arm,cortex-x2", "capacity_dmips_mhz": 1024,
         "opps": [{"hz": "1000000000", "microvolt": "750000", "clock_latency_ns": 30000},
                  {"hz": 2_400_000_000, "microvolt": 1000000, "clock_latency_ns": 50000}]},
    ],
}


def test_an_extract_of_unknown_cores_loads_with_each_guess_named(tmp_path: Path) -> None:
    path = _write(tmp_path, UNKNOWN)
    assert looks_like_extract(json.loads(path.read_text()))
    prof = load_profile(path)
    little, big = prof.clusters
    assert prof.name == "board" and little.cpus == (0, 1) and big.cpus == (2, 3)
    # sorted, the repeated 600 MHz entry dropped (the first kept), a triplet's target taken
    assert [(o.khz, o.uv) for o in little.opps] == [(600000, 700000), (1200000, 800000)]
    assert little.capacity_dmips_mhz == 1024  # no capacity and an unknown core: the kernel's
    assert big.transition_latency_ns == 50000  # the largest of the OPPs'
    assert little.transition_latency_ns == 500000
    assert "what the kernel assumes" in prof.sources["capacity"]
    assert "nearest capacity" in prof.sources["dynamic_power_coefficient"]
    doc = evaluate(prof, "steady-light", ["schedutil", "slack-guarded", "oracle"], seed=1,
                   duration_s=5.0)
    assert {r["policy"] for r in doc["results"]} == {"schedutil", "slack-guarded", "oracle"}


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["clusters"][0]["opps"][0].pop("hz"), "clusters[0].opps[0].hz"),
    (lambda d: d["clusters"][1]["opps"][0].update(hz=-5), "clusters[1].opps[0].hz"),
])
def test_a_broken_extract_names_the_field(tmp_path: Path, change: Any, field: str) -> None:
    doc = json.loads(json.dumps(UNKNOWN))
    change(doc)
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_profile(_write(tmp_path, doc))


def test_a_profile_is_not_an_extract() -> None:
    shipped = json.loads((resources.files("edgesched") / "profiles" / "rk3399.json")
                         .read_text(encoding="utf-8"))
    assert not looks_like_extract(shipped)
    with pytest.raises(ProfileError, match="device-tree extract"):
        profile_from_extract(shipped, "x", "x")


def test_profiles_json_writes_what_an_extract_became(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", str(_write(tmp_path, UNKNOWN)), "--json"]) == 0
    out = tmp_path / "kept.json"
    out.write_text(capsys.readouterr().out)
    kept = load_profile(out)
    assert _table(kept) == _table(load_profile(tmp_path / "board.json"))
    assert kept.sources["voltages" if "voltages" in kept.sources else "capacity"]
