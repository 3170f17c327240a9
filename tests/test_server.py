"""Integration: the real daemon process on a real unix socket (and 127.0.0.1 TCP), real models,
driven by the bundled client, curl and tritonclient."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS_DIR, Daemon

from edgesched.client import Client, encode_infer
from edgesched.errors import ClientError
from edgesched.server.runner import load_model

FACE = "face_detection_short_range"
HAND = "hand_landmark_lite"
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
RESULT_PARAMS = {"queue_wait_us", "service_us", "freq_khz", "opp", "cluster", "energy_j",
                 "outcome", "host_us", "daemon_us"}


def face_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 128, 128, 3), dtype=np.float32)


def curl(daemon: Daemon, path: str, *args: str) -> tuple[int, str]:
    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("these tests drive the daemon with curl: apt-get install curl")
    out = subprocess.run([exe, "-sS", "--unix-socket", daemon.socket, "-w", "\n%{http_code}",
                          *args, f"http://localhost{path}"], capture_output=True, check=True,
                         timeout=60)
    body, _, code = out.stdout.decode().rpartition("\n")
    return int(code), body


# ------------------------------------------------------------------------------- metadata
def test_health_and_server_metadata(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.live() and c.ready()
        meta = c.server_metadata()
    assert meta["name"] == "edgesched"
    assert {"binary_tensor_data", "schedule_policy"} <= set(meta["extensions"])


def test_model_metadata(daemon: Daemon) -> None:
    with daemon.client() as c:
        face = c.model_metadata(FACE)
        nabu = c.model_metadata(NABU)
        hand = c.model_metadata(HAND)
    assert face["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 128, 128, 3]}]
    assert {o["name"]: o["shape"] for o in face["outputs"]} == {
        "regressors": [1, 896, 16], "classificators": [1, 896, 1]}
    assert nabu["inputs"][0] == {"name": NABU_IN, "datatype": "INT8", "shape": [1, 3, 40]}
    assert nabu["outputs"][0]["datatype"] == "UINT8"
    assert len(hand["outputs"]) == 4


def test_model_ready_and_unknown(daemon: Daemon) -> None:
    with daemon.client() as c:
        status, _, _ = c.request("GET", f"/v2/models/{FACE}/ready")
        assert status == 200
        status, _, body = c.request("GET", "/v2/models/nope/ready")
        assert status == 404 and "unknown model" in json.loads(body)["error"]


# ------------------------------------------------------------------------------- good infer
def test_infer_binary_matches_a_local_interpreter(daemon: Daemon) -> None:
    x = face_input()
    with daemon.client() as c:
        res = c.infer(FACE, {"input": x}, priority=1, timeout_us=10_000_000, request_id="r1")
    assert res.request_id == "r1" and res.model == FACE
    assert set(res.parameters) >= RESULT_PARAMS
    assert res.parameters["outcome"] == "ok"
    assert res.parameters["energy_j"] > 0 and res.parameters["freq_khz"] > 0
    # from the first bytes read to the answer: the inference and the daemon's own work
    assert 0 < res.parameters["host_us"] < res.parameters["daemon_us"] < 10_000_000
    local = load_model(MODELS_DIR / f"{FACE}.tflite", warmup_runs=0, measure_runs=1)
    want = local.run({"input": x})
    for name, arr in want.items():
        np.testing.assert_allclose(res.outputs[name], arr, rtol=1e-4, atol=1e-4)


def test_infer_json_tensors_and_int8(daemon: Daemon) -> None:
    x = np.zeros((1, 3, 40), dtype=np.int8)
    with daemon.client() as c:
        res = c.infer(NABU, {NABU_IN: x}, binary=False)
        res_hand = c.infer(HAND, {"input_1": np.zeros((1, 224, 224, 3), np.float32)})
    out = res.outputs["StatefulPartitionedCall:0"]
    assert out.shape == (1, 1) and out.dtype == np.uint8
    assert res.parameters["priority"] == 2  # the configured default class
    assert {"Identity", "Identity_1", "Identity_2", "Identity_3"} == set(res_hand.outputs)


def test_curl_form_urlencoded_body_is_parsed_as_json(daemon: Daemon, tmp_path: Path) -> None:
    body = {"id": "curl-1", "inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                                        "data": [1] * 120}],
            "parameters": {"priority": 1, "timeout": 5_000_000}}
    req = tmp_path / "req.json"
    req.write_text(json.dumps(body))
    code, text = curl(daemon, f"/v2/models/{NABU}/infer", "-d", f"@{req}")
    assert code == 200, text
    doc = json.loads(text)
    assert doc["id"] == "curl-1" and doc["parameters"]["outcome"] == "ok"
    assert doc["outputs"][0]["shape"] == [1, 1]
    code, text = curl(daemon, "/v2/health/ready")
    assert code == 200


def test_curl_binary_extension_request(daemon: Daemon, tmp_path: Path) -> None:
    body, headers = encode_infer({NABU_IN: np.ones((1, 3, 40), np.int8)}, priority=1)
    req = tmp_path / "req.bin"
    req.write_bytes(body)
    hdr = ["-H", f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}"]
    code, text = curl(daemon, f"/v2/models/{NABU}/infer", "--data-binary", f"@{req}", *hdr)
    assert code == 200
    assert "binary_data_size" in text


def test_tritonclient_http(daemon: Daemon) -> None:
    http = pytest.importorskip("tritonclient.http")
    assert daemon.port is not None
    client = http.InferenceServerClient(url=f"127.0.0.1:{daemon.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(FACE)
        meta = client.get_model_metadata(FACE)
        assert meta["inputs"][0]["datatype"] == "FP32"
        x = face_input(1)
        for binary in (True, False):
            inp = http.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [http.InferRequestedOutput("classificators", binary_data=binary)]
            res = client.infer(FACE, [inp], outputs=outs, priority=1, timeout=5_000_000,
                               request_id="t1")
            assert res.as_numpy("classificators").shape == (1, 896, 1)
            resp = res.get_response()
            assert resp["id"] == "t1"
            assert resp["parameters"]["outcome"] == "ok"
        # no outputs named: tritonclient asks for all of them as binary
        res = client.infer(FACE, [inp])
        assert res.as_numpy("regressors").shape == (1, 896, 16)
    finally:
        client.close()


# ------------------------------------------------------------------------------- bad input
def _post(c: Client, model: str, doc: Any | bytes, headers: dict[str, str] | None = None,
          ) -> tuple[int, dict[str, Any]]:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, msg, data = c.request("POST", f"/v2/models/{model}/infer", body, headers or {})
    assert msg.get_content_type() == "application/json"
    return status, json.loads(data)


def _nabu(**over: Any) -> dict[str, Any]:
    tensor = {"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8", "data": [0] * 120}
    tensor.update(over)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(("model", "doc", "status", "needle"), [
    ("nope", _nabu(), 404, "unknown model"),
    (NABU, _nabu(name="wrong"), 400, "has no input 'wrong'"),
    (NABU, _nabu(shape=[1, 40, 3]), 400, "shape"),
    (NABU, _nabu(datatype="FP32"), 400, "datatype"),
    (NABU, _nabu(data=[0] * 119), 400, "119 elements"),
    (NABU, _nabu(data=[300] * 120), 400, "do not fit INT8"),
    (NABU, _nabu(data=["a"] * 120), 400, "INT8"),
    (NABU, {"inputs": []}, 400, "non-empty"),
    (NABU, {**_nabu(), "parameters": {"priority": 9}}, 400, "priority 9"),
    (NABU, {**_nabu(), "parameters": {"timeout": -1}}, 400, "timeout"),
    (NABU, {**_nabu(), "outputs": [{"name": "nope"}]}, 400, "no output"),
    (NABU, b"{not json", 400, "malformed JSON"),
    (NABU, b"[1, 2]", 400, "JSON object"),
])
def test_bad_requests_are_rejected_with_a_reason(daemon: Daemon, model: str, doc: Any,
                                                 status: int, needle: str) -> None:
    with daemon.client() as c:
        got, body = _post(c, model, doc)
    assert got == status, body
    assert needle in body["error"]


def test_binary_size_mismatch_and_bad_header(daemon: Daemon) -> None:
    head = json.dumps({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                                   "parameters": {"binary_data_size": 100}}]}).encode()
    with daemon.client() as c:
        got, body = _post(c, NABU, head + bytes(100),
                          {"Inference-Header-Content-Length": str(len(head))})
        assert got == 400 and "binary_data_size 100" in body["error"]
        got, body = _post(c, NABU, head + bytes(120),
                          {"Inference-Header-Content-Length": "zzz"})
        assert got == 400 and "Inference-Header-Content-Length" in body["error"]


def test_body_too_large(daemon: Daemon) -> None:
    with daemon.client() as c:
        got, body = _post(c, NABU, b" " * (5 << 20))
    assert got == 413 and "exceeds the limit" in body["error"]


def test_infeasible_deadline(daemon: Daemon) -> None:
    with daemon.client() as c, pytest.raises(ClientError) as err:
        c.infer(HAND, {"input_1": np.zeros((1, 224, 224, 3), np.float32)}, timeout_us=1)
    assert err.value.status == 400 and "deadline cannot be met" in err.value.reason


# ------------------------------------------------------------------------------- observability
def test_metrics_and_status(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}, priority=1)
        text = c.metrics()
        status = c.status()
    for family in ("edgesched_requests_total", "edgesched_deadline_misses_total",
                   "edgesched_queue_depth", "edgesched_energy_joules_total",
                   "edgesched_co2e_grams_total", "edgesched_cpu_frequency_khz"):
        assert f"# TYPE {family} " in text
    assert f'edgesched_requests_total{{model="{NABU}",priority="1",outcome="ok"}}' in text
    assert 'outcome="rejected"' in text
    assert status["queue"]["by_priority"] == {"1": 0, "2": 0, "3": 0}
    assert status["models"][NABU]["runs"] >= 1
    assert status["policy"]["spec"] == "schedutil"
    assert status["board"]["profile"] and status["board"]["clusters"][0]["freq_khz"] > 0
    assert status["energy_j_total"] > 0 and status["co2e_g_total"] > 0
    assert status["arrival_dispersion"] >= 0.0
    with daemon.client() as c:
        code, _, body = c.request("GET", "/status")
        assert code == 200 and json.loads(body)["name"] == "edgesched"
        code, _, body = c.request("GET", "/v2/openapi.json")
    assert code == 200 and "/v2/models/{name}/infer" in json.loads(body)["paths"]


# ------------------------------------------------------------------------------- command line
def test_cli_infer_and_status(daemon: Daemon, tmp_path: Path) -> None:
    import sys

    np.save(tmp_path / "x.npy", face_input(2))
    (tmp_path / "a.json").write_text(json.dumps({NABU_IN: [[[0] * 40] * 3]}))
    base = [sys.executable, "-m", "edgesched"]
    out = subprocess.run([*base, "infer", FACE, "--input", str(tmp_path / "x.npy"),
                          "--priority", "1", "--timeout-us", "5000000", "--socket", daemon.socket,
                          "--output", str(tmp_path / "out.npz")],
                         capture_output=True, check=True, timeout=60)
    doc = json.loads(out.stdout)
    assert doc["parameters"]["outcome"] == "ok"
    assert doc["outputs"]["regressors"]["shape"] == [1, 896, 16]
    assert np.load(tmp_path / "out.npz")["classificators"].shape == (1, 896, 1)
    out = subprocess.run([*base, "infer", NABU, "--input", str(tmp_path / "a.json"),
                          "--socket", daemon.socket], capture_output=True, check=True, timeout=60)
    assert json.loads(out.stdout)["outputs"]["StatefulPartitionedCall:0"]["shape"] == [1, 1]
    bad = subprocess.run([*base, "infer", NABU, "--input", str(tmp_path / "x.npy"),
                          "--socket", daemon.socket], capture_output=True, timeout=60)
    assert bad.returncode == 1 and b"does not match" in bad.stderr
    out = subprocess.run([*base, "status", "--socket", daemon.socket], capture_output=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout)["models"][FACE]["runs"] >= 1
