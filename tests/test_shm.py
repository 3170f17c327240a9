"""Triton's system shared-memory extension against the real daemon on a real unix socket: regions
made by tritonclient's own helpers (``tritonclient.utils.shared_memory``), registered and used
over HTTP; the checks (bounds, unknown region, twice, missing key, ownership) and a region
unregistered while a request uses it, synchronised through FIFOs, never sleeps."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.utils.shared_memory as tshm
from conftest import Daemon

from edgesched.client import Client, InferResult, SharedMemorySession
from edgesched.errors import AdmissionError, ClientError
from edgesched.server.access import Identity, Peer
from edgesched.server.shm import SharedMemoryRegistry

FACE = "face_detection_short_range"
FACE_IN = 1 * 128 * 128 * 3 * 4
REG_BYTES = 1 * 896 * 16 * 4
CLS_BYTES = 1 * 896 * 1 * 4
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
ON = {"server": {"shared_memory": True}}


def face_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 128, 128, 3), dtype=np.float32)


def shm(name: str, at: int, size: int) -> dict[str, Any]:
    return {"shared_memory_region": name, "shared_memory_offset": at,
            "shared_memory_byte_size": size}


def face_body(region_in: str, region_out: str, in_at: int = 0, in_size: int = FACE_IN,
              request_id: str = "") -> bytes:
    doc: dict[str, Any] = {
        "id": request_id,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 128, 128, 3],
                    "parameters": shm(region_in, in_at, in_size)}],
        "outputs": [{"name": "regressors", "parameters": shm(region_out, 0, REG_BYTES)},
                    {"name": "classificators",
                     "parameters": shm(region_out, REG_BYTES, CLS_BYTES)}]}
    return json.dumps(doc).encode()


def post(c: Client, path: str, doc: Any = None) -> tuple[int, dict[str, Any] | list[Any]]:
    body = b"" if doc is None else json.dumps(doc).encode()
    status, _, data = c.request("POST", path, body, {"Content-Type": "application/json"})
    return status, json.loads(data) if data else {}


def get(c: Client, path: str) -> tuple[int, Any]:
    status, _, data = c.request("GET", path)
    return status, json.loads(data)


def infer_raw(c: Client, body: bytes, model: str = FACE) -> tuple[int, dict[str, Any]]:
    status, _, data = c.request("POST", f"/v2/models/{model}/infer", body,
                                {"Content-Type": "application/json"})
    return status, json.loads(data)


@pytest.fixture
def regions() -> Iterator[Callable[[int], tuple[Any, str, str]]]:
    """Factory: ``regions(byte_size) -> (handle, name, key)`` made by tritonclient's helpers,
    destroyed (unlinked) at the end."""
    made: list[Any] = []

    def make(byte_size: int) -> tuple[Any, str, str]:
        tag = uuid.uuid4().hex[:10]
        name, key = f"r{tag}", f"/edgesched-test-{tag}"
        handle = tshm.create_shared_memory_region(name, key, byte_size)
        made.append(handle)
        return handle, name, key

    yield make
    for handle in made:
        with contextlib.suppress(Exception):
            tshm.destroy_shared_memory_region(handle)


def _register(c: Client, name: str, key: str, size: int, offset: int = 0) -> None:
    status, doc = post(c, f"/v2/systemsharedmemory/region/{name}/register",
                       {"key": key, "offset": offset, "byte_size": size})
    assert status == 200, doc


def _face_regions(c: Client, regions: Callable[[int], tuple[Any, str, str]],
                  x: np.ndarray) -> tuple[Any, str, Any, str]:
    hin, nin, kin = regions(FACE_IN)
    hout, nout, kout = regions(REG_BYTES + CLS_BYTES)
    tshm.set_shared_memory_region(hin, [x])
    _register(c, nin, kin, FACE_IN)
    _register(c, nout, kout, REG_BYTES + CLS_BYTES)
    return hin, nin, hout, nout


# ------------------------------------------------------------------------------ off
def test_off_by_default_every_endpoint_says_which_key(start_daemon: Callable[..., Daemon],
                                                      regions: Any) -> None:
    d = start_daemon()
    _, name, key = regions(FACE_IN)
    with d.client() as c:
        assert "system_shared_memory" not in c.server_metadata()["extensions"]
        answers = [get(c, "/v2/systemsharedmemory/status"),
                   get(c, f"/v2/systemsharedmemory/region/{name}/status"),
                   post(c, f"/v2/systemsharedmemory/region/{name}/register",
                        {"key": key, "offset": 0, "byte_size": FACE_IN}),
                   post(c, f"/v2/systemsharedmemory/region/{name}/unregister"),
                   post(c, "/v2/systemsharedmemory/unregister"),
                   infer_raw(c, face_body(name, name))]
        plain = c.infer(FACE, {"input": face_input()})
    for status, doc in answers:
        assert status == 403 and "server.shared_memory = true" in doc["error"]  # type: ignore
    assert plain.parameters["outcome"] == "ok"


# ------------------------------------------------------------------------------ on
def test_tritonclient_regions_give_a_plain_infers_answer(start_daemon: Callable[..., Daemon],
                                                         regions: Any) -> None:
    d = start_daemon(config=ON)
    x = face_input(3)
    with d.client() as c:
        assert "system_shared_memory" in c.server_metadata()["extensions"]
        hin, nin, hout, nout = _face_regions(c, regions, x)
        status, listed = get(c, "/v2/systemsharedmemory/status")
        assert status == 200
        assert {r["name"]: r for r in listed}[nin] == {
            "name": nin, "key": hin._shm_key, "offset": 0, "byte_size": FACE_IN}
        status, one = get(c, f"/v2/systemsharedmemory/region/{nout}/status")
        assert status == 200 and [r["name"] for r in one] == [nout]
        status, doc = infer_raw(c, face_body(nin, nout, request_id="s1"))
        plain = c.infer(FACE, {"input": x})
        # the outputs are in the region; the answer names them and carries no data
        assert status == 200, doc
        assert doc["id"] == "s1" and doc["parameters"]["outcome"] == "ok"
        by_name = {o["name"]: o for o in doc["outputs"]}
        assert by_name["regressors"] == {"name": "regressors", "datatype": "FP32",
                                         "shape": [1, 896, 16],
                                         "parameters": shm(nout, 0, REG_BYTES)}
        assert "data" not in by_name["classificators"]
        reg = tshm.get_contents_as_numpy(hout, np.float32, [1, 896, 16])
        cls = tshm.get_contents_as_numpy(hout, np.float32, [1, 896, 1], offset=REG_BYTES)
        np.testing.assert_array_equal(reg, plain.outputs["regressors"])
        np.testing.assert_array_equal(cls, plain.outputs["classificators"])
        # an input by shared memory with outputs as binary data in the answer
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                       "shape": [1, 128, 128, 3],
                                       "parameters": shm(nin, 0, FACE_IN)}]}).encode()
        status, mixed = infer_raw(c, body)
        assert status == 200
        got = {o["name"]: np.asarray(o["data"], np.float32) for o in mixed["outputs"]}
        np.testing.assert_array_equal(got["regressors"], plain.outputs["regressors"].ravel())
        status, _ = post(c, f"/v2/systemsharedmemory/region/{nin}/unregister")
        assert status == 200
        status, left = get(c, "/v2/systemsharedmemory/status")
        assert [r["name"] for r in left] == [nout]
        assert post(c, "/v2/systemsharedmemory/unregister")[0] == 200
        assert get(c, "/v2/systemsharedmemory/status") == (200, [])
    assert d.terminate() == 0


def test_bad_regions_get_4xx_and_lose_no_other_request(start_daemon: Callable[..., Daemon],
                                                       regions: Any) -> None:
    d = start_daemon(config=ON)
    x = face_input(5)
    n_good = 24
    good: list[InferResult | Exception] = []
    go = threading.Event()

    def steady() -> None:  # plain requests on their own connection, interleaved with the bad
        with d.client() as c:
            go.wait(60)
            for _ in range(n_good):
                try:
                    good.append(c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}))
                except ClientError as exc:
                    good.append(exc)

    worker = threading.Thread(target=steady)
    worker.start()
    with d.client() as c:
        _, nin, _, nout = _face_regions(c, regions, x)
        _, small, small_key = regions(4096)
        _register(c, small, small_key, 4096)
        go.set()
        bad = {
            "outside the region": infer_raw(c, face_body(nin, nout, in_at=8)),
            "wrong byte size": infer_raw(c, face_body(nin, nout, in_size=FACE_IN - 4)),
            "unknown region": infer_raw(c, face_body("no-such-region", nout)),
            "output region too small": infer_raw(c, face_body(nin, small)),
            "data and region": infer_raw(c, json.dumps({"inputs": [{
                "name": "input", "datatype": "FP32", "shape": [1, 128, 128, 3],
                "data": [0.0], "parameters": shm(nin, 0, FACE_IN)}]}).encode()),
            "region without size": infer_raw(c, json.dumps({"inputs": [{
                "name": "input", "datatype": "FP32", "shape": [1, 128, 128, 3],
                "parameters": {"shared_memory_region": nin}}]}).encode()),
            "registered twice": post(c, f"/v2/systemsharedmemory/region/{nin}/register",
                                     {"key": small_key, "offset": 0, "byte_size": 64}),
            "missing key": post(c, "/v2/systemsharedmemory/region/x/register",
                                {"key": "/edgesched-test-missing", "offset": 0,
                                 "byte_size": 64}),
            "past the object's end": post(c, "/v2/systemsharedmemory/region/x2/register",
                                          {"key": small_key, "offset": 4000, "byte_size": 200}),
            "unknown status": get(c, "/v2/systemsharedmemory/region/nope/status"),
            "unknown unregister": post(c, "/v2/systemsharedmemory/region/nope/unregister"),
        }
        ok, doc = infer_raw(c, face_body(nin, nout))
        worker.join(120)
        status = c.status()
    expected = {"outside the region": (400, "outside region"),
                "wrong byte size": (400, "needs 196608"),
                "unknown region": (400, "no system shared memory region 'no-such-region'"),
                "output region too small": (400, "outside region"),
                "data and region": (400, "not both"),
                "region without size": (400, "needs both"),
                "registered twice": (409, "already registered"),
                "missing key": (400, "no shared memory object"),
                "past the object's end": (400, "past the end"),
                "unknown status": (404, "no system shared memory region 'nope'"),
                "unknown unregister": (404, "no system shared memory region 'nope'")}
    for what, (code, text) in expected.items():
        got_code, got_doc = bad[what]
        assert got_code == code and text in got_doc["error"], (what, bad[what])  # type: ignore
    assert ok == 200 and doc["parameters"]["outcome"] == "ok"
    assert len(good) == n_good and all(isinstance(r, InferResult) for r in good), good
    assert status["requests"]["by_outcome"].get("ok", 0) >= n_good + 1
    assert d.terminate() == 0


# --------------------------------------------------------------------- unregister mid-flight
HOLDING = """
import asyncio, sys
from edgesched.server import dispatcher
from edgesched.server.app import run_daemon
from edgesched.server.config import load_config, with_overrides

config, sock, home = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = with_overrides(load_config(config), {
    "server.socket": sock, "board.spec": "none", "board.state_dir": home + "/state",
    "board.runtime_dir": home + "/run"})
context = dispatcher.Dispatcher._context

def holding_context(self, entry, job, now):  # request 'hold' waits, running, for the test
    if job.req.request_id == "hold":
        with open(home + "/running", "wb") as f:
            f.write(b"1")
        with open(home + "/release", "rb") as f:
            f.read(1)
    return context(self, entry, job, now)

dispatcher.Dispatcher._context = holding_context
sys.exit(asyncio.run(run_daemon(cfg)))
"""


def _mapped(pid: int, key: str) -> bool:
    return any(key.lstrip("/") in line for line in Path(f"/proc/{pid}/maps").read_text()
               .splitlines())


def test_a_region_unregistered_mid_flight_stays_mapped_until_its_request_ends(
        tmp_path: Path, start_daemon: Callable[..., Daemon], regions: Any) -> None:
    home = tmp_path / "hold"
    home.mkdir()
    (home / "launch.py").write_text(HOLDING)
    os.mkfifo(home / "running")
    os.mkfifo(home / "release")
    cmd = [sys.executable, str(home / "launch.py"), str(home / "config.toml"),
           str(home / "s.sock"), str(home)]
    # inline off: the held request waits on the dispatcher thread, the event loop goes on
    d = start_daemon(home=home, command=cmd,
                     config={"server": {"shared_memory": True, "inline_max_us": 0}})
    x = face_input(7)
    held: list[tuple[int, dict[str, Any]]] = []
    with d.client() as c:
        _, nin, hout, nout = _face_regions(c, regions, x)
        key_in = {r["name"]: r["key"] for r in get(c, "/v2/systemsharedmemory/status")[1]}[nin]

        def send_held() -> None:
            with d.client() as held_client:
                held.append(infer_raw(held_client, face_body(nin, nout, request_id="hold")))

        sender = threading.Thread(target=send_held)
        sender.start()
        with open(home / "running", "rb") as f:  # the request runs, its regions acquired
            assert f.read(1) == b"1"
        assert post(c, f"/v2/systemsharedmemory/region/{nin}/unregister")[0] == 200
        later = infer_raw(c, face_body(nin, nout))
        assert get(c, "/v2/systemsharedmemory/status")[1] == [
            {"name": nout, "key": hout._shm_key, "offset": 0,
             "byte_size": REG_BYTES + CLS_BYTES}]
        assert _mapped(d.proc.pid, key_in), "the running request keeps its region mapped"
        with open(home / "release", "wb") as f:
            f.write(b"1")
        sender.join(60)
        plain = c.infer(FACE, {"input": x})  # through the dispatcher, after the held one
        mapped_after = _mapped(d.proc.pid, key_in)
    assert later[0] == 400 and f"no system shared memory region {nin!r}" in later[1]["error"]
    assert held[0][0] == 200 and held[0][1]["parameters"]["outcome"] == "ok"
    np.testing.assert_array_equal(tshm.get_contents_as_numpy(hout, np.float32, [1, 896, 16]),
                                  plain.outputs["regressors"])
    assert not mapped_after, "unmapped once the last request using it ended"
    assert d.terminate() == 0


# ------------------------------------------------------------------------------ ownership
@pytest.fixture
def shm_object(regions: Any) -> tuple[str, str]:
    """(name, key) of a 4 KiB object owned by the test's user (root here)."""
    _, name, key = regions(4096)
    return name, key


