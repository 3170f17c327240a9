"""What the benches share: start a real daemon process and wait for it, stop it, and run
client processes in parallel. Imported by the bench scripts (run as ``python bench/NAME.py``)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgesched.client import Client

READY_LIMIT_S = 60.0


def start_daemon(home: Path, *, config: str = "", board: str = "virtual:rk3399",
                 policy: str = "schedutil", sock_name: str = "bench.sock",
                 log_level: str = "warning") -> tuple[subprocess.Popen[bytes], str]:
    """``edgesched serve`` in ``home`` with ``config`` (TOML text); returns (process, socket)
    once it answers ready. Exits the bench with a message if it does not."""
    sock = str(home / sock_name)
    cfg = home / f"{Path(sock_name).stem}.toml"
    cfg.write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesched", "serve", "--config", str(cfg), "--socket", sock,
         "--board", board, "--policy", policy, "--runtime-dir", str(home / "run"),
         "--state-dir", str(home / "state"), "--log-level", log_level],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    limit = time.monotonic() + READY_LIMIT_S
    while time.monotonic() < limit:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}")
        if os.path.exists(sock):
            try:
                with Client(sock, timeout_s=5) as c:
                    if c.ready():
                        return proc, sock
            except Exception:
                pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the daemon did not become ready")


def stop_daemon(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parallel_rate(target: Callable[..., None], sock: str, clients: int, seconds: float) -> float:
    """Requests/s of ``clients`` processes each running ``target(sock, seconds, barrier, queue)``,
    which waits on the barrier, works for ``seconds`` and puts its request count on the queue."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    barrier = ctx.Barrier(clients)
    procs = [ctx.Process(target=target, args=(sock, seconds, barrier, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds
