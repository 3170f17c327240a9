"""The shipped systemd units: required keys by parsing, and systemd-analyze when it exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
MAX_EXPOSURE = 2.0
HARDENING_SECTION = "# --- identity ---"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order; repeated keys kept, as systemd reads them."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}: expected one value, got {found}"
    return found[0]


def test_service_has_the_required_keys() -> None:
    unit = parse_unit(SYSTEMD / "edgesched.service")
    u, s = unit["Unit"], unit["Service"]
    conflicts = " ".join(values(u, "Conflicts")).split()
    assert {"power-profiles-daemon.service", "tuned.service",
            "auto-cpufreq.service"} <= set(conflicts)
    assert one(s, "Type") == "notify"
    assert re.fullmatch(r"\d+s?", one(s, "WatchdogSec"))
    assert one(s, "ExecStart") == "/usr/bin/edgesched serve --config /etc/edgesched/config.toml"
    assert one(s, "ExecStopPost") == "/usr/bin/edgesched restore"
    assert one(s, "NoNewPrivileges") == "yes"
    assert one(s, "ProtectSystem") == "strict"
    assert one(s, "CapabilityBoundingSet") == ""
    assert not values(s, "ProtectKernelTunables"), "cpufreq lives under /sys"
    assert "/sys/devices/system/cpu" in one(s, "ReadWritePaths").split()
    assert one(s, "User") == "edgesched"


def test_every_hardening_line_has_a_comment() -> None:
    lines = (SYSTEMD / "edgesched.service").read_text(encoding="utf-8").splitlines()
    start = lines.index(HARDENING_SECTION)
    end = lines.index("[Install]")
    for i in range(start, end):
        line = lines[i].strip()
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_socket_is_group_only() -> None:
    sock = parse_unit(SYSTEMD / "edgesched.socket")["Socket"]
    from edgesched.server.config import Config, priority_socket_path

    server = Config().server
    # the main socket and the priority lane, at the paths the daemon's defaults give them
    assert values(sock, "ListenStream") == [server.socket, str(priority_socket_path(server))]
    assert one(sock, "SocketMode") == "0660"
    assert one(sock, "SocketGroup") == "edgesched"


def test_sysusers_and_tmpfiles() -> None:
    users = [ln.split() for ln in (SYSTEMD / "edgesched.sysusers.conf").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert users and users[0][:2] == ["u", "edgesched"]
    entries = [ln.split() for ln in (SYSTEMD / "edgesched.tmpfiles.conf").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert all(len(e) == 6 for e in entries), "Type Path Mode User Group Age"
    paths = {e[1]: e for e in entries}
    assert paths["/run/edgesched"][0] == "d"
    for attr in ("scaling_governor", "scaling_setspeed", "scaling_min_freq", "scaling_max_freq"):
        e = paths[f"/sys/devices/system/cpu/cpufreq/policy*/{attr}"]
        assert e[0] == "z" and e[2] == "0664" and e[4] == "edgesched"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart must name an existing executable for verify: point it at this environment's
    exe = shutil.which("edgesched") or str(Path(sys.executable).with_name("edgesched"))
    if not Path(exe).exists():
        exe = shutil.which("true") or "/bin/true"
    for name in ("edgesched.service", "edgesched.socket"):
        text = (SYSTEMD / name).read_text().replace("/usr/bin/edgesched", exe)
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / "edgesched.service"), str(tmp_path / "edgesched.socket")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_security_exposure() -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(SYSTEMD / "edgesched.service")],
                          capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE
