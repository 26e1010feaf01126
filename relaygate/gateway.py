"""The ``Gateway``, the one composition root: everything one config needs, built once, in order.

upstream client → Redis client → database → key store → limiter → request-log writer → deployments (with their
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
from collections.abc import Awaitable, Collection, Mapping
from typing import TYPE_CHECKING

import orjson
from pydantic import SecretStr

from relaygate.catalog.cards import Catalog
from relaygate.catalog.discovery import Discovery
from relaygate.catalog.prices import PriceBook
from relaygate.config import PROVIDER_TYPES, Config, ConfigError, ServerConfig, deployment_name
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.pricing import Pricing
from relaygate.core.scrub import Scrubber, ScrubFilter, attach, detach, url_secrets
from relaygate.providers import provider_class
from relaygate.routing.breaker import Breakers, model_breaker
from relaygate.routing.deployment import Deployment
from relaygate.routing.health import HealthChecker, health_checks
from relaygate.routing.router import ModelTable, Router
from relaygate.state.resp import RespClient
from relaygate.upstream import Client, Limits, ProxySettings

WORKER_ENV = "RELAYGATE_WORKER"  # a worker's number (0…N-1), set by the supervisor (server/workers.py)

if TYPE_CHECKING:
    from relaygate.auth.authenticator import Authenticator
    from relaygate.auth.keys import KeyStore
    from relaygate.cache.layer import CacheLayer
    from relaygate.catalog.context import ContextWindows
    from relaygate.condense.layer import CondenseLayer
    from relaygate.limits.base import Limiter, SpentLoader
    from relaygate.observability.alerts import Alerts
    from relaygate.observability.chaos import Chaos
    from relaygate.observability.metrics import Metrics
    from relaygate.observability.shared import SharedMetrics
    from relaygate.observability.tracing import Tracing
    from relaygate.requestlog.audit import AuditLayer
    from relaygate.requestlog.writer import RequestLogWriter
    from relaygate.server.reload import Reloads
    from relaygate.store.db import Database
    from relaygate.store.reads import Reads

log = logging.getLogger("relaygate")

MASTER_KEY_ENV = "RELAYGATE_MASTER_KEY"


def new_client(env: Mapping[str, str] | None = None, server: ServerConfig | None = None) -> Client:
    """The gateway's one pooled keep-alive upstream client (``relaygate.upstream``); HTTPS_PROXY, HTTP_PROXY
    and NO_PROXY of the gateway's environment apply (a request never chooses where the gateway connects).
    ``server``: its cap on upstream connections (``max_upstream_connections``, by default as many as the
    open-file limit leaves room for) and how long a request over it waits for one."""
    try:
        proxies = ProxySettings.from_env(os.environ if env is None else env)
    except ValueError as e:
        raise ConfigError([f"proxy environment: {e}"]) from None
    limits = Limits(idle_timeout=60.0)
    if server is not None:
        from relaygate.server.guard import default_max_connections

        limits = Limits(idle_timeout=60.0, max_total=server.max_upstream_connections or default_max_connections(),
                        max_per_origin=server.max_upstream_connections_per_origin,
                        queue_timeout=server.upstream_queue_timeout)
    return Client(limits=limits, proxies=proxies)


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


def scrubber(config: Config) -> Scrubber:
    """The gateway's one redaction point (core/scrub.py): every secret of the config (upstream keys and
    credential headers, the master and declared keys, passwords in the database and Redis URLs) and every
    upstream URL, shown as its deployment's name."""
    secrets = [s for m in config.models for d in m.deployments for s in d.secret_values()]
    secrets += [k.key.get_secret_value() for k in config.auth.keys]
    master = master_key(config)
    if master:
        secrets.append(master)
    secrets += url_secrets(config.database.url) + url_secrets(config.state.redis_url)
    upstreams = {base: deployment_name(m, di) for m in config.models for di, d in enumerate(m.deployments)
                 if isinstance(base := getattr(d, "api_base", None), str)}
    return Scrubber(secrets, upstreams)


