"""Who called, what it cost, whether it may: the database, the request log, keys and limits of a Gateway."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from relaygate.catalog.prices import Price, PriceBook
from relaygate.config import Config
from relaygate.core.call import Call, Handler, Reply

if TYPE_CHECKING:
    from relaygate.auth.authenticator import Authenticator
    from relaygate.auth.keys import KeyStore
    from relaygate.requestlog.audit import AuditLayer
    from relaygate.requestlog.writer import RequestLogWriter
    from relaygate.routing.router import ModelTable
    from relaygate.store.db import Database

log = logging.getLogger("relaygate")

MASTER_KEY_ENV = "RELAYGATE_MASTER_KEY"


def default_spool_dir(config: Config) -> str:
    """Beside the SQLite file, else ./relaygate-spool."""
    from relaygate.store.db import sqlite_path

    if config.request_log.spool_dir:
        return config.request_log.spool_dir
    path = sqlite_path(config.database.url)
    if path and path != ":memory:":
        return os.path.dirname(os.path.abspath(path))
    return os.path.abspath("relaygate-spool")


def master_key(config: Config, env: Any = None) -> str | None:
    """The master key: ``auth.master_key`` or the RELAYGATE_MASTER_KEY environment variable."""
    if config.auth.master_key is not None and config.auth.master_key.get_secret_value():
        return config.auth.master_key.get_secret_value()
    return (os.environ if env is None else env).get(MASTER_KEY_ENV) or None


class Accounting:
    """Owns the database, the log writer, keys, limits and prices; wraps the pipeline with their layers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.prices = PriceBook(config)
        self.db: Database | None = None
        self.writer: RequestLogWriter | None = None
        self.audit: AuditLayer | None = None  # the pipeline's outermost layer, when the request log is on
        self.keys: KeyStore | None = None
        self.auth: Authenticator | None = None
        self.limiter: Any = None
        self.settling: set[asyncio.Future[Any]] = set()
        self.table: ModelTable | None = None
        self._model_prices: dict[str, Price] = {}
        self._deployment_prices: dict[tuple[str, str], Price] = {}  # (deployment, model asked) -> its price
        master = master_key(config)
        if config.request_log.enabled or master:
            from relaygate.store.db import Database

            self.db = Database(config.database.url, config.database.pool_size)
        if config.request_log.enabled:
            from relaygate.requestlog.writer import RequestLogWriter

            assert self.db is not None
            rl = config.request_log
            self.writer = RequestLogWriter(self.db.engine, default_spool_dir(config), queue_size=rl.queue_size,
                                           batch_size=rl.batch_size, flush_interval=rl.flush_interval)
        if master:
            from relaygate.auth.authenticator import Authenticator
            from relaygate.auth.keys import KeyStore

            assert self.db is not None
            db = self.db
            self.keys = keys = KeyStore(db.engine)
            self.auth = Authenticator(master, lambda digest: db.run(keys.lookup, digest), config.auth.cache_ttl)

    def wrap(self, inner: Handler, table: ModelTable | None = None) -> Handler:
        """The pipeline with accounting layers around ``inner``: audit → auth → limits → inner."""
        self.table = table
        handler = inner
        if self.auth is not None:
            from relaygate.auth.authenticator import AuthLayer
            from relaygate.limits.layer import LimitLayer

            handler = LimitLayer(handler, lambda: self.limiter, self.estimate, self.cost_nano, self.settling)
            handler = AuthLayer(handler, self.auth)
        if self.writer is not None:
            from relaygate.requestlog.audit import AuditLayer

            handler = self.audit = AuditLayer(handler, self.writer, self.config.request_log, self.cost_nano)
        return handler

    # -- cost ---------------------------------------------------------------------------------------

    def cost_nano(self, call: Call, reply: Reply | None) -> int:
        """The call's cost from its real usage (computed once; limits and the log share it)."""
        cached = call.meta.get("cost_nano")
        if cached is not None:
            return int(cached)
        dep = call.deployment
        if reply is None or reply.usage is None or dep is None:
            cost = 0
        else:
            key = (dep.name, call.model)
            price = self._deployment_prices.get(key)
            if price is None:
                price = self.prices.for_deployment(dep.config, dep.upstream_model(call.model))
                if len(self._deployment_prices) < 10_000:  # wildcard deployments see any model name
                    self._deployment_prices[key] = price
            cost = price.cost_nano(reply.usage)
        call.meta["cost_nano"] = cost
        return cost

    def model_price(self, model: str) -> Price:
        """The dearest price among a client-facing model's deployments (budget reservations err high)."""
        price = self._model_prices.get(model)
        if price is not None:
            return price
        deps = self.table.models.get(model) if self.table is not None else None
        if not deps:
            deps = self.table.models.get("*") if self.table is not None else None
        prices = [self.prices.for_deployment(d.config, d.upstream_model(model)) for d in deps or ()]
        price = Price(input=max((p.input for p in prices), default=0.0),
                      output=max((p.output for p in prices), default=0.0))
        if len(self._model_prices) < 4096:
            self._model_prices[model] = price
        return price

    def estimate(self, call: Call, tokens: bool, cost: bool) -> tuple[int, int]:
        """(tokens, nano-dollars) to reserve before a call: ~4 characters a token, plus the output cap."""
        body = call.body
        chars = 0
        messages = body.get("messages")
        if type(messages) is list:
            chars = 16 * len(messages)
            for m in messages:
                content = m.get("content") if isinstance(m, dict) else None
                if type(content) is str:
                    chars += len(content)
                elif isinstance(content, list):
                    for part in content:
                        text = part.get("text") if isinstance(part, dict) else None
                        chars += len(text) if isinstance(text, str) else 1000
        given = body.get("input")
        if given is not None:
            if isinstance(given, str):
                chars += len(given)
            elif isinstance(given, list):
                chars += sum(len(x) if isinstance(x, str) else 4 * len(x) if isinstance(x, list) else 0
                             for x in given)
        prompt = chars // 4 + 1
        out = 0
        if call.route == "chat":
            cap = body.get("max_completion_tokens") or body.get("max_tokens")
            out = cap if type(cap) is int and cap > 0 else self.config.auth.default_output_tokens
        if not cost:
            return prompt + out, 0
        price = self._model_prices.get(call.model) or self.model_price(call.model)
        return prompt + out, price.estimate_nano(prompt, out)

    async def load_spent(self, scope_name: str, start: float) -> int:
        from relaygate.auth.keys import spent_since

        assert self.db is not None
        db = self.db
        return await db.run(spent_since, db.engine, scope_name, start)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.db is not None:
            version = await asyncio.to_thread(self.db.migrate)
            log.info("database ready (%s, schema version %d)", self.db.dialect, version)
        if self.writer is not None:
            self.writer.start()
        if self.auth is not None and self.config.auth.keys:
            from relaygate.auth.keys import sync_config_keys

            assert self.db is not None
            await asyncio.to_thread(sync_config_keys, self.db.engine, self.config.auth.keys)
        if self.auth is None:
            log.warning("=" * 72)
            log.warning("NO MASTER KEY: this gateway is OPEN. Anyone who can reach it may call every model,")
            log.warning("and the admin API is off. Set auth.master_key or %s.", MASTER_KEY_ENV)
            log.warning("=" * 72)
            return
        if self.config.state.redis_url:
            from relaygate.limits.redis import RedisLimiter

            ttl = int(self.config.server.request_timeout) + 60
            self.limiter = RedisLimiter(self.config.state.redis_url, self.load_spent, ttl)
        else:
            from relaygate.limits.memory import MemoryLimiter

            self.limiter = MemoryLimiter(self.load_spent)

    async def close(self) -> None:
        """Settle what is in flight, flush the request log (database, else spool), close the database."""
        if self.settling:
            await asyncio.wait(list(self.settling), timeout=10)
        if self.limiter is not None:
            await self.limiter.close()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
