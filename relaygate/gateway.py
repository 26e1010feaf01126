"""The ``Gateway``: everything built from one config (providers, routing, pipeline), nothing global."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp

from relaygate.accounting import Accounting
from relaygate.config import PROVIDER_TYPES, Config, ConfigError, deployment_name
from relaygate.core.call import Call, Handler, Reply
from relaygate.providers import provider_class
from relaygate.routing.deployment import Deployment
from relaygate.routing.health import HealthChecker, health_checks
from relaygate.routing.router import ModelTable, Router
from relaygate.routing.strategies import catalog_price

log = logging.getLogger("relaygate")


def new_session() -> aiohttp.ClientSession:
    """The gateway's one pooled keep-alive upstream client."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                                     enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                 skip_auto_headers=("User-Agent",), raise_for_status=False)


def build_deployments(config: Config, session: aiohttp.ClientSession) -> dict[str, list[Deployment]]:
    """Instantiate every deployment's provider; provider-level problems become ConfigErrors."""
    models: dict[str, list[Deployment]] = {}
    errors: list[str] = []
    for mi, m in enumerate(config.models):
        deps = []
        for di, d in enumerate(m.deployments):
            try:
                provider = provider_class(d.provider)(d, session)
            except ValueError as e:
                errors.append(f"models[{mi}].deployments[{di}]: {e}")
                continue
            deps.append(Deployment(deployment_name(m, di), m.name, d, provider))
        models[m.name] = deps
    if errors:
        raise ConfigError(errors)
    return models


class Gateway:
    """Holds the config and everything built from it; ``handle`` runs a call through the pipeline."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.started = time.time()
        self.table = ModelTable(build_deployments(config, session), PROVIDER_TYPES)
        self.router = Router(self.table, config)
        self.health = HealthChecker(health_checks(config, self.table.models))
        self.accounting = Accounting(config)  # database, request log, keys, limits, cost
        self.router.price_of = catalog_price(self.accounting.prices)  # what the cost strategy compares
        self.pipeline: Handler = self.accounting.wrap(self.router, self.table)
        self.redis: Any = None  # redis.asyncio.Redis when state.redis_url is set (shared by all layers)
        self.ready = False

    @classmethod
    async def create(cls, config: Config) -> Gateway:
        """Build and start a gateway (must run inside the event loop that will serve it)."""
        session = new_session()
        try:
            gw = cls(config, session)
            await gw.start()
        except BaseException:
            await session.close()
            raise
        return gw

    async def start(self) -> None:
        if self.config.state.redis_url:
            import redis.asyncio as aioredis

            self.redis = aioredis.from_url(self.config.state.redis_url, decode_responses=False)
            self.router.use_redis(self.redis)
        await self.accounting.start()
        self.health.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.health.close()
        await self.router.close()
        await self.accounting.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.session.close()

    async def handle(self, call: Call) -> Reply:
        return await self.pipeline(call)

    def deployments(self) -> list[Deployment]:
        return [d for deps in self.table.models.values() for d in deps]
