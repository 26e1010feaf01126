"""Model cards: what a model is and can do (provider, context, modalities, tools, prices), from the bundled
catalog (models.json) with the config's ``prices`` overrides laid over it, resolved by name like prices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from relaygate.catalog.prices import bundled_models, match

if TYPE_CHECKING:
    from relaygate.config import PriceConfig

PER_MILLION = 1_000_000
# card field -> the models.json / PriceConfig key holding its price in USD per token
TOKEN_PRICES = {"input": "input_cost_per_token", "output": "output_cost_per_token",
                "cached_input": "cached_input_cost_per_token", "cache_write": "cache_write_cost_per_token",
                "audio_input": "input_cost_per_audio_token", "audio_output": "output_cost_per_audio_token"}
CAPABILITIES = ("supports_vision", "supports_tools", "supports_json_schema", "supports_reasoning",
                "supports_audio_input", "supports_audio_output")


@dataclass(frozen=True, slots=True)
class CardPrices:
    """USD per 1M tokens (None: no source gives it), and per second of audio / character of speech."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None
    audio_input: float | None = None
    audio_output: float | None = None
    per_second: float | None = None
    per_character: float | None = None

    def json(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Card:
    """One model's card. ``source`` names where its facts come from, ``as_of`` when they were read there."""

    id: str
    provider: str
    mode: str = "chat"
    context_window: int | None = None
    max_input_tokens: int | None = None  # where a model takes less input than its window (GPT-5)
    max_output_tokens: int | None = None
    supports_vision: bool = False
    supports_tools: bool = False
    supports_json_schema: bool = False
    supports_reasoning: bool = False
    supports_audio_input: bool = False
    supports_audio_output: bool = False
    prices: CardPrices = CardPrices()
    source: str | None = None
    as_of: str | None = None
    overridden: bool = False  # the config's ``prices`` section changed something of it

    @property
    def supports_chat(self) -> bool:
        return self.mode in ("chat", "completion")

    @property
    def supports_embeddings(self) -> bool:
        return self.mode == "embedding"

    @property
    def supports_audio(self) -> bool:
        return self.supports_audio_input or self.supports_audio_output

    def json(self) -> dict[str, Any]:
        """The card's public fields (no secrets or URLs exist on a card)."""
        return {"id": self.id, "provider": self.provider, "mode": self.mode, "context_window": self.context_window,
                "max_output_tokens": self.max_output_tokens, "supports_chat": self.supports_chat,
                "supports_embeddings": self.supports_embeddings, "supports_audio": self.supports_audio,
                **{c: getattr(self, c) for c in CAPABILITIES}, "prices": self.prices.json(),
                "source": self.source, "as_of": self.as_of, "overridden": self.overridden}


def _per_million(value: Any) -> float | None:
    return None if value is None else round(float(value) * PER_MILLION, 9)


def card_of(name: str, e: Mapping[str, Any]) -> Card:
    """A card from a models.json entry."""
    window = e.get("context_window")
    prices = CardPrices(**{f: _per_million(e.get(k)) for f, k in TOKEN_PRICES.items()},
                        per_second=e.get("cost_per_second"), per_character=e.get("cost_per_character"))
    return Card(id=name, provider=str(e.get("provider") or "unknown"), mode=str(e.get("mode") or "chat"),
                context_window=window if isinstance(window, int) else None,
                max_input_tokens=e.get("max_input_tokens") or None,
                max_output_tokens=e.get("max_output_tokens") or None,
                **{c: bool(e.get(c)) for c in CAPABILITIES}, prices=prices,
                source=e.get("source"), as_of=e.get("as_of"))


def overlay(card: Card, o: PriceConfig) -> Card:
    """``card`` with every field the override sets."""
    changes: dict[str, Any] = {k: v for k in ("provider", "mode", "context_window", "max_output_tokens", "source",
                                             "as_of", *CAPABILITIES) if (v := getattr(o, k)) is not None}
    price_changes = {f: _per_million(v) for f, k in TOKEN_PRICES.items() if (v := getattr(o, k)) is not None}
    for f in ("per_second", "per_character"):
        v = getattr(o, "cost_" + f)
        if v is not None:
            price_changes[f] = v
    if o.context_window is not None:
        changes["max_input_tokens"] = None  # the override's window is what the model takes
    if price_changes:
        changes["prices"] = replace(card.prices, **price_changes)
    return replace(card, **changes, overridden=True)


class Catalog:
    """Every known model's card by name: the bundled ones, with the config's overrides (an override of a name
    the catalog does not know starts from the card that name resolves to today, else from a blank one)."""

    MAX_CACHED = 4096

    def __init__(self, overrides: Mapping[str, PriceConfig] | None = None,
                 bundled: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        entries = bundled if bundled is not None else bundled_models()
        self.cards: dict[str, Card] = {name: card_of(name, e) for name, e in entries.items()}
        self._names = sorted(self.cards, key=len, reverse=True)
        for name, o in (overrides or {}).items():
            base = self.cards.get(name) or self._match(name)
            base = replace(base, id=name) if base is not None else Card(id=name, provider=o.provider or "custom")
            self.cards[name] = overlay(base, o)
        self._names = sorted(self.cards, key=len, reverse=True)
        self._cache: dict[str, Card | None] = {}

    def _match(self, model: str) -> Card | None:
        return match(model, self.cards, self._names)

    def lookup(self, model: str) -> Card | None:
        """The card of an upstream model name (exact, then without dates/regions, then by prefix)."""
        if model in self._cache:
            return self._cache[model]
        found = self._match(model)
        if len(self._cache) < self.MAX_CACHED:
            self._cache[model] = found
        return found

    def context_table(self) -> dict[str, int]:
        """Prompt tokens each model takes at most (for catalog/context.py), overrides included."""
        return {name: window for name, card in self.cards.items()
                if (window := card.max_input_tokens or card.context_window)}
