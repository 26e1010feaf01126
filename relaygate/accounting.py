"""Who called, what it cost, whether it may: the database, the request log, keys and limits of a Gateway."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from .call import Call, Handler, Reply
from .catalog.prices import PriceBook
from .config import Config

if TYPE_CHECKING:
    from .store.db import Database
    from .telemetry.requestlog import RequestLogWriter

log = logging.getLogger("relaygate")


def default_spool_dir(config: Config) -> str:
    """Beside the SQLite file, else ./relaygate-spool."""
    from .store.db import sqlite_path

    if config.request_log.spool_dir:
        return config.request_log.spool_dir
    path = sqlite_path(config.database.url)
    if path and path != ":memory:":
        return os.path.dirname(os.path.abspath(path))
    return os.path.abspath("relaygate-spool")


class Accounting:
    """Owns the database, the log writer and the price book; wraps the pipeline with its layers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.prices = PriceBook(config)
        self.db: Database | None = None
        self.writer: RequestLogWriter | None = None
        if self.needs_database:
            from .store.db import Database

            self.db = Database(config.database.url, config.database.pool_size)
        if config.request_log.enabled:
            from .telemetry.requestlog import RequestLogWriter

            assert self.db is not None
            rl = config.request_log
            self.writer = RequestLogWriter(self.db.engine, default_spool_dir(config), queue_size=rl.queue_size,
                                           batch_size=rl.batch_size, flush_interval=rl.flush_interval)

    @property
    def needs_database(self) -> bool:
        return self.config.request_log.enabled

    def wrap(self, inner: Handler) -> Handler:
        """The pipeline with accounting layers around ``inner`` (audit outermost)."""
        handler = inner
        if self.writer is not None:
            from .telemetry.audit import AuditLayer

            handler = AuditLayer(handler, self.writer, self.config.request_log, self.cost_nano)
        return handler

    def cost_nano(self, call: Call, reply: Reply | None) -> int:
        """The call's cost from its real usage (computed once; limits and the log share it)."""
        cached = call.meta.get("cost_nano")
        if cached is not None:
            return int(cached)
        dep = call.deployment
        if reply is None or reply.usage is None or dep is None:
            cost = 0
        else:
            cost = self.prices.for_deployment(dep.config, dep.upstream_model(call.model)).cost_nano(reply.usage)
        call.meta["cost_nano"] = cost
        return cost

    async def start(self) -> None:
        if self.db is not None:
            version = await asyncio.to_thread(self.db.migrate)
            log.info("database ready (%s, schema version %d)", self.db.dialect, version)
        if self.writer is not None:
            self.writer.start()

    async def close(self) -> None:
        """Flush the request log (database, else spool) and close the database."""
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
