"""``edgesched calibrate``: the sweep as a lease, recovery of the virtual board's profile, the CLI."""

from __future__ import annotations

import copy
import csv
import errno
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from edgesched.calibrate import (
    CalibrationError,
    EmulatedClock,
    ScriptedWorkload,
    VirtualBoardMeter,
    calibrate,
    hwmon_dir_channels,
    open_meter,
)
from edgesched.cli import main
from edgesched.device import DeviceProfile, load_profile, parse_profile, profile_to_dict
from edgesched.errors import ConfigError
from edgesched.fit import CSV_COLUMNS, fit_profile
from edgesched.power.backends import SysfsBoard, VirtualBoard
from edgesched.power.cpufreq import state_path
from edgesched.power.fakesysfs import FakeKernel, FaultInjector, make_tree, read_attr
from edgesched.server.runner import shipped_models_dir

HOST_MS = {"small": 4.0, "medium": 20.0, "large": 75.0}
LOG = logging.getLogger("test.calibrate")


class RecordingPinner:
    def __init__(self, fail: bool = False) -> None:
        self.cpus = {0, 1}
        self.calls: list[set[int]] = []
        self.fail = fail

    def get(self) -> set[int]:
        return set(self.cpus)

    def set(self, cpus: set[int]) -> None:
        self.calls.append(set(cpus))
        if self.fail and cpus != {0, 1}:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.cpus = set(cpus)


def truth_profile(kind: str) -> DeviceProfile:
    """The profile the virtual board emulates: rk3399 itself, or rk3399 with other numbers."""
    base = load_profile("rk3399")
    if kind == "rk3399":
        return base
    doc = copy.deepcopy(profile_to_dict(base))
    doc["name"] = "rk3399-other"
    doc["board_floor_uw"] = 1_500_000
    doc["typical_mem_fraction"] = 0.3
    little, big = doc["clusters"]
    little.update(capacity_dmips_mhz=600, dynamic_power_coefficient=120, static_uw_at_1v=70_000)
    big.update(dynamic_power_coefficient=400, static_uw_at_1v=150_000)
    return parse_profile(doc, "truth")


def virtual_board(tmp_path: Path, truth: DeviceProfile, board_time: EmulatedClock
                  ) -> VirtualBoard:
    return VirtualBoard(truth, runtime_dir=tmp_path / "run", clock=board_time.now,
                        sleep=board_time.sleep)


@pytest.mark.parametrize("kind", ["rk3399", "other"])
def test_calibrate_recovers_the_profile_the_virtual_board_emulates(tmp_path: Path,
                                                                   kind: str) -> None:
    truth = truth_profile(kind)
    base = load_profile("rk3399")
    board_time, host = EmulatedClock(), EmulatedClock()
    board = virtual_board(tmp_path, truth, board_time)
    home = board.home
    meter = open_meter("auto", board, sysfs_root=tmp_path, clock=board_time.now, log=LOG)
    assert isinstance(meter, VirtualBoardMeter)
    workloads = [ScriptedWorkload(n, ms / 1000.0, host) for n, ms in HOST_MS.items()]
    progress: list[str] = []
    rows = calibrate(board, workloads, runs=3, meter=meter, idle_s=0.5, min_window_s=0.0,
                     clock=board_time.now, sleep=board_time.sleep, host_clock=host.now,
                     progress=progress.append)
    assert not home.exists()  # the virtual board was given back
    n_opps = sum(len(c.opps) for c in truth.clusters)
    assert len(rows) == n_opps * len(workloads)
    assert len(progress) == len(rows) and progress[-1].startswith(f"[{n_opps}/{n_opps}]")
    result = fit_profile(rows, base, name="fitted")
    fitted = result.profile
    # latency: capacity ratio, memory-bound share, every OPP of every model
    for ci, c in enumerate(truth.clusters):
        assert fitted.clusters[ci].capacity_dmips_mhz == pytest.approx(c.capacity_dmips_mhz,
                                                                       rel=0.01)
    assert fitted.typical_mem_fraction == pytest.approx(truth.typical_mem_fraction, rel=0.02)
    for name, ms in HOST_MS.items():
        true_work = truth.work_from_top_latency(ms)
        work = result.works[name]
        assert work.mem_ms == pytest.approx(true_work.mem_ms, rel=0.02)
        assert work.compute_mcycles == pytest.approx(true_work.compute_mcycles, rel=0.02)
        for ci, c in enumerate(truth.clusters):
            for oi in range(len(c.opps)):
                assert fitted.latency_ms(work, ci, oi) == pytest.approx(
                    truth.latency_ms(true_work, ci, oi), rel=0.02)
    # power: dynamic coefficient, static, board floor
    for ci, c in enumerate(truth.clusters):
        f = fitted.clusters[ci]
        assert f.dynamic_power_coefficient == pytest.approx(c.dynamic_power_coefficient,
                                                            rel=0.02)
        assert f.static_uw_at_1v == pytest.approx(c.static_uw_at_1v, rel=0.02)
        assert [(o.khz, o.uv) for o in f.opps] == [(o.khz, o.uv) for o in c.opps]
    assert fitted.board_floor_uw == pytest.approx(truth.board_floor_uw, rel=0.01)
    assert result.errors["latency_ms"] < 0.01
    assert result.errors["active_power_w"] < 0.01
    cal = fitted.sources["calibration"]
    assert set(cal["rms_relative_error"]) >= {"latency_ms", "busy_power_w", "active_power_w"}
    assert set(cal["models"]) == set(HOST_MS)
    # the written profile loads again
    out = tmp_path / "fitted.json"
    out.write_text(json.dumps(result.document()), encoding="utf-8")
    assert load_profile(out).clusters == fitted.clusters


