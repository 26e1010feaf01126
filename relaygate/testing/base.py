"""Shared parts of the provider emulators: fault injection, request recording, running a server.

Every emulator app has a control API under ``/_emulator``:
``POST /_emulator/faults`` (JSON ``FaultPlan`` fields), ``DELETE /_emulator/faults``,
``GET /_emulator/requests`` (what was received), ``DELETE /_emulator/requests``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web


@dataclass
class FaultPlan:
    """Faults to inject into the next requests (``count`` < 0: every request)."""

    status: int | None = None  # answer with this error status
    count: int = -1
    rate: float = 1.0  # probability that a request is hit
    retry_after: float | None = None
    latency_ms: float = 0.0  # added before answering (and before the first stream chunk)
    chunk_delay_ms: float = 0.0  # between stream chunks
    disconnect_after_chunks: int | None = None  # cut a stream after this many events
    drop_connection: bool = False  # close the socket without an answer
    error_code: str | None = None  # provider-specific error code / type to put in the error body
    message: str | None = None
    paths: list[str] | None = None  # only requests whose path contains one of these are hit
    line_ending: str | None = None  # "\r\n" or "\r": SSE lines end so (both legal); None: as the API frames them
    end_delay_ms: float = 0.0  # after a stream's last event, before its body ends (a server that flushes first)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultPlan:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class EmulatorState:
    """Mutable state of one emulator instance (requests seen, faults armed)."""

    faults: FaultPlan | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    record: bool = True
    max_recorded: int = 1000
    in_flight: int = 0
    cancelled: int = 0  # requests whose client went away before the answer was complete
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def take_fault(self, path: str) -> FaultPlan | None:
        """The armed fault plan if this request is hit by it (consuming one of ``count``)."""
        plan = self.faults
        if plan is None:
            return None
        if plan.paths and not any(p in path for p in plan.paths):
            return None
        if plan.count == 0:
            return None
        if plan.rate < 1.0 and self.rng.random() >= plan.rate:
            return None
        if plan.count > 0:
            plan.count -= 1
        return plan

    def remember(self, request: web.Request, body: bytes) -> None:
        if not self.record:
            return
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_len": len(body),
            # the client's port: requests on one pooled connection share it
            "port": (request.transport.get_extra_info("peername") or (None, None))[1] if request.transport else None,
        }
        try:
            entry["json"] = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            entry["body_b64"] = base64.b64encode(body[:65536]).decode()
        self.requests.append(entry)
        if len(self.requests) > self.max_recorded:
            del self.requests[: len(self.requests) - self.max_recorded]


STATE_KEY: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def add_control_routes(app: web.Application, state: EmulatorState) -> None:
    """Mount the ``/_emulator`` control API."""

    async def set_faults(request: web.Request) -> web.Response:
        try:
            state.faults = FaultPlan.from_json(await request.json())
        except (ValueError, TypeError) as e:
            return json_response({"error": str(e)}, 400)
        return json_response({"ok": True})

    async def clear_faults(request: web.Request) -> web.Response:
        state.faults = None
        return json_response({"ok": True})

    async def get_requests(request: web.Request) -> web.Response:
        return json_response({"requests": state.requests, "cancelled": state.cancelled,
                              "in_flight": state.in_flight})

    async def clear_requests(request: web.Request) -> web.Response:
        state.requests.clear()
        state.cancelled = 0
        return json_response({"ok": True})

    app.router.add_post("/_emulator/faults", set_faults)
    app.router.add_delete("/_emulator/faults", clear_faults)
    app.router.add_get("/_emulator/requests", get_requests)
    app.router.add_delete("/_emulator/requests", clear_requests)


def new_app(state: EmulatorState | None = None, *, client_max_size: int = 64 * 1024 * 1024) -> web.Application:
    """An aiohttp app with emulator state and the control API mounted."""
    app = web.Application(client_max_size=client_max_size)
    st = state or EmulatorState()
    app[STATE_KEY] = st
    add_control_routes(app, st)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tracked(handler: Handler) -> Handler:
    """Count in-flight requests and those cancelled by the client going away."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        state.in_flight += 1
        try:
            return await handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            state.cancelled += 1
            raise
        finally:
            state.in_flight -= 1

    return wrapper


async def apply_latency(plan: FaultPlan | None) -> None:
    if plan is not None and plan.latency_ms:
        await asyncio.sleep(plan.latency_ms / 1000)


async def drop_connection(request: web.Request) -> web.Response:
    """Close the socket without an answer (the returned response is never delivered)."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.05)
    return web.Response(status=500)


async def send_sse(request: web.Request, frames: Iterable[bytes], plan: FaultPlan | None,
                   done: bytes = b"data: [DONE]\n\n", *, cut_frame: bytes | None = None,
                   headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Stream SSE frames (each a complete event), applying the plan's chunk delay and mid-stream cut;
    ``done`` ends a complete stream (b"" for upstreams that send no terminator). At the cut the socket
    is closed, or, given ``cut_frame`` (an error event), the stream ends with that event. The plan's
    ``line_ending`` re-frames every line."""
    ending = plan.line_ending.encode() if plan is not None and plan.line_ending else None
    if ending is not None:
        def reframe(frame: bytes) -> bytes:
            return frame.replace(b"\r\n", b"\n").replace(b"\n", ending)
        frames = (reframe(f) for f in frames)
        done = reframe(done)
        cut_frame = reframe(cut_frame) if cut_frame is not None else None
    return await send_frames(request, frames, plan, "text/event-stream; charset=utf-8", done=done,
                             cut_frame=cut_frame, headers=headers)


async def send_frames(request: web.Request, frames: Iterable[bytes], plan: FaultPlan | None, content_type: str,
                      *, done: bytes = b"", cut_frame: bytes | None = None,
                      headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Stream complete frames of any framing (SSE, AWS event stream) the way ``send_sse`` does."""
    resp = web.StreamResponse(headers={"content-type": content_type, "cache-control": "no-cache",
                                       **(headers or {})})
    await resp.prepare(request)
    delay = (plan.chunk_delay_ms / 1000) if plan else 0.0
    cut = plan.disconnect_after_chunks if plan else None
    for i, frame in enumerate(frames):
        if cut is not None and i >= cut:
            if cut_frame is not None:
                await resp.write(cut_frame)
                await resp.write_eof()
                return resp
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(frame)
        if delay:
            await asyncio.sleep(delay)
    if done:
        await resp.write(done)
    if plan is not None and plan.end_delay_ms:
        await asyncio.sleep(plan.end_delay_ms / 1000)
    await resp.write_eof()
    return resp


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """Run an aiohttp app on 127.0.0.1 in a thread of its own (for tests and in-process use)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    def start(self) -> BackgroundServer:
        self._thread = threading.Thread(target=self._run, name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("emulator did not start within 10 s")
        if self._error:
            raise RuntimeError(f"emulator failed to start: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            # handler_cancellation: a handler still working when its client leaves is cancelled (and counted
            # in ``cancelled``), as a real server stops work nobody waits for
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, reuse_address=True)
            loop.run_until_complete(site.start())
        except BaseException as e:  # surfaced to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        # handlers still sleeping (a slow answer whose client went away) are cancelled and awaited, so
        # that closing the loop does not destroy pending tasks ("Task was destroyed but it is pending")
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_forever(app: web.Application, host: str, port: int) -> None:
    """Serve an emulator in the foreground (``relaygate emulate``)."""
    web.run_app(app, host=host, port=port, access_log=None, print=lambda *_: None)
