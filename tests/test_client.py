"""The bundled client's encoding, and its errors when the daemon is not there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgesched.client import Client, datatype_of, decode_infer, encode_infer
from edgesched.errors import ClientError


def test_encode_json_and_binary() -> None:
    x = np.array([[1.5, 2.5]], np.float32)
    body, headers = encode_infer({"x": x}, priority=1, timeout_us=10, binary=False)
    doc = json.loads(body)
    assert "Inference-Header-Content-Length" not in headers
    assert doc["inputs"][0] == {"name": "x", "shape": [1, 2], "datatype": "FP32",
                                "data": [1.5, 2.5]}
    assert doc["parameters"] == {"priority": 1, "timeout": 10}
    body, headers = encode_infer({"x": x})
    n = int(headers["Inference-Header-Content-Length"])
    assert body[n:] == x.tobytes()
    assert json.loads(body[:n])["parameters"] == {"binary_data_output": True}


def test_binary_data_is_little_endian_and_in_c_order_whatever_the_array() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for given in (x.astype(">f4"), np.asfortranarray(x), x.T.copy().T):
        body, headers = encode_infer({"x": given})
        n = int(headers["Inference-Header-Content-Length"])
        assert json.loads(body[:n])["inputs"][0]["datatype"] == "FP32"
        np.testing.assert_array_equal(np.frombuffer(body[n:], "<f4").reshape(2, 3), x)


def test_decode_mixed_outputs() -> None:
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    head = json.dumps({"model_name": "m", "id": "7", "parameters": {"outcome": "ok"}, "outputs": [
        {"name": "a", "datatype": "INT32", "shape": [2, 3],
         "parameters": {"binary_data_size": a.nbytes}},
        {"name": "b", "datatype": "FP32", "shape": [1], "data": [0.25]}]}).encode()
    res = decode_infer(head + a.tobytes(), len(head))
    np.testing.assert_array_equal(res.outputs["a"], a)
    assert res.outputs["b"].tolist() == [0.25] and res.request_id == "7"


def test_datatype_of_unsupported() -> None:
    assert datatype_of(np.zeros(1, np.uint8)) == "UINT8"
    with pytest.raises(ValueError, match="complex"):
        datatype_of(np.zeros(1, np.complex64))


def test_unreachable_socket_says_what_to_do(tmp_path: Path) -> None:
    with Client(str(tmp_path / "none.sock")) as c, pytest.raises(ClientError) as err:
        c.live()
    assert err.value.status == 0 and "edgesched serve" in err.value.reason
