"""Model discovery: which models each configured deployment's upstream serves, asked at start and then every
``discovery.interval`` seconds in a background task (never on a request's path).

Deployments that reach the same upstream the same way (the same config but for the model and the routing
hints) share one listing. An upstream that cannot be reached keeps the last list it gave, marked stale with
its error, scrubbed by the gateway's scrubber like every upstream text. A provider without a listing the
gateway reads (Azure, Vertex AI, Bedrock Agents, the demo) is shown as such and not asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaygate.core.errors import GatewayError, Unsupported
from relaygate.providers.listing import ListedModel

if TYPE_CHECKING:
    from relaygate.config import DeploymentConfig, DiscoveryConfig
    from relaygate.core.scrub import Scrubber
    from relaygate.routing.deployment import Deployment

log = logging.getLogger("relaygate")

# what two deployments may differ in and still reach the same upstream the same way
_NOT_UPSTREAM = ("model", "name", "weight", "priority", "input_cost_per_token", "output_cost_per_token", "rpm", "tpm",
                 "max_parallel", "tags", "health_check", "voices", "voice_map")


def upstream_identity(config: DeploymentConfig) -> DeploymentConfig:
    """``config`` without what does not change which upstream it reaches and how (compared with ``==``)."""
    fields = type(config).model_fields
    return config.model_copy(update={k: fields[k].default for k in _NOT_UPSTREAM if k in fields})


@dataclass(slots=True)
class Listing:
    """One upstream's answer: its models, when they were last read, and why the last try failed."""

    deployments: list[Deployment]
    models: tuple[ListedModel, ...] = ()
    refreshed_at: float | None = None  # epoch seconds of the last answer that was read
    checked_at: float | None = None  # epoch seconds of the last try
    error: str | None = None  # the last try's failure (scrubbed); the models are then the last known ones
    supported: bool = True  # False: the provider has no listing the gateway reads
    ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def name(self) -> str:
        return self.deployments[0].name

    @property
    def stale(self) -> bool:
        return self.error is not None

    def json(self) -> dict[str, Any]:
        """Its status for /api/models (names, counts and times; no URL, key or model list)."""
        return {"deployments": [d.name for d in self.deployments], "provider": self.deployments[0].provider_type,
                "supported": self.supported, "models": len(self.models), "refreshed_at": self.refreshed_at,
                "checked_at": self.checked_at, "stale": self.stale, "error": self.error}


class Discovery:
    """The listings of a gateway's deployments, refreshed in a background task (``start``/``close``)."""

    def __init__(self, deployments: list[Deployment], config: DiscoveryConfig, scrub: Scrubber,
                 previous: Discovery | None = None) -> None:
        self.config = config
        self.scrub = scrub
        self.listings: list[Listing] = []
        twins: list[tuple[DeploymentConfig, Listing]] = []
        for dep in deployments:
            ident = upstream_identity(dep.config)
            same = next((listing for other, listing in twins if other == ident), None)
            if same is not None:
                same.deployments.append(dep)
                continue
            listing = Listing([dep], supported=dep.provider.lists_models)
            twins.append((ident, listing))
            self.listings.append(listing)
        if previous is not None:  # a reload starts from what the gateway it replaces knew
            known = {d.name: (d.config, old) for old in previous.listings for d in old.deployments}
            for listing in self.listings:
                was = known.get(listing.name)
                if was is not None and was[0] == listing.deployments[0].config:
                    old = was[1]
                    listing.models, listing.ids, listing.error = old.models, old.ids, old.error
                    listing.refreshed_at, listing.checked_at, listing.supported = \
                        old.refreshed_at, old.checked_at, old.supported
        self.version = 0  # grows with each refresh
        self.listeners: list[Callable[[], None]] = []  # told after each refresh (``select`` aliases)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # none to ask (the demo, Azure, …): no task at all
        if self.config.enabled and any(lst.supported for lst in self.listings) and self._task is None:
            self._task = asyncio.create_task(self._run(), name="relaygate-discovery")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not end discovery for the gateway's lifetime
                log.exception("model discovery failed")
            await asyncio.sleep(self.config.interval)

    async def refresh(self) -> None:
        """Ask every upstream that has a listing, at once, each within ``discovery.timeout``."""
        await asyncio.gather(*(self._refresh(listing) for listing in self.listings if listing.supported))
        self.version += 1
        for listener in self.listeners:
            listener()

    async def _refresh(self, listing: Listing) -> None:
        provider = listing.deployments[0].provider
        timeout = self.config.timeout
        listing.checked_at = time.time()
        try:
            async with asyncio.timeout(timeout):
                models = await provider.list_models(time.monotonic() + timeout)
        except Unsupported:
            listing.supported = False
            return
        except GatewayError as e:
            listing.error = self.scrub.error(e).message
        except TimeoutError:
            listing.error = f"no answer within {timeout:g} s"
        except Exception as e:  # noqa: BLE001 - a provider's bug: kept as its name, the last list kept
            listing.error = self.scrub.text(f"{type(e).__name__}: {e}")
        else:
            listing.models = tuple(models)
            listing.ids = frozenset(m.id for m in models)
            listing.refreshed_at = listing.checked_at
            listing.error = None
            return
        log.warning("model discovery: %s is stale (%s)", listing.name, listing.error)

    def status(self) -> list[dict[str, Any]]:
        return [listing.json() for listing in self.listings]

    def listed(self) -> dict[str, list[tuple[Listing, ListedModel]]]:
        """Every discovered model id, with the listings (and their entries) that name it."""
        out: dict[str, list[tuple[Listing, ListedModel]]] = {}
        for listing in self.listings:
            for m in listing.models:
                out.setdefault(m.id, []).append((listing, m))
        return out
