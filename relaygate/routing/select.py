"""Models that choose their deployments by capability (``select``): every deployment of the other models whose
model card (bundled, overridden, or learnt from discovery) passes the conditions, resolved when the gateway is
built and again after each discovery refresh (docs/routing.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaygate.catalog.search import entries
from relaygate.routing.deployment import Deployment

if TYPE_CHECKING:
    from relaygate.catalog.cards import Catalog
    from relaygate.catalog.discovery import Discovery
    from relaygate.config import Config
    from relaygate.routing.router import ModelTable

WILDCARD = "*"


class Selections:
    """Fills ``table.models[name]`` of each selecting model with its candidates, in config order: each one a
    deployment of another model, under the selecting model's name, sharing that deployment's provider,
    statistics and breaker (one upstream, one health). A ``*`` deployment is never a candidate (it would send
    the selecting model's name upstream)."""

    def __init__(self, config: Config, catalog: Catalog, table: ModelTable, discovery: Discovery | None) -> None:
        self.filters = {m.name: m.select for m in config.models if m.select is not None}
        self.catalog = catalog
        self.table = table
        self.discovery = discovery
        self._copies: dict[tuple[str, str], Deployment] = {}  # (selecting model, deployment) -> its copy

    def names(self) -> frozenset[str]:
        return frozenset(self.filters)

    def apply(self) -> list[str]:
        """Resolve every selecting model again; the names whose candidates changed."""
        own = {name: deps for name, deps in self.table.models.items() if name not in self.filters}
        found = entries(self.catalog, own, self.discovery)
        order = [d for deps in own.values() for d in deps if d.config.model != WILDCARD]
        changed = []
        for name, wanted in self.filters.items():
            chosen = {n for e in found if e.deployments and wanted.matches(e) for n in e.deployments}
            fresh = [self._copy(name, d) for d in order if d.name in chosen]
            deps = self.table.models.setdefault(name, [])
            if fresh != deps:
                deps[:] = fresh  # in place: whoever holds the list sees the new candidates
                changed.append(name)
        return changed

    def _copy(self, name: str, dep: Deployment) -> Deployment:
        copy = self._copies.get((name, dep.name))
        if copy is None or copy.provider is not dep.provider:
            copy = Deployment(dep.name, name, dep.config, dep.provider, breaker=dep.breaker)
            copy.stats = dep.stats  # after __post_init__, which would have reset the shared counters
            copy.limited = dep.limited
            self._copies[(name, dep.name)] = copy
        return copy
