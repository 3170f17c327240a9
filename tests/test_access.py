"""Admin endpoints and who may call them: SO_PEERCRED of the unix socket peer, the admin group,
TCP peers refused; no path from a request to a file outside the models (or policy) folder.

Tests run as root, so the refusal path runs a real daemon whose user lookup is injected: a small
launcher calls ``run_daemon(cfg, identity_lookup=...)`` mapping every peer to an ordinary user."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS_DIR, Daemon, StartDaemon

from edgesched.client import Client
from edgesched.errors import ClientError
from edgesched.server.access import AdminGate, Identity, Peer, peer_of, system_identity

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
FACE = "face_detection_short_range"

LAUNCHER = """
import asyncio, sys
from edgesched.server.access import Identity
from edgesched.server.app import run_daemon
from edgesched.server.config import load_config, with_overrides

config, sock, home, groups = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": "none", "board.state_dir": home + "/state",
    "board.runtime_dir": home + "/run"})

def lookup(uid, gid):
    return Identity(uid=1000, name="alice", groups=frozenset(["alice", *groups.split(",")]))

sys.exit(asyncio.run(run_daemon(cfg, identity_lookup=lookup)))
"""


def start_as_alice(start_daemon: StartDaemon, tmp_path: Path, groups: str,
                   config: dict[str, dict[str, Any]] | None = None) -> Daemon:
    home = tmp_path / f"alice-{groups or 'none'}"
    home.mkdir()
    launcher = home / "launch.py"
    launcher.write_text(LAUNCHER)
    cmd = [sys.executable, str(launcher), str(home / "config.toml"), str(home / "s.sock"),
           str(home), groups]
    return start_daemon(config=config, home=home, command=cmd)


def admin(c: Client, path: str, doc: Any = None) -> tuple[int, dict[str, Any]]:
    body = b"" if doc is None else json.dumps(doc).encode()
    status, _, data = c.request("POST", f"/v2/admin/{path}", body,
                                {"Content-Type": "application/json"})
    return status, json.loads(data)


def nabu(c: Client) -> str:
    return str(c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}).parameters["outcome"])


# ------------------------------------------------------------------------------- the gate alone
def test_peer_credentials_of_a_unix_socket() -> None:
    import os

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = peer_of(a)
    assert peer == Peer("unix", os.getpid(), os.getuid(), os.getgid())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        assert peer_of(t).transport == "tcp"
    assert peer_of(None).transport == "unknown"


def test_gate_decisions() -> None:
    def user(groups: str) -> Any:
        return lambda uid, gid: Identity(1000, "alice", frozenset(groups.split(",")))

    unix = Peer("unix", 42, 1000, 1000)
    assert AdminGate(lookup=system_identity).check(Peer("unix", 1, 0, 0)).allowed  # root
    refused = AdminGate("ops", lookup=user("alice,users")).check(unix)
    assert not refused.allowed and "'alice'" in refused.reason and "'ops'" in refused.reason
    assert AdminGate("ops", lookup=user("alice,ops")).check(unix).allowed
    assert not AdminGate("", lookup=user("alice,ops")).check(unix).allowed  # no group: root only
    assert not AdminGate("ops", lookup=user("ops")).check(Peer("tcp")).allowed
    assert AdminGate(allow_tcp=True).check(Peer("tcp")).allowed
    assert not AdminGate("ops").check(Peer("unknown")).allowed

    def broken(uid: int, gid: int) -> Identity:
        raise OSError("nss down")

    verdict = AdminGate("ops", lookup=broken).check(unix)
    assert not verdict.allowed and "nss down" in verdict.reason


def test_system_identity_of_root() -> None:
    ident = system_identity(0, 0)
    assert ident.uid == 0 and ident.name == "root" and "root" in ident.groups


# ------------------------------------------------------------------------------- real daemon
def test_root_switches_policy_while_requests_run(start_daemon: StartDaemon) -> None:
    d = start_daemon()
    outcomes: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    serving = threading.Event()  # the worker's first answer came: requests run from now on

    def load() -> None:
        try:
            with d.client() as c:
                for _ in range(2000):
                    if stop.is_set():
                        break
                    outcomes.append(nabu(c))
                    serving.set()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            serving.set()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        serving.wait()
        with d.client() as c:
            for spec in ("performance", "powersave", "ondemand", "conservative", "schedutil",
                         "performance"):
                status, doc = admin(c, "policy", {"policy": spec})
                assert status == 200, doc
                assert doc["spec"] == spec
                assert c.status()["policy"]["spec"] == spec
            assert c.status()["policy"]["name"] == "performance"
    finally:
        stop.set()
        worker.join(60)
    assert not errors and outcomes and set(outcomes) == {"ok"}


@pytest.mark.parametrize(("doc", "status", "needle"), [
    ({"policy": "nonsense"}, 400, "unknown policy"),
    ({"policy": ""}, 400, "invalid policy spec"),
    ({"policy": 3}, 400, "SPEC a string"),
    ({}, 400, "SPEC a string"),
    ({"policy": "schedutil", "extra": 1}, 400, "unknown field"),
    ({"policy": "performance:x"}, 400, "takes no argument"),
    ({"policy": "learned:../../etc/passwd"}, 403, "policy.dir"),
    ({"policy": "qlearn:/etc/shadow"}, 403, "policy.dir"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_policy_requests(daemon: Daemon, doc: Any, status: int, needle: str) -> None:
    with daemon.client() as c:
        got, body = admin(c, "policy", doc)
        assert got == status and needle in body["error"], body
        assert c.status()["policy"]["spec"] == "schedutil"
        assert nabu(c) == "ok"


def test_policy_files_only_from_policy_dir(start_daemon: StartDaemon, tmp_path: Path) -> None:
    pol = tmp_path / "policies"
    pol.mkdir()
    (tmp_path / "outside.npz").write_bytes(b"not a policy")
    (pol / "bad.npz").write_bytes(b"not a policy")
    d = start_daemon(config={"policy": {"dir": str(pol)}})
    with d.client() as c:
        for spec in ("learned:../outside", "learned:../outside.npz", f"learned:{tmp_path}/outside",
                     "learned:../../../../etc/passwd", "qlearn:/etc/passwd"):
            got, body = admin(c, "policy", {"policy": spec})
            assert got == 403 and "outside policy.dir" in body["error"], (spec, body)
        got, body = admin(c, "policy", {"policy": "learned:bad"})
        assert got == 400 and "cannot use policy" in body["error"], body
        assert c.status()["policy"]["spec"] == "schedutil"


def test_non_admin_is_refused_everything(start_daemon: StartDaemon, tmp_path: Path) -> None:
    d = start_as_alice(start_daemon, tmp_path, "users", {"server": {"admin_group": "ops"}})
    with d.client() as c:
        for path, doc in (("policy", {"policy": "performance"}), ("models/reload", None),
                          ("restore", None)):
            status, body = admin(c, path, doc)
            assert status == 403, body
            assert "'alice'" in body["error"] and "'ops'" in body["error"]
        assert c.status()["policy"]["spec"] == "schedutil"
        assert nabu(c) == "ok"  # inference stays open to anyone who can connect


def test_admin_group_member_is_allowed(start_daemon: StartDaemon, tmp_path: Path) -> None:
    d = start_as_alice(start_daemon, tmp_path, "ops", {"server": {"admin_group": "ops"}})
    with d.client() as c:
        status, body = admin(c, "policy", {"policy": "powersave"})
        assert status == 200 and body["previous"] == "schedutil", body
        status, body = admin(c, "restore")
        assert status == 200 and body["restored"] is False, body


def test_tcp_peers_are_refused_unless_configured(start_daemon: StartDaemon) -> None:
    d = start_daemon(http=True)
    with Client(port=d.port) as c:
        for path in ("policy", "models/reload", "restore"):
            status, body = admin(c, path, {"policy": "performance"})
            assert status == 403 and "over TCP" in body["error"], body
        assert c.status()["policy"]["spec"] == "schedutil"
    d2 = start_daemon(http=True, config={"server": {"admin_over_tcp": True}})
    with Client(port=d2.port) as c:
        status, body = admin(c, "policy", {"policy": "performance"})
        assert status == 200, body


def test_reload_takes_no_path_and_picks_up_new_models(start_daemon: StartDaemon,
                                                       tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS_DIR / f"{NABU}.tflite", models)
    d = start_daemon(config={"models": {"dir": str(models)}})
    with d.client() as c:
        status, body = admin(c, "models/reload", {"dir": "/etc"})
        assert status == 400 and "takes no parameters" in body["error"]
        with pytest.raises(ClientError) as err:
            c.model_metadata(FACE)
        assert err.value.status == 404
        shutil.copy(MODELS_DIR / f"{FACE}.tflite", models)
        (models / "broken.tflite").write_bytes(b"garbage")
        status, body = admin(c, "models/reload")
        assert status == 200, body
        assert body["added"] == ["face_detection_short_range"] and body["model_errors"]
        res = c.infer(FACE, {"input": np.zeros((1, 128, 128, 3), np.float32)})
        assert res.parameters["outcome"] == "ok"
        for p in models.iterdir():
            p.unlink()
        status, body = admin(c, "models/reload")
        assert status == 409 and "stay" in body["error"]
        assert nabu(c) == "ok"


@pytest.mark.parametrize("name", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                                  "%2Fetc%2Fpasswd", "..", "okay_nabu.tflite"])
def test_model_names_never_reach_files(daemon: Daemon, name: str) -> None:
    with daemon.client() as c:
        for method, path in (("GET", f"/v2/models/{name}"),
                             ("POST", f"/v2/models/{name}/infer")):
            status, _, data = c.request(method, path, b"{}")
            assert status == 404, data
            assert b"root:" not in data and json.loads(data)["error"]


def test_restore_on_the_virtual_board(start_daemon: StartDaemon) -> None:
    d = start_daemon(args=("--board", "virtual:rk3399", "--policy", "powersave"))
    with d.client() as c:
        assert nabu(c) == "ok"  # the policy has changed a frequency by now
        status, body = admin(c, "restore")
        assert status == 200 and body["restored"] is True, body
        assert nabu(c) == "ok"
        status, body = admin(c, "restore")
        assert status == 200, body


def test_a_shipped_policy_can_be_chosen_by_name_without_policy_dir(daemon: Daemon) -> None:
    with daemon.client() as c:
        got, body = admin(c, "policy", {"policy": "learned:rk3399"})
        assert got == 200, body
        assert c.status()["policy"]["spec"] == "learned:rk3399"
        assert nabu(c) == "ok"
        got, body = admin(c, "policy", {"policy": "learned:no-such-shipped-policy"})
        assert got == 403 and "policy.dir" in body["error"], body