def test_virtual_board_time_is_accounted_not_waited(tmp_path: Path) -> None:
    """A full sweep of rk3399 with a 75 ms model: emulated minutes, no real sleep at all."""
    board_time, host = EmulatedClock(), EmulatedClock()
    slept: list[float] = []

    def no_real_sleep(s: float) -> None:
        slept.append(s)
        board_time.sleep(s)

    board = VirtualBoard(load_profile("rk3399"), runtime_dir=tmp_path / "run",
                         clock=board_time.now, sleep=no_real_sleep)

    w = ScriptedWorkload("large", 0.075, host)
    meter = VirtualBoardMeter(board.profile, board_time.now)
    rows = calibrate(board, [w], runs=5, warmup_runs=1, idle_s=0.5, min_window_s=0.0,
                     meter=meter, clock=board_time.now, sleep=no_real_sleep,
                     host_clock=host.now)
    assert w.runs == 6 * len(rows)
    # board time moved only through the board's sleep: emulated runs plus 0.5 s idle per OPP
    assert board_time.now() == pytest.approx(sum(slept))
    assert board_time.now() > 7.0 + 2 * host.now()
    top = next(r for r in rows if r.cluster == "big" and r.freq_khz == 1_800_000)
    assert top.latency_ms == pytest.approx(75.0)


def sysfs_board(tmp_path: Path, io: Any = None) -> tuple[SysfsBoard, Path, Path]:
    root = make_tree(tmp_path / "sys", "rk3399")
    state = tmp_path / "state"
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=root, state_dir=state,
                       io=io or FakeKernel(root))
    return board, root, state


def test_ctrl_c_mid_sweep_restores_every_setting_and_the_affinity(tmp_path: Path) -> None:
    board, root, state = sysfs_board(tmp_path)
    before = {p: {f: read_attr(root, p, f) for f in ("scaling_governor", "scaling_min_freq",
                                                       "scaling_max_freq")}
              for p in ("policy0", "policy4")}
    seen: list[tuple[str, str, str]] = []

    def on_run(n: int) -> None:
        seen.append((read_attr(root, "policy0", "scaling_governor"),
                     read_attr(root, "policy0", "scaling_cur_freq"),
                     str(state_path(state).exists())))
        if n == 4:
            raise KeyboardInterrupt

    pinner = RecordingPinner()
    host = EmulatedClock()
    w = ScriptedWorkload("m", 0.01, host, on_run=on_run)
    with pytest.raises(KeyboardInterrupt):
        calibrate(board, [w], runs=2, min_window_s=0.0, idle_s=0.0, clock=host.now,
                  sleep=host.sleep, pinner=pinner)
    # while running: the lease was taken (userspace governor, top OPP, state file saved)
    assert seen[0] == ("userspace", "1416000", "True")
    assert seen[3] == ("userspace", "1200000", "True")
    # after Ctrl-C: everything back, state file gone, affinity back
    for p, files in before.items():
        for f, value in files.items():
            assert read_attr(root, p, f) == value, (p, f)
    assert not state_path(state).exists()
    assert pinner.calls == [{0, 1, 2, 3}, {0, 1}]
    assert pinner.cpus == {0, 1}


