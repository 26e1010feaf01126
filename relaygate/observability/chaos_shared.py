"""Chaos rules changed through ``/admin/chaos`` reach every worker and instance that shares the Redis.

A drill's rule set once must hold wherever the port's or the load balancer's calls land: with ``serve --workers
N`` each worker is a process of its own, and instances are machines of their own. So with ``state.redis_url``
the whole rule set is kept in Redis after each change (one JSON value with a version), and every gateway
looks at the version twice a second and takes a newer set. The key carries the config's hash: gateways on the
same config share it, a different or reloaded config starts from its own rules (rules name its models), and
a worker that is restarted finds the drill's rules in place. The value expires a day after its last change,
so a forgotten drill does not come back at the next start. Without Redis the rules are the process's own
(one worker; several workers with a master key need Redis anyway, ``server/workers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from relaygate.config.observability import ChaosRule

if TYPE_CHECKING:
    from relaygate.observability.chaos import Chaos
    from relaygate.state.resp import RespClient

log = logging.getLogger("relaygate.chaos")

SYNC_INTERVAL = 0.5  # seconds between a gateway's looks at the shared version
KEEP = 86_400  # seconds the shared rule set outlives its last change


class SharedRules:
    """One gateway's link to the shared rule set: publish its changes, take the others'."""

    def __init__(self, chaos: Chaos, redis: RespClient, config_hash: str) -> None:
        self.chaos = chaos
        self.redis = redis
        self.key = f"relaygate:chaos:{config_hash}"
        self.version = ""  # of the set this gateway holds ("": the config's own)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the shared set if there is one (a restarted worker joins the drill), then follow it."""
        with contextlib.suppress(Exception):  # Redis down: the config's rules, and the poll takes over later
            await self.sync()
        self.task = asyncio.ensure_future(self._follow())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=2.0)
            self.task = None

    async def publish(self) -> None:
        """Store this gateway's rules as the shared set (after an admin change)."""
        self.version = os.urandom(8).hex()
        value = orjson.dumps({"version": self.version,
                              "rules": [r.config.model_dump(mode="json") for r in self.chaos.rules.values()]})
        await self.redis.call("SET", self.key, value, "EX", KEEP)

    async def sync(self) -> None:
        """Take the shared set when it is newer than the one held."""
        raw = await self.redis.call("GET", self.key)
        if raw is None:
            return
        shared: dict[str, Any] = orjson.loads(raw)
        if shared.get("version") == self.version:
            return
        rules = []
        for item in shared.get("rules", []):
            try:
                rules.append(ChaosRule.model_validate(item))
            except ValidationError as e:  # written by another version of relaygate: left out, said
                log.error("shared chaos rule left out: %s", e.errors()[0]["msg"])
        self.chaos.replace(rules)
        self.version = str(shared.get("version", ""))
        log.warning("chaos rules taken from the shared set (%d): %s", len(rules),
                    ", ".join(r.name for r in rules) or "none")

    async def _follow(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await self.sync()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down or slow: this gateway keeps the rules it has
                if not failing:
                    log.warning("chaos rules: the shared set cannot be read (%s); keeping these",
                                type(e).__name__)
                failing = True
