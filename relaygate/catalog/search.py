"""The catalog as /api/models shows it: one entry per model (the bundled and overridden cards, every model
discovered, every model a deployment names), with who serves it, filtered, sorted."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import ConfigDict, Field

from relaygate.catalog.cards import Card

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.catalog.cards import Catalog
    from relaygate.catalog.discovery import Discovery, Listing
    from relaygate.providers.listing import ListedModel
    from relaygate.routing.deployment import Deployment

WILDCARD = "*"
MAX_PROVIDER = 64  # characters of a provider name: a card's, a select's, a search's
MAX_Q = 200  # characters of a search's text


@dataclass(slots=True)
class Entry:
    """A card and who serves it: ``deployments`` (configured names), ``models`` (the gateway's model names that
    route to them), whether an upstream listed it, and whether every listing that did is stale."""

    card: Card
    deployments: list[str]
    models: list[str]
    providers: list[str]
    discovered: bool
    stale: bool
    error: str | None

    def json(self) -> dict[str, Any]:
        return {**self.card.json(), "providers": self.providers, "deployments": self.deployments,
                "models": self.models, "discovered": self.discovered, "stale": self.stale, "error": self.error}

    def input_price(self) -> float | None:
        return self.card.prices.input


@dataclass(frozen=True, slots=True)
class Conditions:
    """The conditions an alias's ``select`` (in the config, validated by pydantic with these bounds) and
    /api/models/search may ask, all of which must hold; None: not asked."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # a typo in a config's select is an error

    provider: Annotated[str | None, Field(min_length=1, max_length=MAX_PROVIDER)] = None
    supports_chat: bool | None = None
    supports_vision: bool | None = None
    supports_tools: bool | None = None
    supports_json_schema: bool | None = None
    supports_reasoning: bool | None = None
    supports_audio: bool | None = None
    supports_embeddings: bool | None = None
    min_context: Annotated[int | None, Field(ge=0)] = None
    # USD per 1M input tokens; an unpriced model never passes
    max_cost: Annotated[float | None, Field(ge=0, allow_inf_nan=False)] = None
    q: Annotated[str | None, Field(min_length=1, max_length=MAX_Q)] = None

    def asked(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def matches(self, e: Entry) -> bool:
        c = e.card
        for name in CAPABILITY_FILTERS:
            want = getattr(self, name)
            if want is not None and getattr(c, name) is not want:
                return False
        if self.provider is not None and self.provider.lower() not in e.providers:
            return False
        if self.min_context is not None and (c.context_window or 0) < self.min_context:
            return False
        if self.max_cost is not None and (c.prices.input is None or c.prices.input > self.max_cost):
            return False
        if self.q is not None:
            needle = self.q.lower()
            return any(needle in s.lower() for s in (c.id, c.provider, c.mode, *e.providers, *e.models))
        return True


@dataclass(frozen=True, slots=True)
class Filters(Conditions):
    """What /api/models/search may ask: the conditions, and where a model comes from."""

    configured: bool | None = None  # served by a deployment of this gateway
    discovered: bool | None = None

    def matches(self, e: Entry) -> bool:
        if self.configured is not None and bool(e.deployments) is not self.configured:
            return False
        if self.discovered is not None and e.discovered is not self.discovered:
            return False
        return Conditions.matches(self, e)


CAPABILITY_FILTERS = tuple(f.name for f in fields(Conditions) if f.name.startswith("supports_"))


def discovered_card(model: ListedModel, listing: Listing) -> Card:
    """A card for a model the catalog does not know, from what its upstream's listing said."""
    day = time.strftime("%Y-%m-%d", time.gmtime(listing.refreshed_at)) if listing.refreshed_at else None
    return Card(id=model.id, provider=listing.deployments[0].provider_type, mode=model.mode or "chat",
                context_window=model.context_window, max_output_tokens=model.max_output_tokens,
                supports_vision=bool(model.supports_vision), supports_tools=bool(model.supports_tools),
                supports_json_schema=bool(model.supports_json_schema),
                supports_reasoning=bool(model.supports_reasoning),
                supports_audio_input=bool(model.supports_audio_input),
                source=f"discovered: the model listing of deployment {listing.name}", as_of=day)


def entries(catalog: Catalog, models: Mapping[str, list[Deployment]], discovery: Discovery | None) -> list[Entry]:
    """Every model the gateway knows of, in no particular order."""
    listed = discovery.listed() if discovery is not None else {}
    named: dict[str, list[Deployment]] = {}
    wildcards: list[Deployment] = []
    for deps in models.values():
        for d in deps:
            if d.config.model == WILDCARD:
                wildcards.append(d)
            else:
                named.setdefault(d.config.model, []).append(d)
    out = []
    for model_id in {*catalog.cards, *listed, *named}:
        found = listed.get(model_id, [])
        card = catalog.lookup(model_id)
        if card is None:
            card = discovered_card(found[0][1], found[0][0]) if found else \
                Card(id=model_id, provider=named[model_id][0].provider_type)
        elif card.id != model_id:
            card = replace(card, id=model_id)
        if card.context_window is None and found and found[0][1].context_window:
            card = replace(card, context_window=found[0][1].context_window)
        serving = list(named.get(model_id, ()))
        in_listings = {id(listing) for listing, _ in found}
        serving += [d for d in wildcards if any(id(lst) in in_listings for lst in _listings_of(d, discovery))]
        providers = sorted({card.provider.lower(), *(d.provider_type for d in serving),
                            *(listing.deployments[0].provider_type for listing, _ in found)})
        stale = bool(found) and all(listing.stale for listing, _ in found)
        error = next((listing.error for listing, _ in found if listing.error), None)
        out.append(Entry(card, sorted({d.name for d in serving}), sorted({d.model_name for d in serving}), providers,
                         bool(found), stale, error))
    return out


def _listings_of(dep: Deployment, discovery: Discovery | None) -> list[Listing]:
    if discovery is None:
        return []
    return [lst for lst in discovery.listings if dep in lst.deployments]


def visible(e: Entry, key: Principal | None) -> bool:
    """Whether a caller may see a model: the master key and an open gateway see all; a virtual key only those
    a model name it may use routes to."""
    from relaygate.auth.principal import MASTER

    if key is None or key is MASTER:
        return True
    return any(key.allows_model(m, (e.card.id,) if m == WILDCARD else ()) for m in e.models)


SORTS = ("name", "cost", "context")


def ordered(found: list[Entry], sort: str, descending: bool) -> list[Entry]:
    """By name; by input price (unpriced models last either way); by context window (unknown last)."""
    if sort == "cost":
        priced = sorted((e for e in found if e.input_price() is not None),
                        key=lambda e: (e.input_price(), e.card.id), reverse=descending)
        return priced + sorted((e for e in found if e.input_price() is None), key=lambda e: e.card.id)
    if sort == "context":
        known = sorted((e for e in found if e.card.context_window), key=lambda e: (e.card.context_window, e.card.id),
                       reverse=descending)
        return known + sorted((e for e in found if not e.card.context_window), key=lambda e: e.card.id)
    return sorted(found, key=lambda e: e.card.id, reverse=descending)
