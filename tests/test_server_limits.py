"""The HTTP server bounds what a client can hold: header sizes, slow and idle connections, the connection
count, file descriptors; and client text is escaped in log lines. Every test targets 127.0.0.1 and is
bounded in time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

from relaygate.core.errors import GatewayError
from relaygate.server.guard import _NAME_OK, _VALUE_OK, TESTED_UVICORN, default_max_connections
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from relaygate.testing.transport import HeldTransport

from .conftest import UPSTREAM_KEY, openai_model
from .process_support import REPO, gateway_process
from .test_requestlog import gateway_rows

CHAT = json.dumps({"model": "mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def request_bytes(path: str = "/health", headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                  method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body or method == "POST":
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_response(sock: socket.socket, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response with a content-length (status, headers, body); reads no further, so that
    a pipelined second response stays in the socket."""
    sock.settimeout(timeout)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {head!r}")
        head += byte
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, raw: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        return read_response(s, timeout)


def openai_error(body: bytes) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


@pytest.fixture
def limited(openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread]
            ) -> Callable[..., GatewayThread]:
    def start(**server: Any) -> GatewayThread:
        return start_gateway({"models": [openai_model("mini", openai_emulator)], "server": server})
    return start


# ---- header limits ------------------------------------------------------------------------------------

def test_an_oversized_header_gets_431(limited: Callable[..., GatewayThread]) -> None:
    gw = limited()
    status, headers, body = exchange(gw.port, request_bytes(headers=[("x-big", "a" * 9000)]))
    assert status == 431 and headers["connection"] == "close"
    assert openai_error(body)["code"] == "request_header_fields_too_large"


def test_a_header_block_over_the_total_limit_gets_431_before_it_is_buffered(
        limited: Callable[..., GatewayThread]) -> None:
    gw = limited()
    # many header lines each under the per-line limit, 256 KiB in all, sent without the blank line that ends
    # them: the server answers from what it has, long before the client is done
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        for i in range(64):
            s.sendall(f"x-h{i}: {'b' * 4000}\r\n".encode())
        status, _, body = read_response(s)
    assert status == 431
    assert openai_error(body)["type"] == "invalid_request_error"


def test_too_many_headers_get_431(limited: Callable[..., GatewayThread]) -> None:
    gw = limited()
    status, _, body = exchange(gw.port, request_bytes(headers=[(f"x-h{i}", "v") for i in range(200)]))
    assert status == 431
    assert "100 headers" in openai_error(body)["message"]


def test_header_limits_come_from_the_config(limited: Callable[..., GatewayThread]) -> None:
    gw = limited(max_headers=20, max_header_line_bytes=20_000)
    assert exchange(gw.port, request_bytes(headers=[("x-big", "a" * 9000)]))[0] == 200
    assert exchange(gw.port, request_bytes(headers=[(f"x-h{i}", "v") for i in range(30)]))[0] == 431


def test_an_overlong_url_gets_414(limited: Callable[..., GatewayThread]) -> None:
    gw = limited()
    status, _, body = exchange(gw.port, request_bytes(path="/health?" + "q" * 10_000))
    assert status == 414
    assert openai_error(body)["code"] == "uri_too_long"


def test_ordinary_requests_keep_alive_pipeline_and_continue(limited: Callable[..., GatewayThread]) -> None:
    """What the guarded protocol took over from uvicorn still works: keep-alive, pipelining, 100-continue."""
    gw = limited()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(request_bytes() + request_bytes("/health/ready"))  # two requests in one write
        assert read_response(s)[0] == 200
        assert json.loads(read_response(s)[2])["status"] == "ready"
        head = request_bytes("/v1/chat/completions", [("expect", "100-continue")], CHAT, "POST")[:-len(CHAT)]
        s.sendall(head)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(CHAT)
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"].endswith("hi")


# ---- slow and idle clients ----------------------------------------------------------------------------