def test_a_frequency_that_does_not_take_stops_calibration_and_restores(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    faults = FaultInjector(FakeKernel(root))
    faults.fail("policy0/scaling_setspeed", errno.EPERM)
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=root, state_dir=tmp_path / "state",
                       io=faults)
    host = EmulatedClock()
    with pytest.raises(CalibrationError, match="cannot set the frequency"):
        calibrate(board, [ScriptedWorkload("m", 0.01, host)], clock=host.now, sleep=host.sleep)
    assert read_attr(root, "policy0", "scaling_governor") == "schedutil"
    assert not state_path(tmp_path / "state").exists()


def test_pinning_not_allowed_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    board, _root, _state = sysfs_board(tmp_path)
    host = EmulatedClock()
    pinner = RecordingPinner(fail=True)
    with caplog.at_level(logging.WARNING):
        rows = calibrate(board, [ScriptedWorkload("m", 0.01, host)], runs=1, min_window_s=0.0,
                         idle_s=0.0, clock=host.now, sleep=host.sleep, pinner=pinner)
    assert len(rows) == 14 and all(r.busy_power_w is None for r in rows)
    assert sum("cannot pin" in r.message for r in caplog.records) == 1
    assert pinner.cpus == {0, 1}


def test_power_sensor_specs(tmp_path: Path) -> None:
    board, root, _state = sysfs_board(tmp_path)
    try:
        clock = EmulatedClock().now
        assert open_meter("none", board, sysfs_root=root, clock=clock, log=LOG) is None
        assert open_meter("auto", board, sysfs_root=root, clock=clock, log=LOG) is None
        hw = tmp_path / "hwmon3"
        hw.mkdir()
        (hw / "in1_input").write_text("5000\n")
        (hw / "curr1_input").write_text("400\n")
        assert [c.label for c in hwmon_dir_channels(hw)] == ["hwmon3:in1"]
        meter = open_meter(f"hwmon:{hw}", board, sysfs_root=root, clock=clock, log=LOG)
        assert meter is not None and meter.kind == "hwmon"
        for bad, match in (("virtual", "virtual: board"), ("hwmon:" + str(tmp_path / "none"),
                                                           "no power"),
                           ("rapl", "RAPL"), ("ina", "expected auto")):
            with pytest.raises(ConfigError, match=match):
                open_meter(bad, board, sysfs_root=root, clock=clock, log=LOG)
    finally:
        board.close()


def test_cli_calibrates_the_virtual_board_with_the_shipped_models(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, raw = tmp_path / "fitted.json", tmp_path / "raw.csv"
    rc = main(["calibrate", "--models", str(shipped_models_dir()), "--board", "virtual:rk3399",
               "--runs", "1", "--min-window-s", "0", "--idle-s", "0.1", "--out", str(out),
               "--csv", str(raw), "--runtime-dir", str(tmp_path / "run"),
               "--state-dir", str(tmp_path / "state"), "--log-level", "warning"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "[14/14] big 408000 kHz" in captured.err
    assert "fit error over 42 rows" in captured.out
    with open(raw, newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == CSV_COLUMNS
    assert len(table) == 1 + 14 * 3
    assert all(r[3] and r[4] and r[5] for r in table[1:])
    fitted = load_profile(out)
    assert fitted.name == "fitted"
    # power comes from the virtual board's model: recovered exactly whatever the host's noise
    base = load_profile("rk3399")
    for c, b in zip(fitted.clusters, base.clusters, strict=True):
        assert c.dynamic_power_coefficient == pytest.approx(b.dynamic_power_coefficient, rel=0.01)
    assert not (tmp_path / "run" / "virtual-rk3399").exists()

    from edgesched_sim.evaluate import evaluate

    doc = evaluate(str(out), "steady-light", ["schedutil"], seed=0, duration_s=5.0)
    assert doc["results"][0]["policy"] == "schedutil"


def test_cli_needs_a_board_or_a_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["calibrate", "--models", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert rc == 2
    assert "--board SPEC" in capsys.readouterr().err
