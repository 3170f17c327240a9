"""Acceptance: the power path through the real daemon process, checked in the files it writes.

Each test runs ``python -m edgesched serve --board sysfs:rk3399 --sysfs-root ROOT`` on a fake
cpufreq tree (:mod:`edgesched.power.fakesysfs`), talks to it over its unix socket with the bundled
client and reads the tree back. ``sysfs:`` writes plain files (no :class:`FakeKernel` behind
them), so nothing emulates the kernel's reactions: ``scaling_cur_freq`` never moves and
``scaling_setspeed`` keeps the last value written; the assertions are on what the daemon writes.
``scaling_setspeed`` is compared only while the governor is ``userspace``: under any other
governor the kernel shows ``<unsupported>`` there and edgesched neither saves nor restores it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS_DIR, Daemon

from edgesched.device import load_profile
from edgesched.power.cpufreq import state_path
from edgesched.power.fakesysfs import (
    LEASED_ATTRS,
    NO_USERSPACE_GOVERNORS,
    from_profile,
    leased_values,
    make_tree,
    policy_dir,
    read_attr,
    unplug,
)

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
NABU_X = np.zeros((1, 3, 40), np.int8)
POLICIES = ("policy0", "policy4")
BIG_KHZ = {"powersave-big": 408_000, "performance-big": 1_800_000}
CONFIG = {"models": {"warmup_runs": 0, "measure_runs": 1}}
WAIT_LIMIT_S = 30.0

StartDaemon = Callable[..., Daemon]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the smallest shipped model: the daemon starts in a second."""
    d = tmp_path_factory.mktemp("models")
    shutil.copy(MODELS_DIR / f"{NABU}.tflite", d)
    return d


# --------------------------------------------------------------------------------- helpers
def set_attr(root: Path, policy: str, name: str, value: str) -> None:
    """Write a file of the fake tree by hand (whatever its mode), as a test's setup."""
    path = policy_dir(root, policy) / name
    mode = path.stat().st_mode & 0o777
    os.chmod(path, mode | 0o200)
    try:
        path.write_text(value + "\n", encoding="ascii")
    finally:
        os.chmod(path, mode)


def lease_view(root: Path, policy: str) -> dict[str, str]:
    return leased_values(root)[policy]


def tree_view(root: Path) -> dict[str, dict[str, str]]:
    view = leased_values(root)
    return {p: view[p] for p in POLICIES}


def board_args(root: Path, policy: str, models: Path, *extra: str) -> tuple[str, ...]:
    return ("--board", "sysfs:rk3399", "--sysfs-root", str(root), "--policy", policy,
            "--models", str(models), *extra)


def state_file(d: Daemon) -> Path:
    return state_path(d.home / "state")