def test_slow_loris_connections_are_cut_after_the_header_timeout(
        limited: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture) -> None:
    gw = limited(header_timeout=1)

    async def loris() -> float:
        """Sends a header byte every 0.2 s; returns how long the server kept the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        started = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nx-slow: ")
        try:
            while time.monotonic() - started < 8:
                writer.write(b"a")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.2)
                except TimeoutError:
                    continue
                if data.startswith(b"HTTP/1.1 408"):
                    assert b'"code":"request_timeout"' in data
                    await asyncio.wait_for(reader.read(), 3)  # then the server closes
                    return time.monotonic() - started
                if not data:
                    return time.monotonic() - started
        except ConnectionError:
            return time.monotonic() - started
        finally:
            writer.close()
        return time.monotonic() - started

    async def scenario() -> list[float]:
        return await asyncio.wait_for(asyncio.gather(*(loris() for _ in range(50))), 20)

    with caplog.at_level(logging.WARNING, logger="relaygate.server"):
        held = asyncio.run(scenario())
    assert max(held) < 3, held  # 1 s and the sweep's granularity; without the timeout: the whole 8 s
    assert exchange(gw.port, request_bytes())[0] == 200
    assert any("slow client" in r.getMessage() for r in caplog.records)


def test_a_stalled_body_gets_408_and_its_row(limited: Callable[..., GatewayThread]) -> None:
    gw = limited(body_timeout=1)
    raw = request_bytes("/v1/chat/completions", body=CHAT, method="POST")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(raw[:-10])  # all but the body's last 10 bytes, then silence
        started = time.monotonic()
        status, _, body = read_response(s)
        assert status == 408 and time.monotonic() - started < 3
        assert openai_error(body)["code"] == "request_timeout"
    rows = gateway_rows(gw)
    assert [(r["status"], r["route"], r["error"]) for r in rows] == [(408, "chat/completions", "bad_request")]


def test_a_client_that_leaves_its_answer_unread_is_cut(limited: Callable[..., GatewayThread],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    gw = limited(body_timeout=1)
    # 128 choices echoing 64 KiB each: an 8 MiB answer, more than the socket buffers hold
    body = json.dumps({"model": "mini", "n": 128, "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", gw.port))
        with caplog.at_level(logging.WARNING, logger="relaygate.server"):
            s.sendall(request_bytes("/v1/chat/completions", body=body, method="POST"))
            time.sleep(4)  # reading nothing
            got = b""
            try:
                while chunk := s.recv(1 << 20):
                    got += chunk
            except ConnectionError:
                pass
    head, _, rest = got.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert length > 8_000_000 and len(rest) < length  # cut short
    assert any("left its answer unread" in r.getMessage() for r in caplog.records)


def test_an_idle_keep_alive_connection_is_closed(limited: Callable[..., GatewayThread]) -> None:
    gw = limited(keepalive_timeout=0.5)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(request_bytes())
        assert read_response(s)[0] == 200
        started = time.monotonic()
        assert s.recv(10) == b""  # closed by the server, without a word
        assert time.monotonic() - started < 2


def test_a_connection_answered_before_its_body_came_is_kept_alive_then_closed_when_idle(
        limited: Callable[..., GatewayThread]) -> None:
    gw = limited(max_body_bytes=1000, keepalive_timeout=0.5, body_timeout=1)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        body = b'{"x": "' + b"y" * 4990 + b'"}'
        raw = request_bytes("/v1/chat/completions", body=body, method="POST")
        for _ in range(2):
            s.sendall(raw[:-len(body)])  # the head declares 5,000 bytes: refused before the body is read
            assert read_response(s)[0] == 413
            s.sendall(body)
        started = time.monotonic()
        assert s.recv(10) == b""  # closed once idle after its body came
        assert time.monotonic() - started < 2
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(raw[:-len(body)])
        assert read_response(s)[0] == 413
        s.sendall(body + request_bytes())
        assert read_response(s)[0] == 200  # the connection goes on


def healthy_in_a_row(port: int, n: int, within: float) -> bool:
    """Whether ``n`` chat calls in a row get 200 within ``within`` seconds (refusals and resets start over)."""
    deadline = time.monotonic() + within
    ok = 0
    while ok < n and time.monotonic() < deadline:
        try:
            ok = ok + 1 if exchange(port, request_bytes("/v1/chat/completions", body=CHAT, method="POST"))[0] \
                == 200 else 0
        except OSError:
            ok = 0
        if not ok:
            time.sleep(0.05)
    return ok == n


def test_the_connection_cap_answers_503_and_healthy_requests_pass_once_idle_ones_are_cut(
        limited: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture) -> None:
    gw = limited(max_connections=20, header_timeout=1.5)
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(20)]
    try:
        time.sleep(0.1)
        with caplog.at_level(logging.WARNING, logger="relaygate.server"):
            status, headers, body = exchange(gw.port, request_bytes())
        assert status == 503 and headers["retry-after"] == "1"
        assert openai_error(body)["code"] == "server_busy"
        assert any("connection cap" in r.getMessage() for r in caplog.records)
        assert healthy_in_a_row(gw.port, 10, within=10)  # once the idle ones are cut, after 1.5 s
    finally:
        for s in idle:
            s.close()


def test_the_default_cap_keeps_the_gateway_answering_under_an_fd_limit(
        openai_emulator: BackgroundServer, tmp_path: Path) -> None:
    """1,100 idle connections against a gateway limited to 1,024 open files: refused with 503 above the cap
    (derived from the limit), and healthy requests succeed once the idle ones are cut."""
    config = {"models": [openai_model("mini", openai_emulator)], "server": {"header_timeout": 4}}
    idle: list[socket.socket] = []
    with gateway_process(tmp_path, config, open_files=1024) as gw:
        try:
            for _ in range(1100):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
                except OSError:
                    break
            time.sleep(1.5)  # the refusals of the flood linger a second at most
            status, _, body = exchange(gw.port, request_bytes())
            assert status == 503 and openai_error(body)["code"] == "server_busy"
            assert healthy_in_a_row(gw.port, 10, within=15)
        finally:
            for s in idle:
                s.close()
        gw.proc.terminate()
        assert gw.proc.wait(15) == 0
    text = gw.output()
    assert "at most 448 connections" in text  # (1024 - 128) / 2
    assert "connection cap" in text and "Traceback" not in text


def test_the_default_cap_is_derived_from_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == max(16, (soft - 128) // 2)


# ---- file descriptors -----------------------------------------------------------------------------------

@pytest.fixture
def few_files() -> Iterator[Callable[[], list[int]]]:
    """``exhaust()`` fills this process's open-file table (its limit lowered to what is open + 64); the
    limit and the descriptors are given back at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []

    def exhaust() -> list[int]:
        highest = max(int(f) for f in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 64, hard))
        while True:
            try:
                taken.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                return taken

    yield exhaust
    for fd in taken:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_file_descriptors_on_upstream_connect_is_a_logged_503(
        openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread],
        few_files: Callable[[], list[int]], caplog: pytest.LogCaptureFixture) -> None:
    # no discovery: its start-up listing would leave a pooled upstream connection that the call reuses, and
    # this test needs the call to open one
    gw = start_gateway({"models": [openai_model("mini", openai_emulator)], "server": {"header_timeout": 30},
                        "discovery": {"enabled": False}})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:  # opened while files remain
        s.sendall(request_bytes())
        assert read_response(s)[0] == 200
        with caplog.at_level(logging.WARNING, logger="relaygate"):
            few_files()
            s.sendall(request_bytes("/v1/chat/completions", body=CHAT, method="POST"))
            status, _, body = read_response(s)
            time.sleep(1.5)  # a sweep of the watchdog, which notices too
    assert status == 503
    err = openai_error(body)
    assert err["code"] == "out_of_file_descriptors" and "file descriptors" in err["message"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("out of file descriptors" in m and "upstream" in m for m in messages)
    assert any("new connections are dropped" in m for m in messages)


# ---- log lines ------------------------------------------------------------------------------------------

def test_a_client_path_is_escaped_in_log_lines(openai_emulator: BackgroundServer,
                                               start_gateway: Callable[..., GatewayThread],
                                               caplog: pytest.LogCaptureFixture) -> None:
    gw = start_gateway({"models": [openai_model("mini", openai_emulator)]})

    async def boom(gateway: Any, req: Any) -> Any:
        raise RuntimeError("a bug")

    gw.app.routes.add("GET", "/boom/{rest}", boom)
    with caplog.at_level(logging.ERROR, logger="relaygate"):
        status, _, body = exchange(gw.port, request_bytes("/boom/x%0d%0aINFO%20forged%20line%00%5cr"))
    assert status == 500 and openai_error(body)["code"] == "internal_error"
    lines = [r.getMessage() for r in caplog.records if "internal error on" in r.getMessage()]
    assert len(lines) == 1
    assert not re.search(r"[\r\n\x00]", lines[0])
    assert "/boom/x\\r\\nINFO forged line\\x00\\\\r" in lines[0]


# ---- the pinned uvicorn ---------------------------------------------------------------------------------

def test_the_guarded_protocol_follows_the_locked_uvicorn() -> None:
    """guard.py replaces some of uvicorn's httptools protocol methods whole: a new uvicorn in the lock must
    be read against them (and TESTED_UVICORN moved) before it is used."""
    lock = (REPO / "requirements.lock").read_text()
    pinned = re.search(r"^uvicorn==([\w.]+)", lock, re.M)
    assert pinned is not None and pinned.group(1) == TESTED_UVICORN
    assert uvicorn.__version__ == TESTED_UVICORN


def test_the_guarded_cycle_refuses_the_header_bytes_uvicorn_refuses() -> None:
    """GuardedCycle checks a response head with two translates instead of uvicorn's regular expressions per
    header: the same bytes must be refused, in names and in values."""
    for c in range(256):
        b = bytes([c])
        assert (HEADER_RE.search(b) is None) == (not b.translate(None, _NAME_OK)), c
        assert (HEADER_VALUE_RE.search(b) is None) == (not b.translate(None, _VALUE_OK)), c


def test_refusals_are_openai_errors() -> None:
    from relaygate.server.guard import _answer

    raw = _answer(GatewayError("busy", status=503, code="server_busy", retry_after=1.0))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"retry-after: 1" in head
    assert json.loads(body) == {"error": {"message": "busy", "type": "api_error", "param": None,
                                          "code": "server_busy"}}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_websocket_upgrade_is_answered_as_plain_http_without_a_warning(
        start_gateway: Callable[..., GatewayThread], openai_emulator: BackgroundServer) -> None:
    """The gateway serves no websockets (uvicorn runs with ws=none, and the websockets package is never
    imported): an ``Upgrade: websocket`` request gets its route's plain answer, and leaves no log line."""
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    handler = Records()
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's own logger (it does not propagate)
    uvicorn_log.addHandler(handler)
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
                      b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            head = s.recv(65536)
    finally:
        uvicorn_log.removeHandler(handler)
    assert head.startswith(b"HTTP/1.1 200 ") and b'"object":"list"' in head.replace(b" ", b"")
    assert [r.getMessage() for r in handler.records] == []


# ---- upstream connections ------------------------------------------------------------------------------

@pytest.mark.parametrize("cap", ["max_upstream_connections", "max_upstream_connections_per_origin"])
def test_upstream_connections_are_capped_the_excess_waits_then_gets_a_logged_503(
        cap: str, start_gateway: Callable[..., GatewayThread]) -> None:
    """server.max_upstream_connections (every upstream together) or ..._per_origin (one upstream host): 2
    answers of 0.4 s at a time. With room in the queue every call is served, the upstream never holding more
    than 2; past upstream_queue_timeout the rest get 503 upstream_connections_full, each with its row."""
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as emu:
        emu.state.faults = FaultPlan(latency_ms=400)
        seen: list[int] = []

        async def calls(url: str, n: int) -> list[int]:
            async def watch() -> None:
                while True:
                    seen.append(emu.state.in_flight)
                    await asyncio.sleep(0.01)

            watcher = asyncio.ensure_future(watch())
            async with aiohttp.ClientSession() as s:
                async def one() -> int:
                    async with s.post(url, data=CHAT, headers={"content-type": "application/json"}) as r:
                        await r.read()
                        return r.status
                statuses = await asyncio.gather(*(one() for _ in range(n)))
            watcher.cancel()
            return list(statuses)

        patient = start_gateway({"models": [openai_model("mini", emu)],
                                 "server": {cap: 2, "upstream_queue_timeout": 10}})
        assert asyncio.run(calls(patient.base_url + "/chat/completions", 6)) == [200] * 6
        assert max(seen) == 2
        hasty = start_gateway({"models": [openai_model("mini", emu)],
                               "server": {cap: 2, "upstream_queue_timeout": 0.2}})
        statuses = asyncio.run(calls(hasty.base_url + "/chat/completions", 6))
        assert sorted(statuses) == [200, 200, 503, 503, 503, 503]
        rows = gateway_rows(hasty, expected=6)
        refused = [r for r in rows if r["status"] == 503]
        assert len(refused) == 4 and all(r["error"] == "server_busy" for r in refused)
        assert all("upstream connections are all in use" in r["error_message"] for r in refused)


@pytest.mark.parametrize("extra", [[], [(b"Transfer-Encoding", b"chunked")], [(b"Connection", b"Keep-Alive, Close")],
                                   [(b"content-length", b"7")]])
def test_the_guarded_protocol_reads_and_writes_heads_as_uvicorn_does(extra: list[tuple[bytes, bytes]]) -> None:
    """GuardedProtocol's header callbacks and GuardedCycle's head, which replace uvicorn's whole: the scope, the
    expect flag, the head written and the cycle's state are uvicorn's for the same bytes."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from relaygate.config import ServerConfig
    from relaygate.server.guard import Watchdog, protocol_class

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async def run() -> list[tuple[Any, ...]]:
        config = Config(app, http="httptools", lifespan="off", access_log=False)
        config.load()
        seen = []
        for cls in (HttpToolsProtocol, protocol_class(Watchdog(ServerConfig()))):
            p = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
            p._start_asgi_task = lambda cycle, app: None  # type: ignore[method-assign]
            transport = HeldTransport()
            p.connection_made(transport)
            p.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: A b\r\n"
                            b"EXPECT: 100-Continue\r\nContent-Length: 2\r\n\r\n")
            await p.cycle.send({"type": "http.response.start", "status": 200, "headers": [
                (b"Content-Type", b"application/json"), (b"Content-Length", b"2"), (b"x-relaygate-cache", b"hit"),
                *extra]})
            seen.append((p.scope["headers"], p.expect_100_continue, transport.data, p.cycle.keep_alive,
                         p.cycle.chunked_encoding, p.cycle.expected_content_length))
            p.connection_lost(None)
        return seen

    uvicorns, ours = asyncio.run(run())
    assert ours == uvicorns
    assert ours[0][1] == (b"x-mixed-case", b"A b") and ours[1]


@pytest.mark.parametrize("paused", [False, True])
def test_the_guarded_cycle_writes_header_lines_as_uvicorn_writes_their_pairs(paused: bool) -> None:
    """Header lines in wire form (the key's x-ratelimit-*, server/http.py HEAD_LINES) end the head GuardedCycle
    writes, as uvicorn writes the same headers given as pairs; a cycle whose transport's writes are paused hands
    the head to uvicorn's send, the lines as pairs."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from relaygate.config import ServerConfig
    from relaygate.core.call import header_pairs
    from relaygate.server.guard import Watchdog, protocol_class
    from relaygate.server.http import HEAD_LINES

    lines = b"x-ratelimit-limit-requests: 5\r\nx-ratelimit-remaining-requests: 4\r\n"
    head = [(b"content-type", b"application/json"), (b"content-length", b"2")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async def run() -> list[bytes]:
        config = Config(app, http="httptools", lifespan="off", access_log=False)
        config.load()
        written = []
        for cls in (HttpToolsProtocol, protocol_class(Watchdog(ServerConfig()))):
            p = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
            p._start_asgi_task = lambda cycle, app: None  # type: ignore[method-assign]
            transport = HeldTransport()
            p.connection_made(transport)
            p.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
            p.flow.write_paused = paused  # (drain() returns at once: the transport never asked for a pause)
            start: Any = {"type": "http.response.start", "status": 200, "headers": head + header_pairs(lines)}
            if cls is not HttpToolsProtocol:
                assert HEAD_LINES in p.scope["extensions"]
                start = {"type": "http.response.start", "status": 200, "headers": head, HEAD_LINES: lines}
            else:
                assert "extensions" not in p.scope
            await p.cycle.send(start)
            written.append(bytes(transport.data))
            p.connection_lost(None)
        return written

    uvicorns, ours = asyncio.run(run())
    assert ours == uvicorns and lines in ours
