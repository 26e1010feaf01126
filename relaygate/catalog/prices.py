"""What models cost: the bundled price table (models.json), config overrides, and usage → nano-dollars."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from relaygate.core.pricing import NANO

if TYPE_CHECKING:
    from relaygate.config import Config, DeploymentConfig
    from relaygate.core.call import Usage

@dataclass(frozen=True, slots=True)
class Price:
    """USD per unit; a missing price is 0."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # default: the input price
    cache_write: float | None = None  # default: the input price
    per_second: float = 0.0
    per_character: float = 0.0
    max_output: int = 0  # the most output tokens one answer may have (0: not known)

    def cost_nano(self, usage: Usage | None) -> int:
        """The cost of ``usage`` in nano-dollars (prompt tokens include cached and cache-write tokens)."""
        if usage is None or not usage.known:
            return 0
        if not (usage.cached_tokens or usage.cache_write_tokens or usage.audio_seconds or usage.characters):
            # the common case, the same sum without its zero terms (adding 0.0 changes no float): about
            # half the instructions, paid by every call the metrics or the log count
            return round((usage.prompt_tokens * self.input + usage.completion_tokens * self.output) * NANO)
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        plain = usage.prompt_tokens - cached - written
        usd = (plain * self.input
               + cached * (self.input if self.cached_input is None else self.cached_input)
               + written * (self.input if self.cache_write is None else self.cache_write)
               + usage.completion_tokens * self.output
               + usage.audio_seconds * self.per_second
               + usage.characters * self.per_character)
        return round(usd * NANO)


FREE = Price()


@dataclass(frozen=True, slots=True)
class ImagePrice:
    """USD per generated image, by quality then size; a default of None means the model picks ("auto")."""

    per_image: dict[str, dict[str, float]]
    default_quality: str | None = None
    default_size: str | None = None

    def usd(self, quality: str | None, size: str | None) -> float:
        """One image's price. A quality or size that is "auto", unknown to the table, or unset without a
        default is priced as the dearest the model could choose: a budget must never count low."""
        q = self.default_quality if quality in (None, "auto") else quality
        tables = [self.per_image[q]] if q in self.per_image else list(self.per_image.values())
        s = self.default_size if size in (None, "auto") else size
        return max(t[s] if s in t else max(t.values()) for t in tables)

T = TypeVar("T")

_DATE = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest|-preview(-\d{2}-\d{2})?|-v\d+(:\d+)?|:\d+)$")
_REGION = re.compile(r"^(us|eu|apac|global|us-gov|jp|au|ca)\.")
_VENDOR = re.compile(r"^(anthropic|amazon|meta|cohere|mistral|ai21)\.")


def _from_entry(e: dict[str, Any]) -> Price:
    return Price(
        input=float(e.get("input_cost_per_token") or 0.0),
        output=float(e.get("output_cost_per_token") or 0.0),
        cached_input=e.get("cached_input_cost_per_token"),
        cache_write=e.get("cache_write_cost_per_token"),
        per_second=float(e.get("cost_per_second") or 0.0),
        per_character=float(e.get("cost_per_character") or 0.0),
        max_output=int(e.get("max_output_tokens") or 0),
    )


def catalog_names(model: str) -> list[str]:
    """The names a model may have in the catalog, most specific first: without provider, region and vendor
    prefixes, then also without date and version suffixes."""
    name = model.lower()
    if "/" in name:  # provider/model
        name = name.rsplit("/", 1)[1]
    for _ in range(3):
        name = _REGION.sub("", name)
        name = _VENDOR.sub("", name)
    candidates = [name]
    stripped = name
    for _ in range(3):
        stripped = _DATE.sub("", stripped)
        candidates.append(stripped)
    return candidates


