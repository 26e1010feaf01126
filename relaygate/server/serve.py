"""The HTTP server: uvicorn with the guarded protocol, and a stop that drains before it cuts.

On SIGTERM (or SIGINT) readiness turns 503 at once, the listener closes, each kept-alive connection closes
after its next answer, or once it stayed idle for ``server.drain_idle_grace`` (not at once: a proxy may be
sending a request on it), and the calls and streams in flight get ``server.drain_timeout`` seconds to finish;
the stop goes on as soon as no call and no connection is left. Those still running then are ended by the
server: a stream gets an error event, a whole answer a 503, and each call's row says
``server_shutdown``. A second signal ends them at once. Either way the request log is flushed and the process
exits 0. SIGHUP reloads the config (server/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Generator
from types import FrameType

import uvicorn

from relaygate.core.errors import SHUTDOWN_CUT
from relaygate.server.app import App
from relaygate.server.guard import GuardedProtocol, Watchdog, protocol_class

log = logging.getLogger("relaygate.server")

CUT_GRACE = 2.0  # seconds the calls ended at shutdown get to send their error event and write their rows
DRAIN_POLL = 0.05  # seconds between looks at the calls and connections left while draining


class GatewayServer(uvicorn.Server):
    """uvicorn's server for one ``App``: guarded connections, a configurable drain, exit 0 after a signal."""

    def __init__(self, app: App, host: str, port: int, parent: int | None = None) -> None:
        settings = app.config.server
        self.app = app
        self.parent = parent  # a worker's supervisor: should it vanish, the worker drains and stops
        self.watchdog = Watchdog(settings)
        self.drain_timeout = settings.drain_timeout
        self.drain_idle_grace = settings.drain_idle_grace
        super().__init__(uvicorn.Config(
            app, host=host, port=port, loop="uvloop", http=protocol_class(self.watchdog), lifespan="on",
            access_log=False, log_level="warning", server_header=False, date_header=False, ws="none",
            proxy_headers=False))
        self._sweeper: asyncio.Task[None] | None = None
        self._orphan_watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None  # set (on the loop) when should_exit is: wakes main_loop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await super().startup(sockets)
        if self.started:
            self._sweeper = asyncio.create_task(self.watchdog.run(self.server_state.connections))
            if self.parent is not None:
                self._orphan_watch = asyncio.create_task(self._watch_parent(self.parent))

    async def _watch_parent(self, parent: int) -> None:
        # polled: nothing signals a parent's death (short of Linux's PR_SET_PDEATHSIG)
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(1.0)
        log.error("the supervisor (pid %d) is gone: this worker drains and stops", parent)
        self.handle_exit(signal.SIGTERM, None)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, without raising the signal again at the end: a gateway that stopped cleanly exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        original[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.handle_reload)
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_reload(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP: read the config again (server/reload.py); the handler runs on the loop's own thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.app.reloader.reload_soon, "SIGHUP")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # a second signal: end what is still running now
            self.force_exit = True
        self.should_exit = True
        self.app.begin_drain()
        self._wake()

    def request_stop(self) -> None:
        """Stop as a signal would (the drain, then exit), from any thread."""
        self.should_exit = True
        self._wake()

    def _wake(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed already: nothing to wake
                loop.call_soon_threadsafe(stop.set)

    async def main_loop(self) -> None:
        """uvicorn's (a tick every 0.1 s: its default headers, its request limit, ``should_exit``), except that
        a stop wakes it at once rather than at the next tick."""
        assert self._stop is not None
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.begin_drain()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        began = time.monotonic()
        for conn in list(state.connections):
            if isinstance(conn, GuardedProtocol):  # always (the only protocol this server runs)
                conn.drain(began)  # busy ones close once their answer is sent, idle ones after the grace
            else:
                conn.shutdown()
        tasks = state.tasks
        if tasks:
            log.info("stopping: %d call(s) in flight get up to %g s to finish (server.drain_timeout)",
                     len(tasks), self.drain_timeout)
        deadline = began + self.drain_timeout
        # polled: a signal handler sets force_exit, and uvicorn's task set has no event to wait on
        while not self.force_exit and (tasks or state.connections):
            now = time.monotonic()
            if now >= deadline:
                break
            wake = min(deadline, now + DRAIN_POLL)
            for conn in list(state.connections):
                if isinstance(conn, GuardedProtocol):
                    due = conn.idle_until(self.drain_idle_grace)
                    if due is None:
                        continue
                    if due <= now:
                        conn.close_idle()
                        wake = now  # a closed connection leaves the set once the loop ran its callbacks
                    else:
                        wake = min(wake, due)
            await asyncio.sleep(wake - now)
        if tasks:
            log.warning("stopping: ending %d call(s) still running %s", len(tasks),
                        "at a second signal" if self.force_exit else f"after {self.drain_timeout:g} s")
            await self._cut(tasks)
        for conn in list(state.connections):
            conn.transport.close()
        for task in (self._sweeper, self._orphan_watch):
            if task is not None:
                task.cancel()
        await self.lifespan.shutdown()  # the gateway closes: the request log is flushed

    @staticmethod
    async def _cut(tasks: set[asyncio.Task[None]]) -> None:
        """Cancel each call with the shutdown message (its stream ends with an error event, its row says
        so); a call that does not end within CUT_GRACE is cancelled again, and then left."""
        for attempt in range(2):
            for t in list(tasks):
                t.cancel(SHUTDOWN_CUT)
            await asyncio.wait(list(tasks), timeout=CUT_GRACE)
            if not tasks:
                return
            log.error("stopping: %d call(s) did not end when cancelled%s", len(tasks),
                      "; cancelling again" if attempt == 0 else "; leaving them")