def saved_policies(d: Daemon) -> list[str]:
    """Names of the policies the daemon's state file holds originals of ([] when absent)."""
    try:
        doc = json.loads(state_file(d).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [p["name"] for p in doc["policies"]]


def infer(d: Daemon) -> dict[str, Any]:
    with d.client() as c:
        res = c.infer(NABU, {NABU_IN: NABU_X})
    assert res.parameters["outcome"] == "ok"
    return res.parameters


def wait_for(d: Daemon, what: str, cond: Callable[[], bool],
             poke: Callable[[], object] | None = None) -> None:
    """Poll ``cond`` until it holds (bounded; the limit only guards against a hang), calling
    ``poke`` between polls (a request: the board re-reads sysfs only every RECHECK_S)."""
    limit = time.monotonic() + WAIT_LIMIT_S
    while not cond():
        if d.proc.poll() is not None or time.monotonic() > limit:
            raise AssertionError(f"never saw {what}; daemon log:\n{d.stderr()}")
        time.sleep(0.01)
        if poke is not None:
            poke()


def kill(d: Daemon) -> None:
    d.proc.send_signal(signal.SIGKILL)
    assert d.proc.wait(WAIT_LIMIT_S) == -signal.SIGKILL


def restore_cli(root: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgesched", "restore", "--sysfs-root",
                           str(root), "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=WAIT_LIMIT_S, check=False)


# --------------------------------------------------------------------------------- fake trees
def mixed_tree(root: Path) -> Path:
    """policy0 offers no userspace governor (clamp) and runs performance inside narrowed limits;
    policy4 already runs userspace at 1608 MHz: every leased value has a non-default original."""
    from_profile(root, load_profile("rk3399"), governor="performance")
    set_attr(root, "policy0", "scaling_available_governors", " ".join(NO_USERSPACE_GOVERNORS))
    set_attr(root, "policy0", "scaling_min_freq", "600000")
    set_attr(root, "policy0", "scaling_max_freq", "1200000")
    set_attr(root, "policy0", "scaling_cur_freq", "1200000")
    set_attr(root, "policy4", "scaling_governor", "userspace")
    set_attr(root, "policy4", "scaling_setspeed", "1608000")
    set_attr(root, "policy4", "scaling_cur_freq", "1608000")
    return root


def performance_tree(root: Path) -> Path:
    """Both policies run the performance governor at their top frequency."""
    return from_profile(root, load_profile("rk3399"), governor="performance")


# --------------------------------------------------------------------------------- 1. writes
@pytest.mark.parametrize("policy", ["powersave-big", "performance-big"])
@pytest.mark.parametrize("shape", ["rk3399", "no-userspace"])
def test_the_policys_frequency_is_what_sysfs_says(tmp_path: Path, start_daemon: StartDaemon,
                                                  models_dir: Path, shape: str,
                                                  policy: str) -> None:
    root = make_tree(tmp_path / "sys", shape)
    before = tree_view(root)
    khz = BIG_KHZ[policy]
    d = start_daemon(config=CONFIG, args=board_args(root, policy, models_dir))
    for _ in range(3):
        params = infer(d)
        assert (params["cluster_name"], params["freq_khz"]) == ("big", khz)
    big = {name: read_attr(root, "policy4", name) for name in LEASED_ATTRS}
    if shape == "rk3399":  # userspace mode
        assert big["scaling_governor"] == "userspace"
        assert big["scaling_setspeed"] == str(khz)
        assert (big["scaling_min_freq"], big["scaling_max_freq"]) == ("408000", "1800000")
    else:  # clamp mode: the governor is kept, the limits pin it
        assert big["scaling_governor"] == "schedutil"
        assert big["scaling_min_freq"] == big["scaling_max_freq"] == str(khz)
        assert big["scaling_setspeed"] == "<unsupported>"
    assert lease_view(root, "policy0") == before["policy0"], "the little cluster is not used"
    assert saved_policies(d) == ["policy4"]
    assert d.terminate() == 0
    assert tree_view(root) == before
    assert not state_file(d).exists()


# --------------------------------------------------------------------------------- 2. SIGTERM
@pytest.mark.parametrize("build", [mixed_tree, performance_tree], ids=["mixed", "performance"])
def test_sigterm_restores_every_original_value(tmp_path: Path, start_daemon: StartDaemon,
                                               models_dir: Path,
                                               build: Callable[[Path], Path]) -> None:
    root = build(tmp_path / "sys")
    before = tree_view(root)
    # schedutil's first tick (utilisation 0) asks for 408 MHz on both clusters, which both run
    # above it: the daemon leases both policies without a request
    d = start_daemon(config=CONFIG, args=board_args(root, "schedutil", models_dir))

    def both_at_408() -> bool:
        views = tree_view(root)
        return all(v.get("scaling_setspeed") == "408000" or v["scaling_max_freq"] == "408000"
                   for v in views.values())

    wait_for(d, "both policies set to 408 MHz", both_at_408)
    assert sorted(saved_policies(d)) == list(POLICIES)
    changed = tree_view(root)
    assert all(changed[p] != before[p] for p in POLICIES)
    if build is mixed_tree:
        assert changed["policy0"] == {"scaling_governor": "performance",
                                      "scaling_min_freq": "408000", "scaling_max_freq": "408000"}
        assert changed["policy4"]["scaling_setspeed"] == "408000"
    else:
        assert {v["scaling_governor"] for v in changed.values()} == {"userspace"}
    infer(d)
    assert d.terminate() == 0
    assert tree_view(root) == before
    assert not state_file(d).exists()
    assert "cpufreq settings restored" in d.stderr()


# --------------------------------------------------------------------------------- 3. SIGKILL
@pytest.mark.parametrize("shape", ["rk3399", "no-userspace"])
def test_a_killed_run_is_restored_at_restart_and_by_hand(tmp_path: Path,
                                                         start_daemon: StartDaemon,
                                                         models_dir: Path, shape: str) -> None:
    root = make_tree(tmp_path / "sys", shape)
    before = tree_view(root)
    home = tmp_path / "home"
    args = board_args(root, "powersave-big", models_dir)

    d = start_daemon(config=CONFIG, args=args, home=home)
    infer(d)
    kill(d)
    assert saved_policies(d) == ["policy4"]
    assert tree_view(root) != before, "the killed run left policy4 changed"

    # restart: the leftover is restored before the daemon serves (powersave changes nothing
    # until a request arrives, so the files right after READY show what start-up did)
    d = start_daemon(config=CONFIG, args=args, home=home)
    assert tree_view(root) == before
    assert not state_file(d).exists()
    log = d.stderr()
    assert "restored cpufreq settings left by a killed run" in log
    assert log.index("restored cpufreq settings left by a killed run") < log.index("serving")
    assert "pinned before edgesched started" not in log, "our own clamp is not someone else's"

    # kill again, then restore by hand
    infer(d)
    kill(d)
    assert tree_view(root) != before
    first = restore_cli(root, home / "state")
    assert first.returncode == 0, first.stderr
    assert "restored policy4/" in first.stdout and "removed" in first.stdout
    assert tree_view(root) == before
    assert not state_file(d).exists()
    second = restore_cli(root, home / "state")
    assert second.returncode == 0, second.stderr
    assert "nothing to restore" in second.stdout
    assert tree_view(root) == before


# --------------------------------------------------------------------------------- 4. faults
def _read_only_setspeed(root: Path) -> Path:
    make_tree(root, "rk3399")
    os.chmod(policy_dir(root, "policy4") / "scaling_setspeed", 0o444)
    return root


def _read_only_max(root: Path) -> Path:
    make_tree(root, "no-userspace")
    os.chmod(policy_dir(root, "policy4") / "scaling_max_freq", 0o444)
    return root


def _read_only_tree(root: Path) -> Path:
    return make_tree(root, "read-only")


@pytest.mark.parametrize(("build", "refused"), [
    (_read_only_setspeed, "policy4/scaling_setspeed"),
    (_read_only_max, "policy4/scaling_max_freq"),
    (_read_only_tree, "policy4/scaling_governor"),
], ids=["setspeed-0444", "max-0444-clamp", "read-only-tree"])
def test_a_refused_write_disables_control_and_inference_goes_on(
        tmp_path: Path, start_daemon: StartDaemon, models_dir: Path,
        build: Callable[[Path], Path], refused: str) -> None:
    root = build(tmp_path / "sys")
    before = tree_view(root)
    d = start_daemon(config=CONFIG, args=board_args(root, "powersave-big", models_dir))
    for _ in range(3):
        infer(d)
    log = d.stderr()
    assert "frequency control disabled, the kernel's governor stays in charge" in log
    assert f"{refused}: permission denied" in log
    # the fallback is real: whatever the lease changed before the refusal is given back at once
    assert tree_view(root) == before
    assert not state_file(d).exists()
    assert d.terminate() == 0
    assert tree_view(root) == before


def test_a_policy_that_vanishes_is_skipped_and_taken_back(tmp_path: Path,
                                                          start_daemon: StartDaemon,
                                                          models_dir: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    before = tree_view(root)
    d = start_daemon(config=CONFIG, args=board_args(root, "performance-big", models_dir))
    infer(d)
    assert read_attr(root, "policy4", "scaling_setspeed") == "1800000"

    unplug(root, "policy4")  # the big CPUs go offline with the driver unbound
    served: list[str] = []
    wait_for(d, "the hotplug warning", lambda: "policy4 vanished (CPU hotplug)" in d.stderr(),
             poke=lambda: served.append(infer(d)["cluster_name"]))
    assert served and set(served) == {"big"}, "inference goes on"
    assert "policy4 is skipped until it comes back" in d.stderr()

    make_tree(root, "rk3399")  # back online, with the kernel's defaults
    wait_for(d, "policy4 set again", lambda: read_attr(root, "policy4", "scaling_setspeed")
             == "1800000", poke=lambda: infer(d))
    assert "policy4 is back" in d.stderr()
    assert d.terminate() == 0
    assert tree_view(root) == before
    assert not state_file(d).exists()


def test_a_policy_gone_at_shutdown_is_skipped(tmp_path: Path, start_daemon: StartDaemon,
                                              models_dir: Path) -> None:
    root = make_tree(tmp_path / "sys", "no-userspace")
    d = start_daemon(config=CONFIG, args=board_args(root, "powersave-big", models_dir))
    infer(d)
    assert read_attr(root, "policy4", "scaling_max_freq") == "408000"
    unplug(root, "policy4")
    assert d.terminate() == 0
    assert "policy4: policy directory" in d.stderr() and "skipped" in d.stderr()
    assert not state_file(d).exists()
    assert lease_view(root, "policy0")["scaling_governor"] == "schedutil"


# --------------------------------------------------------------------------------- 5. others
@pytest.fixture
def busy_host(tmp_path: Path) -> tuple[Path, Path]:
    """A fake /proc where tuned runs (pid 4242) and a fake / where auto-cpufreq is enabled."""
    proc = tmp_path / "proc"
    for pid, comm, cmdline in ((1, "systemd", "/sbin/init"),
                               (4242, "tuned", "/usr/bin/python3\0/usr/sbin/tuned\0-l"),
                               (77, "thermald", "/usr/sbin/thermald")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n", encoding="utf-8")
        (proc / str(pid) / "cmdline").write_text(cmdline + "\0", encoding="utf-8")
    (proc / "self").mkdir()
    host = tmp_path / "host"
    wants = host / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "auto-cpufreq.service").symlink_to("/lib/systemd/system/auto-cpufreq.service")
    return proc, host


def test_other_frequency_daemons_are_reported_at_start_up(
        tmp_path: Path, start_daemon: StartDaemon, models_dir: Path,
        busy_host: tuple[Path, Path]) -> None:
    proc, host = busy_host
    root = make_tree(tmp_path / "sys", "rk3399")
    set_attr(root, "policy0", "scaling_min_freq", "1416000")  # pinned by someone else
    d = start_daemon(config=CONFIG, args=board_args(root, "powersave", models_dir,
                                                    "--proc-root", str(proc),
                                                    "--host-root", str(host)))
    infer(d)
    assert d.terminate() == 0
    warnings = [line for line in d.stderr().splitlines()
                if "another program sets CPU frequencies" in line]
    assert len(warnings) == 3, d.stderr()
    tuned, auto, pinned = warnings
    assert tuned.startswith("edgesched: WARNING ")
    assert "tuned (running as pid 4242) conflicts with edgesched" in tuned
    assert "systemctl disable --now tuned" in tuned
    assert "auto-cpufreq (auto-cpufreq.service is enabled) conflicts with edgesched" in auto
    assert "policy0 at 1416000 kHz" in pinned
    assert d.stderr().index(pinned) < d.stderr().index("serving")


# --------------------------------------------------------------------------------- 5. kill soak
def test_random_kills_are_always_restored() -> None:
    """bench/kill_restart.py on a small budget: SIGKILL at random moments (start-up included),
    then a restart or `edgesched restore`; every original value is back in every run."""
    script = Path(__file__).resolve().parent.parent / "bench" / "kill_restart.py"
    out = subprocess.run([sys.executable, str(script), "--runs", "6", "--seed", "3"],
                         capture_output=True, text=True, check=True, timeout=600)
    doc = json.loads(out.stdout)
    assert doc["runs"] == 6 and doc["failures"] == [], doc
    assert doc["restored"] == 6 and doc["crash_loops"] == 0, doc


# --------------------------------------------------------------------------------- 6. one owner
def test_one_daemon_per_state_dir_and_no_restore_under_a_live_one(
        tmp_path: Path, start_daemon: StartDaemon, models_dir: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    before = tree_view(root)
    first = start_daemon(config=CONFIG, args=board_args(root, "powersave", models_dir),
                         home=tmp_path / "a")
    infer(first)
    changed = tree_view(root)
    assert changed != before
    second = start_daemon(config=CONFIG, home=tmp_path / "b", wait=False, args=board_args(
        root, "performance", models_dir, "--state-dir", str(tmp_path / "a" / "state")))
    assert second.proc.wait(WAIT_LIMIT_S) != 0
    assert f"another edgesched process (pid {first.proc.pid})" in second.stderr()
    by_hand = restore_cli(root, tmp_path / "a" / "state")
    assert by_hand.returncode != 0 and "not left over" in by_hand.stderr
    assert tree_view(root) == changed, "neither touched the first daemon's settings"
    infer(first)
    assert first.terminate() == 0
    assert tree_view(root) == before


def test_one_virtual_board_per_runtime_dir(tmp_path: Path, start_daemon: StartDaemon,
                                           models_dir: Path) -> None:
    run_dir = tmp_path / "run"
    args = ("--board", "virtual:rk3399", "--models", str(models_dir), "--runtime-dir",
            str(run_dir))
    first = start_daemon(config=CONFIG, args=args, home=tmp_path / "a")
    second = start_daemon(config=CONFIG, args=args, home=tmp_path / "b", wait=False)
    assert second.proc.wait(WAIT_LIMIT_S) != 0
    assert "holds the virtual rk3399 board" in second.stderr()
    infer(first)  # its tree was not deleted from under it
    assert first.terminate() == 0