def match(model: str, table: dict[str, T], names: list[str]) -> T | None:
    """``model``'s entry in a catalog table: by one of its ``catalog_names``, else the longest known name
    (``names``: the table's, longest first) that prefixes it at a boundary; None when there is none."""
    candidates = catalog_names(model)
    for c in candidates:
        if c in table:
            return table[c]
    name = candidates[0]
    for known in names:
        if name.startswith(known) and name[len(known)] in "-:@":
            return table[known]
    return None


def bundled_models() -> dict[str, dict[str, Any]]:
    """The bundled catalog's entries by model name."""
    raw = json.loads(resources.files("relaygate.catalog").joinpath("models.json").read_text("utf-8"))
    models: dict[str, dict[str, Any]] = raw["models"]
    return models


def bundled_prices() -> dict[str, Price]:
    """Every entry's price; one whose input price is null (no source gives one: Gemini 3) is FREE itself, so
    that its model is unpriced (a budget cannot count it) rather than free, and its name does not take the
    price of a shorter name that prefixes it (gpt-5.4-mini is not gpt-5.4)."""
    return {name: FREE if "input_cost_per_token" in e and e["input_cost_per_token"] is None else _from_entry(e)
            for name, e in bundled_models().items()}


def bundled_image_prices() -> dict[str, ImagePrice]:
    return {name: ImagePrice(e["cost_per_image"], e.get("default_quality"), e.get("default_size"))
            for name, e in bundled_models().items() if "cost_per_image" in e}


def _overlay(base: Price | None, o: Any) -> Price:
    """``base`` with the fields that ``o`` (PriceConfig or DeploymentConfig) sets."""
    b = base or FREE

    def pick(name: str, current: Any) -> Any:
        v = getattr(o, name, None)
        return current if v is None else v

    return Price(
        input=pick("input_cost_per_token", b.input), output=pick("output_cost_per_token", b.output),
        cached_input=pick("cached_input_cost_per_token", b.cached_input),
        cache_write=pick("cache_write_cost_per_token", b.cache_write),
        per_second=pick("cost_per_second", b.per_second), per_character=pick("cost_per_character", b.per_character),
        max_output=pick("max_output_tokens", b.max_output),
    )


class PriceBook:
    """Resolves an upstream model name to its price (exact, then without dates/regions, then by prefix)."""

    MAX_CACHED = 4096

    def __init__(self, config: Config | None = None, bundled: dict[str, Price] | None = None,
                 images: dict[str, ImagePrice] | None = None) -> None:
        self.table = dict(bundled if bundled is not None else bundled_prices())
        self.images = images if images is not None else bundled_image_prices()
        self._names = sorted(self.table, key=len, reverse=True)
        self._cache: dict[str, Price] = {}
        if config is not None and config.prices:
            # an override of a name the table does not know starts from what the name resolves to today
            # (a dated variant of a known model keeps that model's other prices)
            for name, override in config.prices.items():
                self.table[name] = _overlay(self.table.get(name) or self._resolve(name), override)
            self._names = sorted(self.table, key=len, reverse=True)

    def lookup(self, model: str) -> Price:
        """The price of ``model`` (FREE, that very object, when unknown: ``price is FREE`` says "no price")."""
        hit = self._cache.get(model)
        if hit is not None:
            return hit
        price = self._resolve(model)
        if len(self._cache) < self.MAX_CACHED:
            self._cache[model] = price
        return price

    def _resolve(self, model: str) -> Price:
        found = match(model, self.table, self._names)
        return FREE if found is None else found

    def image_price(self, model: str) -> ImagePrice | None:
        """The per-image price of an image model (exact, then without a date), or None when unknown."""
        name = model.lower()
        return self.images.get(name) or self.images.get(_DATE.sub("", name))

    def for_deployment(self, config: DeploymentConfig, upstream_model: str) -> Price:
        """The deployment's own per-token prices over the table's entry for its upstream model."""
        base = self.lookup(upstream_model)
        if config.input_cost_per_token is None and config.output_cost_per_token is None:
            return base
        return _overlay(base, config)
