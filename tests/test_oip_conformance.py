"""Conformance with the Open Inference Protocol (KServe v2 REST: ``required_api.md``, the OIP's
``inference_rest.md`` and ``open_inference_rest.yaml``) and Triton's HTTP extensions (binary
tensor data, model configuration, system shared memory), checked as a client written from those
documents would check it: plain ``http.client`` over the daemon's unix socket (not the bundled
client), status codes, headers and the JSON shapes the documents define.

The encoding of every tensor datatype (BOOL, UINT*, INT*, FP16/32/64) is checked on admission and
the answer's encoder directly: no shipped model has inputs of each."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Daemon

from edgesched.errors import AdmissionError
from edgesched.server.admission import encode_response, parse_infer
from edgesched.server.runner import LoadedModel, TensorSpec

FACE = "face_detection_short_range"
FACE_SHAPE = [1, 128, 128, 3]
HAND = "hand_landmark_lite"
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
NABU_OUT = "StatefulPartitionedCall:0"
MODELS = (FACE, HAND, NABU)
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")
"""The protocol's tensor datatypes (inference_rest.md, "Tensor Data Types")."""
DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
HEADER_LENGTH = "Inference-Header-Content-Length"


# ------------------------------------------------------------------------------ plain HTTP
class UnixConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket."""

    def __init__(self, path: str, timeout_s: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    def json(self) -> Any:
        assert self.content_type == "application/json", (self.status, self.headers.items())
        return json.loads(self.body)


@contextlib.contextmanager
def connection(d: Daemon) -> Iterator[UnixConnection]:
    conn = UnixConnection(d.socket)
    try:
        yield conn
    finally:
        conn.close()


def send(conn: UnixConnection, method: str, path: str, body: bytes | None = None,
         headers: Mapping[str, str] | None = None) -> Reply:
    conn.request(method, path, body=body, headers=dict(headers or {}))
    resp = conn.getresponse()
    data = resp.read()
    length = resp.headers.get("Content-Length")
    if method != "HEAD":
        assert length is not None and int(length) == len(data), (length, len(data))
    return Reply(resp.status, resp.headers, data)


def call(d: Daemon, method: str, path: str, body: bytes | None = None,
         headers: Mapping[str, str] | None = None) -> Reply:
    with connection(d) as conn:
        return send(conn, method, path, body, headers)


def post_json(d: Daemon, path: str, doc: Any, headers: Mapping[str, str] | None = None,
              ) -> Reply:
    return call(d, "POST", path, json.dumps(doc).encode(),
                {"Content-Type": "application/json", **(headers or {})})


def assert_error(reply: Reply, statuses: set[int]) -> str:
    """An error answer: one of ``statuses`` and a body ``{"error": $string}``."""
    assert reply.status in statuses, (reply.status, reply.body[:300])
    doc = reply.json()
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    return str(doc["error"])


# ------------------------------------------------------------------------------ the shapes
def check_metadata_tensor(t: Any) -> None:
    assert isinstance(t, dict) and {"name", "datatype", "shape"} <= set(t), t
    assert isinstance(t["name"], str) and t["name"]
    assert t["datatype"] in DATATYPES
    assert isinstance(t["shape"], list)
    assert all(isinstance(n, int) and not isinstance(n, bool) and n >= -1 for n in t["shape"])


def check_model_metadata(doc: Any, name: str) -> None:
    assert isinstance(doc, dict)
    assert doc["name"] == name
    assert isinstance(doc["platform"], str) and doc["platform"]
    if "versions" in doc:
        assert isinstance(doc["versions"], list) and doc["versions"]
        assert all(isinstance(v, str) for v in doc["versions"])
    for key in ("inputs", "outputs"):
        assert isinstance(doc[key], list) and doc[key]
        for t in doc[key]:
            check_metadata_tensor(t)


def check_infer_response(doc: Any, model: str, request_id: str | None) -> dict[str, Any]:
    """A ``$inference_response``; its outputs by name."""
    assert isinstance(doc, dict)
    assert doc["model_name"] == model
    if "model_version" in doc:
        assert isinstance(doc["model_version"], str)
    if request_id is not None:
        assert doc["id"] == request_id
    elif "id" in doc:
        assert isinstance(doc["id"], str)
    if "parameters" in doc:
        check_parameters(doc["parameters"])
    assert isinstance(doc["outputs"], list)
    outputs: dict[str, Any] = {}
    for out in doc["outputs"]:
        assert {"name", "shape", "datatype"} <= set(out), out
        assert isinstance(out["name"], str) and out["datatype"] in DATATYPES
        assert all(isinstance(n, int) and n >= 0 for n in out["shape"])
        if "parameters" in out:
            check_parameters(out["parameters"])
        if "binary_data_size" not in out.get("parameters", {}):
            assert isinstance(out["data"], list)
            assert len(np.ravel(out["data"])) == int(np.prod(out["shape"]))
        outputs[out["name"]] = out
    return outputs


def check_parameters(params: Any) -> None:
    """``$parameters``: string keys, each value a string, number or boolean."""
    assert isinstance(params, dict)
    for key, value in params.items():
        assert isinstance(key, str)
        assert isinstance(value, (str, int, float, bool)), (key, value)


def array_of(out: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(out["data"], dtype=DTYPES[out["datatype"]]).reshape(out["shape"])


def binary_outputs(reply: Reply) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the binary outputs of an answer with binary tensor data."""
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type == "application/octet-stream"
    n = int(reply.headers[HEADER_LENGTH])
    doc = json.loads(reply.body[:n])
    at = n
    arrays: dict[str, np.ndarray] = {}
    for out in doc["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            continue
        assert "data" not in out
        arrays[out["name"]] = np.frombuffer(reply.body[at:at + size],
                                            dtype=DTYPES[out["datatype"]]).reshape(out["shape"])
        at += size
    assert at == len(reply.body), "the binary outputs fill the body after the header"
    return doc, arrays


def nabu_input(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (1, 3, 40), dtype=np.int8)


def face_input(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 128, 128, 3), dtype=np.float32)