def test_regions_belong_to_the_peer_uid_that_registered_them(shm_object: tuple[str, str],
                                                             tmp_path: Path) -> None:
    name, key = shm_object
    users = {1000: Identity(1000, "alice", frozenset({"alice"})),
             1001: Identity(1001, "bob", frozenset({"bob", "edge"}))}
    reg = SharedMemoryRegistry(group="", lookup=lambda uid, gid: users[uid])
    root, alice = Peer("unix", 1, 0, 0), Peer("unix", 2, 1000, 1000)
    try:
        with pytest.raises(AdmissionError) as other:  # root's object: not alice's to map
            reg.register(alice, "a", {"key": key, "offset": 0, "byte_size": 64})
        assert other.value.status == 403 and "belongs to uid 0" in other.value.reason
        reg.register(root, name, {"key": key, "offset": 0, "byte_size": 4096})
        for call in (lambda: reg.acquire(alice, name), lambda: reg.unregister(alice, name),
                     lambda: reg.status(alice, name)):
            with pytest.raises(AdmissionError) as refused:
                call()
            assert refused.value.status == 403 and "only that user or root" in refused.value.reason
        assert reg.status(alice, None) == [] and reg.unregister(alice, None) == []
        assert [r["name"] for r in reg.status(root, None)] == [name]
        with pytest.raises(AdmissionError) as tcp:
            reg.admit(Peer("tcp"))
        assert tcp.value.status == 403 and "unix socket" in tcp.value.reason
        grouped = SharedMemoryRegistry(group="edge", lookup=lambda uid, gid: users[uid])
        assert grouped.admit(Peer("unix", 3, 1001, 1001)).uid == 1001
        with pytest.raises(AdmissionError) as outsider:
            grouped.admit(alice)
        assert outsider.value.status == 403 and "server.shared_memory_group" in \
            outsider.value.reason
        assert reg.unregister(root, name) == [name]
    finally:
        reg.close()


