"""Start-up errors of ``edgesched serve`` are one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_a_taken_tcp_port_is_a_clear_error(tmp_path: Path) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "edgesched", "serve", "--board", "virtual:rk3399",
             "--socket", str(tmp_path / "s.sock"), "--http-port", str(port),
             "--state-dir", str(tmp_path / "state"), "--runtime-dir", str(tmp_path / "run"),
             "--config", str(config)],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        holder.close()
    assert run.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "--http-port" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "s.sock").exists()  # the daemon's own socket went with it
