"""The daemon's HTTP/1.1 server on a real unix socket, with a small router: framing, keep-alive,
pipelining, limits, timeouts and shutdown, seen as raw bytes by a client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edgesched.server.http1 import Request, Response, Router, Server, error_response, json_response

LIMIT = 4096


async def _fallback(request: Request, allowed: set[str]) -> Response:
    if allowed:
        return error_response(405, "not allowed", {"Allow": ", ".join(sorted(allowed))})
    return error_response(404, f"no {request.path}")


def _router(gate: asyncio.Event | None = None) -> Router:
    r = Router(_fallback)

    async def echo(req: Request) -> Response:
        return json_response({"params": req.params, "len": len(req.body), "query": req.query,
                              "method": req.method})

    async def digest(req: Request) -> Response:
        return json_response({"params": req.params, "len": len(req.body),
                              "sha256": hashlib.sha256(req.body).hexdigest()})

    async def boom(req: Request) -> Response:
        raise RuntimeError("handler bug")

    async def slow(req: Request) -> Response:
        assert gate is not None
        await gate.wait()
        return json_response({"slow": True})

    async def active(req: Request) -> Response:
        assert req.server is not None
        return json_response({"active": req.server.active})

    r.add("POST", "/echo/{name}", echo)
    r.add("POST", "/digest/{name}", digest)
    r.add("GET", "/echo/{name}", echo)
    r.add("GET", "/boom", boom)
    r.add("GET", "/slow", slow)
    r.add("GET", "/active", active)
    return r


Scenario = Callable[[str, Server], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, *, idle_timeout_s: float = 30.0,
        event: asyncio.Event | None = None, body_limit: int = LIMIT, tcp: bool = False) -> None:
    """Serve on a unix socket (``path`` is its file) or with ``tcp`` on 127.0.0.1 (``path`` is
    ``tcp:PORT``); :func:`connect` takes either."""
    async def main() -> None:
        server = Server(_router(event), body_limit=body_limit, idle_timeout_s=idle_timeout_s)
        loop = asyncio.get_running_loop()
        if tcp:
            listener = await loop.create_server(server, "127.0.0.1", 0)
            path = f"tcp:{listener.sockets[0].getsockname()[1]}"
        else:
            path = str(tmp_path / "h.sock")
            listener = await loop.create_unix_server(server, path)
        try:
            await asyncio.wait_for(scenario(path, server), 20.0)
        finally:
            if event is not None:
                event.set()
            listener.close()
            await server.shutdown(1.0)
            await listener.wait_closed()

    asyncio.run(main())


async def read_response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = await r.readexactly(n) if n else b""
    return status, headers, body


async def connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if path.startswith("tcp:"):
        return await asyncio.open_connection("127.0.0.1", int(path[4:]))
    return await asyncio.open_unix_connection(path)


async def close(w: asyncio.StreamWriter) -> None:
    w.close()
    await w.wait_closed()


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(b"POST /echo/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /echo/b%2Fc?x=1 HTTP/1.1\r\n\r\n"
                b"POST /echo/d HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        docs = [json.loads((await read_response(r))[2]) for _ in range(3)]
        assert docs[0] == {"params": {"name": "a"}, "len": 3, "query": "", "method": "POST"}
        assert docs[1]["params"] == {"name": "b/c"} and docs[1]["query"] == "x=1"
        assert docs[2]["params"] == {"name": "d"}
        await close(w)

    run(tmp_path, scenario)


def test_chunked_body_and_expect_continue(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(b"POST /echo/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 200 and json.loads(body)["len"] == 8
        w.write(b"POST /echo/y HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"body")
        status, _, body = await read_response(r)
        assert status == 200 and json.loads(body)["len"] == 4
        await close(w)

    run(tmp_path, scenario)


BIG = random.Random(3).randbytes(300_000)


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_a_large_body_in_many_pieces_then_a_pipelined_request(tmp_path: Path, tcp: bool) -> None:
    """A body far above COLLECT_BODY_BYTES, in uneven pieces, the next request in its last."""
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        data = (f"POST /digest/big HTTP/1.1\r\nContent-Length: {len(BIG)}\r\n\r\n".encode()
                + BIG + b"GET /echo/next HTTP/1.1\r\n\r\n")
        rng = random.Random(5)
        at = 0
        while at < len(data):
            step = rng.choice([1, 7, 1000, 4096, 65536])
            w.write(data[at:at + step])
            await w.drain()
            at += step
        status, _, body = await read_response(r)
        doc = json.loads(body)
        assert status == 200 and doc["len"] == len(BIG)
        assert doc["sha256"] == hashlib.sha256(BIG).hexdigest()
        status, _, body = await read_response(r)
        assert status == 200 and json.loads(body)["params"] == {"name": "next"}
        w.write(f"POST /digest/again HTTP/1.1\r\nContent-Length: {len(BIG)}\r\n\r\n".encode()
                + BIG)  # the same connection takes another large body whole
        status, _, body = await read_response(r)
        assert status == 200 and json.loads(body)["sha256"] == hashlib.sha256(BIG).hexdigest()
        await close(w)

    run(tmp_path, scenario, body_limit=1 << 20, tcp=tcp)


LARGE_HEAD = f"POST /digest/big HTTP/1.1\r\nContent-Length: {len(BIG)}\r\n\r\n".encode()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_a_large_body_cut_short_is_refused(tmp_path: Path, tcp: bool) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(LARGE_HEAD + BIG[:200_000])
        await w.drain()
        w.write_eof()
        status, _, body = await read_response(r)
        assert status == 400 and "middle of a request" in json.loads(body)["error"]
        await close(w)

    run(tmp_path, scenario, body_limit=1 << 20, tcp=tcp)


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_a_large_body_that_stops_coming_times_out(tmp_path: Path, tcp: bool) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(LARGE_HEAD + BIG[:100_000])
        status, _, body = await read_response(r)  # the rest never comes
        assert status == 408 and "idle_timeout_s" in json.loads(body)["error"]
        await close(w)

    run(tmp_path, scenario, idle_timeout_s=0.3, body_limit=1 << 20, tcp=tcp)




def test_head_405_404_and_a_failing_handler(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(b"HEAD /echo/z HTTP/1.1\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
        w.write(b"DELETE /echo/z HTTP/1.1\r\n\r\n")
        status, headers, body = await read_response(r)  # nothing left over from HEAD
        assert status == 405 and headers["allow"] == "GET, HEAD, POST"
        w.write(b"GET /nowhere HTTP/1.1\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 404 and json.loads(body)["error"] == "no /nowhere"
        w.write(b"GET /boom HTTP/1.1\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 500 and "RuntimeError" in json.loads(body)["error"]
        w.write(b"GET /echo/after HTTP/1.1\r\n\r\n")  # the connection still serves
        assert (await read_response(r))[0] == 200
        await close(w)

    run(tmp_path, scenario)


def test_http10_closes_unless_keep_alive(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(b"GET /echo/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(r)
        assert status == 200 and headers["connection"] == "keep-alive"
        w.write(b"GET /echo/a HTTP/1.0\r\n\r\n")
        status, headers, _ = await read_response(r)
        assert status == 200 and headers["connection"] == "close"
        assert await r.read() == b""
        await close(w)

    run(tmp_path, scenario)


@pytest.mark.parametrize(("data", "status", "needle"), [
    (b"POST /echo/a HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413, "exceeds the limit"),
    (b"POST /echo/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n", 413,
     "exceeds the limit"),
    (b"POST /echo/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
     "Content-Length"),
    (b"POST /echo/a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "both"),
    (b"GET /echo/a HTTP/2.0\r\n\r\n", 400, "HTTP/1.0 and HTTP/1.1"),
    (b"\x16\x03\x01\x02\x00", 400, "malformed request line"),
    (b"GET /echo/a HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400, "header"),
    (b"GET /" + b"a" * 9000, 414, "request line"),
    (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 200 + b"\r\n", 431, "headers"),
    (b"POST /echo/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk"),
])
def test_refusals_answer_with_a_reason_then_close(tmp_path: Path, data: bytes, status: int,
                                                   needle: str) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        w.write(data)
        got, headers, body = await read_response(r)
        assert got == status and headers["connection"] == "close"
        assert needle in json.loads(body)["error"]
        w.write(b"x" * 100_000)  # still read (and dropped): no broken pipe for the client
        await w.drain()
        w.write_eof()
        assert await r.read() == b""
        await close(w)

    run(tmp_path, scenario)


def test_a_request_must_arrive_within_the_idle_timeout(tmp_path: Path) -> None:
    async def scenario(path: str, server: Server) -> None:
        r, w = await connect(path)
        for ch in b"GET /echo/a HT":  # dribbling does not extend the time
            w.write(bytes([ch]))
            await asyncio.sleep(0.02)
        status, _, body = await read_response(r)
        assert status == 408 and "idle_timeout_s" in json.loads(body)["error"]
        await close(w)
        r, w = await connect(path)  # an idle keep-alive connection is just closed
        w.write(b"GET /echo/a HTTP/1.1\r\n\r\n")
        assert (await read_response(r))[0] == 200
        assert await r.read() == b""
        await close(w)

    run(tmp_path, scenario, idle_timeout_s=0.2)


def test_shutdown_answers_the_request_in_progress(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def scenario(path: str, server: Server) -> None:
        r1, w1 = await connect(path)
        r2, w2 = await connect(path)
        w1.write(b"GET /slow HTTP/1.1\r\n\r\n")
        w2.write(b"GET /echo/a HTTP/1.1\r\n\r\n")
        assert (await read_response(r2))[0] == 200
        while server.active < 1:  # until the slow request is being handled
            await asyncio.sleep(0)
        assert len(server.connections) == 2
        down = asyncio.ensure_future(server.shutdown(10.0))
        assert await r2.read() == b""  # the idle one is closed at once
        assert not down.done()
        release.set()
        status, headers, body = await read_response(r1)
        assert status == 200 and headers["connection"] == "close" and json.loads(body)["slow"]
        await down
        assert await r1.read() == b"" and not server.connections
        await close(w1)
        await close(w2)

    run(tmp_path, scenario, event=release)


def test_the_server_counts_the_requests_it_is_handling(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def scenario(path: str, server: Server) -> None:
        r1, w1 = await connect(path)
        r2, w2 = await connect(path)
        w2.write(b"GET /active HTTP/1.1\r\n\r\n")
        assert json.loads((await read_response(r2))[2])["active"] == 1, "itself alone"
        w1.write(b"GET /slow HTTP/1.1\r\n\r\n")
        while server.active < 1:  # until the slow request is being handled
            await asyncio.sleep(0)
        w2.write(b"GET /active HTTP/1.1\r\n\r\n")
        assert json.loads((await read_response(r2))[2])["active"] == 2, "the slow one too"
        release.set()
        assert (await read_response(r1))[0] == 200
        w2.write(b"GET /active HTTP/1.1\r\n\r\n")
        assert json.loads((await read_response(r2))[2])["active"] == 1
        assert server.active == 0
        await close(w1)
        await close(w2)

    run(tmp_path, scenario, event=release)
