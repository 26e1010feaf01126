"""SIGTERM drains: readiness turns 503 at once, the listener closes, calls in flight finish within
``server.drain_timeout``; what still runs then is ended by the server (an SSE error event, a 503) and its
row says ``server_shutdown``; a second SIGTERM ends them at once; the log is flushed and the exit code is 0.
Each test is bounded well under a minute, 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import requests

from relaygate.config import ConfigError, parse_config
from relaygate.server.reload import restart_only_changes
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import DIRECT_DRAIN_IDLE_GRACE, GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

from .conftest import UPSTREAM_KEY, openai_model
from .process_support import GatewayProcess, gateway_process
from .test_requestlog import log_rows
from .test_server_limits import read_response, request_bytes

LONG = " ".join(f"w{i}" for i in range(45))  # one SSE chunk a word, a second apart: a 45 s stream


@pytest.fixture
def slow_streamer() -> Iterator[BackgroundServer]:
    """An OpenAI emulator that streams one chunk a second."""
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as srv:
        requests.post(srv.url + "/_emulator/faults", json={"chunk_delay_ms": 1000}, timeout=5)
        yield srv


@pytest.fixture
def slow_answerer() -> Iterator[BackgroundServer]:
    """An OpenAI emulator that answers after 30 s."""
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as srv:
        requests.post(srv.url + "/_emulator/faults", json={"latency_ms": 30_000}, timeout=5)
        yield srv


def chat(model: str, content: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


class StreamReader:
    """Reads a relayed SSE stream, noting each event and when it came."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any] | str]] = []
        self.started = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                self.events.append((time.monotonic(), "[DONE]" if data == b"[DONE]" else orjson.loads(data)))
                if len(self.events) >= 2:
                    self.started.set()

    def content_after(self, t: float) -> int:
        return sum(1 for at, e in self.events if at > t and isinstance(e, dict) and e.get("choices"))

    def error(self) -> tuple[float, dict[str, Any]] | None:
        for at, e in self.events:
            if isinstance(e, dict) and "error" in e:
                return at, e["error"]
        return None


