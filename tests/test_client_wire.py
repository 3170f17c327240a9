"""The client's own HTTP/1.1 wire code against small servers that send canned raw answers."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgesched.client import MAX_HEAD_BYTES, Client, Connection, Headers
from edgesched.errors import ClientError

CLOSE = b"<close>"  # in a script: read the request, close the connection without an answer
HANG = b"<hang>"  # read the request, answer nothing until the client closes the connection


def ok(body: bytes = b"ok", *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def _read_request(conn: socket.socket, buf: bytes) -> tuple[tuple[bytes, bytes] | None, bytes]:
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    return (head, buf[:length]), buf[length:]


class Canned:
    """Accepts one connection per script, in turn; on connection i it reads a request and sends
    ``scripts[i][k]`` for the k-th one (or acts on CLOSE / HANG), then closes the connection."""

    def __init__(self, tmp_path: Path, *scripts: list[bytes], tcp: bool = False) -> None:
        if tcp:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.port: int = self.listener.getsockname()[1]
        else:
            self.path = str(tmp_path / "s.sock")
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(self.path)
            self.listener.listen()
        self.listener.settimeout(10)
        self.scripts = scripts
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body) of each request read
        self.connections = 0
        self.finished = [threading.Event() for _ in scripts]  # connection i is closed
        self.error = ""
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        for i, script in enumerate(self.scripts):
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                self.error = f"expected {len(self.scripts)} connections, got {self.connections}"
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                self._serve(conn, script)
            self.finished[i].set()

    def _serve(self, conn: socket.socket, script: list[bytes]) -> None:
        buf = b""
        for step in script:
            req, buf = _read_request(conn, buf)
            if req is None:
                return
            self.requests.append(req)
            if step is CLOSE:
                return
            if step is HANG:
                while conn.recv(65536):
                    pass
                return
            try:
                conn.sendall(step)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up reading
                return

    def client(self, timeout_s: float = 10.0) -> Client:
        if hasattr(self, "port"):
            return Client(host="127.0.0.1", port=self.port, timeout_s=timeout_s)
        return Client(self.path, timeout_s=timeout_s)

    def stop(self) -> None:
        self.thread.join(30)
        self.listener.close()
        assert not self.thread.is_alive()
        assert not self.error, self.error


Serve = Callable[..., Canned]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(*scripts, tcp=False)`` starts a :class:`Canned` server, stopped after the test."""
    started: list[Canned] = []

    def start(*scripts: list[bytes], tcp: bool = False) -> Canned:
        started.append(Canned(tmp_path, *scripts, tcp=tcp))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


def heads(server: Canned) -> list[list[str]]:
    return [head.decode().split("\r\n") for head, _ in server.requests]


# ------------------------------------------------------------------------------ framing
def test_content_length_bodies_on_one_kept_alive_connection(serve: Serve) -> None:
    srv = serve([ok(b"first"), ok(b""), ok(b"x" * 10), ok(b"y")])
    with srv.client() as c:
        assert c.request("POST", "/a", b"hello", {"Content-Type": "text/plain"})[::2] == (
            200, b"first")
        assert c.request("GET", "/b")[::2] == (200, b"")
        assert c.request("POST", "/c")[2] == b"x" * 10
        assert c.request("PUT", "/d", b"zz", {"host": "h", "content-length": "2"})[2] == b"y"
    srv.stop()
    assert srv.connections == 1
    a, b, cc, d = heads(srv)
    assert a[0] == "POST /a HTTP/1.1"
    assert sorted(a[1:]) == ["Content-Length: 5", "Content-Type: text/plain", "Host: localhost"]
    assert b == ["GET /b HTTP/1.1", "Host: localhost"]
    assert cc == ["POST /c HTTP/1.1", "Host: localhost", "Content-Length: 0"]
    assert sorted(d[1:]) == ["content-length: 2", "host: h"]  # the caller's, not doubled
    assert [body for _, body in srv.requests] == [b"hello", b"", b"", b"zz"]


