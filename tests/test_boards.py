"""Boards: the virtual board (own sysfs tree + profile models), a sysfs board on a fake root."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edgesched.device import load_profile
from edgesched.errors import ConfigError, CpufreqUnavailableError
from edgesched.observation import Decision
from edgesched.power.backends import NullBoard, SysfsBoard, VirtualBoard, open_board
from edgesched.power.board import Board
from edgesched.power.cpufreq import Cpufreq, permission_hint, state_path
from edgesched.power.fakesysfs import FakeKernel, FaultInjector, make_tree, read_attr, unplug


class FakeTime:
    """A clock that only moves when the board sleeps."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds


def virtual(tmp_path: Path, t: FakeTime, name: str = "rk3399") -> Board:
    return open_board(f"virtual:{name}", state_dir=tmp_path / "state",
                      runtime_dir=tmp_path / "run", clock=t.clock, sleep=t.sleep)


def test_virtual_board_prices_performance_and_powersave_differently(tmp_path: Path) -> None:
    t = FakeTime()
    board = virtual(tmp_path, t)
    profile = board.profile
    big = profile.fastest_cluster
    top = len(profile.clusters[big].opps) - 1
    costs = {}
    for label, opp in (("performance", top), ("powersave", 0)):
        d = Decision(big, opp)
        board.apply(d)
        started = t.clock()
        t.now_s += 0.010  # the inference took 10 ms on the host
        costs[label] = board.settle(d, 0.010, started)
    perf, save = costs["performance"], costs["powersave"]
    assert save.wall_s > perf.wall_s
    assert save.energy_j != perf.energy_j
    # the host's time stands for the top OPP of the fastest cluster
    work = profile.work_from_top_latency(10.0)
    expected_save_s = profile.latency_ms(work, big, 0) / 1000.0
    assert save.wall_s == pytest.approx(expected_save_s + 40e-6)
    assert save.energy_j == pytest.approx(
        profile.clusters[big].busy_power_uw(0) * expected_save_s * 1e-6)
    assert t.slept[-1] == pytest.approx(save.wall_s - 0.010), "waits out the emulated time"
    board.close()


def test_virtual_board_drives_its_own_sysfs_tree(tmp_path: Path) -> None:
    t = FakeTime()
    board = virtual(tmp_path, t)
    assert isinstance(board, VirtualBoard)
    root = board.sysfs_root
    assert root.is_relative_to(tmp_path / "run")
    assert board.current_opps() == [0, 0]
    delay = board.apply(Decision(1, 5))
    assert delay == pytest.approx(40e-6)
    assert read_attr(root, "policy4", "scaling_cur_freq") == "1416000"
    assert board.current_opps() == [0, 5]
    assert board.apply(Decision(1, 5)) == 0.0, "no change, no transition"
    assert board.cpus_for(1) == (), "the host is not the board: no pinning"
    assert state_path(board.home / "state").exists()
    board.close()
    assert not board.home.exists()


def test_virtual_board_charges_the_transition_once(tmp_path: Path) -> None:
    t = FakeTime()
    board = virtual(tmp_path, t, "bcm2711")  # 500 us transition latency
    d = Decision(0, 9)
    board.apply(d)
    first = board.settle(d, 0.002, t.clock())
    board.apply(d)
    second = board.settle(d, 0.002, t.clock())
    assert first.wall_s - second.wall_s == pytest.approx(500e-6)
    assert first.energy_j == pytest.approx(second.energy_j)
    board.close()