def build_deployments(config: Config, client: Client, breakers: Breakers,
                      kept: Mapping[str, Deployment] | None = None,
                      scrub: Scrubber | None = None) -> dict[str, list[Deployment]]:
    """Every model's deployments: a provider each, and a breaker from the model's settings; provider-level
    problems become ConfigErrors. A deployment of ``kept`` (a replaced gateway's) whose name, model, settings
    and breaker settings are the same is taken as it is."""
    models: dict[str, list[Deployment]] = {}
    errors: list[str] = []
    for mi, m in enumerate(config.models):
        settings = model_breaker(m)
        deps = []
        for di, d in enumerate(m.deployments):
            name = deployment_name(m, di)
            same = (kept or {}).get(name)
            if same is not None and same.model_name == m.name and same.config == d and \
                    (same.breaker.settings if same.breaker else None) == (settings if settings.enabled else None):
                deps.append(same)
                continue
            try:
                provider = provider_class(d)(d, client, scrub)
            except ValueError as e:
                errors.append(f"models[{mi}].deployments[{di}]: {e}")
                continue
            deps.append(Deployment(name, m.name, d, provider, breaker=breakers.new(name, settings)))
        models[m.name] = deps
    if errors:
        raise ConfigError(errors)
    return models


def check_deployments(config: Config) -> None:
    """Build every deployment's provider once (no I/O), for the ConfigErrors that ``check-config`` reports."""

    async def build() -> None:
        client = new_client()
        try:
            build_deployments(config, client, Breakers())
        finally:
            await client.close()

    asyncio.run(build())


async def start_deployments(config: Config, models: dict[str, list[Deployment]],
                            started: Collection[Deployment] = ()) -> None:
    """Let every provider not ``started`` yet get ready (credentials that need I/O), at once; their problems
    become ConfigErrors."""
    deps = [(f"models[{mi}].deployments[{di}]", d) for mi, m in enumerate(config.models)
            for di, d in enumerate(models.get(m.name, ())) if d not in started]
    results = await asyncio.gather(*(d.provider.start() for _, d in deps), return_exceptions=True)
    errors = [f"{path}: {r}" for (path, _), r in zip(deps, results, strict=True) if isinstance(r, ValueError)]
    if errors:
        raise ConfigError(errors)
    for r in results:
        if isinstance(r, BaseException):
            raise r


