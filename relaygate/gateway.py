"""The ``Gateway``, the one composition root: everything one config needs, built once, in order.

session → Redis client → database → key store → limiter → request-log writer → deployments (with their
breakers) → pricing → router → pipeline layers (audit → auth → limits → router). Each part gets its
collaborators through its constructor and nothing is patched afterwards; the async work (migrations, the
log writer's thread, health checks) happens in ``start``. Nothing lives at module level, so a reload can
build a second ``Gateway`` beside the first and swap them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp
import orjson
from pydantic import SecretStr

from relaygate.catalog.prices import PriceBook
from relaygate.config import PROVIDER_TYPES, Config, ConfigError, deployment_name
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.pricing import Pricing
from relaygate.providers import provider_class
from relaygate.routing.breaker import Breakers, model_breaker
from relaygate.routing.deployment import Deployment
from relaygate.routing.health import HealthChecker, health_checks
from relaygate.routing.router import ModelTable, Router
from relaygate.state.resp import RespClient

if TYPE_CHECKING:
    from relaygate.auth.authenticator import Authenticator
    from relaygate.auth.keys import KeyStore
    from relaygate.limits.base import Limiter, SpentLoader
    from relaygate.requestlog.audit import AuditLayer
    from relaygate.requestlog.writer import RequestLogWriter
    from relaygate.store.db import Database
    from relaygate.store.reads import Reads

log = logging.getLogger("relaygate")

MASTER_KEY_ENV = "RELAYGATE_MASTER_KEY"


def new_session() -> aiohttp.ClientSession:
    """The gateway's one pooled keep-alive upstream client."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                                     enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                 skip_auto_headers=("User-Agent",), raise_for_status=False)


