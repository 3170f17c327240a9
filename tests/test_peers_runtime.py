"""The peer bench's parts that run without MLServer: the MLServer runtime's tensor conversion
(bench/mlserver_runtime.py) and bench/peers.py's message when MLServer's venv is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load_runtime():
    spec = importlib.util.spec_from_file_location("mlserver_runtime", BENCH / "mlserver_runtime.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rt = _load_runtime()


def test_decode_flat_and_nested_json_data():
    flat = list(range(-60, 60))
    arr = rt.decode_tensor("x", "INT8", [1, 3, 40], flat, np.dtype(np.int8), [1, 3, 40])
    assert arr.dtype == np.int8 and arr.shape == (1, 3, 40)
    assert arr.ravel().tolist() == flat
    nested = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    got = rt.decode_tensor("x", "FP32", [1, 2, 3], nested.tolist(), np.dtype(np.float32),
                           [1, 2, 3])
    np.testing.assert_array_equal(got, nested)


def test_encode_round_trips_through_decode():
    rng = np.random.default_rng(1)
    for arr in (rng.random((1, 896, 16), dtype=np.float32), np.array([[7]], np.uint8)):
        datatype, shape, data = rt.encode_tensor(arr)
        assert shape == list(arr.shape) and len(data) == arr.size
        back = rt.decode_tensor("y", datatype, shape, data, arr.dtype, list(arr.shape))
        np.testing.assert_array_equal(back, arr)
    assert rt.encode_tensor(np.array([[7]], np.uint8))[0] == "UINT8"


@pytest.mark.parametrize(("datatype", "shape", "data", "needle"), [
    ("FP32", [1, 3, 40], [0] * 120, "is INT8, the request sent FP32"),
    ("INT8", [1, 40, 3], [0] * 120, "has shape [1, 3, 40], the request sent [1, 40, 3]"),
    ("INT8", [1, 3, 40], [0] * 119, "119 values for shape [1, 3, 40] (120 values)"),
    ("INT4", [1, 3, 40], [0] * 120, "unknown datatype 'INT4'; use one of BOOL"),
])
def test_decode_rejects_what_does_not_fit_with_a_message(datatype, shape, data, needle):
    with pytest.raises(rt.TensorError) as exc:
        rt.decode_tensor("audio", datatype, shape, data, np.dtype(np.int8), [1, 3, 40])
    assert needle in str(exc.value)
    assert "'audio'" in str(exc.value)


def test_decode_message_shows_an_interpreter_shape_as_plain_numbers():
    want = np.array([1, 3, 40], np.int32)  # as get_input_details() gives it
    with pytest.raises(rt.TensorError) as exc:
        rt.decode_tensor("audio", "INT8", [1, 40, 3], [0] * 120, np.dtype(np.int8), want)
    assert "has shape [1, 3, 40], the request sent [1, 40, 3]" in str(exc.value)
    ok = rt.decode_tensor("audio", "INT8", [1, 3, 40], [0] * 120, np.dtype(np.int8), want)
    assert ok.shape == (1, 3, 40)


def test_encode_rejects_a_dtype_without_a_datatype():
    with pytest.raises(rt.TensorError, match="complex64 has no Open Inference Protocol"):
        rt.encode_tensor(np.zeros(2, np.complex64))


def test_peers_without_the_bench_venv_says_how_to_install_it(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--bench-venv",
                          str(tmp_path / "absent")], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "pip install -e '.[bench]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_bare_and_floor_peer_servers_answer_with_the_models_own_outputs(tmp_path):
    """The bench's bare server (the least a Python server does per request) really parses,
    invokes and answers: its outputs are the bare invoke's, for both models; the floor server
    answers the same from its canned answers."""
    sys.path.insert(0, str(BENCH))  # peers imports mlserver_runtime from there
    try:
        import peers

        jobs = {name: peers.model_job(name, 1) for name in peers.MODELS}
        for start in (peers.start_bare, lambda home: peers.start_floor(home, jobs)):
            server = start(tmp_path)
            try:
                for name, job in jobs.items():
                    assert peers.check_outputs(server.port, job), (server.name, name)
            finally:
                server.stop()
            assert server.proc.poll() is not None
    finally:
        sys.path.remove(str(BENCH))
