"""Integration: the daemon's lifecycle and overload behaviour, each on its own real process."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, START_LIMIT_S, Daemon, daemon_command, write_config

from edgesched.client import Client, encode_infer
from edgesched.errors import ClientError

HAND = "hand_landmark_lite"
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
HAND_X = np.zeros((1, 224, 224, 3), np.float32)


def _one_request(sock: str, priority: int) -> tuple[int, str, dict[str, str]]:
    """(status, outcome, headers) of one hand_landmark request on a fresh connection."""
    body, headers = encode_infer({"input_1": HAND_X}, priority=priority)
    with Client(sock) as c:
        try:
            status, msg, data = c.request("POST", f"/v2/models/{HAND}/infer", body, headers)
        except ClientError as exc:
            return exc.status, "connection", {}
    if status == 200:
        head = data[: int(msg["Inference-Header-Content-Length"])]
        return status, json.loads(head)["parameters"]["outcome"], dict(msg.items())
    return status, json.loads(data).get("outcome", ""), dict(msg.items())


def _infer_answer(s: socket.socket) -> tuple[int, str, dict[str, str]]:
    """(status, outcome, headers) of the answer to the infer request sent on ``s``."""
    head, body = _read_answer(s)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if status == 200:
        body = body[: int(headers["Inference-Header-Content-Length"])]
        return status, json.loads(body)["parameters"]["outcome"], headers
    return status, json.loads(body).get("outcome", ""), headers


def test_burst_fills_the_queue_and_every_request_is_answered(
        start_daemon: Callable[..., Daemon]) -> None:
    """48 requests that reach the daemon together and a queue of 2: some are refused with 429
    (or shed with 503), and every one gets exactly one answer. The burst is made one whatever
    the machine's speed: the daemon is stopped while every client connects and sends its (small)
    request into the socket, and each run lasts far longer than reading a request (a virtual
    board 5000 times slower than the host). Every request goes through the queue (no inline
    path)."""
    d = start_daemon(config={"queue": {"max_count": 2}, "board": {"virtual_slowdown": 5000.0},
                             "server": {"retry_after_s": 2.0, "inline_max_us": 0}},
                     args=("--board", "virtual:rk3399"), notify=True)
    n = 48
    requests = []
    for p in [3] * (n // 2) + [1] * (n // 2):
        body, headers = encode_infer({NABU_IN: np.zeros((1, 3, 40), np.int8)}, priority=p)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append(f"POST /v2/models/{NABU}/infer HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
    try:
        with _stopped(d.proc.pid):
            for s, request in zip(socks, requests, strict=True):
                s.settimeout(60)  # a safety net only: every wait below ends on data
                s.connect(d.socket)  # into the listen backlog: the daemon accepts nothing now
                s.sendall(request)  # a few hundred bytes: the socket's buffer holds them
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(_infer_answer, socks))
    finally:
        for s in socks:
            s.close()
    codes = Counter(status for status, _, _ in results)
    assert sum(codes.values()) == n
    assert set(codes) <= {200, 429, 503}, codes
    assert codes[429] >= 1, codes
    for status, outcome, headers in results:
        if status == 429:
            assert headers["Retry-After"] == "2"
        if status == 503:
            assert outcome == "shed" and headers["Retry-After"] == "2"
    with d.client() as c:
        totals = c.status()["requests"]
    answered = sum(totals["by_outcome"].values())
    assert answered == n == totals["received"]


def test_short_requests_read_together_are_all_answered_from_the_http_thread_path(
        start_daemon: Callable[..., Daemon]) -> None:
    """Requests that reach the daemon together (on connections it has accepted, sent while it
    is stopped, so that one turn of its loop reads them all) are queued, then served in the
    queue's order on the HTTP thread that read them, each being short enough to run inline:
    every one is answered once, with its own outputs, and the status counts the ones served
    there (before, the dispatcher thread served every request read together)."""
    d = start_daemon(config={"server": {"inline_max_us": 10_000_000}})
    n = 12
    requests = []
    for i, p in enumerate([3, 1, 2] * (n // 3)):
        x = np.full((1, 3, 40), i, np.int8)
        body, headers = encode_infer({NABU_IN: x}, priority=p, request_id=f"r{i}")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append(f"POST /v2/models/{NABU}/infer HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
    with d.client() as c:
        alone = {i: c.infer(NABU, {NABU_IN: np.full((1, 3, 40), i, np.int8)}).outputs
                 for i in range(n)}
        before = c.status()["served_inline"]
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:  # connected and accepted first: then read in one turn of the loop
            sock.settimeout(60)  # a safety net only: every wait below ends on data
            sock.connect(d.socket)
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answer(sock)[0].startswith(b"HTTP/1.1 200")
        with _stopped(d.proc.pid):
            for sock, request in zip(socks, requests, strict=True):
                sock.sendall(request)
        answers = [_read_answer(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    for i, (head, body) in enumerate(answers):
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"inference-header-content-length")))
        doc = json.loads(body[:length])
        assert doc["id"] == f"r{i}" and doc["parameters"]["outcome"] == "ok"
        out = doc["outputs"][0]
        data = np.frombuffer(body[length:length + out["parameters"]["binary_data_size"]],
                             dtype=np.uint8)
        assert data.tolist() == np.asarray(next(iter(alone[i].values()))).ravel().tolist()
    with d.client() as c:
        status = c.status()
    # the HTTP thread served them (all of them but for one of the dispatcher thread's 1 s
    # heartbeats falling inside the few milliseconds this takes: then it takes some too)
    assert before < status["served_inline"] <= before + n
    assert status["requests"]["received"] >= 2 * n


def test_sigterm_answers_every_request_in_flight(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(config={"server": {"shutdown_timeout_s": 0.0}})
    n = 16
    results: list[tuple[int, str, dict[str, str]]] = []
    lock = threading.Lock()

    def worker() -> None:
        r = _one_request(d.socket, 2)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    # every request reached a handler (admitted or answered) before the signal
    with d.client() as c:
        limit = time.monotonic() + START_LIMIT_S
        while c.status()["requests"]["received"] < n and time.monotonic() < limit:
            time.sleep(0.005)
        c.close()
    d.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert d.proc.wait(30) == 0
    assert len(results) == n
    for status, outcome, _ in results:
        assert (status, outcome) in {(200, "ok"), (503, "shutting_down")}, (status, outcome)
    assert not os.path.exists(d.socket)
    assert "stopping" in d.stderr()


def test_socket_activation_and_sd_notify(tmp_path: Path, start_daemon: Callable[..., Daemon],
                                         ) -> None:
    home = tmp_path / "act"
    home.mkdir()
    sock_path = str(home / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    notify_path = str(home / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(START_LIMIT_S)
    cfg = write_config(home / "config.toml", {"models": {"warmup_runs": 0, "measure_runs": 1}})
    serve = daemon_command(str(home / "unused.sock"), home, cfg, "--board", "none")
    # a tiny exec wrapper puts the socket at fd 3 and sets LISTEN_PID to the daemon's own pid
    wrapper = [sys.executable, "-c",
               "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); "
               "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
               "os.execv(sys.argv[2], sys.argv[2:])", str(listener.fileno()), *serve]
    try:
        d = start_daemon(home=home, command=wrapper, wait=False, pass_fds=(listener.fileno(),),
                         env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
        d.socket = sock_path
        messages: list[str] = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(notify.recv(4096).decode())
        assert messages[0].startswith("READY=1")
        listener.close()
        with d.client() as c:
            assert c.ready()
            res = c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)})
            assert res.parameters["outcome"] == "ok"
        assert not os.path.exists(home / "unused.sock")
        assert d.terminate() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(notify.recv(4096).decode())
    finally:
        notify.close()
        listener.close()


def test_socket_mode_and_group(start_daemon: Callable[..., Daemon]) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    d = start_daemon(config={"server": {"socket_group": group}})
    st = os.stat(d.socket)
    assert st.st_mode & 0o777 == 0o660 and st.st_gid == os.getgid()
    d2 = start_daemon(config={"server": {"socket_group": "no-such-group-xyz"}}, wait=False)
    assert d2.proc.wait(START_LIMIT_S) == 2
    assert "no group named 'no-such-group-xyz'" in d2.stderr()


def test_corrupt_model_is_reported_and_skipped(tmp_path: Path,
                                               start_daemon: Callable[..., Daemon]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS_DIR / f"{NABU}.tflite", models)
    (models / "broken.tflite").write_bytes(b"this is not a flatbuffer" * 10)
    d = start_daemon(args=("--models", str(models)))
    with d.client() as c:
        status = c.status()
        assert list(status["models"]) == [NABU]
        assert any("broken.tflite" in e for e in status["model_errors"])
        assert c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}).outputs
        with pytest.raises(ClientError) as err:
            c.model_metadata("broken")
        assert err.value.status == 404
    assert str(models / "broken.tflite") in d.stderr()


@pytest.mark.parametrize(("tables", "needle"), [
    ({"server": {"sockett": "x"}}, "unknown key server.'sockett'"),
    ({"queue": {"max_count": "many"}}, "queue.max_count: expected an integer"),
    ({"bogus": {"a": 1}}, "unknown table [bogus]"),
])
def test_bad_config_exits_with_a_message(start_daemon: Callable[..., Daemon],
                                         tables: dict[str, dict[str, object]],
                                         needle: str) -> None:
    d = start_daemon(config=tables, wait=False)
    assert d.proc.wait(START_LIMIT_S) == 2
    assert needle in d.stderr()


def test_missing_explicit_config_is_an_error(tmp_path: Path,
                                             start_daemon: Callable[..., Daemon]) -> None:
    cmd = daemon_command(str(tmp_path / "s.sock"), tmp_path, tmp_path / "missing.toml")
    d = start_daemon(command=cmd, wait=False)
    assert d.proc.wait(START_LIMIT_S) == 2
    assert "missing.toml: config file not found" in d.stderr()


def test_daemon_imports_no_torch_or_gymnasium(tmp_path: Path,
                                              start_daemon: Callable[..., Daemon]) -> None:
    cfg = write_config(tmp_path / "c.toml", {"models": {"warmup_runs": 0, "measure_runs": 1}})
    cmd = daemon_command(str(tmp_path / "s.sock"), tmp_path, cfg, "--board", "none")
    cmd.insert(1, "-Ximporttime")  # the real daemon lists every module it imports on stderr
    d = start_daemon(command=cmd, home=tmp_path)
    with d.client() as c:
        c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)})
    assert d.terminate() == 0
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in d.stderr().splitlines() if line.startswith("import time:")}
    assert "uvloop" in imported and "edgesched" in imported
    assert not imported & {"torch", "gymnasium", "stable_baselines3", "aiohttp", "ray"}


def test_virtual_board_emulates_the_chosen_frequency(
        tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    d = _steady_daemon(tmp_path / "virtual", start_daemon, "virtual:rk3399", "powersave-big")
    with d.client() as c:
        res = c.infer(HAND, {"input_1": HAND_X}, priority=1)
        status = c.status()
        metrics = c.metrics()
    p = res.parameters
    assert p["cluster_name"] == "big" and p["opp"] == 0 and p["freq_khz"] == 408_000
    assert p["service_us"] > p["host_us"]  # 408 MHz emulated: slower than the host
    assert (status["board"]["spec"] == "virtual:rk3399"
            and status["policy"]["name"] == "powersave-big")
    assert 'edgesched_cpu_frequency_khz{cluster="big"} 408000' in metrics
    assert d.terminate() == 0
    assert not [p for p in (d.home / "run").glob("virtual-*") if p.is_dir()], "tree removed"
    assert (d.home / "run" / "virtual-rk3399.lock").read_text() == "", "lock released"


def test_switch_interval_and_dispatcher_priority_are_applied(
        start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(config={"server": {"switch_interval_us": 350, "dispatcher_nice": -3}})
    with d.client() as c:
        doc = c.status()
    assert doc["switch_interval_us"] == 350
    if os.geteuid() == 0:  # a raise needs root, CAP_SYS_NICE or LimitNICE
        assert doc["dispatcher_nice"] == -3
    else:
        assert doc["dispatcher_nice"] in (-3, 0)
    assert d.terminate() == 0


def test_connections_past_the_limit_get_503_and_the_daemon_recovers(
        start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(config={"server": {"max_connections": 2, "retry_after_s": 3.0}})
    held = [Client(d.socket, timeout_s=30) for _ in range(2)]
    try:
        deadline = time.monotonic() + START_LIMIT_S
        for c in held:  # each keeps one open keep-alive connection (once the start-up
            while not c.live():  # readiness checks' connections are gone)
                assert time.monotonic() < deadline, "connection slots never freed"
                time.sleep(0.05)
        body, headers = encode_infer({"input_1": HAND_X}, priority=1)
        extra = Client(d.socket, timeout_s=30)
        status, msg, data = extra.request("POST", f"/v2/models/{HAND}/infer", body, headers)
        extra.close()
        assert status == 503 and msg["Retry-After"] == "3"
        doc = json.loads(data)
        assert doc["outcome"] == "too_many_connections" and "server.max_connections" in doc["error"]
    finally:
        for c in held:
            c.close()
    deadline = time.monotonic() + START_LIMIT_S
    while True:  # the daemon sees the two connections close, then serves again
        with Client(d.socket, timeout_s=30) as c:
            status, _, _ = c.request("GET", "/v2/health/live")
            if status == 200:
                res = c.infer(HAND, {"input_1": HAND_X}, priority=1)
                assert res.parameters["outcome"] == "ok"
                refused = c.status()["requests"]["connections_refused"]
                assert refused >= 1  # the extra one, and any poll that came too early
                text = c.metrics()
                assert f'edgesched_connections_refused_total{{listener="main"}} {refused}' in text
                break
        assert time.monotonic() < deadline, "still refusing after the held connections closed"
        time.sleep(0.05)
    assert d.terminate() == 0


def _read_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP answer from ``s``: (head, body), the body framed by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole body: {head!r} {body!r}"
        body += chunk
    assert len(body) == length, "nothing is sent past the answer"
    return head, body


# `edgesched serve` with the linger of refused connections injected (edgesched.server.gate)
LINGER = """
import sys
from edgesched.server import gate
from edgesched.server.app import serve
from edgesched.server.config import load_config, with_overrides

config, sock, home, linger_s = sys.argv[1:5]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": "none", "board.state_dir": home + "/state",
    "board.runtime_dir": home + "/run"})
gate.REFUSED_LINGER_S = float(linger_s)
sys.exit(serve(cfg))
"""


def test_refused_connections_linger_only_up_to_the_limit(
        tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """With one connection held at max_connections = 1, the first refused connection lingers
    (open until the client is done); the next ones, past the limit of lingering connections,
    are closed right after their answer. The linger is an hour, so the first one's cannot run
    out during the test however slow the machine is."""
    home = tmp_path / "linger"
    home.mkdir()
    (home / "launch.py").write_text(LINGER)
    # ready by sd_notify: no start-up readiness check holds the only connection slot
    d = start_daemon(home=home, config={"server": {"max_connections": 1}}, notify=True,
                     command=[sys.executable, str(home / "launch.py"), str(home / "config.toml"),
                              str(home / "s.sock"), str(home), "3600"])
    with Client(d.socket, timeout_s=30) as held:
        assert held.live()  # answered: the daemon counts this connection open
        socks = []
        try:
            for _ in range(3):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                socks.append(s)
                s.settimeout(30)  # a safety net only: every wait below ends on data or EOF
                s.connect(d.socket)
            for s in socks:  # each gets the whole 503 (lingering or not is decided with it)
                head, body = _read_answer(s)
                assert head.startswith(b"HTTP/1.1 503 ")
                assert json.loads(body)["outcome"] == "too_many_connections"
            first = socks[0]
            first.setblocking(False)
            with pytest.raises(BlockingIOError):  # open: neither more data nor the end
                first.recv(1)
            first.settimeout(30)
            for s in socks[1:]:
                assert s.recv(1) == b"", "past the lingering limit: closed after the answer"
            first.shutdown(socket.SHUT_WR)  # the client is done: the lingering one ends too
            assert first.recv(1) == b""
        finally:
            for s in socks:
                s.close()
    assert d.terminate() == 0


# run_daemon on asyncio's own event loop (`edgesched serve` runs on uvloop where installed)
ASYNCIO_LOOP = """
import asyncio, sys
from edgesched.server.app import run_daemon
from edgesched.server.config import load_config, with_overrides

