"""The README's quick start runs as written, and ``status --wait`` waits for a starting daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgesched.commands.status import wait_ready

ROOT = Path(__file__).resolve().parents[1]


def quick_start_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the quick start has no sh block"
    return block.group(1).rstrip("\n").split("\n")


def test_status_wait_gives_up_after_its_time_without_a_daemon(tmp_path: Path) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert not wait_ready(str(tmp_path / "none.sock"), 1.0, clock=lambda: now[0], sleep=sleep)
    assert now[0] >= 1.0


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    lines = quick_start_lines()
    # the first line makes the venv and installs: the test's own environment stands in for it
    assert lines[0].startswith("python3 -m venv .venv")
    assert lines[1] == ". .venv/bin/activate"
    # whatever happens, the background daemon goes with the script (its pipes would keep the
    # test waiting)
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(lines[2:]).replace(
        "/tmp/", f"{tmp_path}/")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert '"outcome": "ok"' in run.stdout
    assert '"name": "okay_nabu"' in run.stdout
    assert '"ready": true' in run.stdout
