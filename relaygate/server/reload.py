"""Hot reload: the config file read again, checked in full, and swapped in without dropping a call.

Three things reload: a change to the file (polled: ``server.watch_config``), SIGHUP, and ``POST /admin/reload``.
The new config is validated like at start (schema, every provider built and started, the workers check); an
invalid one is refused with its errors (logged, and in the admin answer) and the running one stays. A valid
one becomes a new ``Gateway`` built beside the running one, carrying over its upstream pool and every part
whose section is unchanged (Redis, database, keys, limits, the log writer, unchanged deployments with their
breakers), and is swapped in at once: new calls use it, calls in flight finish on the one they started with,
which closes (what it does not share) once its last call ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relaygate.config import Config, ConfigError, load_config
from relaygate.gateway import Gateway, config_hash

if TYPE_CHECKING:
    from relaygate.server.app import App

log = logging.getLogger("relaygate.reload")

# server settings the listener and the connection guard took at start: a reload says they wait for a restart
RESTART_ONLY = ("host", "port", "workers", "header_timeout", "body_timeout", "keepalive_timeout", "max_connections",
                "max_header_bytes", "max_header_line_bytes", "max_headers", "drain_timeout", "drain_idle_grace",
                "watch_config")
WATCH_INTERVAL = 0.5  # seconds between looks at the file; a change is read once it held still for one look


@dataclass
class ReloadOutcome:
    status: str  # reloaded | unchanged | invalid | refused
    config_hash: str
    loaded_at: float
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Reloads(Protocol):
    """What the admin API asks of the server's reloader."""

    async def reload(self, source: str) -> ReloadOutcome: ...


def restart_only_changes(old: Config, new: Config) -> list[str]:
    return [f"server.{name}: changed; takes effect at the next start" for name in RESTART_ONLY
            if getattr(old.server, name) != getattr(new.server, name)]


class Reloader:
    """Owns the gateways of one ``App``: the serving one and those replaced but still finishing calls."""

    def __init__(self, app: App, path: str | None, workers: int = 1, supervisor: int | None = None) -> None:
        self.app = app
        self.path = path
        self.workers = workers
        self.supervisor = supervisor  # a worker's supervisor, told (SIGHUP) when the admin API reloaded
        self.live: list[Gateway] = []  # the serving gateway last
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[object]] = set()
        self._seen: tuple[int, int, int] | None = None

    async def start(self, config: Config) -> Gateway:
        self._seen = self._stat()
        gw = await Gateway.create(config, control=self)
        self.live.append(gw)
        if self.path is not None and config.server.watch_config:
            self._spawn(self._watch())
        return gw

    def reload_soon(self, source: str) -> None:
        """From a signal handler: reload on the event loop."""
        self._spawn(self.reload(source))

    async def reload(self, source: str) -> ReloadOutcome:
        async with self.lock:
            current = self.app.gateway
            if current is None or self.app.draining:
                why = "the server is stopping" if self.app.draining else "the gateway is starting"
                return ReloadOutcome("refused", "", 0.0, [why])
            self._seen = self._stat()
            try:
                config = await asyncio.to_thread(load_config, self.path)
                from relaygate.server.workers import check_workers

                check_workers(config, self.workers)
                if config_hash(config) == current.config_hash:
                    return ReloadOutcome("unchanged", current.config_hash, current.started)
                gw = await Gateway.create(config, previous=current, control=self, keep=self.live)
            except ConfigError as e:
                return self._invalid(source, current, e.errors)
            except Exception as e:  # a database or Redis that cannot be reached, credentials that fail…
                log.exception("config reload (%s) failed", source)
                return self._invalid(source, current, [f"{type(e).__name__}: {e}"])
            gw.draining = self.app.draining
            self.app.gateway = gw
            self.live.append(gw)
            warnings = restart_only_changes(current.config, config)
            for w in warnings:
                log.warning("config reload: %s", w)
            log.info("config reloaded (%s): %s -> %s, %d models", source, current.config_hash, gw.config_hash,
                     len(config.models))
            self._spawn(self._retire(current))
        if source.startswith("POST") and self.supervisor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor, signal.SIGHUP)  # the other workers follow
        return ReloadOutcome("reloaded", gw.config_hash, gw.started, warnings=warnings)

    def _invalid(self, source: str, current: Gateway, errors: list[str]) -> ReloadOutcome:
        log.error("config reload (%s) refused, %s stays: %d error(s)\n  %s", source, current.config_hash,
                  len(errors), "\n  ".join(errors))
        return ReloadOutcome("invalid", current.config_hash, current.started, errors)

    async def _retire(self, old: Gateway) -> None:
        """Close a replaced gateway once its last call ended (or its request_timeout passed)."""
        await old.health.close()  # its deployments' probes stop now (the new gateway probes its own)
        wait = old.config.server.request_timeout + 5
        if old.calls:
            old.idle.clear()
            try:
                await asyncio.wait_for(old.idle.wait(), wait)
            except TimeoutError:
                log.error("config reload: %d call(s) on the replaced config still running after %g s; closing it",
                          old.calls, wait)
        self.live.remove(old)
        await old.close(keep=self.live)
        log.info("config reload: the replaced config %s is closed", old.config_hash)

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    async def _watch(self) -> None:
        """Reload when the file changed and then held still for one look (not half-written)."""
        pending: tuple[int, int, int] | None = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = self._stat()
            if now is None or now == self._seen:
                pending = None
            elif now == pending:
                pending = None
                await self.reload("file changed")
            else:
                pending = now

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """At shutdown: every gateway closes (replaced ones first), each leaving what another still holds."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        while self.live:
            gw = self.live.pop(0)
            await gw.close(keep=self.live)
