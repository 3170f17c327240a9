"""The per-request shortcuts of the serving path keep its behaviour: header names remembered
between requests are still checked as header lines, answer heads built from a cached start are
the bytes the general path writes, the dispatcher's per-board caches give the same accounting
as working it out each time, and what is remembered by its bytes (request heads, routes, JSON
request headers, the JSON of binary answers) decodes and writes as it does in full."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS_DIR
from test_http1 import close, connect, read_response, run

from edgesched.client import HEADER_LENGTH, encode_infer_pieces
from edgesched.device import load_profile
from edgesched.errors import AdmissionError
from edgesched.observation import Decision
from edgesched.power.backends import NullBoard, _price_model_j
from edgesched.power.meters import CarbonAccount
from edgesched.queue import RequestQueue
from edgesched.server import admission, http1
from edgesched.server.admission import encode_response_parts, parse_infer
from edgesched.server.dispatcher import Dispatcher
from edgesched.server.http1 import Server
from edgesched.server.metrics import Metrics
from edgesched.server.runner import load_model
from edgesched.tensorwire import encode_tensor, json_bytes
from edgesched.utilisation import PeltTracker


def test_a_remembered_header_name_without_a_colon_is_still_refused(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(b"GET /echo/a HTTP/1.1\r\nX-Seen: 1\r\n\r\n")  # remembers "X-Seen"
        status, _, _ = await read_response(r)
        assert status == 200
        w.write(b"GET /echo/b HTTP/1.1\r\nX-Seen\r\n\r\n")  # the same name, no colon
        status, headers, body = await read_response(r)
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "malformed request header line"}
        await close(w)

    run(tmp_path, scenario)


def test_remembered_header_names_are_joined_and_lower_cased(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        for _ in range(2):  # the second time every name comes from the cache
            w.write(b"POST /echo/a HTTP/1.1\r\nContent-LENGTH: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok")
            status, _, body = await read_response(r)
            assert status == 200 and json.loads(body)["len"] == 2
        w.write(b"POST /echo/a HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok")  # the slow path
        status, _, body = await read_response(r)
        assert status == 200 and json.loads(body)["len"] == 2
        w.write(b"POST /echo/a HTTP/1.1\r\nContent-Length: +2\r\n\r\nok")
        status, _, body = await read_response(r)
        assert status == 400 and "invalid Content-Length" in json.loads(body)["error"]
        await close(w)

    run(tmp_path, scenario)


def _head_general(status: int, content_type: str, length: int, headers: dict[str, str] | None,
                  close: bool, keep_alive_10: bool) -> bytes:
    """The answer head written line by line (what the cached start must reproduce)."""
    lines = [f"HTTP/1.1 {status} {http1._PHRASES.get(status, 'Unknown')}\r\n"
             f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nServer: edgesched\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if close:
        lines.append("Connection: close\r\n")
    elif keep_alive_10:
        lines.append("Connection: keep-alive\r\n")
    return ("".join(lines) + "\r\n").encode("latin-1")


def test_answer_heads_match_the_general_form() -> None:
    cases = [(200, "application/json; charset=utf-8", 531, None, False, False),
             (200, "application/octet-stream", 0, {"Inference-Header-Content-Length": "12"},
              False, True),
             (503, "application/json; charset=utf-8", 77, {"Retry-After": "1"}, True, False),
             (599, "text/plain", 5, None, False, False)]
    for _ in range(2):  # built, then from the cache
        for case in cases:
            assert http1._head_bytes(*case) == _head_general(*case)


def test_null_board_prices_runs_as_the_power_model_does() -> None:
    prof = load_profile("rk3399")
    board = NullBoard(prof)
    for c, cl in enumerate(prof.clusters):
        for o in range(len(cl.opps)):
            board.apply(Decision(c, o))
            cost = board.settle(Decision(c, o), 0.004, 0.0)
            assert cost.wall_s == 0.004
            assert cost.energy_j == pytest.approx(_price_model_j(prof, c, o, 0.004), rel=1e-12)


def test_cached_scales_and_pins_account_as_before() -> None:
    board = NullBoard(load_profile("rk3399"))
    now = [0.0]
    d = Dispatcher(board, _Top(), RequestQueue(levels=3, max_count=8),
                   Metrics(CarbonAccount(500.0)), clock=lambda: now[0], pin_threads=False)
    prof = board.profile
    for c, cl in enumerate(prof.clusters):
        for o in (0, len(cl.opps) - 1):
            before = d._pelt[c].util
            d._account(Decision(c, o), now[0], now[0] + 0.01, 0.01)
            now[0] += 0.02
            scale = cl.opps[o].khz / cl.max_khz * prof.capacity(c) / 1024.0
            assert d._scales[(c, o)] == scale
            assert d._pelt[c].util != before
    d._pin(0)  # no pinning allowed: nothing cached, nothing done
    assert d._pin_targets == {}


class _Top:
    name = "top"
    tick_s = 0.0

    def decide(self, view: object, ctx: object) -> Decision:
        raise AssertionError("not asked")


# ------------------------------------------------------------------ what is remembered by bytes
def test_a_remembered_head_gives_each_request_its_own_headers(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        head = b"POST /echo/a HTTP/1.1\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
        for _ in range(3):  # parsed, then from the cache: the same answer each time
            w.write(head)
            status, _, body = await read_response(r)
            assert status == 200 and json.loads(body) == {
                "params": {"name": "a"}, "len": 2, "query": "", "method": "POST"}
        await close(w)

    run(tmp_path, scenario)
    raw = b"GET /x HTTP/1.1\r\nX-B: 2"
    first = http1._parse_head(raw)
    http1._HEADS[raw] = first
    # a handler that changes its request's headers does not change what the next one gets
    conn = http1.Connection(Server(http1.Router(_no_route), body_limit=10,
                                   idle_timeout_s=1.0))
    conn._buf += raw + b"\r\n\r\n"
    request = conn._parse()
    assert request is not None and request.headers == {"x-b": "2"}
    request.headers["x-b"] = "changed"
    assert http1._HEADS[raw][3] == {"x-b": "2"}


async def _no_route(request: http1.Request, allowed: set[str]) -> http1.Response:
    return http1.error_response(404, "no")


def test_a_remembered_route_gives_each_request_its_own_params() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: http1.Request) -> http1.Response:
        seen.append(dict(request.params))
        request.params["name"] = "changed"
        return http1.Response(200)

    router = http1.Router(_no_route)
    router.add("POST", "/v2/models/{name}/infer", handler)
    for _ in range(3):
        request = http1.Request("POST", "/v2/models/a%2Fb/infer", "", "HTTP/1.1", {})
        result = router.route(request)
        assert isinstance(result, http1.Response) and result.status == 200
    assert seen == [{"name": "a/b"}] * 3


NABU_IN = "serving_default_input_audio:0"


def _nabu_body(x: np.ndarray, **kw: Any) -> tuple[bytes, int]:
    pieces, headers = encode_infer_pieces({NABU_IN: x}, **kw)
    return b"".join(bytes(p) for p in pieces), int(headers[HEADER_LENGTH])


def test_a_remembered_request_header_decodes_as_in_full() -> None:
    model = load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)
    rng = np.random.default_rng(0)
    xs = [rng.integers(-128, 128, (1, 3, 40), dtype=np.int8) for _ in range(3)]
    got = []
    for x in xs:  # the same JSON header each time: decoded once, then from the model's cache
        body, n = _nabu_body(x, priority=1, timeout_us=10**6, request_id="r")
        got.append((body, n, parse_infer(body, n, model, 3, 2)))
    assert len(model.wire_cache) == 1
    for x, (body, n, req) in zip(xs, got, strict=True):
        full = admission._parse_infer(body, body[:n], memoryview(body)[n:], n, model, 3, 2, None)
        assert (req.request_id, req.outputs, req.priority, req.timeout_us) == (
            full.request_id, full.outputs, full.priority, full.timeout_us)
        assert req.size_bytes == len(body) and np.array_equal(req.inputs[NABU_IN], x)
    # the same header with binary data of another length gets the full check's 400
    with pytest.raises(AdmissionError) as exc:
        parse_infer(body + b"\0", n, model, 3, 2)
    assert exc.value.status == 400 and "not claimed" in exc.value.reason
    # another default priority is another entry: the resolved priority differs
    assert parse_infer(_nabu_body(xs[0])[0], _nabu_body(xs[0])[1], model, 3, 3).priority == 3


def test_json_tensors_are_not_remembered() -> None:
    model = load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)
    head = json_bytes({"inputs": [{"name": NABU_IN, "datatype": "INT8", "shape": [1, 3, 40],
                                   "data": [1] * 120}]})
    body = head + b""
    req = parse_infer(body, len(head), model, 3, 0)  # a header of JSON data, no binary data
    assert int(req.inputs[NABU_IN].sum()) == 120 and model.wire_cache == {}


def test_binary_answers_from_the_cache_are_the_bytes_of_the_whole_document() -> None:
    cases: list[tuple[str, dict[str, np.ndarray]]] = [
        ("okay_nabu", {NABU_IN: np.zeros((1, 3, 40), np.int8)}),
        ("face_detection_short_range",
         {"input": np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32)})]
    for name, x in cases:
        model = load_model(MODELS_DIR / f"{name}.tflite", warmup_runs=0, measure_runs=1)
        results = model.run(x)
        outputs = tuple((t.name, True) for t in model.outputs)
        for params in ({"a": 1, "e": 1.5e-6, "s": "x\u00e9"}, {"big": 2**70}):
            for _ in range(2):  # written, then from the cache
                head, blobs = encode_response_parts(model, "r\u00e9", results, outputs, params)
                parts: list[memoryview] = []
                docs = [encode_tensor(n, results[n], model.output_by_name[n].datatype, True,
                                      parts) for n, _ in outputs]
                whole = json_bytes({"model_name": model.name, "model_version": "1",
                                    "id": "r\u00e9", "parameters": params, "outputs": docs})
                assert head == whole
                assert [bytes(b) for b in blobs] == [bytes(p) for p in parts]


def test_idle_then_run_is_two_advances() -> None:
    rng = np.random.default_rng(1)
    a, b = PeltTracker(0.0), PeltTracker(0.0)
    t = 0.0
    for _ in range(2000):
        start = t + float(rng.choice([0.0, rng.exponential(0.01)]))
        end = start + float(rng.choice([0.0, rng.exponential(0.005)]))
        scale = float(rng.random())
        a.advance(start, 0.0)
        a.advance(end, scale)
        assert b.idle_then_run(start, end, scale) == a.util
        assert (b.util, b.last_s) == (a.util, a.last_s)
        t = end
