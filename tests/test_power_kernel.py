"""The power path against kernel behaviour: thermal caps, governor tunables, a change refused
midway, the watchdog's view of the dispatcher, and the hands-off ``kernel`` policy.

Every tree here is a fake sysfs root on disk with :class:`FakeKernel` behind it, which shows
``scaling_max_freq`` as the kernel does (the least of the user's request and a cooling device's
cap) and drops a governor's tunables when the governor is switched away.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, Daemon

from edgesched.device import load_profile
from edgesched.errors import CpufreqRejectedError, PolicyError
from edgesched.observation import Decision
from edgesched.policy.kernel import KernelPolicy
from edgesched.policy.registry import make_policy
from edgesched.power.backends import HandsOffBoard, SysfsBoard, open_board
from edgesched.power.cpufreq import CPUFREQ_REL, Cpufreq, recover, state_path
from edgesched.power.fakesysfs import (
    FakeKernel,
    FaultInjector,
    add_cpufreq_cooling,
    from_profile,
    read_attr,
)
from edgesched.power.meters import CarbonAccount
from edgesched.queue import RequestQueue
from edgesched.server.admission import InferRequest
from edgesched.server.dispatcher import Dispatcher, Job, Outcome
from edgesched.server.metrics import Metrics
from edgesched.server.runner import LoadedModel, load_model
from edgesched.server.systemd import Watchdog

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
BIG = "policy4"
BIG_DEVICE = "cooling_device1"  # add_cpufreq_cooling: one device per policy, in policy order
# rk3399's big table, top down: 1800000 1608000 1416000 ...; cooling state 2 caps at 1416000
CAP_STATE, CAP_KHZ = 2, 1_416_000
WAIT_S = 30.0


class FakeClock:
    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def thermal_tree(root: Path, **kw: object) -> tuple[Path, FakeKernel]:
    tree = from_profile(root, load_profile("rk3399"), tunables=True, **kw)  # type: ignore[arg-type]
    add_cpufreq_cooling(tree)
    return tree, FakeKernel(tree, per_policy_governors=bool(kw.get("per_policy_governors", True)))


def state_doc(state_dir: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads(state_path(state_dir).read_text(encoding="utf-8"))
    return doc


# --------------------------------------------------------------------------------- thermal caps
def test_a_cap_active_at_shutdown_does_not_stop_the_restore(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel)
    cf.set_khz(BIG, 1_800_000)
    assert read_attr(tree, BIG, "scaling_governor") == "userspace"
    kernel.set_cooling_state(BIG_DEVICE, CAP_STATE)  # the board heats up while serving
    assert read_attr(tree, BIG, "scaling_max_freq") == str(CAP_KHZ)

    cf.close()

    assert read_attr(tree, BIG, "scaling_governor") == "schedutil"
    assert read_attr(tree, BIG, "scaling_max_freq") == str(CAP_KHZ), "the cap still holds"
    assert not state_path(tmp_path / "state").exists()
    kernel.set_cooling_state(BIG_DEVICE, 0)
    assert read_attr(tree, BIG, "scaling_max_freq") == "1800000", "the user's limit is back"


def test_a_killed_run_is_recovered_while_a_cap_is_active(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel)
    cf.set_khz(BIG, 816_000)
    cf._lock.release()  # killed: the state file stays, the lock dies with the process
    kernel.set_cooling_state(BIG_DEVICE, CAP_STATE)

    report = recover(tree, tmp_path / "state", io=kernel)

    assert f"{BIG}/scaling_governor=schedutil" in report.actions
    assert read_attr(tree, BIG, "scaling_governor") == "schedutil"
    assert not state_path(tmp_path / "state").exists()


def test_a_cap_active_at_the_lease_is_not_saved_as_the_users_limit(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    kernel.set_cooling_state(BIG_DEVICE, CAP_STATE)  # hot before the daemon starts
    assert read_attr(tree, BIG, "scaling_max_freq") == str(CAP_KHZ)
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel)
    cf.set_khz(BIG, 816_000)

    saved = state_doc(tmp_path / "state")["policies"][0]  # type: ignore[index]
    assert saved["max_khz"] == 1_800_000, "cpuinfo_max_freq, not the cap"
    assert BIG_DEVICE in saved["max_note"]
    cf.close()
    kernel.set_cooling_state(BIG_DEVICE, 0)
    assert read_attr(tree, BIG, "scaling_max_freq") == "1800000"


def test_a_users_limit_below_the_cap_is_saved_as_it_is(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    kernel.write_text(tree / CPUFREQ_REL / BIG / "scaling_max_freq", "1200000")
    kernel.set_cooling_state(BIG_DEVICE, CAP_STATE)
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel)
    cf.set_khz(BIG, 816_000)

    saved = state_doc(tmp_path / "state")["policies"][0]  # type: ignore[index]
    assert saved["max_khz"] == 1_200_000 and "max_note" not in saved
    cf.close()
    kernel.set_cooling_state(BIG_DEVICE, 0)
    assert read_attr(tree, BIG, "scaling_max_freq") == "1200000"


# --------------------------------------------------------------------------------- EBUSY midway
def test_a_speed_refused_midway_rolls_the_cluster_back_and_the_next_decision_works(
        tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    faults = FaultInjector(kernel)
    faults.fail(f"{BIG}/scaling_setspeed", errno.EBUSY, times=1)
    clock = FakeClock()
    board = SysfsBoard(load_profile("rk3399"), sysfs_root=tree, state_dir=tmp_path / "state",
                       io=faults, clock=clock)
    try:
        board.apply(Decision(1, 3))
        assert read_attr(tree, BIG, "scaling_governor") == "schedutil", "not left in userspace"
        assert "rolled back to its governor schedutil" in board.control["faults"][BIG]  # type: ignore[index]
        assert board.control_error is None, "control stays on"

        board.apply(Decision(1, 3))

        assert read_attr(tree, BIG, "scaling_governor") == "userspace"
        assert read_attr(tree, BIG, "scaling_setspeed") == "1008000"
        assert board.current_opps()[1] == 3
        assert board.control["faults"] == {}
    finally:
        board.close()
    assert read_attr(tree, BIG, "scaling_governor") == "schedutil"


# --------------------------------------------------------------------------------- tunables
@pytest.mark.parametrize("per_policy", [True, False], ids=["per-policy", "system-wide"])
def test_governor_tunables_are_given_back(tmp_path: Path, per_policy: bool) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys", governor="ondemand",
                                per_policy_governors=per_policy)
    tdir = tree / CPUFREQ_REL / (f"{BIG}/ondemand" if per_policy else "ondemand")
    kernel.write_text(tdir / "up_threshold", "95")  # the user's tuning
    kernel.write_text(tdir / "sampling_rate", "20000")
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel)
    cf.set_khz("policy0", 600_000)
    cf.set_khz(BIG, 816_000)
    assert not tdir.exists(), "the kernel dropped them with the governor"

    cf.close()

    assert (tdir / "up_threshold").read_text().strip() == "95"
    assert (tdir / "sampling_rate").read_text().strip() == "20000"


def test_governor_tunables_are_given_back_after_a_crash(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    tdir = tree / CPUFREQ_REL / BIG / "schedutil"
    kernel.write_text(tdir / "rate_limit_us", "5000")
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel)
    cf.set_khz(BIG, 816_000)
    cf._lock.release()  # killed
    assert not tdir.exists()

    recover(tree, tmp_path / "state", io=kernel)

    assert (tdir / "rate_limit_us").read_text().strip() == "5000"


# --------------------------------------------------------------------------------- watchdog
@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)
    yield sock, {"NOTIFY_SOCKET": str(path)}
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_watchdog_pings_only_while_the_heartbeat_is_recent(
        notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    clock = FakeClock()
    dog = Watchdog(15.0, clock=clock, env=env)
    assert dog.beat(heartbeat_s=clock.now_s - 1.0)
    assert received(sock) == [b"WATCHDOG=1"]
    clock.now_s += 16.0
    assert not dog.beat(heartbeat_s=clock.now_s - 16.0)
    assert received(sock) == [] and dog.stalled


@pytest.fixture(scope="module")
def nabu() -> LoadedModel:
    return load_model(MODELS_DIR / f"{NABU}.tflite", warmup_runs=0, measure_runs=1)


def test_a_hung_dispatcher_stops_the_watchdog_pings(
        notify_socket: tuple[socket.socket, dict[str, str]], tmp_path: Path) -> None:
    sock, env = notify_socket
    clock = FakeClock()
    board = open_board("null:rk3399", state_dir=tmp_path / "state", runtime_dir=tmp_path)
    dispatcher = Dispatcher(board, make_policy("performance"), RequestQueue(levels=3),
                            Metrics(CarbonAccount(500.0)), clock=clock, pin_threads=False,
                            idle_wait_s=0.01)
    dog = Watchdog(15.0, clock=clock, env=env)
    release = threading.Event()
    dispatcher.start()
    try:
        assert dispatcher.call(lambda: None).result(WAIT_S) is None  # it has turned at least once
        assert dog.beat(dispatcher.heartbeat_s)
        hung = dispatcher.call(lambda: release.wait(WAIT_S))  # stuck on the dispatcher thread
        clock.now_s += 16.0
        assert not dog.beat(dispatcher.heartbeat_s)
        release.set()
        assert hung.result(WAIT_S) is True
        assert dispatcher.call(lambda: None).result(WAIT_S) is None  # one more turn: a heartbeat
        assert dog.beat(dispatcher.heartbeat_s)
        assert received(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]
    finally:
        release.set()
        dispatcher.close(0.0)
        assert dispatcher.join(WAIT_S)


# --------------------------------------------------------------------------------- kernel policy
def tree_files(root: Path) -> dict[str, str]:
    """Every file of the tree (the fake kernel's own memory aside) with its content."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(root))] = path.read_text(encoding="ascii")
    return out


def test_kernel_policy_on_a_real_board_writes_nothing(tmp_path: Path, nabu: LoadedModel) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    kernel.write_text(tree / CPUFREQ_REL / BIG / "scaling_max_freq", "1608000")
    kernel.write_text(tree / CPUFREQ_REL / BIG / "scaling_governor", "performance")
    before = tree_files(tree)
    state_dir = tmp_path / "state"
    policy = make_policy("kernel")
    assert isinstance(policy, KernelPolicy) and policy.hands_off
    board = open_board("sysfs:rk3399", sysfs_root=tree, state_dir=state_dir,
                       runtime_dir=tmp_path, hands_off=True)
    assert isinstance(board, HandsOffBoard)
    board.cpu_of_thread = lambda: 4  # the kernel ran it on a big CPU
    policy.measure_only()
    policy.reset(board.view)
    dispatcher = Dispatcher(board, policy, RequestQueue(levels=3), Metrics(CarbonAccount(500.0)),
                            pin_threads=True, idle_wait_s=0.01)
    answers: list[Outcome] = []
    done = threading.Event()

    def answer(out: Outcome) -> None:
        answers.append(out)
        done.set()

    req = InferRequest(model=NABU, request_id="k1",
                       inputs={NABU_IN: np.zeros((1, 3, 40), np.int8)},
                       outputs=(("StatefulPartitionedCall:0", True),), priority=2,
                       timeout_us=None, size_bytes=200)
    dispatcher.start()
    try:
        dispatcher.submit(Job(req=req, model=nabu, deadline_s=float("inf"), answer=answer))
        assert done.wait(WAIT_S)
    finally:
        dispatcher.close(0.0)
        assert dispatcher.join(WAIT_S)
        board.close()
    params = answers[0].parameters
    assert answers[0].outcome == "ok"
    assert (params["cluster_name"], params["freq_khz"]) == ("big", 1_608_000), "the kernel's OPP"
    assert params["energy_j"] > 0.0
    assert tree_files(tree) == before, "not one file of the tree changed"
    assert not state_dir.exists() or list(state_dir.iterdir()) == [], "no lease, no lock"
    assert board.control["mode"] == "hands_off"


def test_kernel_policy_models_the_stock_kernel_elsewhere() -> None:
    policy = make_policy("kernel")
    assert isinstance(policy, KernelPolicy) and policy.name == "kernel"
    assert type(policy.inner) is type(make_policy("schedutil"))
    schedutil = make_policy("schedutil")
    assert policy.tick_s == schedutil.tick_s
    assert policy.uses_task_util == bool(getattr(schedutil, "uses_task_util", False))
    with pytest.raises(PolicyError, match="takes no argument"):
        make_policy("kernel:x")


def test_kernel_policy_through_the_daemon_leaves_the_tree_alone(
        tmp_path: Path, start_daemon: object) -> None:
    tree, _ = thermal_tree(tmp_path / "sys")
    before = tree_files(tree)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS_DIR / f"{NABU}.tflite", models)
    d: Daemon = start_daemon(  # type: ignore[operator]
        config={"models": {"warmup_runs": 0, "measure_runs": 1}},
        args=("--board", "sysfs:rk3399", "--sysfs-root", str(tree), "--policy", "kernel",
              "--models", str(models)))
    with d.client() as c:
        res = c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)})
        status = c.status()
    assert res.parameters["outcome"] == "ok"
    assert status["policy"]["name"] == "kernel"
    assert status["board"]["control"]["mode"] == "hands_off"
    assert d.terminate() == 0
    assert tree_files(tree) == before
    assert not state_path(d.home / "state").exists()