def test_large_bodies_both_ways(serve: Serve) -> None:
    big_out = bytes(range(256)) * 1000  # 256 kB: past the first recv, read with recv_into
    big_in = b"q" * 300_000  # past the one-sendall size: head, then body
    srv = serve([ok(big_out), ok(b"after")])
    with srv.client() as c:
        assert c.request("POST", "/big", big_in)[2] == big_out
        assert c.request("GET", "/next")[2] == b"after"
    srv.stop()
    assert srv.requests[0][1] == big_in and srv.connections == 1


def test_chunked_body_with_extensions_and_trailers(serve: Serve) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Mode: c\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\n"
               b"X-Checksum: 42\r\nX-More: yes\r\n\r\n")
    srv = serve([chunked, ok(b"next")])
    with srv.client() as c:
        conn = c._connection()
        resp = conn.request("GET", "/chunked")
        assert resp.body == b"hello" + b"z" * 26 and resp.headers["x-mode"] == "c"
        assert resp.trailers is not None and dict(resp.trailers.items()) == {
            "X-Checksum": "42", "X-More": "yes"}
        assert c.request("GET", "/after")[2] == b"next"  # the trailers were consumed
    srv.stop()
    assert srv.connections == 1


def test_bad_chunk_size_is_malformed(serve: Serve) -> None:
    srv = serve([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"])
    with srv.client() as c, pytest.raises(ClientError, match="chunk size line"):
        c.request("GET", "/")


def test_body_read_until_close_then_a_new_connection(serve: Serve) -> None:
    tail = b"all of it" + b"!" * 100_000
    srv = serve([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + tail], [ok(b"fresh")])
    with Connection(srv.path) as conn:
        resp = conn.request("GET", "/eof")
        assert resp.body == tail and resp.will_close and conn.sock is None
        assert conn.request("GET", "/again").body == b"fresh"
    srv.stop()
    assert srv.connections == 2


@pytest.mark.parametrize(("answer", "kept"), [
    (ok(b"1", "Connection: close"), False),
    (ok(b"1", "Connection: Keep-Alive, CLOSE"), False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n1", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n1", True),
    (ok(b"1", "Connection: keep-alive"), True),
])
def test_connection_close_means_the_next_request_reconnects(serve: Serve, answer: bytes,
                                                            kept: bool) -> None:
    # a server that said "close" but keeps the connection open would not answer on it
    srv = serve([answer, ok(b"2")]) if kept else serve([answer, HANG], [ok(b"2")])
    with srv.client(timeout_s=5) as c:
        assert c.request("GET", "/1")[2] == b"1"
        assert c.request("GET", "/2")[2] == b"2"
    srv.stop()
    assert srv.connections == (1 if kept else 2)
    assert len(srv.requests) == 2


def test_interim_100_continue_is_skipped(serve: Serve) -> None:
    srv = serve([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                 + ok(b"real", "X-Final: 1"), ok(b"next")])
    with srv.client() as c:
        status, msg, body = c.request("POST", "/x", b"data", {"Expect": "100-continue"})
        assert (status, body, msg["X-Final"], "Link" in msg) == (200, b"real", "1", False)
        assert c.request("GET", "/y")[2] == b"next"
    srv.stop()
    assert srv.connections == 1


def test_head_204_and_304_have_no_body(serve: Serve) -> None:
    srv = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                 b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
                 b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                 ok(b"body")])
    with srv.client() as c:
        status, msg, body = c.request("HEAD", "/h")
        assert (status, msg["Content-Length"], body) == (200, "10", b"")
        assert c.request("GET", "/n")[::2] == (204, b"")
        assert c.request("GET", "/m")[::2] == (304, b"")
        assert c.request("GET", "/b")[2] == b"body"  # nothing of it was taken for a body
    srv.stop()
    assert srv.connections == 1


