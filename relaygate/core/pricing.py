"""What calls cost: the cost of a call from its usage, the price a budget reserves, the pre-call estimate.

Prices come from the price book (catalog/prices.py: config ``prices`` over the bundled catalog, a
deployment's own prices over both). Costs are integers of nano-dollars, so that sums are exact. The limits
layer, the audit layer and the ``cost`` routing strategy all ask this one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from relaygate.core.call import Call, Reply, Route

if TYPE_CHECKING:
    from relaygate.catalog.prices import Price, PriceBook
    from relaygate.routing.deployment import Deployment

NANO = 1_000_000_000  # nano-dollars per dollar
CHAT = Route.CHAT  # bound once: on Python 3.11 an enum class attribute costs ~0.2 µs per lookup
MAX_CACHED = 10_000  # prices remembered per (deployment, model): a wildcard deployment sees any model name


@dataclass(slots=True)
class Meter:
    """How a call forwarded as it is (passthrough) is priced, decided from its request before it goes out.

    A priced call costs ``fixed_nano`` (images: n × the per-image price; free routes: 0), or its usage at
    ``per_token`` (legacy completions); ``reserve_*`` is what limits reserve before it. A call that is not
    ``priced`` spends money the gateway cannot see (a batch, a realtime session): budgets refuse it.
    """

    priced: bool = True
    fixed_nano: int = 0
    per_token: Price | None = None
    reserve_tokens: int = 0
    reserve_nano: int = 0

    def cost(self, reply: Reply | None) -> int:
        if reply is None:  # refused or failed upstream: nothing was made
            return 0
        if self.per_token is None:
            return self.fixed_nano
        usage = reply.usage
        if usage is None or not usage.known:  # an answer whose usage could not be read: what was reserved
            return self.reserve_nano
        return self.per_token.cost_nano(usage)


class Pricing:
    """Prices and costs for one gateway's deployments (``models``: client-facing name -> deployments)."""

    def __init__(self, book: PriceBook, models: dict[str, list[Deployment]], default_output_tokens: int) -> None:
        self.book = book
        self.models = models
        self.default_output_tokens = default_output_tokens  # the output a reservation assumes without a cap
        self._call_prices: dict[tuple[str, str], Price] = {}  # (deployment, model asked) -> its price
        self._reserve: dict[str, tuple[float, float]] = {}  # model -> (input, output) USD per token
        self._unit: dict[str, float | None] = {}  # deployment -> USD per input + output token

    def cost(self, call: Call, reply: Reply | None) -> int:
        """The call's cost in nano-dollars from its real usage (computed once: the limits and the log share it)."""
        cost = call.cost_nano
        if cost is not None:
            return cost
        dep = call.deployment
        if call.meter is not None:
            cost = call.meter.cost(reply)
        elif reply is None or reply.usage is None or dep is None:
            cost = 0
        else:
            key = (dep.name, call.model)
            price = self._call_prices.get(key)
            if price is None:
                price = self.book.for_deployment(dep.config, dep.upstream_model(call.model))
                if len(self._call_prices) < MAX_CACHED:
                    self._call_prices[key] = price
            cost = price.cost_nano(reply.usage)
        call.cost_nano = cost
        return cost

    def reservation_price(self, model: str) -> tuple[float, float]:
        """(input, output) USD per token a budget reserves for a client-facing model: the dearest of its
        deployments, so that a reservation errs high."""
        hit = self._reserve.get(model)
        if hit is not None:
            return hit
        deps = self.models.get(model) or self.models.get("*") or ()
        prices = [self.book.for_deployment(d.config, d.upstream_model(model)) for d in deps]
        price = (max((p.input for p in prices), default=0.0), max((p.output for p in prices), default=0.0))
        if len(self._reserve) < MAX_CACHED:
            self._reserve[model] = price
        return price

    def estimate(self, call: Call, tokens: bool, cost: bool) -> tuple[int, int]:
        """(tokens, nano-dollars) to reserve before a call: ~4 characters a token, plus the output cap."""
        meter = call.meter
        if meter is not None:
            return meter.reserve_tokens, meter.reserve_nano
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
        if call.route is CHAT:
            cap = body.get("max_completion_tokens") or body.get("max_tokens")
            out = cap if type(cap) is int and cap > 0 else self.default_output_tokens
        if not cost:
            return prompt + out, 0
        price_in, price_out = self._reserve.get(call.model) or self.reservation_price(call.model)
        return prompt + out, round((prompt * price_in + out * price_out) * NANO)

    def unit_price(self, dep: Deployment) -> float | None:
        """What the ``cost`` strategy compares: USD per (input + output) token, from the deployment's config,
        else its upstream model's price book entry; None when neither knows it."""
        if dep.name in self._unit:
            return self._unit[dep.name]
        c = dep.config
        if c.input_cost_per_token is not None or c.output_cost_per_token is not None:
            unit: float | None = (c.input_cost_per_token or 0.0) + (c.output_cost_per_token or 0.0)
        else:
            p = self.book.lookup(c.model)
            unit = p.input + p.output if (p.input or p.output) else None
        self._unit[dep.name] = unit
        return unit
