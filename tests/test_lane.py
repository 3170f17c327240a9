"""The priority lane: a second socket served by its own thread and event loop, so requests that
arrive there are read and answered even while the main socket's event loop is saturated."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import START_LIMIT_S, Daemon, StartDaemon, daemon_command, write_config

from edgesched.client import Client
from edgesched.errors import ClientError

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"

# run_daemon, plus SIGUSR1: the main event loop blocks (writes BLOCKED, waits for RELEASE)
LAUNCHER = """
import asyncio, os, signal, sys, time
from edgesched.server.app import run_daemon
from edgesched.server.config import load_config, with_overrides

config, sock, home = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": "none", "board.state_dir": home + "/state",
    "board.runtime_dir": home + "/run"})

def block():
    open(home + "/BLOCKED", "w").close()
    while not os.path.exists(home + "/RELEASE"):
        time.sleep(0.01)

async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, block)
    return await run_daemon(cfg)

sys.exit(asyncio.run(main()))
"""


def lane_of(d: Daemon) -> str:
    return str(Path(d.socket).with_name("s-priority.sock"))


def nabu(c: Client, priority: int = 1) -> dict[str, object]:
    return c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}, priority=priority).parameters


def wait_for_file(path: Path, d: Daemon) -> None:
    import time

    limit = time.monotonic() + START_LIMIT_S
    while not path.exists():
        assert d.proc.poll() is None and time.monotonic() < limit, d.stderr()
        time.sleep(0.01)


def test_the_lane_serves_inference_and_health_only(start_daemon: StartDaemon) -> None:
    d = start_daemon()
    lane = lane_of(d)
    st = os.stat(lane)
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o660
    with d.client() as c:
        assert c.status()["priority_socket"] == lane
    with Client(lane) as c:
        assert c.ready() and c.live()
        assert c.model_metadata(NABU)["name"] == NABU
        params = nabu(c)
        assert params["outcome"] == "ok" and params["priority"] == 1
        assert nabu(c, priority=3)["priority"] == 3, "the request's priority is kept"
        for method, path in (("GET", "/v2/status"), ("GET", "/metrics"),
                             ("POST", "/v2/admin/restore")):
            status, _, data = c.request(method, path)
            assert status == 404 and b"on the main socket" in data, (path, data)
    with d.client() as c:
        assert c.status()["requests"]["by_outcome"]["ok"] == 2
    assert d.terminate() == 0
    assert not os.path.exists(lane) and not os.path.exists(d.socket)


def test_the_lane_can_be_turned_off_or_placed(start_daemon: StartDaemon, tmp_path: Path) -> None:
    d = start_daemon(config={"server": {"priority_socket": ""}})
    assert not os.path.exists(lane_of(d))
    with d.client() as c:
        assert c.status()["priority_socket"] is None
    placed = tmp_path / "critical.sock"
    d2 = start_daemon(config={"server": {"priority_socket": str(placed)}})
    with Client(str(placed)) as c:
        assert nabu(c)["outcome"] == "ok"
    assert d2.terminate() == 0 and not placed.exists()


def test_cli_infer_through_the_lane(start_daemon: StartDaemon, tmp_path: Path) -> None:
    import json
    import subprocess

    lane = tmp_path / "api-priority.sock"  # where --lane looks for --socket api.sock
    start_daemon(config={"server": {"priority_socket": str(lane)}})
    (tmp_path / "a.json").write_text(json.dumps({NABU_IN: [[[0] * 40] * 3]}))
    cmd = [sys.executable, "-m", "edgesched", "infer", NABU, "--input", str(tmp_path / "a.json"),
           "--priority", "1", "--socket", str(tmp_path / "api.sock")]  # no daemon there
    out = subprocess.run([*cmd, "--lane"], capture_output=True, check=True, timeout=60)
    assert json.loads(out.stdout)["parameters"]["outcome"] == "ok"
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode != 0


def test_a_lane_that_cannot_be_bound(start_daemon: StartDaemon, tmp_path: Path) -> None:
    # named explicitly: the daemon stops with the reason
    (tmp_path / "a-file").write_text("")
    d = start_daemon(config={"server": {"priority_socket": str(tmp_path / "a-file/x.sock")}},
                     wait=False)
    assert d.proc.wait(START_LIMIT_S) == 2
    assert "server.priority_socket" in d.stderr()
    # "auto" next to a socket whose name leaves no room for the suffix: served without a lane
    home = tmp_path / "h"
    home.mkdir()
    long_sock = home / ("s" * (100 - len(str(home))) + ".sock")
    assert len(str(long_sock)) < 108 <= len(str(long_sock)) + len("-priority")
    cfg = write_config(home / "long.toml", {"models": {"warmup_runs": 0, "measure_runs": 1}})
    d3 = start_daemon(home=home, command=daemon_command(str(long_sock), home, cfg, "--board",
                                                        "none"), wait=False)
    d3.socket = str(long_sock)
    d3.wait_ready()
    with d3.client() as c:
        assert c.status()["priority_socket"] is None
        assert nabu(c)["outcome"] == "ok"
    assert "no priority lane" in d3.stderr()


def test_the_lane_answers_while_the_main_loop_is_blocked(start_daemon: StartDaemon,
                                                         tmp_path: Path) -> None:
    home = tmp_path / "blocked"
    home.mkdir()
    (home / "launch.py").write_text(LAUNCHER)
    cmd = [sys.executable, str(home / "launch.py"), str(home / "config.toml"),
           str(home / "s.sock"), str(home)]
    d = start_daemon(home=home, command=cmd)
    d.proc.send_signal(signal.SIGUSR1)
    wait_for_file(home / "BLOCKED", d)
    try:
        with Client(str(home / "s.sock"), timeout_s=0.5) as c, pytest.raises(
                (TimeoutError, socket.timeout, ClientError)):
            c.ready()  # the main loop cannot answer: it is blocked until RELEASE exists
        with Client(lane_of(d), timeout_s=START_LIMIT_S) as c:
            assert c.ready()
            assert nabu(c)["outcome"] == "ok"
    finally:
        (home / "RELEASE").touch()
    with d.client() as c:
        assert c.ready()
    assert d.terminate() == 0


def test_socket_activation_passes_the_lane(start_daemon: StartDaemon, tmp_path: Path) -> None:
    home = tmp_path / "act"
    home.mkdir()
    listeners = []
    for name in ("api.sock", "api-priority.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(home / name))
        s.listen(16)
        listeners.append(s)
    cfg = write_config(home / "activated.toml", {  # start_daemon writes config.toml
        "models": {"warmup_runs": 0, "measure_runs": 1},
        "server": {"socket": str(home / "api.sock")}})
    serve = [sys.executable, "-m", "edgesched", "serve", "--config", str(cfg), "--board", "none",
             "--runtime-dir", str(home / "run"), "--state-dir", str(home / "state")]
    # the sockets at fds 3 and 4, LISTEN_PID set to the daemon's own pid
    wrapper = [sys.executable, "-c",
               "import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); "
               "os.dup2(a, 3); os.dup2(b, 4); "
               "os.environ.update(LISTEN_FDS='2', LISTEN_PID=str(os.getpid())); "
               "os.execv(sys.argv[3], sys.argv[3:])",
               *(str(s.fileno()) for s in listeners), *serve]
    try:
        d = start_daemon(home=home, command=wrapper, wait=False,
                         pass_fds=tuple(s.fileno() for s in listeners))
        d.socket = str(home / "api.sock")
        d.wait_ready()
        with d.client() as c:
            assert c.status()["priority_socket"] == str(home / "api-priority.sock")
        with Client(str(home / "api-priority.sock")) as c:
            assert nabu(c)["outcome"] == "ok"
            assert c.request("GET", "/v2/status")[0] == 404
        assert d.terminate() == 0
    finally:
        for s in listeners:
            s.close()


def test_the_lane_has_its_own_connection_limit(start_daemon: StartDaemon) -> None:
    # ready by sd_notify: no start-up readiness check holds a connection of its own
    d = start_daemon(config={"server": {"max_connections": 1}}, notify=True)
    # the lane's one connection, idle after one answer: the answer proves the lane's loop has
    # taken it, so the next connection cannot be accepted in the same round (both would be
    # handed out before either is counted open)
    held = Client(lane_of(d))
    try:
        assert held.live()
        with Client(lane_of(d)) as c:
            status, _, data = c.request("GET", "/v2/health/live")
        assert status == 503 and b"too_many_connections" in data
        with d.client() as c:  # the main socket counts its own connections
            assert c.live()
            doc = c.status()
            text = c.metrics()
    finally:
        held.close()
    assert doc["requests"]["connections_refused_by_listener"] == {"priority": 1}
    assert doc["requests"]["connections_refused"] == 1
    assert 'edgesched_connections_refused_total{listener="priority"} 1' in text
    assert doc["priority_lane_nice"] in (-10, 0)  # -10 where the daemon may raise it
