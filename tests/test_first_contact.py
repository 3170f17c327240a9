"""First contact: a second ``serve`` on a live socket, inline queue waits, policy specs that
cannot be used, shipped policies by name (from any folder and from a built wheel).

Real daemons on real unix sockets; readiness is the daemon's own ``/v2/health/ready``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import START_LIMIT_S, StartDaemon, daemon_command, write_config

from edgesched.cli import main
from edgesched.errors import ConfigError, PolicyError
from edgesched.policy.learned import LearnedPolicy
from edgesched.policy.registry import make_policy, open_policy

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("rk3399", "generic")
MODEL_LOADED = "model okay_nabu:"
"""The daemon's log line for a loaded model (what a start refused early never prints)."""


def _serve(home: Path, sock: str, *args: str, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    """``edgesched serve`` expected to stop on its own (a refused start)."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = write_config(home / "config.toml", {"models": {"warmup_runs": 1, "measure_runs": 3}})
    cmd = daemon_command(sock, home, cfg, "--board", "none", *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=START_LIMIT_S,
                          cwd=cwd)


# ------------------------------------------------------------------------------ defect 1
def test_a_second_serve_on_a_live_socket_leaves_the_first_reachable(
        start_daemon: StartDaemon, tmp_path: Path) -> None:
    first = start_daemon()
    lane = Path(first.socket).with_name("s-priority.sock")
    assert lane.exists()
    second = _serve(tmp_path / "second", first.socket)
    assert second.returncode != 0
    assert "another daemon is already listening" in second.stderr
    assert os.path.exists(first.socket) and lane.exists()  # the refused daemon removed neither
    with first.client(timeout_s=10) as c:
        assert c.ready()
    assert first.proc.poll() is None
    assert MODEL_LOADED not in second.stderr  # refused before the models were loaded
    assert first.terminate() == 0
    assert not os.path.exists(first.socket) and not lane.exists()  # its own files: removed


def test_a_bad_board_is_reported_before_the_models_load(tmp_path: Path) -> None:
    res = _serve(tmp_path, str(tmp_path / "x.sock"), "--board", "virtual:nosuchboard")
    assert res.returncode != 0 and "nosuchboard" in res.stderr
    assert MODEL_LOADED not in res.stderr
    assert not (tmp_path / "x.sock").exists()


# ------------------------------------------------------------------------------ defect 2
def test_an_inline_request_reports_a_queue_wait_of_zero(start_daemon: StartDaemon) -> None:
    d = start_daemon(config={"server": {"inline_max_us": 10_000_000}})
    with d.client(timeout_s=30) as c:
        meta = c.model_metadata("okay_nabu")
        x = {t["name"]: np.zeros(t["shape"], dtype=np.float32 if t["datatype"] == "FP32"
                                 else np.int8) for t in meta["inputs"]}
        before = c.status()["served_inline"]
        res = c.infer("okay_nabu", x, priority=2)
        after = c.status()["served_inline"]
    assert after == before + 1  # served on the HTTP thread: it never entered the queue
    p = res.parameters
    assert p["queue_wait_us"] == 0
    for key in ("service_us", "host_us", "daemon_us"):
        assert p[key] >= 0
    # everything happened within the request's time in the daemon (rounding: 1 us)
    assert p["host_us"] <= p["daemon_us"] + 1


# ------------------------------------------------------------------------------ defect 3
@pytest.mark.parametrize("spec", ["nosuch", "lerned:policies/rk3399.npz", "schedutl"])
def test_serve_with_an_unknown_policy_stops_naming_the_valid_specs(tmp_path: Path,
                                                                   spec: str) -> None:
    sock = tmp_path / "x.sock"
    res = _serve(tmp_path, str(sock), "--policy", spec)
    assert res.returncode == 2
    err = res.stderr
    assert f"cannot use policy {spec!r}" in err
    for valid in ("schedutil", "performance", "learned:NAME|PATH", "learned:rk3399",
                  "policy.fallback"):
        assert valid in err
    assert MODEL_LOADED not in err and "serving" not in err  # stopped before loading models
    assert not sock.exists()


def test_a_relative_policy_path_names_the_folder_it_was_resolved_against(tmp_path: Path) -> None:
    res = _serve(tmp_path / "home", str(tmp_path / "x.sock"), "--policy",
                 "learned:policies/rk3399.npz", cwd=tmp_path)
    assert res.returncode == 2
    assert f"resolved against {tmp_path}" in res.stderr
    assert "learned:rk3399" in res.stderr and MODEL_LOADED not in res.stderr


def test_the_fallback_runs_only_when_the_config_asks_for_it(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    with pytest.raises(PolicyError, match="valid specs"):
        open_policy("learned:nosuch")
    with caplog.at_level("WARNING"):
        assert open_policy("learned:nosuch", "performance").name == "performance"
    assert "falling back to performance" in caplog.text
    from edgesched.server.config import load_config

    assert load_config(None).policy.fallback == ""
    bad = tmp_path / "c.toml"
    bad.write_text('[policy]\nfallback = "learned:rk3399"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy\.fallback"):
        load_config(bad)


def test_shipped_policies_resolve_by_name_from_any_folder(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from edgesched.policy.registry import resolve_learned_path, shipped_policies

    monkeypatch.chdir(tmp_path)
    assert set(SHIPPED) <= set(shipped_policies())
    for name in SHIPPED:
        path = resolve_learned_path(name)
        assert path.name == f"{name}.npz" and path.is_absolute()
        policy = make_policy(f"learned:{name}")
        assert isinstance(policy, LearnedPolicy)


def test_serve_learned_rk3399_from_another_folder(start_daemon: StartDaemon, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the daemon inherits this working directory
    d = start_daemon(args=("--board", "virtual:rk3399", "--policy", "learned:rk3399"))
    with d.client() as c:
        st = c.status()
    assert st["policy"]["spec"] == "learned:rk3399"
    assert st["policy"]["name"] not in ("schedutil", "performance")
    assert "falling back" not in d.stderr()


def test_demo_refuses_a_mistyped_policy_before_running_any(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    rc = main(["demo", "--board", "none", "--duration-s", "1", "--clients", "1",
               "--policies", "performance,schedutl"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "policy performance" not in out and "schedutl" not in out  # no table was run
    assert "cannot use policy 'schedutl'" in err and "learned:rk3399" in err


def test_eval_refuses_a_mistyped_policy_with_the_same_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "--device", "rk3399", "--scenario", "steady-light", "--duration-s", "1",
               "--policy", "schedutil", "--policy", "schedutl"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "cannot use policy 'schedutl'" in err
    for valid in ("oracle", "learned:NAME|PATH", "learned:rk3399"):
        assert valid in err
    from edgesched.policy.registry import check_specs

    check_specs(["oracle", "qlearn", "learned:rk3399"], builtin=("oracle", "qlearn"))


# ------------------------------------------------------------------------------ the wheel
def test_the_wheel_ships_the_policies_and_loads_them_by_name(tmp_path: Path) -> None:
    """Build the wheel from a copy of the project (nothing is written into the work tree),
    then load ``learned:rk3399`` from the unpacked wheel, in another folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.eval.png", "*.eval.json")
    for name in ("edgesched", "sim", "policies"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path / "whl"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("edgesched-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in SHIPPED:
            assert f"edgesched/data/policies/{name}.npz" in names
            assert f"edgesched/data/policies/{name}.json" in names
        site = tmp_path / "site"
        zf.extractall(site)
    probe = ("import edgesched, edgesched.policy.registry as r; p = r.make_policy('learned:rk3399');"
             " print(edgesched.__file__); print(r.resolve_learned_path('rk3399')); print(p.name)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert run.returncode == 0, run.stderr
    module, path, _name = run.stdout.split("\n")[:3]
    assert Path(module).is_relative_to(site)  # the unpacked wheel, not the work tree
    assert Path(path) == site / "edgesched" / "data" / "policies" / "rk3399.npz"


def test_a_daemon_removes_only_the_socket_file_it_bound(tmp_path: Path) -> None:
    """A socket file that another daemon bound at the same path since is left alone."""
    import socket

    from edgesched.server.app import _remove_own_socket, _socket_file_id

    path = tmp_path / "s.sock"
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.bind(str(path))
    ident = _socket_file_id(path)
    path.unlink()  # gone (e.g. removed by hand), and a new daemon binds the path
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(str(path))
    try:
        _remove_own_socket(*ident)
        assert path.exists()
        _remove_own_socket(*_socket_file_id(path))
        assert not path.exists()
    finally:
        ours.close()
        theirs.close()