config, sock, home = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": "none", "board.state_dir": home + "/state",
    "board.runtime_dir": home + "/run"})
sys.exit(asyncio.run(run_daemon(cfg)))
"""


def _process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (``T``: stopped), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """Process ``pid`` stopped (SIGSTOP, waited for) for the block, continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        while _process_state(pid) != "T":  # the stop is delivered asynchronously
            os.sched_yield()
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_burst_of_connections_is_served_only_up_to_the_limit(
        tmp_path: Path, start_daemon: Callable[..., Daemon], loop: str) -> None:
    """N > max_connections connections that all wait in the listen backlog at once (the daemon
    is stopped while they connect) are accepted in one round: exactly max_connections of them
    are served, every other one gets the 503 answer and is closed, never served. (asyncio's
    loop makes every protocol of the round before it tells any of them it is connected.)"""
    limit, burst = 3, 9
    config = {"server": {"max_connections": limit, "retry_after_s": 2.0}}
    # ready by sd_notify: no connection of the test's own is open when the burst arrives
    if loop == "uvloop":
        d = start_daemon(config=config, notify=True)
    else:
        home = tmp_path / "asyncio"
        home.mkdir()
        (home / "launch.py").write_text(ASYNCIO_LOOP)
        d = start_daemon(home=home, config=config, notify=True, command=[
            sys.executable, str(home / "launch.py"), str(home / "config.toml"),
            str(home / "s.sock"), str(home)])
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(burst)]
    try:
        with _stopped(d.proc.pid):
            for s in socks:  # queued in the listen backlog: the daemon accepts nothing now
                s.settimeout(30)  # a safety net only: every wait below ends on data or EOF
                s.connect(d.socket)
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        served, refused = [], []
        for s in socks:
            head, body = _read_answer(s)
            if head.startswith(b"HTTP/1.1 200 "):
                assert json.loads(body) == {"live": True}
                served.append(s)
                continue
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert b"\r\nRetry-After: 2\r\n" in head and b"\r\nConnection: close" in head
            assert json.loads(body)["outcome"] == "too_many_connections"
            s.shutdown(socket.SHUT_WR)  # done: the daemon closes its side, nothing more comes
            try:
                rest = s.recv(65536)
            except ConnectionResetError:  # closed at once with the request unread (past the
                rest = b""  # lingering limit): the answer came first, then the reset
            assert rest == b"", "a refused connection is closed, never served"
            refused.append(s)
        assert (len(served), len(refused)) == (limit, burst - limit)
        # the served connections are still open (kept alive): one of them asks for the count
        served[0].sendall(b"GET /v2/status HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _read_answer(served[0])
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body)["requests"]["connections_refused"] == burst - limit
    finally:
        for s in socks:
            s.close()
    assert d.terminate() == 0