class Gateway:
    """Holds the config and everything built from it; ``handle`` runs a call through the pipeline."""

    def __init__(self, config: Config, client: Client, previous: Gateway | None = None,
                 control: Reloads | None = None) -> None:
        """``previous``: the gateway a reload replaces; the parts its config still describes the same way
        carry over (the upstream pool always; Redis, database, keys, limits, log writer, breakers and
        deployments when their sections are unchanged), so counts, caches and pooled connections live on."""
        self.config = config
        # read on every call: plain attributes (a read through the pydantic config costs ~400 instructions)
        self.request_timeout = config.server.request_timeout
        self.max_body_bytes = config.server.max_body_bytes
        self.client = client
        self.control = control  # what ``POST /admin/reload`` asks (None: no reload here)
        self.started = time.time()
        self.config_hash = config_hash(config)
        self.ready = False
        self.draining = False  # the server is stopping (SIGTERM): readiness says so while calls finish
        self.calls = 0  # requests being served on this gateway (a replaced one closes once none is left)
        self.idle = asyncio.Event()
        before = previous.config if previous is not None else None

        def same(*sections: str) -> bool:
            return before is not None and all(getattr(before, s) == getattr(config, s) for s in sections)

        # one Redis client (one connection, one timeout policy) for the limits and the breakers
        st = config.state
        self.redis: RespClient | None = previous.redis if previous is not None and same("state") else \
            RespClient(st.redis_url, st.redis_timeout, st.redis_retry) if st.redis_url else None

        master = master_key(config)
        # always: besides keys and the request log, it holds the objects of the Responses and Assistants APIs
        from relaygate.store.db import Database
        from relaygate.store.objects import ObjectStore

        self.db: Database = previous.db if previous is not None and same("database") \
            else Database(config.database.url, config.database.pool_size)
        same_db = previous is not None and self.db is previous.db
        # the objects' pending writes are tracked where they are made: one store per database
        self.objects: ObjectStore = previous.objects if previous is not None and same_db \
            else ObjectStore(self.db)

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
            if previous is not None and same_db and previous.reads is not None and previous.auth is not None \
                    and master_key(previous.config) == master and same("auth"):
                self.reads, self.auth = previous.reads, previous.auth  # the key cache lives on
            else:
                # the request path reads through its own bounded connections: a slow database answers 503 for
                # keys not cached and budgets not loaded, and never stalls calls whose keys are cached
                self.reads = Reads(self.db, config.database.read_timeout(self.db.dialect))
                lookups = KeyStore(self.reads.engine)
                reads = self.reads
                self.auth = Authenticator(master, lambda digest: reads.run(lookups.lookup, digest),
                                          config.auth.cache_ttl, config.auth.stale_ttl,
                                          lambda key_id: reads.run(lookups.lookup_id, key_id))
            keep_limits = previous is not None and previous.limiter is not None and self.reads is previous.reads \
                and self.redis is previous.redis \
                and previous.config.server.request_timeout == config.server.request_timeout  # the slots' expiry
            self.limiter = previous.limiter if keep_limits and previous is not None else self._limiter(self.reads)

        self.writer: RequestLogWriter | None = None
        if config.request_log.enabled:
            from relaygate.requestlog.writer import RequestLogWriter

            assert self.db is not None
            rl = config.request_log
            if previous is not None and same_db and previous.writer is not None and same("request_log"):
                self.writer = previous.writer
            else:
                # a connection of its own: a write stuck on a database that stopped answering holds none the key
                # lookups need, and every wait of it is bounded by the write timeout
                self.writer = RequestLogWriter(self.db.log_target(rl.write_timeout), default_spool_dir(config),
                                               queue_size=rl.queue_size, batch_size=rl.batch_size,
                                               flush_interval=rl.flush_interval, write_timeout=rl.write_timeout)

        keep_breakers = previous is not None and self.redis is previous.redis
        self.breakers: Breakers = previous.breakers if keep_breakers and previous is not None else Breakers(self.redis)
        # what an upstream sent reaches a client, a log line or a row only through this (providers/base.py:
        # scrubbed; the audit layer; ScrubFilter on the gateway's loggers from start to close); a deployment
        # kept from ``previous`` keeps the scrubber it was built with (its own secrets and address are in both)
        self.scrub = scrubber(config)
        self._log_filter = ScrubFilter(self.scrub)
        self._filtered: list[logging.Logger] = []
        # an unchanged deployment (same name, model, settings and breaker) is the same object: its breaker,
        # statistics, health and rpm counts go on
        kept = {d.name: d for d in previous.deployments()} if keep_breakers and previous is not None else {}
        self.table = ModelTable(build_deployments(config, client, self.breakers, kept, self.scrub), PROVIDER_TYPES)
        # model cards (bundled + the config's ``prices`` overrides) and what each upstream lists (docs/models.md)
        self.catalog = Catalog(config.prices)
        self.discovery: Discovery = Discovery([d for deps in self.table.models.values() for d in deps],
                                              config.discovery, self.scrub,
                                              previous.discovery if previous is not None else None)
        # models that select their deployments by capability: resolved now, and after each discovery refresh
        from relaygate.routing.select import Selections

        self.selections = Selections(config, self.catalog, self.table, self.discovery)
        self.selections.apply()
        self.discovery.listeners.append(self._reselect)
        self.pricing = Pricing(PriceBook(config), self.table.models, config.auth.default_output_tokens,
                               {m.name: [t for f in m.fallbacks for t in f.models] for m in config.models})
        self.router = Router(self.table, config, self.pricing.unit_price, unpriced=self.pricing.unpriced)
        self.health = HealthChecker(health_checks(config, self.table.models))
        self.metrics: Metrics | None = None
        if config.metrics.enabled or config.alerts.rules:  # the alerts judge the metrics' counts
            from relaygate.observability.metrics import Metrics

            self.metrics = Metrics(config, self.table.models, self.pricing.cost, self.pricing.price)
            self.metrics.writer = self.writer
        self.shared_metrics = self._shared_metrics()
        self.alerts: Alerts | None = None
        # several workers on one port: one of them judges and sends, or every alert would go out N times
        if config.alerts.rules and os.environ.get(WORKER_ENV, "0") == "0":
            from relaygate.observability.alerts import Alerts, budget_reader

            assert self.metrics is not None
            budget = budget_reader(self.db, self.keys, self.limiter) if self.db and self.keys else None
            self.alerts = Alerts(config.alerts, self.metrics, self.table.models, client, budget)
        self.chaos: Chaos | None = None  # fault injection for drills: only when chaos.enabled
        if config.chaos.enabled:
            from relaygate.observability.chaos import Chaos

            self.chaos = Chaos(config.chaos, self.table.models, self.metrics)
            if self.redis is not None:  # run-time rules reach every worker and instance on this config
                from relaygate.observability.chaos_shared import SharedRules

                self.chaos.shared = SharedRules(self.chaos, self.redis, self.config_hash)
        elif previous is not None and previous.chaos is not None:  # its deployments may carry on here
            from relaygate.observability.chaos import unwrap

            unwrap(self.table.models)
        self.tracing: Tracing | None = None
        if config.tracing.endpoint is not None:
            from relaygate.observability.tracing import Tracing
            from relaygate.requestlog.redact import Redactor

            known = {m.name for m in config.models} | {d.config.model for d in self.deployments()}
            self.tracing = Tracing(config.tracing, Redactor(config.request_log.redact), frozenset(known),
                                   self.pricing.cost, self.pricing.price)
        self.audit: AuditLayer | None = None  # the request log's layer, when it is on
        self._windows: ContextWindows | None = None
        self._fitting: CondenseLayer | None = None
        self.pipeline: Handler = self._pipeline()
        if self.metrics is not None and self.cache is not None:  # built with the pipeline, read at scrapes
            self.metrics.cache = self.cache.stats
        from relaygate.api.assistants.runner import Runner

        # runs of the hosted Assistants API execute here, in tasks of the gateway, through the pipeline
        # (a reload with the same database keeps the runner: runs in flight finish on the gateway that started
        # them, whose pipeline their calls go through)
        self.runs: Runner = previous.runs if previous is not None and self.objects is previous.objects \
            and previous.config.server.request_timeout == config.server.request_timeout \
            else Runner(self.objects, config.server.request_timeout)
        self._fresh = {id(part) for part in self.parts()} - ({id(p) for p in previous.parts()} if previous else set())

    def _reselect(self) -> None:
        """After a discovery refresh: the selecting models whose candidates changed route over the new ones."""
        changed = self.selections.apply()
        if changed:
            by_name = {m.name: m for m in self.config.models}
            for name in changed:
                self.router.rebuild(by_name[name])
            self.pricing.forget_reservations()
            log.info("select: %s now served by %s", ", ".join(changed),
                     "; ".join(f"{n}: {[d.name for d in self.table.models[n]] or 'none'}" for n in changed))

    def _shared_metrics(self) -> SharedMetrics | None:
        """A worker under a supervisor (``--workers``) serves every worker's metrics (observability/shared.py)."""
        from relaygate.observability.shared import METRICS_DIR_ENV

        directory, worker = os.environ.get(METRICS_DIR_ENV), os.environ.get(WORKER_ENV)
        if self.metrics is None or not directory or worker is None:
            return None
        from relaygate.observability.shared import SharedMetrics

        return SharedMetrics(self.metrics, directory, worker)

    def _limiter(self, reads: Reads) -> Limiter:
        if self.redis is not None:
            from relaygate.limits.redis import RedisLimiter

            # a crashed instance's parallel slots and reservations expire once no call of it can be running
            return RedisLimiter(self.redis, spent_loader(reads), int(self.config.server.request_timeout) + 60)
        from relaygate.limits.memory import MemoryLimiter

        return MemoryLimiter(spent_loader(reads))

    def _pipeline(self) -> Handler:
        """observe (traces, metrics) → audit → auth → limits → router (the layers that are on)."""
        handler: Handler = self.router
        # the response cache and context condensation, between the limits and the router (docs/cache.md)
        self.cache: CacheLayer | None = None
        self.condense: CondenseLayer | None = None
        if any(m.condense is not None for m in self.config.models):
            from relaygate.condense.layer import CondenseLayer

            # a summary is a call of its own through the whole pipeline (logged, limited, billed to the key)
            handler = self.condense = CondenseLayer(handler, self.config, self.table, self._window,
                                                    lambda call: self.pipeline(call))
        if any(m.cache is not None for m in self.config.models):
            from relaygate.cache.layer import CacheLayer

            # a semantic cache's embedding call goes through the whole pipeline too (logged, limited, billed)
            handler = self.cache = CacheLayer(handler, self.config, self.table, self.pricing, self.redis,
                                              lambda call: self.pipeline(call))
        if self.auth is not None:
            from relaygate.auth.authenticator import AuthLayer
            from relaygate.limits.layer import LimitLayer

            assert self.limiter is not None
            handler = AuthLayer(LimitLayer(handler, self.limiter, self.pricing), self.auth, self.table)
        if self.writer is not None:
            from relaygate.requestlog.audit import AuditLayer

            handler = self.audit = AuditLayer(handler, self.writer, self.config.request_log, self.pricing.cost,
                                              self.scrub)
        if self.metrics is not None or self.config.access_log.enabled or self.tracing is not None:
            from relaygate.observability.accesslog import AccessLog
            from relaygate.observability.layer import observe
            from relaygate.requestlog.redact import Redactor

            access = (AccessLog(Redactor(self.config.request_log.redact), self.pricing.cost)
                      if self.config.access_log.enabled else None)
            handler = observe(handler, self.metrics, access, self.tracing)
        return handler

    @classmethod
    async def create(cls, config: Config, previous: Gateway | None = None, control: Reloads | None = None,
                     keep: Collection[Gateway] = ()) -> Gateway:
        """Build and start a gateway (must run inside the event loop that will serve it); ``previous``: the
        one it replaces (its parts may carry over: see ``__init__``). Should start-up fail, what it built is
        closed and nothing of ``previous`` or ``keep`` (gateways still serving)."""
        # the upstream pool, and its cap, carry over a reload (a new cap takes a restart)
        client = previous.client if previous is not None else new_client(server=config.server)
        try:
            gw = cls(config, client, previous, control)
        except BaseException:
            if previous is None:
                await client.close()
            raise
        try:
            await gw.start(previous)
        except BaseException:
            await gw.close(keep=[*keep, *([previous] if previous is not None else [])])
            raise
        return gw

    def parts(self) -> list[object]:
        """What ``close`` stops, where one gateway may share a part with the one it replaced."""
        parts: list[object | None] = [self.client, self.redis, self.db, self.objects, self.runs, self.reads,
                                      self.limiter, self.writer, self.breakers, self.health]
        return [p for p in parts if p is not None]

    async def start(self, previous: Gateway | None = None) -> None:
        """Let the providers get ready (credentials), migrate the database, start the log writer, sync the
        config's keys, start the health checks; what carried over from ``previous`` runs already."""
        self._filtered = attach(self._log_filter)
        await start_deployments(self.config, self.table.models, previous.deployments() if previous else ())
        if self.db is not None and id(self.db) in self._fresh:
            version = await asyncio.to_thread(self.db.migrate)
            log.info("database ready (%s, schema version %d)", self.db.dialect, version)
        if self.redis is not None and id(self.redis) in self._fresh:
            await self.redis.start()
        if self.writer is not None and id(self.writer) in self._fresh:
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
        self.discovery.start()  # in the background: the first listings arrive while the gateway serves
        if self.alerts is not None:
            self.alerts.start()
        if self.shared_metrics is not None:
            self.shared_metrics.start()
        if self.chaos is not None and self.chaos.shared is not None:
            await self.chaos.shared.start()
        self.ready = True

    async def close(self, keep: Collection[Gateway] = ()) -> None:
        """Stop probing, settle what is in flight, flush the request log (database, else spool), close; a
        part that a gateway of ``keep`` holds too (one that replaced this one) is left running."""
        self.ready = False
        held = {id(p) for gw in keep for p in gw.parts()}

        def mine(part: object | None) -> bool:
            return part is not None and id(part) not in held

        await self.discovery.close()  # each gateway's own
        if self.alerts is not None:  # each gateway's own
            await self.alerts.close()
        if self.cache is not None:  # each gateway's own (its disk level: the file outlives it)
            await self.cache.close()
        if self.shared_metrics is not None:
            await self.shared_metrics.close()
        if self.chaos is not None and self.chaos.shared is not None:  # each gateway's own
            await self.chaos.shared.close()
        await self.health.close()
        if mine(self.breakers):
            await self.breakers.close()
        if mine(self.limiter):
            assert self.limiter is not None
            await self.limiter.close()
        if mine(self.reads):
            assert self.reads is not None
            self.reads.close()
        if mine(self.writer):
            assert self.writer is not None
            await asyncio.to_thread(self.writer.close)
        if mine(self.runs):
            await self.runs.close()
        if mine(self.objects):
            await self.objects.close()
        if mine(self.db):
            await asyncio.to_thread(self.db.close)
        if mine(self.redis):
            assert self.redis is not None
            await self.redis.close()
        if self.tracing is not None:  # each gateway's own
            await asyncio.to_thread(self.tracing.close)  # exports the spans still pending
        if mine(self.client):
            await self.client.close()
        detach(self._log_filter, self._filtered)

    def handle(self, call: Call) -> Awaitable[Reply]:
        """The pipeline's coroutine for ``call`` (no coroutine of its own: one frame fewer at every resume)."""
        return self.pipeline(call)

    async def fit(self, call: Call) -> Reply:
        """``handle`` for a call that asks to be fitted to its model's context window itself (``Call.truncation``
        "auto", ``max_prompt_tokens``): the conversation shortened before it goes, or after an upstream's
        context-length error and tried once more, on any model (docs/responses.md#truncation)."""
        fitting = self._fitting
        if fitting is None:
            from relaygate.condense.layer import CondenseLayer

            # over the whole pipeline (a retry after a context error is a call of its own: logged, limited)
            fitting = self._fitting = CondenseLayer(lambda c: self.pipeline(c), self.config, self.table,
                                                    self._window, lambda c: self.pipeline(c))
        return await fitting(call)

    def _window(self, dep: Deployment) -> int | None:
        """A deployment's context window from the catalog (None when unknown); the catalog is read once."""
        if dep.config.model == "*":
            return None
        windows = self._windows
        if windows is None:
            from relaygate.catalog.context import ContextWindows

            windows = self._windows = ContextWindows(self.catalog.context_table())
        return windows.lookup(dep.config.model)

    def deployments(self) -> list[Deployment]:
        """Every deployment once (a selecting model's are other models' under its name: left out)."""
        selecting = self.selections.names()
        return [d for name, deps in self.table.models.items() if name not in selecting for d in deps]