def test_sysfs_board_on_a_fake_root(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    board = open_board("sysfs:rk3399", sysfs_root=root, state_dir=tmp_path / "state",
                       runtime_dir=tmp_path / "run")
    assert isinstance(board, SysfsBoard)
    assert board.cpus_for(0) == (0, 1, 2, 3) and board.cpus_for(1) == (4, 5)
    assert board.apply(Decision(1, 2)) == pytest.approx(40e-6)
    assert read_attr(root, "policy4", "scaling_setspeed") == "816000"
    cost = board.settle(Decision(1, 2), 0.02, 0.0)
    assert cost.wall_s == 0.02
    assert cost.energy_j == pytest.approx(board.profile.clusters[1].busy_power_uw(2) * 0.02e-6)
    board.close()
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"
    assert not state_path(tmp_path / "state").exists()


def test_sysfs_board_measures_energy_with_a_meter(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    hw = root / "class/hwmon/hwmon0"
    hw.mkdir(parents=True)
    (hw / "name").write_text("ina226\n")
    (hw / "power1_input").write_text("3000000\n")  # 3 W
    t = FakeTime()
    from edgesched.power.meters import HwmonMeter

    meter = HwmonMeter(root, clock=t.clock)
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=root, state_dir=tmp_path / "state",
                       meter=meter)
    board.apply(Decision(1, 7))
    t.now_s += 0.5
    assert board.settle(Decision(1, 7), 0.5, 0.0).energy_j == pytest.approx(1.5)
    board.close()


def test_sysfs_board_falls_back_when_writes_are_refused(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    faults = FaultInjector(FakeKernel(root))
    faults.fail("scaling_governor", errno.EPERM)
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=root, state_dir=tmp_path / "state",
                       io=faults)
    with caplog.at_level(logging.ERROR):
        assert board.apply(Decision(1, 7)) == 0.0
    assert board.control_error is not None and permission_hint() in board.control_error
    assert "frequency control disabled" in caplog.text
    assert board.apply(Decision(1, 3)) == 0.0 and faults.writes == []
    assert board.settle(Decision(1, 3), 0.01, 0.0).energy_j > 0, "inference goes on"
    board.close()
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"


def test_sysfs_board_survives_busy_and_hotplug(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    faults = FaultInjector(FakeKernel(root))
    faults.fail("policy4/scaling_setspeed", errno.EBUSY, times=1)
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=root, state_dir=tmp_path / "state",
                       io=faults)
    assert board.apply(Decision(1, 7)) == 0.0
    assert board.control_error is None
    assert board.apply(Decision(1, 7)) > 0.0
    unplug(root, "policy4")
    assert board.apply(Decision(1, 2)) == 0.0
    assert board.apply(Decision(0, 3)) > 0.0
    board.close()
    assert read_attr(root, "policy0", "scaling_governor") == "schedutil"


def test_open_board_recovers_a_killed_run_first(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    Cpufreq(root, state_dir=tmp_path / "state", mode="clamp").set_khz("policy4", 600_000)
    board = open_board("sysfs:rk3399", sysfs_root=root, state_dir=tmp_path / "state",
                       runtime_dir=tmp_path / "run")
    assert read_attr(root, "policy4", "scaling_min_freq") == "408000"
    assert read_attr(root, "policy4", "scaling_max_freq") == "1800000"
    board.close()


def test_profile_that_does_not_fit_the_board(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rpi4")
    with pytest.raises(CpufreqUnavailableError, match="choose the profile of this board"):
        open_board("sysfs:rk3399", sysfs_root=root, state_dir=tmp_path / "state",
                   runtime_dir=tmp_path / "run")


def test_null_board_and_bad_specs(tmp_path: Path) -> None:
    board = open_board("null:bcm2711", state_dir=tmp_path, runtime_dir=tmp_path)
    assert isinstance(board, NullBoard)
    board.apply(Decision(0, 0))
    assert board.current_opps() == [0]
    cost = board.settle(Decision(0, 0), 0.1, 0.0)
    assert cost.wall_s == 0.1 and cost.energy_j > 0
    for spec in ("rk3399", "virtual:", "gpu:rk3399"):
        with pytest.raises(ConfigError, match="board spec"):
            open_board(spec, state_dir=tmp_path, runtime_dir=tmp_path)


def test_runtime_modules_never_import_torch() -> None:
    code = ("import sys; import edgesched.power.backends, edgesched.policy.learned, edgesched.power.cpufreq, "
            "edgesched.power.meters, edgesched.power.freqdaemons, edgesched.commands.restore; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def at_top(tmp_path: Path, t: FakeTime, slowdown: float) -> tuple[Board, Decision]:
    """A virtual rk3399 ``slowdown`` times slower than the host, already at its top OPP (the
    transition delay charged), and that decision."""
    board = open_board("virtual:rk3399", state_dir=tmp_path / "state",
                       runtime_dir=tmp_path / "run", clock=t.clock, sleep=t.sleep,
                       virtual_slowdown=slowdown)
    big = board.profile.fastest_cluster
    top = Decision(big, len(board.profile.clusters[big].opps) - 1)
    board.apply(top)
    board.settle(top, 0.0, t.clock())
    return board, top


def test_a_slowed_virtual_board_serves_at_its_own_speed(tmp_path: Path) -> None:
    t = FakeTime()
    board, top = at_top(tmp_path, t, 8.0)
    assert board.host_scale == 8.0
    started = t.clock()
    t.now_s += 0.002  # 2 ms on the host
    assert board.settle(top, 0.002, started).wall_s == pytest.approx(0.016)
    board.close()
    with pytest.raises(ConfigError, match="slowdown"):
        open_board("virtual:rk3399", state_dir=tmp_path / "state", runtime_dir=tmp_path / "r2",
                   virtual_slowdown=0.5)


def test_the_virtual_board_emulates_from_the_reference_time(tmp_path: Path) -> None:
    """Host contention must not come out slowdown-times larger: with ``reference_s`` the
    emulated time follows the model's usual host time, and a run the host made slower than the
    emulated board is reported as it happened."""
    t = FakeTime()
    board, top = at_top(tmp_path / "a", t, 8.0)
    started = t.clock()
    t.now_s += 0.005  # this run took 5 ms on a busy host; the model usually takes 2 ms
    slowed = board.settle(top, 0.005, started, reference_s=0.002)
    assert slowed.wall_s == pytest.approx(0.016) and t.now_s == pytest.approx(started + 0.016)
    board.close()
    t2 = FakeTime()
    same, top = at_top(tmp_path / "b", t2, 1.0)
    started = t2.clock()
    t2.now_s += 0.005
    late = same.settle(top, 0.005, started, reference_s=0.002)
    assert late.wall_s == pytest.approx(0.005), "the host was slower: reported as it happened"
    assert late.energy_j == pytest.approx(same.settle(top, 0.002, t2.clock()).energy_j)
    same.close()


def test_an_unchanged_opp_costs_no_sysfs_io_until_the_recheck(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    io = FaultInjector(FakeKernel(root))
    t = FakeTime()
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=root, state_dir=tmp_path / "state",
                       clock=t.clock, io=io)
    assert board.apply(Decision(1, 7)) > 0.0
    assert read_attr(root, "policy4", "scaling_setspeed") == "1800000"
    reads, writes = io.reads, len(io.writes)
    for _ in range(5):  # the same OPP again, within recheck_s: no file touched
        t.now_s += board.recheck_s / 10
        assert board.apply(Decision(1, 7)) == 0.0
        assert board.current_opps()[1] == 7
    assert (io.reads, len(io.writes)) == (reads, writes)

    # behind the daemon's back: another tool hands policy4 back to schedutil
    (root / "devices/system/cpu/cpufreq/policy4/scaling_governor").write_text("schedutil\n")
    t.now_s += board.recheck_s / 10
    board.apply(Decision(1, 7))
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil", "not yet re-checked"
    t.now_s += board.recheck_s
    board.apply(Decision(1, 7))
    assert read_attr(root, "policy4", "scaling_governor") == "userspace", "put right"
    assert io.reads > reads

    reads = io.reads
    assert board.apply(Decision(1, 3)) > 0.0, "another OPP is always written at once"
    assert read_attr(root, "policy4", "scaling_setspeed") == "1008000"
    assert io.reads > reads
    board.close()