async def wait_refused(gw: GatewayProcess, within: float = 1.0) -> float:
    """Seconds until the listener refuses a new connection."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if not await asyncio.to_thread(gw.accepts):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError("the gateway still accepts connections")


def test_a_45s_stream_across_sigterm_gets_an_error_event_and_a_shutdown_row(
        slow_streamer: BackgroundServer, slow_answerer: BackgroundServer, tmp_path: Path) -> None:
    config = {"models": [openai_model("s", slow_streamer), openai_model("slow", slow_answerer, timeout=60)],
              "server": {"drain_timeout": 2}}
    with gateway_process(tmp_path, config) as gw:
        stream = StreamReader()
        whole: dict[str, Any] = {}

        async def scenario() -> float:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                async def call() -> None:
                    async with s.post(gw.url + "/v1/chat/completions", json=chat("slow", "hi", False)) as r:
                        whole.update(status=r.status, body=await r.json())

                tasks = [asyncio.ensure_future(stream.run(s, gw.url, chat("s", LONG, True))),
                         asyncio.ensure_future(call())]
                await asyncio.wait_for(stream.started.wait(), 10)
                for _ in range(250):
                    if slow_answerer.state.in_flight:
                        break
                    await asyncio.sleep(0.02)
                assert slow_answerer.state.in_flight == 1
                sigterm = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                assert await wait_refused(gw) < 1  # the listener closes at once
                await asyncio.wait_for(asyncio.gather(*tasks), 15)
                return sigterm

        sigterm = asyncio.run(scenario())
        assert gw.proc.wait(15) == 0
    assert stream.content_after(sigterm) >= 1  # the stream went on while the drain lasted
    cut = stream.error()
    assert cut is not None, stream.events[-3:]
    at, error = cut
    assert 1.5 < at - sigterm < 5
    assert error["code"] == "server_shutdown" and error["type"] == "api_error"
    assert stream.events[-1][1] == {"error": error}  # the last event: nothing follows the cut
    assert whole["status"] == 503 and whole["body"]["error"]["code"] == "server_shutdown"
    rows = {r["model"]: r for r in log_rows(f"sqlite:///{tmp_path}/gateway.db")}
    assert {m: (r["status"], r["error"]) for m, r in rows.items()} == {
        "s": (503, "server_shutdown"), "slow": (503, "server_shutdown")}
    # the cut stream is billed for what it delivered (its usage chunk never came): estimated, and logged so
    delivered = stream.content_after(0)
    assert rows["s"]["usage_estimated"] and delivered <= rows["s"]["completion_tokens"] <= delivered + 1
    assert rows["s"]["cost_nano"] > 0 and not rows["slow"]["usage_estimated"]
    assert "Traceback" not in gw.output() and "client_closed" not in gw.output()


def test_a_stream_that_ends_within_the_drain_completes(slow_streamer: BackgroundServer, tmp_path: Path) -> None:
    with gateway_process(tmp_path, {"models": [openai_model("s", slow_streamer)],
                                    "server": {"drain_timeout": 20}}) as gw:
        stream = StreamReader()

        async def scenario() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                task = asyncio.ensure_future(stream.run(s, gw.url, chat("s", "one two three", True)))
                await asyncio.wait_for(stream.started.wait(), 10)
                gw.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(task, 15)

        asyncio.run(scenario())
        assert gw.proc.wait(15) == 0
    assert stream.events[-1][1] == "[DONE]" and stream.error() is None
    [row] = log_rows(f"sqlite:///{tmp_path}/gateway.db")
    assert (row["status"], row["error"]) == (200, None)


def test_a_second_sigterm_ends_the_streams_at_once(slow_streamer: BackgroundServer, tmp_path: Path) -> None:
    with gateway_process(tmp_path, {"models": [openai_model("s", slow_streamer)],
                                    "server": {"drain_timeout": 30}}) as gw:
        stream = StreamReader()

        async def scenario() -> float:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                task = asyncio.ensure_future(stream.run(s, gw.url, chat("s", LONG, True)))
                await asyncio.wait_for(stream.started.wait(), 10)
                gw.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                second = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(task, 10)
                return second

        second = asyncio.run(scenario())
        assert gw.proc.wait(10) == 0
    cut = stream.error()
    assert cut is not None and cut[1]["code"] == "server_shutdown"
    assert cut[0] - second < 1.5
    [row] = log_rows(f"sqlite:///{tmp_path}/gateway.db")
    assert (row["status"], row["error"]) == (503, "server_shutdown")


def test_readiness_turns_503_as_the_drain_begins(openai_emulator: BackgroundServer,
                                                 start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    assert requests.get(gw.url + "/health/ready", timeout=5).json()["status"] == "ready"
    gw.app.begin_drain()
    r = requests.get(gw.url + "/health/ready", timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "draining"
    assert requests.get(gw.url + "/health", timeout=5).status_code == 200  # alive, just not taking more


DEMO = {"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]}


def test_an_idle_connection_is_closed_once_idle_for_the_grace_after_the_drain_began(
        start_gateway: Callable[..., GatewayThread]) -> None:
    grace = 1.0
    # a keep-alive timeout far beyond the grace: only the drain's grace can close the idle connection soon
    gw = start_gateway({"models": [DEMO], "server": {"drain_idle_grace": grace, "keepalive_timeout": 30}})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as idle, \
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as used:
        for s in (idle, used):
            s.sendall(request_bytes())
            status, headers, _ = read_response(s)
            assert status == 200 and "connection" not in headers  # kept alive
        asked = time.monotonic()
        stopper = threading.Thread(target=gw.stop)
        stopper.start()
        deadline = time.monotonic() + 5
        while not gw.app.draining:
            assert time.monotonic() < deadline, "the drain did not begin"
            time.sleep(0.005)
        seen = time.monotonic()
        # a request on a kept-alive connection within the grace is answered, and the answer ends it
        used.sendall(request_bytes())
        status, headers, _ = read_response(used)
        assert status == 200 and headers["connection"] == "close"
        assert used.recv(10) == b""
        idle.settimeout(grace + 10)
        assert idle.recv(10) == b""  # closed by the server, without a word
        closed = time.monotonic()
        stopper.join(10)
        stopped = time.monotonic()
    assert not stopper.is_alive()
    assert closed - asked >= grace  # not before the grace (the drain began after `asked`)
    assert closed - seen < grace + 1.0, closed - seen  # the grace, and a busy machine's scheduling
    assert stopped - closed < 1.0, stopped - closed  # nothing left: the stop goes on at once


def test_a_client_pool_keeping_connections_alive_does_not_hold_a_test_gateways_stop(
        start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [DEMO]})
    assert gw.config.server.drain_idle_grace == DIRECT_DRAIN_IDLE_GRACE  # a direct client: no proxy in front
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(gw.url + "/health", timeout=5).status_code == 200
        started = time.monotonic()
        gw.stop()
        took = time.monotonic() - started
        with pytest.raises(requests.ConnectionError):
            s.get(gw.url + "/health", timeout=5)
    assert took < 1.0, took  # it waited for the keep-alive timeout (5.5 s) before


def test_the_drain_grace_is_validated_and_waits_for_a_restart() -> None:
    assert parse_config({}, {}).server.drain_idle_grace == 1.0  # the production default: a proxy in front
    for bad in (-0.1, 61, "soon"):
        with pytest.raises(ConfigError) as e:
            parse_config({"server": {"drain_idle_grace": bad}}, {})
        assert [err for err in e.value.errors if err.startswith("server.drain_idle_grace:")], e.value.errors
    old, new = parse_config({}, {}), parse_config({"server": {"drain_idle_grace": 0.2}}, {})
    assert restart_only_changes(old, new) == ["server.drain_idle_grace: changed; takes effect at the next start"]