def master_key(config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """The master key: ``auth.master_key`` or the RELAYGATE_MASTER_KEY environment variable."""
    if config.auth.master_key is not None and config.auth.master_key.get_secret_value():
        return config.auth.master_key.get_secret_value()
    return (os.environ if env is None else env).get(MASTER_KEY_ENV) or None


def config_hash(config: Config) -> str:
    """A short digest of everything the config says (secrets included, so a rotated key shows), for ``/health``:
    which config each process runs."""
    def reveal(value: object) -> object:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        raise TypeError(type(value).__name__)

    dumped = orjson.dumps(config.model_dump(), default=reveal, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(dumped).hexdigest()[:16]


def default_spool_dir(config: Config) -> str:
    """Where log rows wait while the database is down: beside the SQLite file, else ./relaygate-spool."""
    from relaygate.store.db import sqlite_path

    if config.request_log.spool_dir:
        return config.request_log.spool_dir
    path = sqlite_path(config.database.url)
    if path and path != ":memory:":
        return os.path.dirname(os.path.abspath(path))
    return os.path.abspath("relaygate-spool")


def spent_loader(reads: Reads) -> SpentLoader:
    """What a budget scope spent since a time, summed from the request log (off the event loop, bounded)."""
    from relaygate.auth.keys import spent_since

    async def load(scope_name: str, start: float) -> int:
        return await reads.run(spent_since, reads.engine, scope_name, start)

    return load


def build_deployments(config: Config, session: aiohttp.ClientSession,
                      breakers: Breakers) -> dict[str, list[Deployment]]:
    """Every model's deployments: a provider each, and a breaker from the model's settings; provider-level
    problems become ConfigErrors."""
    models: dict[str, list[Deployment]] = {}
    errors: list[str] = []
    for mi, m in enumerate(config.models):
        settings = model_breaker(m)
        deps = []
        for di, d in enumerate(m.deployments):
            try:
                provider = provider_class(d)(d, session)
            except ValueError as e:
                errors.append(f"models[{mi}].deployments[{di}]: {e}")
                continue
            name = deployment_name(m, di)
            deps.append(Deployment(name, m.name, d, provider, breaker=breakers.new(name, settings)))
        models[m.name] = deps
    if errors:
        raise ConfigError(errors)
    return models


def check_deployments(config: Config) -> None:
    """Build every deployment's provider once (no I/O), for the ConfigErrors that ``check-config`` reports."""

    async def build() -> None:
        session = new_session()
        try:
            build_deployments(config, session, Breakers())
        finally:
            await session.close()

    asyncio.run(build())


async def start_deployments(config: Config, models: dict[str, list[Deployment]]) -> None:
    """Let every provider get ready (credentials that need I/O), at once; their problems become ConfigErrors."""
    deps = [(f"models[{mi}].deployments[{di}]", d) for mi, m in enumerate(config.models)
            for di, d in enumerate(models.get(m.name, ()))]
    results = await asyncio.gather(*(d.provider.start() for _, d in deps), return_exceptions=True)
    errors = [f"{path}: {r}" for (path, _), r in zip(deps, results, strict=True) if isinstance(r, ValueError)]
    if errors:
        raise ConfigError(errors)
    for r in results:
        if isinstance(r, BaseException):
            raise r


class Gateway:
    """Holds the config and everything built from it; ``handle`` runs a call through the pipeline."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.started = time.time()
        self.config_hash = config_hash(config)
        self.ready = False
        self.draining = False  # the server is stopping (SIGTERM): readiness says so while calls finish
        # one Redis client (one connection, one timeout policy) for the limits and the breakers
        st = config.state
        self.redis = RespClient(st.redis_url, st.redis_timeout, st.redis_retry) if st.redis_url else None

        master = master_key(config)
        self.db: Database | None = None
        if config.request_log.enabled or master:
            from relaygate.store.db import Database

            self.db = Database(config.database.url, config.database.pool_size)

        self.keys: KeyStore | None = None
        self.reads: Reads | None = None
        self.auth: Authenticator | None = None
        self.limiter: Limiter | None = None
        if master:
            from relaygate.auth.authenticator import Authenticator
            from relaygate.auth.keys import KeyStore
            from relaygate.store.reads import Reads

            assert self.db is not None
            self.keys = KeyStore(self.db.engine)
            # the request path reads through its own bounded connections: a slow database answers 503 for
            # keys not cached and budgets not loaded, and never stalls calls whose keys are cached
            self.reads = reads = Reads(self.db, config.database.lookup_timeout)
            lookups = KeyStore(reads.engine)
            self.auth = Authenticator(master, lambda digest: reads.run(lookups.lookup, digest),
                                      config.auth.cache_ttl, config.auth.stale_ttl)
            self.limiter = self._limiter(reads)

        self.writer: RequestLogWriter | None = None
        if config.request_log.enabled:
            from relaygate.requestlog.writer import RequestLogWriter

            assert self.db is not None
            rl = config.request_log
            # an engine of its own: a write stuck on a database that stopped answering holds no connection
            # the key lookups need, and every wait of it is bounded by the write timeout
            self.writer = RequestLogWriter(self.db.bounded_engine(rl.write_timeout), default_spool_dir(config),
                                           queue_size=rl.queue_size, batch_size=rl.batch_size,
                                           flush_interval=rl.flush_interval, write_timeout=rl.write_timeout)

        self.breakers = Breakers(self.redis)
        self.table = ModelTable(build_deployments(config, session, self.breakers), PROVIDER_TYPES)
        self.pricing = Pricing(PriceBook(config), self.table.models, config.auth.default_output_tokens)
        self.router = Router(self.table, config, self.pricing.unit_price)
        self.health = HealthChecker(health_checks(config, self.table.models))
        self.audit: AuditLayer | None = None  # the outermost layer, when the request log is on
        self.pipeline: Handler = self._pipeline()

    def _limiter(self, reads: Reads) -> Limiter:
        if self.redis is not None:
            from relaygate.limits.redis import RedisLimiter

            # a crashed instance's parallel slots and reservations expire once no call of it can be running
            return RedisLimiter(self.redis, spent_loader(reads), int(self.config.server.request_timeout) + 60)
        from relaygate.limits.memory import MemoryLimiter

        return MemoryLimiter(spent_loader(reads))

    def _pipeline(self) -> Handler:
        """audit → auth → limits → router (the layers that are on)."""
        handler: Handler = self.router
        if self.auth is not None:
            from relaygate.auth.authenticator import AuthLayer
            from relaygate.limits.layer import LimitLayer

            assert self.limiter is not None
            handler = AuthLayer(LimitLayer(handler, self.limiter, self.pricing), self.auth, self.table)
        if self.writer is not None:
            from relaygate.requestlog.audit import AuditLayer

            handler = self.audit = AuditLayer(handler, self.writer, self.config.request_log, self.pricing.cost)
        return handler

    @classmethod
    async def create(cls, config: Config) -> Gateway:
        """Build and start a gateway (must run inside the event loop that will serve it)."""
        session = new_session()
        try:
            gw = cls(config, session)
        except BaseException:
            await session.close()
            raise
        try:
            await gw.start()
        except BaseException:
            await gw.close()
            raise
        return gw

    async def start(self) -> None:
        """Let the providers get ready (credentials), migrate the database, start the log writer, sync the
        config's keys, start the health checks."""
        await start_deployments(self.config, self.table.models)
        if self.db is not None:
            version = await asyncio.to_thread(self.db.migrate)
            log.info("database ready (%s, schema version %d)", self.db.dialect, version)
        if self.redis is not None:
            await self.redis.start()
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
        self.health.start()
        self.ready = True

    async def close(self) -> None:
        """Stop probing, settle what is in flight, flush the request log (database, else spool), close."""
        self.ready = False
        await self.health.close()
        await self.breakers.close()
        if self.limiter is not None:
            await self.limiter.close()
        if self.reads is not None:
            self.reads.close()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
        if self.redis is not None:
            await self.redis.close()
        await self.session.close()

    async def handle(self, call: Call) -> Reply:
        return await self.pipeline(call)

    def deployments(self) -> list[Deployment]:
        return [d for deps in self.table.models.values() for d in deps]
