"""cpufreq control against fake sysfs trees on disk (edgesched.power.fakesysfs), never a patched open."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgesched.cli import main as cli_main
from edgesched.errors import (
    CpufreqBusyError,
    CpufreqModeError,
    CpufreqPermissionError,
    CpufreqPolicyGoneError,
    CpufreqRejectedError,
    CpufreqStateError,
    CpufreqUnavailableError,
)
from edgesched.power.cpufreq import (
    Cpufreq,
    derive_steps_khz,
    parse_cpu_list,
    permission_hint,
    recover,
    state_path,
)
from edgesched.power.fakesysfs import FakeKernel, FaultInjector, make_tree, policy_dir, read_attr, unplug
from edgesched.power.freqdaemons import detect_frequency_daemons

ATTRS = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")


def tree(tmp_path: Path, shape: str = "rk3399") -> tuple[Path, Path, FakeKernel]:
    root = make_tree(tmp_path / "sys", shape)
    return root, tmp_path / "state", FakeKernel(root)


def snapshot(root: Path) -> dict[str, dict[str, str]]:
    base = root / "devices/system/cpu/cpufreq"
    return {p.name: {a: read_attr(root, p.name, a) for a in ATTRS}
            for p in sorted(base.glob("policy*"))}


def set_originals(root: Path, kernel: FakeKernel) -> None:
    """Unusual starting settings: policy0 under userspace at 816 MHz, policy4 ondemand capped."""
    kernel.write_text(policy_dir(root, "policy0") / "scaling_governor", "userspace")
    kernel.write_text(policy_dir(root, "policy0") / "scaling_setspeed", "816000")
    kernel.write_text(policy_dir(root, "policy4") / "scaling_governor", "ondemand")
    kernel.write_text(policy_dir(root, "policy4") / "scaling_min_freq", "600000")
    kernel.write_text(policy_dir(root, "policy4") / "scaling_max_freq", "1608000")


# -- discovery ---------------------------------------------------------------------------------


def test_discovers_big_little_policies(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    cf = Cpufreq(root, state_dir=state, io=kernel)
    assert list(cf.policies) == ["policy0", "policy4"]
    little, big = cf.policies["policy0"], cf.policies["policy4"]
    assert little.related_cpus == (0, 1, 2, 3) and big.related_cpus == (4, 5)
    assert big.available_khz[-1] == 1_800_000 and not big.available_khz_derived
    assert big.transition_latency_ns == 40_000
    assert little.write_mode == big.write_mode == "userspace"
    assert cf.policy_for_cpu(5).name == "policy4"
    assert not state.exists(), "discovery writes nothing"


def test_rpi_steps_are_derived_like_raspberrypi_cpufreq(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path, "rpi4")
    cf = Cpufreq(root, state_dir=state, io=kernel)
    (info,) = cf.policies.values()
    assert info.available_khz_derived
    assert info.available_khz == tuple(range(600_000, 1_500_001, 100_000))
    assert derive_steps_khz(599_999, 1_500_001) == tuple(range(600_000, 1_600_001, 100_000))
    assert cf.set_khz(info.name, 1_234_000) == 1_300_000
    assert read_attr(root, info.name, "scaling_cur_freq") == "1300000"


def test_cpu_list_formats() -> None:
    assert parse_cpu_list("0 1 2 3\n") == (0, 1, 2, 3)
    assert parse_cpu_list("0-2,5") == (0, 1, 2, 5)


def test_no_policies_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CpufreqUnavailableError, match="no cpufreq policies"):
        Cpufreq(tmp_path, state_dir=tmp_path / "state")


# -- setting the frequency -----------------------------------------------------------------------


def test_userspace_mode_sets_the_frequency(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    with Cpufreq(root, state_dir=state, mode="userspace", io=kernel) as cf:
        assert cf.set_khz("policy4", 1_416_000) == 1_416_000
        assert read_attr(root, "policy4", "scaling_governor") == "userspace"
        assert read_attr(root, "policy4", "scaling_setspeed") == "1416000"
        assert cf.cur_khz("policy4") == 1_416_000
        assert cf.set_khz("policy4", 1_400_000) == 1_416_000, "snapped up like RELATION_L"
        assert read_attr(root, "policy0", "scaling_governor") == "schedutil", "untouched"


@pytest.mark.parametrize("targets", [(1_800_000, 408_000, 1_200_000), (408_000, 1_800_000)])
def test_clamp_mode_keeps_the_governor_and_orders_min_max(tmp_path: Path,
                                                          targets: tuple[int, ...]) -> None:
    root, state, kernel = tree(tmp_path)
    # FakeKernel refuses (EINVAL) any write that would put min above max: a misordered pair fails
    faults = FaultInjector(kernel)
    with Cpufreq(root, state_dir=state, mode="clamp", io=faults) as cf:
        for khz in targets:
            assert cf.set_khz("policy4", khz) == khz
            assert read_attr(root, "policy4", "scaling_min_freq") == str(khz)
            assert read_attr(root, "policy4", "scaling_max_freq") == str(khz)
            assert cf.cur_khz("policy4") == khz
            assert read_attr(root, "policy4", "scaling_governor") == "schedutil"
    assert not any(p.endswith("scaling_governor") for p, _ in faults.writes)


def test_auto_picks_clamp_without_userspace_and_userspace_mode_says_what_to_do(
        tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path, "no-userspace")
    cf = Cpufreq(root, state_dir=state, io=kernel)
    assert {p.write_mode for p in cf} == {"clamp"}
    with pytest.raises(CpufreqModeError, match="use mode clamp"):
        Cpufreq(root, state_dir=state, mode="userspace", io=kernel)


def test_unchanged_writes_are_skipped(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    faults = FaultInjector(kernel)
    with Cpufreq(root, state_dir=state, io=faults) as cf:
        cf.set_khz("policy4", 1_008_000)
        n = len(faults.writes)
        assert n == 2  # governor, setspeed
        cf.set_khz("policy4", 1_008_000)
        assert len(faults.writes) == n


def test_dry_run_changes_and_saves_nothing(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    before = snapshot(root)
    with Cpufreq(root, state_dir=state, dry_run=True, io=kernel) as cf:
        cf.set_khz("policy4", 1_008_000)
    assert snapshot(root) == before
    assert not state_path(state).exists()


# -- the lease -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["userspace", "clamp"])
def test_restore_puts_back_every_original_value(tmp_path: Path, mode: str) -> None:
    root, state, kernel = tree(tmp_path)
    set_originals(root, kernel)
    before = snapshot(root)
    cf = Cpufreq(root, state_dir=state, mode=mode, io=kernel)  # type: ignore[arg-type]
    cf.set_khz("policy0", 1_416_000)
    cf.set_khz("policy4", 408_000 if mode == "userspace" else 1_800_000)
    cf.set_khz("policy4", 1_200_000)
    assert snapshot(root) != before
    saved = json.loads(state_path(state).read_text())
    assert [p["name"] for p in saved["policies"]] == ["policy0", "policy4"]
    assert saved["policies"][0]["setspeed_khz"] == 816_000
    report = cf.restore()
    assert snapshot(root) == before
    assert read_attr(root, "policy0", "scaling_cur_freq") == "816000"
    assert report.actions and not state_path(state).exists()
    assert cf.restore().nothing_to_do, "idempotent"


def test_state_is_saved_atomically_before_the_first_change(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    faults = FaultInjector(kernel)
    faults.fail("policy4/scaling_governor", errno.EBUSY)
    cf = Cpufreq(root, state_dir=state, io=faults)
    with pytest.raises(CpufreqRejectedError):
        cf.set_khz("policy4", 1_008_000)
    doc = json.loads(state_path(state).read_text())
    assert doc["policies"][0] == {"name": "policy4", "governor": "schedutil", "min_khz": 408000,
                                  "max_khz": 1800000, "setspeed_khz": None}
    assert sorted(p.name for p in state.iterdir()) == ["cpufreq-state.json", "lease.lock"], (
        "no temp files left")


def test_crash_then_recover_restores(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    set_originals(root, kernel)
    before = snapshot(root)
    crashed = Cpufreq(root, state_dir=state, mode="clamp", io=kernel)
    crashed.set_khz("policy0", 408_000)
    crashed.set_khz("policy4", 1_800_000)
    del crashed  # SIGKILL: no restore ran
    assert state_path(state).exists() and snapshot(root) != before
    report = recover(root, state, io=kernel)
    assert snapshot(root) == before
    assert not report.nothing_to_do and not state_path(state).exists()
    assert recover(root, state, io=kernel).nothing_to_do


def test_a_new_cpufreq_recovers_a_leftover_state_first(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    before = snapshot(root)
    Cpufreq(root, state_dir=state, io=kernel).set_khz("policy4", 1_008_000)
    cf = Cpufreq(root, state_dir=state, io=kernel)
    assert snapshot(root) == before, "the originals, not the crashed run's values, are kept"
    cf.set_khz("policy4", 600_000)
    cf.close()
    assert snapshot(root) == before


def test_recover_refuses_another_root(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path)
    Cpufreq(root, state_dir=state, io=kernel).set_khz("policy4", 1_008_000)
    with pytest.raises(CpufreqStateError, match="--sysfs-root"):
        recover(tmp_path / "elsewhere", state)


def test_restore_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, state, kernel = tree(tmp_path)
    before = snapshot(root)
    args = ["restore", "--sysfs-root", str(root), "--state-dir", str(state)]
    assert cli_main(args) == 0
    assert "nothing to restore" in capsys.readouterr().out
    Cpufreq(root, state_dir=state, mode="clamp", io=kernel).set_khz("policy4", 1_008_000)
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "restored policy4/scaling_min_freq=408000" in out
    assert snapshot(root) == before


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES])
def test_permission_denied_says_what_to_do(tmp_path: Path, code: int) -> None:
    root, state, kernel = tree(tmp_path)
    faults = FaultInjector(kernel)
    faults.fail("scaling_governor", code)
    cf = Cpufreq(root, state_dir=state, io=faults)
    with pytest.raises(CpufreqPermissionError) as info:
        cf.set_khz("policy4", 1_008_000)
    assert f"policy4/scaling_governor: permission denied; {permission_hint()}" in str(info.value)
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"
    cf.restore()
    assert not state_path(state).exists()


def test_read_only_tree_is_refused_like_kernfs(tmp_path: Path) -> None:
    root, state, kernel = tree(tmp_path, "read-only")
    cf = Cpufreq(root, state_dir=state, mode="clamp", io=kernel)
    with pytest.raises(CpufreqPermissionError, match="permission denied"):
        cf.set_khz("policy0", 600_000)


@pytest.mark.parametrize(("code", "words"), [(errno.EBUSY, "busy"), (errno.EINVAL, "rejected")])
def test_busy_and_invalid_name_the_file_and_value(tmp_path: Path, code: int, words: str) -> None:
    root, state, kernel = tree(tmp_path)
    faults = FaultInjector(kernel)
    faults.fail("policy4/scaling_setspeed", code, times=1)
    cf = Cpufreq(root, state_dir=state, io=faults)
    with pytest.raises(CpufreqRejectedError) as info:
        cf.set_khz("policy4", 1_008_000)
    assert words in str(info.value) and "'1008000'" in str(info.value)
    assert "policy4/scaling_setspeed" in str(info.value)
    assert cf.set_khz("policy4", 1_008_000) == 1_008_000, "the next attempt goes through"
    cf.close()


def test_kernel_rejects_setspeed_without_userspace(tmp_path: Path) -> None:
    root, _, kernel = tree(tmp_path)
    with pytest.raises(OSError) as info:
        kernel.write_text(policy_dir(root, "policy4") / "scaling_setspeed", "1008000")
    assert info.value.errno == errno.EINVAL
    kernel.write_text(policy_dir(root, "policy4") / "scaling_governor", "performance")
    assert read_attr(root, "policy4", "scaling_cur_freq") == "1800000"
    kernel.write_text(policy_dir(root, "policy4") / "scaling_max_freq", "1200000")
    assert read_attr(root, "policy4", "scaling_cur_freq") == "1200000"
    kernel.write_text(policy_dir(root, "policy4") / "scaling_governor", "powersave")
    assert read_attr(root, "policy4", "scaling_cur_freq") == "408000"


def test_kernel_rewrites_files_whole_when_a_value_gets_shorter(tmp_path: Path) -> None:
    """The fake kernel rewrites attributes in place (no truncation to zero); every file must
    still hold exactly the new value and its newline, with nothing of a longer old one left."""
    root, _, kernel = tree(tmp_path)
    pdir = policy_dir(root, "policy4")
    kernel.write_text(pdir / "scaling_governor", "performance")
    assert (pdir / "scaling_cur_freq").read_bytes() == b"1800000\n"
    assert (pdir / "scaling_setspeed").read_bytes() == b"<unsupported>\n"
    kernel.write_text(pdir / "scaling_governor", "userspace")
    kernel.write_text(pdir / "scaling_setspeed", "408000")
    assert (pdir / "scaling_setspeed").read_bytes() == b"408000\n"
    assert (pdir / "scaling_cur_freq").read_bytes() == b"408000\n"
    assert (pdir / "scaling_governor").read_bytes() == b"userspace\n"
    kernel.write_text(pdir / "scaling_governor", "powersave")
    assert (pdir / "scaling_governor").read_bytes() == b"powersave\n"
    assert (pdir / "scaling_setspeed").read_bytes() == b"<unsupported>\n"


def test_vanished_policy_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, state, kernel = tree(tmp_path)
    before = snapshot(root)
    cf = Cpufreq(root, state_dir=state, io=kernel)
    cf.set_khz("policy0", 1_008_000)
    cf.set_khz("policy4", 1_008_000)
    unplug(root, "policy4")
    with pytest.raises(CpufreqPolicyGoneError, match="CPU hotplug"):
        cf.set_khz("policy4", 600_000)
    assert cf.gone == {"policy4"}
    assert cf.set_khz("policy0", 600_000) == 600_000, "the other policy still works"
    report = cf.restore()
    assert any("policy4" in s for s in report.skipped)
    assert snapshot(root)["policy0"] == before["policy0"]
    assert not state_path(state).exists()
    assert "vanished" in caplog.text


def test_no_change_without_a_saved_state(tmp_path: Path) -> None:
    """The state file cannot be written (here: the file size limit, as with a full disk)."""
    root, state, _ = tree(tmp_path)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from edgesched.power.cpufreq import Cpufreq
        from edgesched.errors import CpufreqStateError
        from edgesched.power.fakesysfs import FakeKernel
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        root = Path({str(root)!r})
        cf = Cpufreq(root, state_dir=Path({str(state)!r}), io=FakeKernel(root))
        resource.setrlimit(resource.RLIMIT_FSIZE, (32, resource.RLIM_INFINITY))
        try:
            cf.set_khz("policy4", 1008000)
        except CpufreqStateError as exc:
            print(exc)
            sys.exit(3)
        sys.exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 3, proc.stderr
    assert "no frequency was changed" in proc.stdout
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"
    assert not state_path(state).exists()


def test_state_dir_that_cannot_exist_is_a_clear_error(tmp_path: Path) -> None:
    root, _, kernel = tree(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cf = Cpufreq(root, state_dir=blocker / "state", io=kernel)
    with pytest.raises(CpufreqStateError, match="no frequency was changed"):
        cf.set_khz("policy4", 1_008_000)
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"


# -- other frequency daemons ---------------------------------------------------------------------


def _proc(root: Path, pid: int, comm: str, cmdline: str = "") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_text(cmdline.replace(" ", "\0"))


def test_detects_other_frequency_daemons(tmp_path: Path) -> None:
    proc, sysroot = tmp_path / "proc", tmp_path / "root"
    _proc(proc, 1, "systemd")
    _proc(proc, 300, "power-profiles-")
    _proc(proc, 400, "python3", "/usr/bin/python3 -Es /usr/sbin/tuned -l -P")
    _proc(proc, 500, "thermald")
    (proc / "self").mkdir()
    wants = sysroot / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "auto-cpufreq.service").symlink_to("/lib/systemd/system/auto-cpufreq.service")
    root, _, kernel = tree(tmp_path)
    kernel.write_text(policy_dir(root, "policy4") / "scaling_min_freq", "1800000")
    warnings = detect_frequency_daemons(proc, root=sysroot, sysfs_root=root)
    text = "\n".join(warnings)
    assert "power-profiles-daemon (running as pid 300)" in text
    assert "tuned (running as pid 400)" in text
    assert "auto-cpufreq (auto-cpufreq.service is enabled)" in text
    assert "policy4 at 1800000 kHz" in text
    assert "thermald" not in text
    assert detect_frequency_daemons(tmp_path / "none", root=tmp_path / "none") == []


# ------------------------------------------------------------------------------- one owner
def test_a_second_lease_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    first = Cpufreq(root, state_dir=tmp_path / "state", io=FakeKernel(root))
    first.set_khz("policy4", 1_008_000)
    with pytest.raises(CpufreqBusyError, match=rf"pid {os.getpid()}\b.*Stop it first"):
        Cpufreq(root, state_dir=tmp_path / "state", io=FakeKernel(root))
    with pytest.raises(CpufreqBusyError, match="not left over"):
        recover(root, tmp_path / "state")  # `edgesched restore` under a live lease
    assert read_attr(root, "policy4", "scaling_governor") == "userspace", "nothing was undone"
    first.close()
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"
    with Cpufreq(root, state_dir=tmp_path / "state", io=FakeKernel(root)) as second:
        second.set_khz("policy4", 600_000)  # the lock went with the first owner
    assert read_attr(root, "policy4", "scaling_governor") == "schedutil"


def test_a_dry_run_takes_no_lock(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    with (Cpufreq(root, state_dir=tmp_path / "state", io=FakeKernel(root)),
          Cpufreq(root, state_dir=tmp_path / "state", dry_run=True) as dry):
        assert dry.set_khz("policy4", 600_000) == 600_000


def test_the_permission_hint_fits_who_is_running() -> None:
    assert "run as root" in permission_hint(1000)
    assert "run as root" not in permission_hint(0) and "read-only" in permission_hint(0)
