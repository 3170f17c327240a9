"""JSON tensor bodies read by simdjson straight into numpy: the same verdicts and the same values
as the orjson path they replace, for every shape of body that path knows."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from conftest import MODELS_DIR

from edgesched.errors import AdmissionError
from edgesched.server import admission
from edgesched.server.admission import parse_infer
from edgesched.server.runner import LoadedModel, load_model

FACE_IN = "input"
FACE_SHAPE = [1, 128, 128, 3]
FACE_COUNT = 128 * 128 * 3
NABU_IN = "serving_default_input_audio:0"


@pytest.fixture(scope="module")
def face() -> LoadedModel:
    return load_model(MODELS_DIR / "face_detection_short_range.tflite", warmup_runs=0,
                      measure_runs=1)


@pytest.fixture(scope="module")
def nabu() -> LoadedModel:
    return load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)


def _verdict(model: LoadedModel, body: bytes, fast: bool,
             monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    monkeypatch.setattr(admission, "TENSOR_DOC_BYTES", 0 if fast else 1 << 62)
    try:
        req = parse_infer(body, None, model, levels=3, default_priority=2)
    except AdmissionError as exc:
        return ("refused", exc.status, exc.reason)
    arrays = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in req.inputs.items()}
    return ("ok", arrays, req.request_id, req.outputs, req.priority, req.timeout_us)


def _face_body(data_text: str, extra: str = "") -> bytes:
    return (f'{{"inputs": [{{"name": "{FACE_IN}", "datatype": "FP32", "shape": {FACE_SHAPE}, '
            f'"data": {data_text}}}]{extra}}}').encode()


def _nabu_body(data_text: str, datatype: str = "INT8") -> bytes:
    return (f'{{"inputs": [{{"name": "{NABU_IN}", "datatype": "{datatype}", "shape": [1, 3, 40], '
            f'"data": {data_text}}}], "id": "n", "parameters": {{"priority": 1}}}}').encode()


def _floats(rng: np.random.Generator, n: int = FACE_COUNT) -> list[float]:
    return [float(v) for v in rng.standard_normal(n).astype(np.float32)]


RNG = np.random.default_rng(7)
FLOATS = _floats(RNG)
FACE_BODIES = {
    "flat floats": _face_body(json.dumps(FLOATS)),
    "float64 digits": _face_body(json.dumps(RNG.standard_normal(FACE_COUNT).tolist())),
    "all integers": _face_body(json.dumps([int(v) for v in RNG.integers(-1000, 1000,
                                                                          FACE_COUNT)])),
    "integers past 2**53": _face_body(json.dumps([2 ** 60 + 1] * FACE_COUNT)),
    "one integer past 2**64": _face_body(json.dumps([2 ** 70, *FLOATS[1:]])),
    "mixed integers and floats": _face_body(json.dumps([1, 2.5] * (FACE_COUNT // 2))),
    "nested rectangular": _face_body(json.dumps(
        np.asarray(FLOATS, np.float32).reshape(FACE_SHAPE).tolist())),
    "nested ragged, right count": _face_body(json.dumps(
        [FLOATS[:FACE_COUNT - 3], FLOATS[FACE_COUNT - 3:]])),
    "one short": _face_body(json.dumps(FLOATS[:-1])),
    "booleans": _face_body(json.dumps([True, False] * (FACE_COUNT // 2))),
    "a string": _face_body(json.dumps(["x", *FLOATS[1:]])),
    "a null": _face_body(json.dumps([None, *FLOATS[1:]])),
    "beyond float32": _face_body(json.dumps([1e+39, *FLOATS[1:]])),
    "beyond float64 (1e999)": _face_body("[1e999, " + json.dumps(FLOATS[1:])[1:]),
    "NaN literal": _face_body("[NaN, " + json.dumps(FLOATS[1:])[1:]),
    "negative zero": _face_body(json.dumps([-0.0] * FACE_COUNT)),
    "data as an object": _face_body('{"a": 1}', ', "pad": "' + "p" * 20000 + '"'),
    "data twice": _face_body(json.dumps(FLOATS[:10]) + ', "data": ' + json.dumps(FLOATS)),
    "inputs twice": _face_body(json.dumps(FLOATS), ', "inputs": []'),
    "lone surrogate in the id": _face_body(json.dumps(FLOATS), ', "id": "\\ud800"'),
    "id and parameters": _face_body(json.dumps(FLOATS),
                                    ', "id": "r1", "parameters": {"priority": 3, '
                                    '"timeout": 90000}, "outputs": [{"name": "regressors"}]'),
    "not an object": b"[" + json.dumps(FLOATS).encode() + b"]",
    "truncated": _face_body(json.dumps(FLOATS))[:-5],
    "trailing garbage": _face_body(json.dumps(FLOATS)) + b" x",
    "wrong datatype": _face_body(json.dumps(FLOATS)).replace(b'"FP32"', b'"FP16"'),
}


@pytest.mark.parametrize("case", sorted(FACE_BODIES))
def test_float_bodies_same_verdict_both_ways(face: LoadedModel, case: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    body = FACE_BODIES[case]
    fast = _verdict(face, body, True, monkeypatch)
    assert fast == _verdict(face, body, False, monkeypatch)


NABU_BODIES = {
    "flat int8": _nabu_body(json.dumps(list(range(-60, 60)))),
    "nested int8": _nabu_body(json.dumps([[[-3] * 40] * 3])),
    "out of range": _nabu_body(json.dumps([300] * 120)),
    "floats for int8": _nabu_body(json.dumps([0.5] * 120)),
    "integral floats for int8": _nabu_body(json.dumps([1.0] * 120)),
    "uint64 max": _nabu_body(json.dumps([2 ** 64 - 1] * 120)),
    "below int64": _nabu_body(json.dumps([-(2 ** 63) - 1] * 120)),
    "booleans": _nabu_body(json.dumps([True] * 120)),
    "datatype mismatch": _nabu_body(json.dumps([1] * 120), "UINT8"),
}


@pytest.mark.parametrize("case", sorted(NABU_BODIES))
def test_integer_bodies_same_verdict_both_ways(nabu: LoadedModel, case: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    body = NABU_BODIES[case]
    assert _verdict(nabu, body, True, monkeypatch) == _verdict(nabu, body, False, monkeypatch)


def test_flat_numbers_reach_numpy_without_a_list() -> None:
    doc = admission._tensor_doc(FACE_BODIES["flat floats"])
    assert doc is not None
    data = doc["inputs"][0]["data"]
    assert isinstance(data, np.ndarray) and data.dtype == np.float64
    np.testing.assert_array_equal(data.astype(np.float32), np.asarray(FLOATS, np.float32))
    nested = admission._tensor_doc(FACE_BODIES["nested rectangular"])
    assert nested is not None and isinstance(nested["inputs"][0]["data"], list)
    assert admission._tensor_doc(FACE_BODIES["data twice"]) is None  # left to orjson


def test_big_json_bodies_take_the_simdjson_path(face: LoadedModel,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = admission._tensor_doc

    def spy(raw: bytes) -> Any:
        calls.append(len(raw))
        return real(raw)

    monkeypatch.setattr(admission, "_tensor_doc", spy)
    body = FACE_BODIES["flat floats"]
    assert len(body) >= admission.TENSOR_DOC_BYTES
    req = parse_infer(body, None, face, levels=3, default_priority=2)
    assert calls == [len(body)]
    np.testing.assert_array_equal(req.inputs[FACE_IN].ravel(), np.asarray(FLOATS, np.float32))
    small = _nabu_body(json.dumps(list(range(-60, 60))))
    assert len(small) < admission.TENSOR_DOC_BYTES
    parse_infer(small, None, load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0,
                                        measure_runs=1), levels=3, default_priority=2)
    assert calls == [len(body)]


def test_each_thread_parses_with_its_own_parser(face: LoadedModel) -> None:
    """Threads parse at the same time (the HTTP loop and the priority lane do): every one gets
    its own values."""
    bodies = [_face_body(json.dumps(_floats(np.random.default_rng(i)))) for i in range(4)]
    want = [np.asarray(json.loads(b)["inputs"][0]["data"], np.float32) for b in bodies]
    barrier = threading.Barrier(len(bodies))
    errors: list[str] = []

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            req = parse_infer(bodies[i], None, face, levels=3, default_priority=2)
            if not np.array_equal(req.inputs[FACE_IN].ravel(), want[i]):
                errors.append(f"thread {i} got another body's values")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
