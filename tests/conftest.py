"""Shared fixtures: start the real daemon (``python -m edgesched serve``) on a socket in tmp."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgesched.client import Client
from edgesched.device import load_profile
from edgesched.errors import ClientError
from edgesched.observation import BoardView, Decision
from edgesched.power.board import RunCost
from edgesched.server.runner import shipped_models_dir

MODELS_DIR = shipped_models_dir()
START_LIMIT_S = 60.0
DatagramSocket = socket.socket  # Daemon.socket (a path) hides the module inside the class


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    home: Path
    port: int | None = None
    stderr_path: Path = field(default_factory=Path)

    def client(self, **kw: Any) -> Client:
        return Client(self.socket, **kw)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
            if os.path.exists(self.socket):
                with contextlib.suppress(ClientError), Client(self.socket, timeout_s=5) as c:
                    if c.ready():
                        return
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready after {START_LIMIT_S} s:\n{self.stderr()}")

    def wait_notified(self, notify: DatagramSocket) -> None:
        """Wait for the daemon's ``READY=1`` on ``notify`` (its NOTIFY_SOCKET): ready without
        a connection of the test's own, which the daemon might still count open when the test's
        first connection arrives. The short receive timeout only looks at the process now and
        then; the wait ends on the message."""
        deadline = time.monotonic() + START_LIMIT_S
        notify.settimeout(0.2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                if notify.recv(4096).startswith(b"READY=1"):
                    return
            except TimeoutError:
                continue
        raise RuntimeError(f"daemon not ready after {START_LIMIT_S} s:\n{self.stderr()}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def daemon_command(sock: str, home: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgesched", "serve", "--config", str(config),
            "--socket", sock, "--runtime-dir", str(home / "run"),
            "--state-dir", str(home / "state"), *extra]


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Factory: ``start_daemon(config={...}, args=[...], wait=True, http=False)``.

    ``notify=True``: wait for the daemon's sd_notify ``READY=1`` instead of asking it over its
    socket (see :meth:`Daemon.wait_notified`), for tests that count connections; with
    ``http=True`` it is the default (the TCP port opens after the unix socket answers)."""
    started: list[Daemon] = []

    def start(config: Mapping[str, Mapping[str, Any]] | None = None,
              args: tuple[str, ...] = (), wait: bool = True, http: bool = False,
              home: Path | None = None, env: Mapping[str, str] | None = None,
              pass_fds: tuple[int, ...] = (), command: list[str] | None = None,
              notify: bool = False) -> Daemon:
        return _start(home or tmp_path / f"d{len(started)}", started, config, args, wait,
                      http, env, pass_fds, command, notify=notify)

    yield start
    for d in started:
        d.terminate()


PORT_ATTEMPTS = 3
"""A free port is only free until someone binds it: another test run on the machine may take
it between :func:`free_port` and the daemon's bind; the daemon is then started on another."""


def _start(home: Path, started: list[Daemon], config: Mapping[str, Mapping[str, Any]] | None,
           args: tuple[str, ...], wait: bool, http: bool, env: Mapping[str, str] | None,
           pass_fds: tuple[int, ...], command: list[str] | None, *, notify: bool = False,
           ) -> Daemon:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _start_once(home, started, config, args, wait, http, env, pass_fds, command,
                               notify)
        except RuntimeError as exc:
            if not (http and "address already in use" in str(exc)) or attempt == PORT_ATTEMPTS:
                raise
            started.pop().terminate()
    raise AssertionError("unreachable")


def _start_once(home: Path, started: list[Daemon],
                config: Mapping[str, Mapping[str, Any]] | None, args: tuple[str, ...],
                wait: bool, http: bool, env: Mapping[str, str] | None,
                pass_fds: tuple[int, ...], command: list[str] | None, notify: bool) -> Daemon:
    home.mkdir(parents=True, exist_ok=True)
    tables: dict[str, dict[str, Any]] = {"models": {"warmup_runs": 1, "measure_runs": 3}}
    for name, table in (config or {}).items():
        tables.setdefault(name, {}).update(table)
    port = None
    if http:
        port = free_port()
        tables.setdefault("server", {})["http_port"] = port
    cfg = write_config(home / "config.toml", tables)
    sock = str(home / "s.sock")
    cmd = command or daemon_command(sock, home, cfg, "--board", "none", *args)
    err_path = home / "stderr.log"
    full_env = {**os.environ, **(env or {})}
    with contextlib.ExitStack() as stack:
        listener: socket.socket | None = None
        # READY=1 comes once every listener is open: the unix socket answers before the TCP
        # port listens, so a daemon with a port waits for it too
        if wait and (notify or (http and "NOTIFY_SOCKET" not in full_env)):
            notify_path = home / "notify.sock"
            notify_path.unlink(missing_ok=True)
            listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            listener.bind(str(notify_path))
            full_env["NOTIFY_SOCKET"] = str(notify_path)
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=full_env,
                                    pass_fds=pass_fds)
        d = Daemon(proc=proc, socket=sock, home=home, port=port, stderr_path=err_path)
        started.append(d)
        if listener is not None:
            d.wait_notified(listener)
        elif wait:
            d.wait_ready()
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for a whole module: board none, TCP port on, 4 MB body limit."""
    home = tmp_path_factory.mktemp("daemon")
    started: list[Daemon] = []
    d = _start(home, started, {"server": {"max_body_bytes": 4 << 20}}, (), True, True, None,
               (), None)
    yield d
    assert d.terminate() == 0


def wait_for_status(d: Daemon, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the daemon's status until ``ok`` holds (a generous deadline, never a timed
    assertion: the condition is what is checked)."""
    limit = time.monotonic() + START_LIMIT_S
    with d.client() as c:
        while True:
            doc = c.status()
            if ok(doc):
                return doc
            if time.monotonic() > limit or d.proc.poll() is not None:
                raise AssertionError(f"{what}: not reached; status {json.dumps(doc)[:2000]}\n"
                                     f"{d.stderr()[-3000:]}")
            time.sleep(0.02)


# ------------------------------------------------------------ in-process dispatcher tests
class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class BoardTime:
    """A board's clock for the virtual board: its waits advance it instead of sleeping."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, s: float) -> None:
        self.now_s += s


class GatedBoard:
    """A board whose ``settle`` blocks until the test opens the gate (one run at a time)."""

    host_scale = 1.0

    def __init__(self) -> None:
        self.profile = load_profile("rk3399")
        self.view = BoardView.of(self.profile)
        self.opps = [0 for _ in self.profile.clusters]
        self.applied: list[Decision] = []
        self.running = threading.Event()
        self.gate = threading.Semaphore(0)
        self.closed = False

    def current_opps(self) -> list[int]:
        return list(self.opps)

    def apply(self, decision: Decision) -> float:
        self.applied.append(decision)
        self.opps[decision.cluster] = decision.opp
        return 0.0

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        return ()

    def longest_run_s(self, top_s: float) -> float:
        return top_s * 4.0

    def settle(self, decision: Decision, host_s: float, started_s: float, *,
               reference_s: float | None = None) -> RunCost:
        self.running.set()
        assert self.gate.acquire(timeout=30)
        self.running.clear()
        return RunCost(wall_s=0.002, energy_j=0.5)

    def close(self) -> None:
        self.closed = True