# ------------------------------------------------------------------------------ the client
def test_client_session_and_cli_clean_up(start_daemon: Callable[..., Daemon],
                                         tmp_path: Path) -> None:
    d = start_daemon(config=ON)
    x = face_input(9)
    before = set(os.listdir("/dev/shm"))
    with d.client() as c:
        plain = c.infer(FACE, {"input": x})
        with SharedMemorySession(c, FACE) as session:
            assert [r["name"] for r in c.get_system_shared_memory_status()] == [session.name]
            first = session.infer({"input": x}, priority=1)
            second = session.infer({"input": face_input(10)})
        one_shot = c.infer_shm(FACE, {"input": x})
        with pytest.raises(ClientError) as refused:  # refused by the daemon, still cleaned up
            c.infer_shm(FACE, {"input": np.full((1, 128, 128, 3), np.nan, np.float32)})
        assert c.get_system_shared_memory_status() == []
    assert refused.value.status == 400 and "NaN" in refused.value.reason
    for res in (first, one_shot):
        np.testing.assert_array_equal(res.outputs["regressors"], plain.outputs["regressors"])
    assert not np.array_equal(second.outputs["regressors"], first.outputs["regressors"])
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-m", "edgesched", "infer", FACE, "--shm",
                          "--input", str(tmp_path / "x.npy"), "--socket", d.socket,
                          "--output", str(tmp_path / "out.npz")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_array_equal(saved["regressors"], plain.outputs["regressors"])
    assert set(os.listdir("/dev/shm")) == before, "every object unlinked"
    assert d.terminate() == 0
