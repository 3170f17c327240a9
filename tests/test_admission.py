"""Admission: decoding and validating infer requests against a real model's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS_DIR

from edgesched.client import decode_infer, encode_infer
from edgesched.errors import AdmissionError
from edgesched.server.admission import check_deadline, encode_response, parse_infer
from edgesched.server.runner import LoadedModel, load_model

NABU_IN = "serving_default_input_audio:0"
NABU_OUT = "StatefulPartitionedCall:0"


@pytest.fixture(scope="module")
def nabu() -> LoadedModel:
    return load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)


def parse(model: LoadedModel, doc: object, header: int | None = None) -> object:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_infer(body, header, model, levels=3, default_priority=2)


def test_json_request_defaults(nabu: LoadedModel) -> None:
    req = parse_infer(json.dumps({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40],
                                              "datatype": "INT8", "data": [[[-3] * 40] * 3]}]}
                                 ).encode(), None, nabu, levels=3, default_priority=2)
    assert req.priority == 2 and req.timeout_us is None
    assert req.inputs[NABU_IN].dtype == np.int8 and req.inputs[NABU_IN].shape == (1, 3, 40)
    assert req.outputs == ((NABU_OUT, False),)


def test_binary_request_round_trip(nabu: LoadedModel) -> None:
    x = np.arange(120, dtype=np.int8).reshape(1, 3, 40)
    body, headers = encode_infer({NABU_IN: x}, priority=1, timeout_us=5000, request_id="q")
    req = parse_infer(body, int(headers["Inference-Header-Content-Length"]), nabu, 3, 2)
    assert req.priority == 1 and req.timeout_us == 5000 and req.request_id == "q"
    np.testing.assert_array_equal(req.inputs[NABU_IN], x)
    assert req.outputs == ((NABU_OUT, True),)
    out = {NABU_OUT: np.array([[7]], np.uint8)}
    resp, hlen = encode_response(nabu, "q", out, req.outputs, {"outcome": "ok"})
    res = decode_infer(resp, hlen)
    assert res.request_id == "q" and res.parameters == {"outcome": "ok"}
    np.testing.assert_array_equal(res.outputs[NABU_OUT], out[NABU_OUT])


@pytest.mark.parametrize(("doc", "header", "needle"), [
    (b"\xff\xfe", None, "malformed JSON"),
    ({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8"}]}, None,
     "neither 'data' nor binary_data_size"),
    ({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                  "parameters": {"binary_data_size": 120}}]}, None, "no Inference-Header"),
    ({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                  "data": [0.5] * 120}]}, None, "must hold INT8"),
    ({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8", "data": [0] * 120}],
      "parameters": {"binary_data_output": "yes"}}, None, "binary_data_output"),
    ({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8", "data": [0] * 120}],
      "parameters": {"priority": 1.5}}, None, "must be an integer"),
    ({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8", "data": [0] * 120}],
      "id": 5}, None, "'id' must be a string"),
])
def test_rejections(nabu: LoadedModel, doc: object, header: int | None, needle: str) -> None:
    with pytest.raises(AdmissionError) as err:
        parse(nabu, doc, header)
    assert err.value.status == 400 and needle in err.value.reason


def test_data_and_binary_data_together_are_refused(nabu: LoadedModel) -> None:
    head = json.dumps({"inputs": [{"name": NABU_IN, "shape": [1, 3, 40], "datatype": "INT8",
                                   "data": [1] * 120,
                                   "parameters": {"binary_data_size": 120}}]}).encode()
    with pytest.raises(AdmissionError) as err:
        parse_infer(head + bytes(120), len(head), nabu, 3, 2)
    assert err.value.status == 400 and "not both" in err.value.reason
    assert NABU_IN in err.value.reason


def test_binary_bytes_must_be_claimed(nabu: LoadedModel) -> None:
    body, headers = encode_infer({NABU_IN: np.zeros((1, 3, 40), np.int8)})
    with pytest.raises(AdmissionError, match="not claimed"):
        parse_infer(body + b"xx", int(headers["Inference-Header-Content-Length"]), nabu, 3, 2)
    with pytest.raises(AdmissionError, match=r"outside 1\.\."):
        parse_infer(body, len(body) + 1, nabu, 3, 2)


def test_deadline_check(nabu: LoadedModel) -> None:
    body, _ = encode_infer({NABU_IN: np.zeros((1, 3, 40), np.int8)}, timeout_us=100,
                           binary=False)
    req = parse_infer(body, None, nabu, 3, 2)
    check_deadline(req, service_s=50e-6, margin=1.0, status=400)
    with pytest.raises(AdmissionError) as err:
        check_deadline(req, service_s=200e-6, margin=1.0, status=429)
    assert err.value.status == 429 and "about 200 us" in err.value.reason