def test_idle_connections_are_closed(start_daemon: Callable[..., Daemon]) -> None:
    """server.idle_timeout_s: a connection that sends nothing, and a kept-alive one after its
    request, are closed by the daemon (their place among max_connections is free again)."""
    d = start_daemon(config={"server": {"idle_timeout_s": 1.0}})
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    kept = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for s in (kept, silent):
            s.settimeout(30)
        kept.connect(d.socket)  # the request follows at once, well inside the idle timeout
        kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        silent.connect(d.socket)
        data = b""
        while b'{"live": true}' not in data:
            chunk = kept.recv(65536)
            assert chunk, f"closed before the whole answer: {data!r}"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
        assert silent.recv(1) == b"", "closed, not left open"
        assert kept.recv(1) == b""
    finally:
        silent.close()
        kept.close()
    assert d.terminate() == 0


# A host clock for run_daemon that moves step_s at each reading: every model run (timed by two
# readings, at start-up and per request) takes exactly step_s of host time, however loaded the
# machine is (a virtual board still waits out its emulated time on the real clock).
STEADY_HOST_CLOCK = """
import threading

class SteadyHost:
    def __init__(self, step_s):
        self.step_s = step_s
        self.now_s = 0.0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.now_s += self.step_s
            return self.now_s
"""

