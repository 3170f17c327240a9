"""The per-request shortcuts of the serving path keep its behaviour: header names remembered
between requests are still checked as header lines, answer heads built from a cached start are
the bytes the general path writes, and the dispatcher's per-board caches give the same
accounting as working it out each time."""

from __future__ import annotations

import json
from pathlib import Path

from test_http1 import close, connect, read_response, run

from edgesched.device import load_profile
from edgesched.observation import Decision
from edgesched.power.backends import NullBoard
from edgesched.power.meters import CarbonAccount
from edgesched.queue import RequestQueue
from edgesched.server import http1
from edgesched.server.dispatcher import Dispatcher
from edgesched.server.http1 import Server
from edgesched.server.metrics import Metrics


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
