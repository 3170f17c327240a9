"""Hostile inputs against the real daemon on its unix socket: every one gets a 4xx with a reason
(or is served correctly), never a 5xx, and the daemon keeps serving afterwards."""

from __future__ import annotations

import http.client
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import Daemon

from edgesched.client import encode_infer

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
FACE = "face_detection_short_range"
RAW_TIMEOUT_S = 30.0


def raw(daemon: Daemon, data: bytes, *, shut_write: bool = False) -> tuple[int, bytes] | None:
    """Send ``data`` on a fresh connection; the first response, or None if the daemon closed it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(RAW_TIMEOUT_S)
    try:
        s.connect(daemon.socket)
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(s)
        try:
            resp.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        return resp.status, resp.read()
    finally:
        s.close()


def assert_serving(daemon: Daemon) -> None:
    with daemon.client(timeout_s=30) as c:
        assert c.live() and c.ready()
        res = c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}, priority=1)
    assert res.parameters["outcome"] == "ok"


def post(daemon: Daemon, path: str, body: bytes,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    with daemon.client(timeout_s=60) as c:
        status, _, data = c.request("POST", path, body, headers or {})
    return status, json.loads(data)


def assert_refused(status: int, doc: dict[str, Any], *needles: str) -> None:
    assert 400 <= status < 500, (status, doc)
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    for n in needles:
        assert n in doc["error"], doc


@pytest.fixture(autouse=True)
def still_serving(daemon: Daemon) -> Iterator[None]:
    yield
    assert_serving(daemon)


def _nabu_doc(**params: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                                       "data": [0] * 120}]}
    if params:
        doc["parameters"] = params
    return doc


# ------------------------------------------------------------------------------- sizes
def test_body_over_the_limit_with_and_without_content_length(daemon: Daemon) -> None:
    status, doc = post(daemon, f"/v2/models/{NABU}/infer", b"[" + b"0," * (3 << 20) + b"0]")
    assert_refused(status, doc, "exceeds the limit")
    # chunked: no Content-Length, the limit is found while reading
    chunk = b"0," * 65536
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 40
    got = raw(daemon, b"POST /v2/models/okay_nabu/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(parts) + b"0\r\n\r\n")
    assert got is not None and got[0] == 413, got
    assert b"exceeds the limit" in got[1]


def test_deep_and_huge_json(daemon: Daemon) -> None:
    url = f"/v2/models/{NABU}/infer"
    assert_refused(*post(daemon, url, b"[" * 200_000 + b"]" * 200_000), "malformed JSON")
    deep = b'{"inputs": [{"name": "%s", "shape": [1, 3, 40], "datatype": "INT8", "data": ' % (
        NABU_IN.encode()) + b"[" * 50_000 + b"1" + b"]" * 50_000 + b"}]}"
    assert_refused(*post(daemon, url, deep), "malformed JSON")
    nested = _nabu_doc()
    nested["inputs"][0]["data"] = json.loads("[" * 500 + "1" + "]" * 500)
    assert_refused(*post(daemon, url, json.dumps(nested).encode()), "input")
    big = _nabu_doc()
    big["inputs"][0]["data"] = [1] * 1_000_000
    assert_refused(*post(daemon, url, json.dumps(big).encode()), "1000000 elements")
    many = {"inputs": [{"name": f"x{i}", "shape": [1], "datatype": "INT8", "data": [0]}
                       for i in range(50_000)]}
    assert_refused(*post(daemon, url, json.dumps(many).encode()), "has no input")
    long_int = b'{"inputs": [], "parameters": {"priority": ' + b"9" * 10_000 + b"}}"
    assert_refused(*post(daemon, url, long_int), "malformed JSON")
    odd_id = _nabu_doc()
    odd_id["id"] = list(range(100_000))
    status, doc = post(daemon, url, json.dumps(odd_id).encode())
    assert_refused(status, doc, "'id' must be a string")
    assert len(doc["error"]) < 300  # the reason does not echo the whole value


@pytest.mark.parametrize("head", [
    b"Content-Length: 5\r\n",  # shorter than the body: the rest is a garbage request
    b"Content-Length: -1\r\n",
    b"Content-Length: 12abc\r\n",
    b"Content-Length: 99999999999999999999999999\r\n",
    b"Content-Length: 44\r\nContent-Length: 45\r\n",
    b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
])
def test_wrong_content_length(daemon: Daemon, head: bytes) -> None:
    body = json.dumps(_nabu_doc()).encode()
    got = raw(daemon, b"POST /v2/models/okay_nabu/infer HTTP/1.1\r\nHost: x\r\n" + head
              + b"\r\n" + body)
    assert got is None or 400 <= got[0] < 500, got


def test_content_length_longer_than_the_body(daemon: Daemon) -> None:
    body = json.dumps(_nabu_doc()).encode()
    got = raw(daemon, b"POST /v2/models/okay_nabu/infer HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: %d\r\n\r\n" % (len(body) + 1000) + body, shut_write=True)
    assert got is None or 400 <= got[0] < 500, got


def test_oversized_headers(daemon: Daemon) -> None:
    got = raw(daemon, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000
              + b"\r\n\r\n")
    assert got is None or 400 <= got[0] < 500, got
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(2000))
    got = raw(daemon, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert got is None or 400 <= got[0] < 500, got
    got = raw(daemon, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100))  # TLS hello
    assert got is None or 400 <= got[0] < 500, got


# ------------------------------------------------------------------------------- slow clients
def test_slowloris_does_not_stop_other_clients(daemon: Daemon) -> None:
    """Many connections dribble a request's headers one byte per round; between rounds a normal
    client is served every time. Bounded: 100 connections x 40 rounds."""
    partial = (b"POST /v2/models/okay_nabu/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"application/json\r\nX-Slow: ")
    conns: list[socket.socket] = []
    try:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(RAW_TIMEOUT_S)
            s.connect(daemon.socket)
            conns.append(s)
        x = {NABU_IN: np.zeros((1, 3, 40), np.int8)}
        with daemon.client(timeout_s=30) as c:
            for i in range(40):
                for s in conns:
                    s.sendall(partial[i % len(partial):i % len(partial) + 1])
                assert c.infer(NABU, x, priority=1).parameters["outcome"] == "ok"
                assert c.live()
    finally:
        for s in conns:
            s.close()


# ------------------------------------------------------------------------------- names
@pytest.mark.parametrize("path", [
    "/v2/models/..%2F..%2F..%2Fetc%2Fpasswd/infer",
    "/v2/models/%2e%2e/infer",
    "/v2/models/..%2f..%2fetc%2fshadow",
    "/v2/models/okay_nabu%00.tflite/infer",
    "/v2/models/%2Fetc%2Fpasswd/ready",
    "/v2/models/../../etc/passwd/infer",
    "/v2/models/okay_nabu/versions/..%2F2/infer",
    "/v2/models/" + "a" * 4000 + "/infer",
])
def test_model_names_with_path_separators(daemon: Daemon, path: str) -> None:
    body = json.dumps(_nabu_doc()).encode()
    got = raw(daemon, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n%s" % (path.encode(), len(body), body))
    assert got is not None, path
    status, data = got
    assert status in (404, 405), (status, data)
    assert b"root:" not in data
    assert json.loads(data)["error"]


# ------------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("body", [
    b"\xff\xfe\xfd\xfc not utf-8",
    b'{"inputs": [{"name": "\xc3\x28"}]}',
    b"\x00" * 64,
    "{\"inputs\": []}".encode("utf-32-le")[:-1],
])
def test_non_utf8_bodies(daemon: Daemon, body: bytes) -> None:
    assert_refused(*post(daemon, f"/v2/models/{NABU}/infer", body), "JSON")


def test_non_utf8_binary_header(daemon: Daemon) -> None:
    head = b"\xff\xfe{garbage"
    status, doc = post(daemon, f"/v2/models/{NABU}/infer", head + bytes(120),
                       {"Inference-Header-Content-Length": str(len(head))})
    assert_refused(status, doc, "malformed JSON")


def test_non_utf8_header_value_and_path(daemon: Daemon) -> None:
    got = raw(daemon, b"GET /v2/models/\xff\xfe HTTP/1.1\r\nHost: x\r\nX-A: \xff\xfe\r\n"
                      b"Connection: close\r\n\r\n")
    assert got is None or 400 <= got[0] < 500, got


# ------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("data", ["NaN", "Infinity", "-Infinity", "1e999", "3.5e38"])
def test_nan_and_inf_in_json_tensors(daemon: Daemon, data: str) -> None:
    values = ", ".join([data] + ["0.5"] * (128 * 128 * 3 - 1))
    body = ('{"inputs": [{"name": "input", "shape": [1, 128, 128, 3], "datatype": "FP32", '
            f'"data": [{values}]}}]}}').encode()
    status, doc = post(daemon, f"/v2/models/{FACE}/infer", body)
    assert_refused(status, doc)
    assert "NaN" in doc["error"] or "infinite" in doc["error"] or "JSON" in doc["error"]


def test_nan_in_binary_tensors(daemon: Daemon) -> None:
    x = np.zeros((1, 128, 128, 3), np.float32)
    x[0, 5, 5, 1] = np.nan
    body, headers = encode_infer({"input": x})
    assert_refused(*post(daemon, f"/v2/models/{FACE}/infer", body, headers), "NaN")
    x[0, 5, 5, 1] = np.inf
    body, headers = encode_infer({"input": x})
    assert_refused(*post(daemon, f"/v2/models/{FACE}/infer", body, headers), "infinite")
    # a NaN bit pattern in an INT8 tensor is just bytes: served
    raw_nan = struct.pack("<f", float("nan")) * 30
    body, headers = encode_infer({NABU_IN: np.frombuffer(raw_nan, np.int8).reshape(1, 3, 40)})
    with daemon.client() as c:
        status, _, _ = c.request("POST", f"/v2/models/{NABU}/infer", body, headers)
    assert status == 200


@pytest.mark.parametrize(("params", "needle"), [
    ({"priority": -1}, "'priority' must be >= 0"),
    ({"priority": 10**30}, "priority"),
    ({"priority": 2**70}, "priority"),
    ({"priority": 1.5}, "'priority' must be an integer"),
    ({"priority": "1"}, "'priority' must be an integer"),
    ({"priority": True}, "'priority' must be an integer"),
    ({"priority": [1]}, "'priority' must be an integer"),
    ({"priority": 1e300}, "priority"),
    ({"timeout": -5}, "'timeout' must be >= 0"),
    ({"timeout": 10**30}, "'timeout' must be <= 2**64-1"),
    ({"timeout": 0.25}, "'timeout' must be an integer"),
    ({"timeout": "soon"}, "'timeout' must be an integer"),
    ({"timeout": 1e300}, "'timeout'"),
    ({"timeout": 1}, "deadline cannot be met"),
])
def test_bad_priority_and_timeout(daemon: Daemon, params: dict[str, Any], needle: str) -> None:
    assert_refused(*post(daemon, f"/v2/models/{NABU}/infer", json.dumps(_nabu_doc(**params))
                         .encode()), needle)


@pytest.mark.parametrize("params", [{"priority": None}, {"priority": 3.0},
                                    {"timeout": 2**64 - 1}, {"timeout": 2**40},
                                    {"priority": 0, "timeout": None}])
def test_edge_priority_and_timeout_are_served(daemon: Daemon, params: dict[str, Any]) -> None:
    status, doc = post(daemon, f"/v2/models/{NABU}/infer", json.dumps(_nabu_doc(**params))
                       .encode())
    assert status == 200, doc
    assert doc["parameters"]["outcome"] == "ok"


def test_json_nan_tokens_in_parameters(daemon: Daemon) -> None:
    body = json.dumps(_nabu_doc()).encode()[:-1] + b', "parameters": {"priority": NaN}}'
    assert_refused(*post(daemon, f"/v2/models/{NABU}/infer", body), "NaN")


def test_unknown_endpoints_and_methods_are_json(daemon: Daemon) -> None:
    with daemon.client() as c:
        status, _, data = c.request("GET", "/etc/passwd")
        assert status == 404 and "openapi" in json.loads(data)["error"]
        status, msg, data = c.request("DELETE", f"/v2/models/{NABU}/infer")
        assert status == 405 and msg["Allow"] == "POST"
        assert "not allowed" in json.loads(data)["error"]


# ------------------------------------------------------------------------------- overload
@pytest.mark.slow
def test_overload_small_budget_exactly_one_outcome() -> None:
    """bench/overload.py with a small budget: every request the daemon received got exactly one
    outcome (its counters agree with the client's), and no 5xx but 503 "shed" (no timeouts are
    sent, so no 504 can happen). No timing assertions."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "overload.py"
    out = subprocess.run([sys.executable, str(script), "--seconds", "1", "--factor", "5",
                          "--calibrate-s", "0.5", "--no-deadlines", "--recovery-limit-s", "5"],
                         capture_output=True, check=True, timeout=240)
    doc = json.loads(out.stdout)
    assert doc["exactly_one_outcome"] and doc["metrics_agree"], doc
    assert doc["server_errors"] == 0, doc
    assert set(doc["status_counts"]) <= {"200", "429", "503", "None"}, doc
    assert doc["accepted"] == doc["answered"] + doc["shed"], doc