STEADY_HOST = STEADY_HOST_CLOCK + """
import asyncio, sys
from edgesched.server.app import run_daemon
from edgesched.server.config import load_config, with_overrides

config, sock, home, step_s, board, policy = sys.argv[1:7]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": board, "policy.spec": policy,
    "board.state_dir": home + "/state", "board.runtime_dir": home + "/run"})
sys.exit(asyncio.run(run_daemon(cfg, host_clock=SteadyHost(float(step_s)))))
"""
HOST_RUN_S = 0.002


def _steady_daemon(home: Path, start_daemon: Callable[..., Daemon], board: str, policy: str,
                   config: dict[str, dict[str, object]] | None = None) -> Daemon:
    """A daemon on ``board`` with ``policy`` whose model runs take HOST_RUN_S on the host."""
    home.mkdir()
    (home / "launch.py").write_text(STEADY_HOST)
    cmd = [sys.executable, str(home / "launch.py"), str(home / "config.toml"),
           str(home / "s.sock"), str(home), repr(HOST_RUN_S), board, policy]
    return start_daemon(home=home, command=cmd, config=config)


def test_a_slowed_virtual_board_sets_service_times_and_admission(
        tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """board.virtual_slowdown = 8: service at the top speed takes 8x the host's time, and the
    deadline check judges against that (a timeout of twice the host's time is infeasible)."""
    d = _steady_daemon(tmp_path / "slowed", start_daemon, "virtual:rk3399", "performance-big",
                       {"board": {"virtual_slowdown": 8.0}})
    with d.client() as c:
        res = c.infer(HAND, {"input_1": HAND_X}, priority=1)
        host_us = c.status()["models"][HAND]["service_us_startup"]
        with pytest.raises(ClientError) as refused:
            c.infer(HAND, {"input_1": HAND_X}, priority=1, timeout_us=int(2 * host_us))
    p = res.parameters
    assert p["host_us"] == round(HOST_RUN_S * 1e6)
    assert p["freq_khz"] == 1_800_000 and p["service_us"] > 4 * p["host_us"]
    assert refused.value.status == 400 and "deadline" in str(refused.value)
    assert d.terminate() == 0


CRASHING = STEADY_HOST_CLOCK + """
import asyncio, sys
from edgesched.server import dispatcher
from edgesched.server.app import run_daemon
from edgesched.server.config import load_config, with_overrides

config, sock, home = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": "none", "board.state_dir": home + "/state",
    "board.runtime_dir": home + "/run"})
context = dispatcher.Dispatcher._context

def failing_context(self, entry, job, now):  # a bug in the dispatcher, set off by one request
    if job.req.request_id == "crash":
        raise RuntimeError("simulated dispatcher bug")
    return context(self, entry, job, now)

dispatcher.Dispatcher._context = failing_context
# every run takes 200 us of host time: well inside inline_max_us however loaded the machine is
sys.exit(asyncio.run(run_daemon(cfg, host_clock=SteadyHost(0.0002))))
"""


def _crashing_daemon(home: Path, start_daemon: Callable[..., Daemon], inline_max_us: int,
                     ) -> Daemon:
    """A daemon whose dispatcher code fails on the request with id 'crash'."""
    home.mkdir()
    (home / "launch.py").write_text(CRASHING)
    cmd = [sys.executable, str(home / "launch.py"), str(home / "config.toml"),
           str(home / "s.sock"), str(home)]
    return start_daemon(home=home, command=cmd,
                        config={"server": {"inline_max_us": inline_max_us}})


def test_a_dispatcher_that_dies_answers_its_request_and_the_daemon_exits_1(
        tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    # no watchdog: the daemon checks by itself; nothing served inline, so the dispatcher thread
    # runs the request that sets off the bug
    d = _crashing_daemon(tmp_path / "crash", start_daemon, 0)
    x = {NABU_IN: np.zeros((1, 3, 40), np.int8)}
    with d.client() as c:
        assert c.infer(NABU, x).parameters["outcome"] == "ok"
        with pytest.raises(ClientError) as err:
            c.infer(NABU, x, request_id="crash")
    assert err.value.status == 500 and "the dispatcher stopped" in str(err.value)
    assert d.proc.wait(START_LIMIT_S) == 1, "a failure exit, so the service manager restarts it"
    log = d.stderr()
    assert "dispatcher crashed" in log and "the dispatcher stopped; exiting" in log


def test_a_bug_in_an_inline_run_answers_500_and_the_daemon_goes_on(
        tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    d = _crashing_daemon(tmp_path / "inline-crash", start_daemon, 5000)
    x = {NABU_IN: np.zeros((1, 3, 40), np.int8)}
    with d.client() as c:
        assert c.infer(NABU, x).parameters["outcome"] == "ok"
        with pytest.raises(ClientError) as err:
            c.infer(NABU, x, request_id="crash")
        assert c.infer(NABU, x).parameters["outcome"] == "ok"
        status = c.status()
    assert err.value.status == 500 and "internal error" in str(err.value)
    assert status["served_inline"] == 3, "the idle daemon took all three on the HTTP thread"
    assert status["requests"]["by_outcome"]["error"] == 1
    assert d.terminate() == 0
    assert "'crash' on the HTTP thread failed" in d.stderr()