def test_clamp_mode_under_a_cap_pins_at_the_cap(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    kernel.set_cooling_state(BIG_DEVICE, CAP_STATE)
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=kernel, mode="clamp")
    assert cf.set_khz(BIG, 1_800_000) == CAP_KHZ
    assert read_attr(tree, BIG, "scaling_governor") == "schedutil"
    assert read_attr(tree, BIG, "scaling_cur_freq") == str(CAP_KHZ)
    cf.close()
    kernel.set_cooling_state(BIG_DEVICE, 0)
    assert (read_attr(tree, BIG, "scaling_min_freq"),
            read_attr(tree, BIG, "scaling_max_freq")) == ("408000", "1800000")


def test_a_clamp_refused_midway_is_rolled_back(tmp_path: Path) -> None:
    tree, kernel = thermal_tree(tmp_path / "sys")
    faults = FaultInjector(kernel)
    faults.fail(f"{BIG}/scaling_max_freq", errno.EBUSY, times=1)
    cf = Cpufreq(tree, state_dir=tmp_path / "state", io=faults, mode="clamp")
    with pytest.raises(CpufreqRejectedError, match="rolled back"):
        cf.set_khz(BIG, 816_000)  # min written, max refused
    assert (read_attr(tree, BIG, "scaling_min_freq"),
            read_attr(tree, BIG, "scaling_max_freq")) == ("408000", "1800000")
    assert cf.set_khz(BIG, 816_000) == 816_000
    cf.close()


def test_a_hands_off_board_takes_no_other_policy(tmp_path: Path) -> None:
    """A hold, a reload or an admin switch to another policy on a board opened for ``kernel``
    is refused (its decisions would be dropped silently); ``kernel`` itself stays measure-only."""
    tree, _ = thermal_tree(tmp_path / "sys")
    before = tree_files(tree)
    board = open_board("sysfs:rk3399", sysfs_root=tree, state_dir=tmp_path / "state",
                       runtime_dir=tmp_path, hands_off=True)
    policy = make_policy("kernel")
    policy.measure_only()
    policy.reset(board.view)
    dispatcher = Dispatcher(board, policy, RequestQueue(levels=3), Metrics(CarbonAccount(500.0)),
                            idle_wait_s=0.01)
    try:
        with pytest.raises(PolicyError, match="hands-off"):
            dispatcher.set_policy(make_policy("performance"))
        again = make_policy("kernel")
        dispatcher.set_policy(again)
        assert dispatcher.policy is again and again.inner is None  # measure-only
    finally:
        board.close()
    assert tree_files(tree) == before