# ------------------------------------------------------------------------------ headers
def test_response_headers_are_a_case_insensitive_read_only_mapping(serve: Serve) -> None:
    srv = serve([b"HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\n"
                 b"Content-Type: Application/JSON; charset=utf-8\r\nRetry-After:  3 \r\n"
                 b"Set-Thing: a\r\nset-thing: b\r\nX-Folded: one\r\n two\r\n"
                 b"Content-Length: 2\r\n\r\n{}"])
    with srv.client() as c:
        status, msg, body = c.request("DELETE", "/v2/models/m/infer")
    assert (status, body) == (405, b"{}")
    assert isinstance(msg, Headers)
    assert msg["Allow"] == msg["allow"] == msg["ALLOW"] == "POST"
    assert msg.get("Retry-After") == msg.get("retry-after") == "3"
    assert msg.get("X-Missing") is None and msg.get("X-Missing", "d") == "d"
    assert "content-type" in msg and "x" not in msg and 3 not in msg
    with pytest.raises(KeyError):
        msg["X-Missing"]
    assert msg.get_content_type() == "application/json"
    assert msg["Set-Thing"] == "a" and msg.get_all("SET-THING") == ["a", "b"]
    assert msg["x-folded"] == "one two"
    assert list(msg) == ["Allow", "Content-Type", "Retry-After", "Set-Thing", "X-Folded",
                         "Content-Length"]
    assert len(msg) == 6 and dict(msg.items())["Allow"] == "POST"
    with pytest.raises(TypeError):
        msg["Allow"] = "GET"  # type: ignore[index]
    assert Headers().get_content_type() == "text/plain"
    assert Headers([("Content-Type", "nonsense")]).get_content_type() == "text/plain"


def test_header_injection_from_the_caller_is_refused(serve: Serve) -> None:
    srv = serve()
    with srv.client() as c:
        with pytest.raises(ValueError, match="invalid header"):
            c.request("GET", "/", headers={"X-A": "1\r\nX-Evil: 2"})
        with pytest.raises(ValueError, match="invalid method or path"):
            c.request("GET", "/a b HTTP/1.1\r\nX: y")
    srv.stop()
    assert srv.connections == 0


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("how", ["closed_while_idle", "closed_on_the_request"])
def test_an_idle_connection_the_server_closed_is_retried_once(serve: Serve,
                                                              how: str) -> None:
    first = [ok(b"1")] if how == "closed_while_idle" else [ok(b"1"), CLOSE]
    srv = serve(first, [ok(b"2")])
    with srv.client() as c:
        assert c.request("GET", "/1")[2] == b"1"
        if how == "closed_while_idle":
            assert srv.finished[0].wait(10)
        assert c.request("POST", "/2", b"again")[2] == b"2"
    srv.stop()
    assert srv.connections == 2
    assert [h[0] for h in heads(srv)] == (["GET /1 HTTP/1.1", "POST /2 HTTP/1.1"]
                                          if how == "closed_while_idle" else
                                          ["GET /1 HTTP/1.1", "POST /2 HTTP/1.1",
                                           "POST /2 HTTP/1.1"])


def test_a_fresh_connection_closed_without_an_answer_is_an_error(serve: Serve) -> None:
    srv = serve([CLOSE], [ok(b"1"), CLOSE], [CLOSE])
    with srv.client() as c:
        with pytest.raises(ClientError) as err:
            c.request("GET", "/first")
        assert err.value.status == 0
        assert err.value.reason == "the daemon closed the connection (GET /first)"
        assert c.request("GET", "/1")[2] == b"1"
        with pytest.raises(ClientError, match=r"closed the connection \(GET /2\)"):
            c.request("GET", "/2")  # closed on reuse, retried once, closed again: no more
    srv.stop()
    assert srv.connections == 3