def nabu_doc(data: Any, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                        "data": data}], **extra}


def binary_request(doc: Mapping[str, Any], *tensors: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(doc).encode()
    body = head + b"".join(t.tobytes() for t in tensors)
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


# ------------------------------------------------------------------------------ health
def test_server_live_and_ready(daemon: Daemon) -> None:
    for path, key in (("/v2/health/live", "live"), ("/v2/health/ready", "ready")):
        reply = call(daemon, "GET", path)
        assert reply.status == 200
        if reply.body:  # required_api.md: "should be empty"; inference_rest.md: {key: $bool}
            assert reply.json() == {key: True}


@pytest.mark.parametrize("model", MODELS)
def test_model_ready_with_and_without_version(daemon: Daemon, model: str) -> None:
    for path in (f"/v2/models/{model}/ready", f"/v2/models/{model}/versions/1/ready"):
        reply = call(daemon, "GET", path)
        assert reply.status == 200
        assert reply.json() == {"name": model, "ready": True}


def test_head_answers_like_get_without_a_body(daemon: Daemon) -> None:
    with connection(daemon) as conn:  # one keep-alive connection: HEAD must not desync it
        for path in ("/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{NABU}",
                     f"/v2/models/{NABU}/ready", f"/v2/models/{NABU}/config"):
            got = send(conn, "GET", path)
            head = send(conn, "HEAD", path)
            assert head.status == got.status == 200, path
            assert head.body == b""
            assert int(head.headers["Content-Length"]) == len(got.body)
            assert head.content_type == got.content_type == "application/json"
        assert send(conn, "GET", "/v2/health/live").status == 200


# ------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("path", ["/v2", "/v2/"])
def test_server_metadata(daemon: Daemon, path: str) -> None:
    """``GET v2`` (required_api.md), ``/v2/`` (open_inference_rest.yaml)."""
    reply = call(daemon, "GET", path)
    assert reply.status == 200
    doc = reply.json()
    assert isinstance(doc["name"], str) and doc["name"]
    assert isinstance(doc["version"], str) and doc["version"]
    assert isinstance(doc["extensions"], list)
    assert all(isinstance(e, str) for e in doc["extensions"])
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(doc["extensions"])


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_with_and_without_version(daemon: Daemon, model: str) -> None:
    plain = call(daemon, "GET", f"/v2/models/{model}")
    assert plain.status == 200
    doc = plain.json()
    check_model_metadata(doc, model)
    assert "1" in doc["versions"]
    versioned = call(daemon, "GET", f"/v2/models/{model}/versions/1")
    assert versioned.status == 200 and versioned.json() == doc


def test_model_metadata_describes_the_tensors(daemon: Daemon) -> None:
    face = call(daemon, "GET", f"/v2/models/{FACE}").json()
    assert face["inputs"] == [{"name": "input", "datatype": "FP32", "shape": FACE_SHAPE}]
    assert {(o["name"], o["datatype"], tuple(o["shape"])) for o in face["outputs"]} == {
        ("regressors", "FP32", (1, 896, 16)), ("classificators", "FP32", (1, 896, 1))}
    nabu = call(daemon, "GET", f"/v2/models/{NABU}").json()
    assert nabu["inputs"] == [{"name": NABU_IN, "datatype": "INT8", "shape": [1, 3, 40]}]
    assert nabu["outputs"] == [{"name": NABU_OUT, "datatype": "UINT8", "shape": [1, 1]}]


@pytest.mark.parametrize("model", MODELS)
def test_model_configuration_extension(daemon: Daemon, model: str) -> None:
    """Triton's ``GET v2/models/${MODEL_NAME}[/versions/${MODEL_VERSION}]/config``: the
    ModelConfig message as JSON, consistent with the model's metadata."""
    meta = call(daemon, "GET", f"/v2/models/{model}").json()
    reply = call(daemon, "GET", f"/v2/models/{model}/config")
    assert reply.status == 200
    cfg = reply.json()
    assert call(daemon, "GET", f"/v2/models/{model}/versions/1/config").json() == cfg
    assert cfg["name"] == model and isinstance(cfg["backend"], str)
    assert cfg["max_batch_size"] == 0  # no batching: dims are the whole shape
    for key, tensors in (("input", meta["inputs"]), ("output", meta["outputs"])):
        assert [(t["name"], t["data_type"], t["dims"]) for t in cfg[key]] == [
            (t["name"], f"TYPE_{t['datatype']}", t["shape"])
            for t in tensors]


def check_duration(d: Any) -> tuple[int, int]:
    assert set(d) == {"count", "ns"} and all(isinstance(v, int) and v >= 0 for v in d.values())
    return d["count"], d["ns"]


def check_model_stat(stat: Any) -> None:
    assert isinstance(stat["name"], str) and isinstance(stat.get("version", ""), str)
    for key in ("last_inference", "inference_count", "execution_count"):
        assert isinstance(stat[key], int) and stat[key] >= 0
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        check_duration(stat["inference_stats"][key])
    for batch in stat["batch_stats"]:
        assert isinstance(batch["batch_size"], int)
        for key in ("compute_input", "compute_infer", "compute_output"):
            check_duration(batch[key])


def test_statistics_extension(daemon: Daemon) -> None:
    """Triton's ``GET v2/models[/${MODEL_NAME}[/versions/${MODEL_VERSION}]]/stats``:
    ``{"model_stats": [$model_stat, ...]}``, counting the requests answered since."""
    assert "statistics" in call(daemon, "GET", "/v2").json()["extensions"]
    every = call(daemon, "GET", "/v2/models/stats")
    assert every.status == 200
    stats = every.json()["model_stats"]
    assert sorted(s["name"] for s in stats) == sorted(MODELS)
    for stat in stats:
        check_model_stat(stat)
    (before,) = call(daemon, "GET", f"/v2/models/{NABU}/stats").json()["model_stats"]
    for _ in range(2):
        assert post_json(daemon, f"/v2/models/{NABU}/infer", nabu_doc([0] * 120)).status == 200
    for path in (f"/v2/models/{NABU}/stats", f"/v2/models/{NABU}/versions/1/stats"):
        reply = call(daemon, "GET", path)
        assert reply.status == 200
        (after,) = reply.json()["model_stats"]
        check_model_stat(after)
        assert after["name"] == NABU and after["version"] == "1"
        assert after["inference_count"] == before["inference_count"] + 2
        assert after["execution_count"] == before["execution_count"] + 2
        success = after["inference_stats"]["success"]
        assert success["count"] == before["inference_stats"]["success"]["count"] + 2
        assert success["ns"] > before["inference_stats"]["success"]["ns"]
        assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
        assert after["last_inference"] >= before["last_inference"]
        assert after["last_inference"] > 1_500_000_000_000  # milliseconds since the epoch
        assert after["batch_stats"][0]["batch_size"] == 1
    assert_error(call(daemon, "GET", "/v2/models/nope/stats"), {400, 404})
    assert_error(call(daemon, "GET", f"/v2/models/{NABU}/versions/2/stats"), {400, 404})


def test_unknown_model_and_version(daemon: Daemon) -> None:
    """A failed request: an HTTP error status and ``{"error": $string}``; Triton maps "not
    found" to 404, the protocol's documents say "typically 400"."""
    body = json.dumps(nabu_doc([0] * 120)).encode()
    for method, path in (("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
                         ("GET", "/v2/models/nope/config"), ("POST", "/v2/models/nope/infer"),
                         ("GET", "/v2/models/nope/versions/1"),
                         ("POST", "/v2/models/nope/versions/1/infer"),
                         ("GET", "/v2/models/nope/stats")):
        error = assert_error(call(daemon, method, path, body if method == "POST" else None),
                             {400, 404})
        assert "nope" in error
    for method, path in (("GET", f"/v2/models/{NABU}/versions/2"),
                         ("GET", f"/v2/models/{NABU}/versions/2/ready"),
                         ("GET", f"/v2/models/{NABU}/versions/2/config"),
                         ("POST", f"/v2/models/{NABU}/versions/2/infer")):
        error = assert_error(call(daemon, method, path, body if method == "POST" else None),
                             {400, 404})
        assert "version" in error and "'2'" in error


def test_wrong_method_and_unknown_path(daemon: Daemon) -> None:
    for method, path in (("POST", "/v2/health/live"), ("GET", f"/v2/models/{NABU}/infer"),
                         ("DELETE", f"/v2/models/{NABU}")):
        reply = call(daemon, method, path, b"" if method != "GET" else None)
        assert_error(reply, {405})
        assert reply.headers["Allow"]
    assert_error(call(daemon, "GET", "/v2/nothing/here"), {404})


# ------------------------------------------------------------------------------ infer, JSON
@pytest.mark.parametrize("versioned", [False, True])
def test_infer_json_flat_and_nested_data_agree(daemon: Daemon, versioned: bool) -> None:
    """Tensor data "may be presented in their nature multi-dimensional representation, or as a
    flattened one-dimensional representation" (inference_rest.md, Tensor Data)."""
    path = f"/v2/models/{NABU}/versions/1/infer" if versioned else f"/v2/models/{NABU}/infer"
    x = nabu_input(1)
    answers = []
    for data in (x.ravel().tolist(), x.tolist(), x.reshape(3, 40).tolist()):
        reply = post_json(daemon, path, nabu_doc(data))
        assert reply.status == 200, reply.body[:300]
        assert HEADER_LENGTH not in reply.headers
        outputs = check_infer_response(reply.json(), NABU, None)
        assert list(outputs) == [NABU_OUT]
        out = outputs[NABU_OUT]
        assert out["datatype"] == "UINT8" and out["shape"] == [1, 1]
        answers.append(array_of(out))
    assert all(np.array_equal(a, answers[0]) for a in answers)


def test_infer_id_is_echoed(daemon: Daemon) -> None:
    for request_id in ("42", "a request/with spaces", "é-ünïcode"):
        reply = post_json(daemon, f"/v2/models/{NABU}/infer",
                          {"id": request_id, **nabu_doc([1] * 120)})
        assert reply.status == 200
        check_infer_response(reply.json(), NABU, request_id)
    reply = post_json(daemon, f"/v2/models/{NABU}/infer", nabu_doc([1] * 120))
    check_infer_response(reply.json(), NABU, None)


def test_infer_json_float_input_nested(daemon: Daemon) -> None:
    x = face_input(2)
    reply = post_json(daemon, f"/v2/models/{FACE}/infer",
                      {"id": "nested", "inputs": [{"name": "input", "shape": FACE_SHAPE,
                                                   "datatype": "FP32", "data": x.tolist()}]})
    assert reply.status == 200
    outputs = check_infer_response(reply.json(), FACE, "nested")
    assert set(outputs) == {"regressors", "classificators"}  # no outputs asked: all of them
    assert outputs["regressors"]["shape"] == [1, 896, 16]
    assert outputs["classificators"]["shape"] == [1, 896, 1]
    assert all(o["datatype"] == "FP32" for o in outputs.values())


def test_outputs_selected_by_name(daemon: Daemon) -> None:
    x = face_input(3)
    doc = {"inputs": [{"name": "input", "shape": FACE_SHAPE, "datatype": "FP32",
                       "parameters": {"binary_data_size": x.nbytes}}]}
    answers: dict[str, np.ndarray] = {}
    for names in (["classificators"], ["regressors"], ["classificators", "regressors"], None,
                  []):
        asked = dict(doc)
        if names is not None:
            asked["outputs"] = [{"name": n} for n in names]
        body, headers = binary_request(asked, x)
        reply = call(daemon, "POST", f"/v2/models/{FACE}/infer", body, headers)
        assert reply.status == 200, reply.body[:300]
        assert reply.content_type == "application/json"  # nothing asked as binary data
        outputs = check_infer_response(reply.json(), FACE, None)
        want = names or ["regressors", "classificators"]  # none or [] asked: all of them
        assert sorted(outputs) == sorted(want)
        if names:
            assert [o["name"] for o in reply.json()["outputs"]] == names
        for name, out in outputs.items():
            arr = array_of(out)
            answers.setdefault(name, arr)
            np.testing.assert_array_equal(arr, answers[name])


def test_parameters_at_every_level_are_accepted(daemon: Daemon) -> None:
    """``$parameters``: string keys to string, number or boolean values, on the request, on an
    input and on a requested output; ones the server does not know are ignored."""
    unknown = {"a_string": "x", "a_number": 1.5, "an_integer": 3, "a_bool": True}
    doc = {"id": "p", "parameters": {**unknown, "priority": 1, "timeout": 10_000_000},
           "inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                       "parameters": dict(unknown), "data": [0] * 120}],
           "outputs": [{"name": NABU_OUT, "parameters": dict(unknown)}]}
    reply = post_json(daemon, f"/v2/models/{NABU}/infer", doc)
    assert reply.status == 200, reply.body[:300]
    outputs = check_infer_response(reply.json(), NABU, "p")
    assert list(outputs) == [NABU_OUT]


@pytest.mark.parametrize("content_type", [None, "application/json",
                                          "application/json; charset=utf-8", "text/plain",
                                          "application/x-www-form-urlencoded"])
def test_request_content_type_does_not_matter(daemon: Daemon, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    reply = call(daemon, "POST", f"/v2/models/{NABU}/infer",
                 json.dumps(nabu_doc([2] * 120)).encode(), headers)
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type == "application/json"
    assert reply.headers.get_content_charset() in (None, "utf-8")


def test_chunked_request_body(daemon: Daemon) -> None:
    body = json.dumps({"id": "chunked", **nabu_doc([3] * 120)}).encode()
    with connection(daemon) as conn:
        conn.request("POST", f"/v2/models/{NABU}/infer", body=iter([body[:50], body[50:]]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        data = resp.read()
    assert resp.status == 200, data[:300]
    check_infer_response(json.loads(data), NABU, "chunked")


# ------------------------------------------------------------------------------ binary data
def test_binary_input_agrees_with_json_input(daemon: Daemon) -> None:
    x = nabu_input(4)
    doc = {"id": "b", "inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                                  "parameters": {"binary_data_size": x.nbytes}}]}
    body, headers = binary_request(doc, x)
    binary = call(daemon, "POST", f"/v2/models/{NABU}/infer", body, headers)
    assert binary.status == 200 and binary.content_type == "application/json"
    as_json = post_json(daemon, f"/v2/models/{NABU}/infer", nabu_doc(x.ravel().tolist()))
    got = check_infer_response(binary.json(), NABU, "b")[NABU_OUT]
    want = check_infer_response(as_json.json(), NABU, None)[NABU_OUT]
    np.testing.assert_array_equal(array_of(got), array_of(want))


def test_json_only_body_with_the_header_length(daemon: Daemon) -> None:
    """``Inference-Header-Content-Length`` equal to the whole body: no binary data follows."""
    body = json.dumps(nabu_doc([5] * 120)).encode()
    reply = call(daemon, "POST", f"/v2/models/{NABU}/infer", body,
                 {HEADER_LENGTH: str(len(body)), "Content-Type": "application/json"})
    assert reply.status == 200, reply.body[:300]
    check_infer_response(reply.json(), NABU, None)


def test_binary_data_output_for_every_output(daemon: Daemon) -> None:
    """``"parameters": {"binary_data_output": true}``: every output as binary data after the
    JSON header, whose length ``Inference-Header-Content-Length`` gives (Content-Length the
    whole body), in the order of the outputs in the JSON."""
    x = face_input(5)
    tensor = {"name": "input", "shape": FACE_SHAPE, "datatype": "FP32", "data": x.tolist()}
    reply = post_json(daemon, f"/v2/models/{FACE}/infer",
                      {"id": "bin", "parameters": {"binary_data_output": True},
                       "inputs": [tensor]})
    doc, arrays = binary_outputs(reply)
    outputs = check_infer_response(doc, FACE, "bin")
    assert set(arrays) == set(outputs) == {"regressors", "classificators"}
    for name, out in outputs.items():
        assert out["parameters"]["binary_data_size"] == arrays[name].nbytes
    as_json = post_json(daemon, f"/v2/models/{FACE}/infer", {"inputs": [tensor]})
    want = check_infer_response(as_json.json(), FACE, None)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(arr, array_of(want[name]))


def test_binary_data_per_output_overrides_the_request(daemon: Daemon) -> None:
    x = face_input(6)
    head = {"parameters": {"binary_data_output": True},
            "inputs": [{"name": "input", "shape": FACE_SHAPE, "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "regressors", "parameters": {"binary_data": False}},
                        {"name": "classificators"}]}
    body, headers = binary_request(head, x)
    doc, arrays = binary_outputs(call(daemon, "POST", f"/v2/models/{FACE}/infer", body,
                                      headers))
    outputs = check_infer_response(doc, FACE, None)
    assert list(arrays) == ["classificators"]
    assert "data" in outputs["regressors"] and "binary_data_size" not in outputs[
        "regressors"].get("parameters", {})
    # the other way round: JSON by default, one output asked as binary data
    head = {**head, "parameters": {}, "outputs": [
        {"name": "regressors", "parameters": {"binary_data": True}}, {"name": "classificators"}]}
    body, headers = binary_request(head, x)
    doc, arrays2 = binary_outputs(call(daemon, "POST", f"/v2/models/{FACE}/infer", body,
                                       headers))
    outputs2 = check_infer_response(doc, FACE, None)
    assert list(arrays2) == ["regressors"]
    np.testing.assert_array_equal(array_of(outputs2["classificators"]), arrays["classificators"])
    np.testing.assert_array_equal(arrays2["regressors"], array_of(outputs["regressors"]))


# ------------------------------------------------------------------------------ bad requests
def _nabu_tensor(**over: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                              "data": [0] * 120}
    tensor.update(over)
    return tensor


@pytest.mark.parametrize(("doc", "needle"), [
    ({"inputs": [_nabu_tensor(datatype="FP32")]}, "datatype"),
    ({"inputs": [_nabu_tensor(datatype="int8")]}, "datatype"),  # strings are case-sensitive
    ({"inputs": [_nabu_tensor(shape=[1, 40, 3])]}, "shape"),
    ({"inputs": [_nabu_tensor(shape=[120])]}, "shape"),
    ({"inputs": [_nabu_tensor(shape="1,3,40")]}, "shape"),
    ({"inputs": [_nabu_tensor(data=[0] * 119)]}, "119"),
    ({"inputs": [_nabu_tensor(data=[[0] * 40] * 2)]}, "80"),
    ({"inputs": [_nabu_tensor(data=[[0] * 40, [0] * 40, [0] * 39])]}, "data"),  # ragged
    ({"inputs": [_nabu_tensor(data=[1000] * 120)]}, "INT8"),
    ({"inputs": [_nabu_tensor(data=["x"] * 120)]}, "INT8"),
    ({"inputs": [_nabu_tensor(name="other")]}, "other"),
    ({"inputs": [_nabu_tensor(), _nabu_tensor()]}, "twice"),
    ({"inputs": []}, "inputs"),
    ({"outputs": [{"name": NABU_OUT}]}, "inputs"),
    ({"inputs": [_nabu_tensor()], "outputs": [{"name": "nope"}]}, "nope"),
    ({"inputs": [_nabu_tensor()], "outputs": [{"parameters": {}}]}, "output"),
    ({"inputs": [_nabu_tensor()], "id": 42}, "id"),
    ({"inputs": [_nabu_tensor()], "parameters": []}, "parameters"),
    ({"inputs": [_nabu_tensor()], "parameters": {"binary_data_output": "yes"}},
     "binary_data_output"),
])
def test_invalid_requests_get_400_with_an_error(daemon: Daemon, doc: dict[str, Any],
                                                needle: str) -> None:
    error = assert_error(post_json(daemon, f"/v2/models/{NABU}/infer", doc), {400})
    assert needle in error


@pytest.mark.parametrize("datatype", [t for t in DATATYPES if t != "INT8"])
def test_every_other_datatype_is_refused_for_an_int8_input(daemon: Daemon,
                                                           datatype: str) -> None:
    doc = {"inputs": [_nabu_tensor(datatype=datatype)]}
    error = assert_error(post_json(daemon, f"/v2/models/{NABU}/infer", doc), {400})
    assert datatype in error and "INT8" in error


@pytest.mark.parametrize("body", [b"", b"{", b"null", b"[]", b'"inputs"', b"\xff\xfe{"])
def test_malformed_bodies_get_400(daemon: Daemon, body: bytes) -> None:
    assert_error(call(daemon, "POST", f"/v2/models/{NABU}/infer", body,
                      {"Content-Type": "application/json"}), {400})


def test_binary_data_errors_get_400(daemon: Daemon) -> None:
    x = nabu_input(7)
    doc = {"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                       "parameters": {"binary_data_size": 100}}]}
    body, headers = binary_request(doc, np.zeros(100, np.int8))
    assert "binary_data_size 100" in assert_error(
        call(daemon, "POST", f"/v2/models/{NABU}/infer", body, headers), {400})
    doc["inputs"][0]["parameters"] = {"binary_data_size": 120}
    body, headers = binary_request(doc, x[..., :20])  # 60 bytes where 120 are claimed
    assert_error(call(daemon, "POST", f"/v2/models/{NABU}/infer", body, headers), {400})
    body, headers = binary_request(doc, x, x)  # 120 bytes nobody claims
    assert "not claimed" in assert_error(
        call(daemon, "POST", f"/v2/models/{NABU}/infer", body, headers), {400})
    body, _ = binary_request(doc, x)  # binary data without the header
    assert HEADER_LENGTH in assert_error(
        call(daemon, "POST", f"/v2/models/{NABU}/infer", body), {400})
    for value in ("abc", "-1", "0", str(len(body) + 1)):
        assert HEADER_LENGTH in assert_error(call(daemon, "POST", f"/v2/models/{NABU}/infer",
                                                  body, {HEADER_LENGTH: value}), {400})


# ------------------------------------------------------------------------------ shared memory
def test_shared_memory_output_with_binary_data_false(start_daemon: Callable[..., Daemon],
                                                     tmp_path: Path) -> None:
    """tritonclient's ``InferRequestedOutput.set_shared_memory`` sends ``"binary_data": false``
    next to the region's parameters: the output goes to the region, its answer has no data."""
    d = start_daemon(config={"server": {"shared_memory": True}})
    key = f"edgesched-oip-{uuid.uuid4().hex[:10]}"
    path = Path("/dev/shm") / key
    x = nabu_input(8)
    path.write_bytes(x.tobytes() + bytes(8))
    try:
        with connection(d) as conn:
            reply = send(conn, "POST", "/v2/systemsharedmemory/region/oip/register",
                         json.dumps({"key": f"/{key}", "offset": 0,
                                     "byte_size": 128}).encode(),
                         {"Content-Type": "application/json"})
            assert reply.status == 200, reply.body
            status = send(conn, "GET", "/v2/systemsharedmemory/region/oip/status").json()
            assert status == [{"name": "oip", "key": f"/{key}", "offset": 0, "byte_size": 128}]
            region = {"shared_memory_region": "oip", "shared_memory_byte_size": 120}
            doc: dict[str, Any] = {"id": "shm", "inputs": [{"name": NABU_IN, "shape": [1, 3, 40],
                                            "datatype": "INT8", "parameters": region}],
                   "outputs": [{"name": NABU_OUT, "parameters": {
                       "binary_data": False, "shared_memory_region": "oip",
                       "shared_memory_offset": 120, "shared_memory_byte_size": 8}}]}
            reply = send(conn, "POST", f"/v2/models/{NABU}/infer", json.dumps(doc).encode())
            assert reply.status == 200, reply.body[:300]
            answer = reply.json()
            assert answer["id"] == "shm" and answer["model_name"] == NABU
            (out,) = answer["outputs"]
            assert out["name"] == NABU_OUT and out["shape"] == [1, 1] and "data" not in out
            assert out["parameters"]["shared_memory_region"] == "oip"
            want = post_json(d, f"/v2/models/{NABU}/infer", nabu_doc(x.ravel().tolist()))
            assert path.read_bytes()[120] == want.json()["outputs"][0]["data"][0]
            doc["outputs"][0]["parameters"]["binary_data"] = True  # both at once: refused
            reply = send(conn, "POST", f"/v2/models/{NABU}/infer", json.dumps(doc).encode())
            assert "binary_data" in assert_error(reply, {400})
            reply = send(conn, "POST", "/v2/systemsharedmemory/region/oip/unregister", b"")
            assert reply.status == 200
            assert send(conn, "GET", "/v2/systemsharedmemory/status").json() == []
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ datatypes
def _model(datatype: str, shape: tuple[int, ...] = (2, 3)) -> LoadedModel:
    spec_in = TensorSpec("x", datatype, shape, 0)
    spec_out = TensorSpec("y", datatype, shape, 1)
    return LoadedModel(name="m", path=Path("m.tflite"), interpreter=None, inputs=(spec_in,),
                       outputs=(spec_out,), service_s=0.0)


def _values(datatype: str) -> np.ndarray:
    dtype: np.dtype[Any] = np.dtype(DTYPES[datatype])
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind == "f":
        return np.array([[0.5, -1.25, 2.0], [3.5, -0.0, 1024.0]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, 1], [2, info.max - 1, info.max]], dtype=dtype)


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_datatype_as_json_and_binary(datatype: str) -> None:
    """Each fixed-size datatype is read from JSON (flat and nested; BOOL as true/false) and from
    binary data (little-endian, BOOL one byte), and written back in both forms."""
    model = _model(datatype)
    arr = _values(datatype)
    for data in (arr.ravel().tolist(), arr.tolist()):
        doc = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": data}]}
        req = parse_infer(json.dumps(doc).encode(), None, model, 3, 2)
        assert req.inputs["x"].dtype == arr.dtype
        np.testing.assert_array_equal(req.inputs["x"], arr)
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype,
                                   "parameters": {"binary_data_size": arr.nbytes}}]}).encode()
    wire = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    req = parse_infer(head + wire, len(head), model, 3, 2)
    np.testing.assert_array_equal(req.inputs["x"], arr)
    body, length = encode_response(model, "i", {"y": arr}, (("y", False),), {})
    assert length is None
    (out,) = json.loads(body)["outputs"]
    assert out == {"name": "y", "datatype": datatype, "shape": [2, 3], "data": out["data"]}
    assert out["data"] == arr.ravel().tolist()  # BOOL as JSON true/false, integers exact
    body, length = encode_response(model, "i", {"y": arr}, (("y", True),), {})
    assert length is not None
    (out,) = json.loads(body[:length])["outputs"]
    assert out["parameters"] == {"binary_data_size": arr.nbytes} and "data" not in out
    assert body[length:] == wire


def test_bool_data_and_integral_coercions() -> None:
    """BOOL from JSON booleans (a number for a BOOL input is taken as its truth); an integer
    for a float input is its value; a fraction for an integer input is refused."""
    model = _model("BOOL", (3,))
    doc = {"inputs": [{"name": "x", "shape": [3], "datatype": "BOOL", "data": [True, 0, 1]}]}
    np.testing.assert_array_equal(parse_infer(json.dumps(doc).encode(), None, model, 3,
                                              2).inputs["x"], [True, False, True])
    model = _model("FP32", (3,))
    doc = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert parse_infer(json.dumps(doc).encode(), None, model, 3, 2).inputs["x"].tolist() == [
        1.0, 2.0, 3.0]
    model = _model("INT32", (3,))
    doc = {"inputs": [{"name": "x", "shape": [3], "datatype": "INT32", "data": [1.5, 2, 3]}]}
    with pytest.raises(AdmissionError) as err:
        parse_infer(json.dumps(doc).encode(), None, model, 3, 2)
    assert err.value.status == 400 and "INT32" in err.value.reason


def test_binary_bool_bytes_are_one_byte_each() -> None:
    model = _model("BOOL", (4,))
    head = json.dumps({"inputs": [{"name": "x", "shape": [4], "datatype": "BOOL",
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    req = parse_infer(head + struct.pack("4B", 1, 0, 0, 1), len(head), model, 3, 2)
    assert req.inputs["x"].tolist() == [True, False, False, True]


def test_tritonclient_reads_configuration_and_statistics(daemon: Daemon) -> None:
    """Triton's own HTTP client parses the extensions' answers (over TCP: it speaks no unix
    socket)."""
    triton = pytest.importorskip("tritonclient.http")
    assert daemon.port is not None
    client = triton.InferenceServerClient(url=f"127.0.0.1:{daemon.port}")
    try:
        cfg = client.get_model_config(FACE)
        assert cfg["name"] == FACE and [t["dims"] for t in cfg["input"]] == [FACE_SHAPE]
        assert client.get_model_config(FACE, model_version="1") == cfg
        stats = client.get_inference_statistics(FACE)
        assert [s["name"] for s in stats["model_stats"]] == [FACE]
        everything = client.get_inference_statistics()
        assert {s["name"] for s in everything["model_stats"]} == set(MODELS)
        meta = client.get_server_metadata()
        assert {"model_configuration", "statistics"} <= set(meta["extensions"])
    finally:
        client.close()


def test_not_ready_is_a_4xx_as_the_protocol_says() -> None:
    """required_api.md: "A 200 status code indicates true and a 4xx status code indicates
    false" (starting, reloading the models, draining)."""
    import asyncio
    from types import SimpleNamespace

    from edgesched.server import app

    st: Any = SimpleNamespace(ready=False, dispatcher=SimpleNamespace(alive=lambda: True))
    reply = asyncio.run(app.ready(st, None))  # type: ignore[arg-type]
    assert reply.status == 400 and json.loads(reply.body) == {"ready": False}
    st.ready = True
    assert asyncio.run(app.ready(st, None)).status == 200  # type: ignore[arg-type]