def test_an_answer_cut_short_is_an_error_not_a_retry(serve: Serve) -> None:
    srv = serve([ok(b"1"), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    with srv.client() as c:
        assert c.request("GET", "/1")[2] == b"1"
        with pytest.raises(ClientError, match=r"in the middle of its answer \(POST /2\)"):
            c.request("POST", "/2", b"x")
    srv.stop()
    assert srv.connections == 1


@pytest.mark.parametrize("status_line", [
    b"HTTP/1.1 2OO OK", b"HTTP/1.1 20 OK", b"HTTP/2 200 OK", b"ICY 200 OK", b"garbage", b"",
    b"HTTP/1.1 200 OK\r\nNo colon here", b"HTTP/1.1 200 OK\r\nBad Name: x",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1", b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2",
    b"HTTP/1.1 101 Switching Protocols",
])
def test_a_malformed_answer_is_a_client_error(serve: Serve, status_line: bytes) -> None:
    srv = serve([status_line + b"\r\n\r\n"], [ok(b"again")])
    with srv.client() as c:
        with pytest.raises(ClientError, match="malformed response from the daemon") as err:
            c.request("GET", "/x")
        assert err.value.status == 0
        assert c.request("GET", "/y")[2] == b"again"  # on a new connection
    srv.stop()
    assert srv.connections == 2


@pytest.mark.parametrize("terminated", [True, False])
def test_a_header_block_too_large_is_a_client_error(serve: Serve,
                                                    terminated: bool) -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100)
                                           for i in range(MAX_HEAD_BYTES // 100 + 10))
    srv = serve([big + b"Content-Length: 0\r\n\r\n" if terminated else big])
    with srv.client() as c, pytest.raises(ClientError, match=r"malformed.*header block"):
        c.request("GET", "/")


def test_a_connection_closes_itself_after_an_error(serve: Serve) -> None:
    srv = serve([b"garbage\r\n\r\n"], [ok(b"1")])
    with Connection(srv.path) as conn:
        with pytest.raises(ClientError, match="malformed"):
            conn.request("GET", "/x")
        assert conn.sock is None
        assert conn.request("GET", "/y").body == b"1"
    srv.stop()
    assert srv.connections == 2


def test_a_reset_in_the_middle_of_an_answer_is_not_the_idle_close_case(tmp_path: Path) -> None:
    """ECONNRESET after part of the answer came is an answer cut short (no retry of a request
    the server has seen), unlike a reset before any byte of it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")

    def close_unread() -> None:  # closing with the request unread: the peer gets ECONNRESET
        select.select([theirs], [], [], 10)
        theirs.close()

    closer = threading.Thread(target=close_unread)
    closer.start()
    try:
        with Connection(str(tmp_path / "unused.sock"), timeout=10) as conn:
            conn.sock = ours
            with pytest.raises(ClientError, match="in the middle of its answer"):
                conn.request("GET", "/x")
            assert conn.sock is None
    finally:
        closer.join(10)
        ours.close()
    assert theirs.fileno() == -1


def test_a_timeout_propagates_and_the_next_request_reconnects(serve: Serve) -> None:
    srv = serve([HANG], [ok(b"late")])
    with srv.client(timeout_s=0.2) as c:
        with pytest.raises(TimeoutError):
            c.request("GET", "/slow")
        # the reconnect is what is checked, not how fast the server answers on a loaded machine
        c._connection().timeout = 30.0
        assert c.request("GET", "/next")[2] == b"late"
    srv.stop()
    assert srv.connections == 2


def test_unreachable_daemon(tmp_path: Path) -> None:
    with Client(str(tmp_path / "none.sock")) as c, pytest.raises(ClientError) as err:
        c.request("GET", "/v2/health/live")
    assert err.value.status == 0
    assert err.value.reason.startswith(f"cannot reach the daemon at {tmp_path / 'none.sock'} (")
    assert "is `edgesched serve` running?" in err.value.reason
    dead = tmp_path / "dead.sock"  # the file is there, nobody listens: connection refused
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with Client(str(dead)) as c, pytest.raises(ClientError, match="cannot reach the daemon at"):
        c.live()


# ------------------------------------------------------------------------------ TCP
def test_tcp_connection_with_nodelay(serve: Serve) -> None:
    srv = serve([ok(b"tcp"), ok(b"again")], tcp=True)
    with srv.client() as c:
        assert c.request("GET", "/t")[2] == b"tcp"
        sock = c._connection().sock
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert c.request("GET", "/u")[2] == b"again"
    srv.stop()
    assert srv.connections == 1 and heads(srv)[0][1] == "Host: localhost"


def test_tcp_unreachable_names_host_and_port() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with Client(host="127.0.0.1", port=port) as c, pytest.raises(
            ClientError, match=rf"cannot reach the daemon at 127\.0\.0\.1:{port} "):
        c.ready()


def test_connection_needs_a_path_or_a_port() -> None:
    with pytest.raises(ValueError, match="socket path or a TCP port"):
        Connection()
