"""What calls cost: the cost of a call from its usage, the price a budget reserves, the pre-call estimate.

Prices come from the price book (catalog/prices.py: config ``prices`` over the bundled catalog, a
deployment's own prices over both). Costs are integers of nano-dollars, so that sums are exact. The limits
layer, the audit layer and the ``cost`` routing strategy all ask this one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import PermissionDenied

if TYPE_CHECKING:
    from relaygate.catalog.prices import Price, PriceBook
    from relaygate.routing.deployment import Deployment

NANO = 1_000_000_000  # nano-dollars per dollar
COUNT_TOKENS = Route.COUNT_TOKENS
CHAT = Route.CHAT  # bound once: on Python 3.11 an enum class attribute costs ~0.2 µs per lookup
RESPONSES = Route.RESPONSES
MAX_CACHED = 10_000  # prices remembered per (deployment, model): a wildcard deployment sees any model name
MIN_HELD_OUTPUT = 16  # the fewest output tokens a call held to its remaining budget is let through with
WILDCARD = "*"
# request fields the upstream reads as part of the prompt besides the messages (tool and function
# definitions, a structured-output schema): counted by the bytes of their JSON
_PROMPT_EXTRAS = ("tools", "functions", "response_format", "text")  # text: the Responses API's format
# every field besides the messages that counts towards the prompt: a plain chat request has none of them
_BESIDES_MESSAGES = frozenset({"input", "instructions", *_PROMPT_EXTRAS})


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a budget reserves for a model: USD per input and output token, the most output tokens an answer
    may have (the largest known; 0: none known), and whether one of the model's own deployments has no known
    price."""

    input: float
    output: float
    max_output: int
    unpriced: bool
    bounded: bool  # every deployment's maximum output is known (else the upstream is held to max_output)


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


def _json_chars(value: Any) -> int:
    """The length of ``value``'s JSON (what the upstream reads of it); a value JSON cannot hold counts 0."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return 0


def choices(body: dict[str, Any]) -> int:
    """The choices a chat request asks for (``n``; 1 when absent or not a positive integer)."""
    n = body.get("n")
    return n if type(n) is int and n > 0 else 1


class Pricing:
    """Prices and costs for one gateway's deployments (``models``: client-facing name -> deployments)."""

    def __init__(self, book: PriceBook, models: dict[str, list[Deployment]], default_output_tokens: int,
                 fallbacks: dict[str, list[str]] | None = None) -> None:
        self.book = book
        self.models = models
        # the output a reservation assumes without a cap when no deployment's maximum output is known (and
        # what the upstream is then held to)
        self.default_output_tokens = default_output_tokens
        self.fallbacks = fallbacks or {}  # model -> the models its fallback rules name
        self._call_prices: dict[tuple[str, str], Price] = {}  # (deployment, model asked) -> its price
        self._reserve: dict[str, Reservation] = {}  # model asked -> what a budget reserves for it
        self._unit: dict[str, float | None] = {}  # deployment -> USD per input + output token

    def forget_reservations(self) -> None:
        """What a model reserves is worked out again (its deployments changed: a ``select`` resolved anew)."""
        self._reserve.clear()

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
            price = self._call_prices.get((dep.name, call.model)) or self.price(dep, call.model)
            cost = price.cost_nano(reply.usage)
        call.cost_nano = cost
        return cost

    def price(self, dep: Deployment, model: str) -> Price:
        """What a call to ``dep`` asking for ``model`` costs per token (remembered)."""
        key = (dep.name, model)
        price = self._call_prices.get(key)
        if price is None:
            price = self.book.for_deployment(dep.config, dep.upstream_model(model))
            if len(self._call_prices) < MAX_CACHED:
                self._call_prices[key] = price
        return price

    def reach(self, model: str) -> list[str]:
        """The models a call to ``model`` may be served by: its own (``*`` for a name only the wildcard
        serves) and, transitively, every fallback model its rules name (each once)."""
        first = model if model in self.models else WILDCARD
        out = [first]
        for name in out:  # grows while it is walked: breadth first, each model once
            out += [m for m in self.fallbacks.get(name, ()) if m not in out]
        return out

    def reservation(self, model: str) -> Reservation:
        """What a budget reserves for a call to a client-facing model: the dearest input and output prices
        and the largest maximum output of every deployment that may serve it (fallbacks included), so that
        a reservation errs high; ``unpriced`` when one of them has no known price."""
        hit = self._reserve.get(model)
        if hit is not None:
            return hit
        from relaygate.catalog.prices import FREE  # catalog/prices imports this module

        prices: list[Price] = []
        unpriced = False
        for i, name in enumerate(self.reach(model)):
            asked = model if name == WILDCARD else name
            prices += [self.book.for_deployment(d.config, d.upstream_model(asked)) for d in self.models.get(name, ())]
            if i == 0:  # a fallback model without a price is skipped for a budget instead (routing/router.py)
                unpriced = any(p is FREE for p in prices)
        known = [p.max_output for p in prices]
        res = Reservation(max((p.input for p in prices), default=0.0), max((p.output for p in prices), default=0.0),
                          max(known, default=0), unpriced, bool(known) and all(known))
        if len(self._reserve) < MAX_CACHED:
            self._reserve[model] = res
        return res

    def unpriced(self, dep: Deployment, model: str) -> bool:
        """Whether a deployment has no known price for the model a call asks of it (a budget cannot count it)."""
        from relaygate.catalog.prices import FREE

        return self.book.for_deployment(dep.config, dep.upstream_model(model)) is FREE

    def estimate(self, call: Call, tokens: bool, cost: bool) -> tuple[int, int, int]:
        """(tokens, nano-dollars, output cap) to reserve before a call: the prompt at ~4 characters a token,
        plus the output: the client's cap; for the tokens per minute, else ``default_output_tokens``; for the
        cost, else the largest maximum output of the deployments that may serve it (``default_output_tokens``
        when none is known), which the upstream must be held to (the third figure; 0 when nothing needs
        holding) when one of them does not know its maximum."""
        meter = call.meter
        if meter is not None:
            return meter.reserve_tokens, meter.reserve_nano, 0
        route = call.route
        generates = route is CHAT or route is RESPONSES  # (a native Responses call: its own body and cap)
        prompt, given, n = call_shape(call)  # (the call's own body read once: this runs on every limited call)
        if not generates:
            given = None
        if route is not CHAT:
            n = 1
        cap = given if type(given) is int and given > 0 else 0
        out = cap or (self.default_output_tokens if generates else 0)
        if not cost:
            return prompt + out, 0, 0
        res = self._reserve.get(call.model) or self.reservation(call.model)
        if res.unpriced and route is not COUNT_TOKENS:
            raise PermissionDenied(
                f"The model {call.model!r} has no known price on this gateway, and this key (or its team or user) "
                "has a budget it would spend without counting. Set its price in the config (prices:, or the "
                "deployment's input_cost_per_token/output_cost_per_token; 0 for a free model).",
                param="model", code="unpriced_request")
        held = 0
        if generates and not cap and res.output:
            out_cost = res.max_output or self.default_output_tokens
            if not res.bounded:  # a deployment whose maximum output is not known: held to what is reserved
                held = out_cost
        else:
            out_cost = out
        out_cost *= n  # each of n choices may be that long (chat)
        return prompt + out, round((prompt * res.input + out_cost * res.output) * NANO), held

    def affordable(self, call: Call, left: int) -> tuple[int, int, int] | None:
        """(tokens, nano-dollars, output cap) of the largest answer ``left`` nano-dollars of budget can pay
        for, the prompt included; None when that is less than ``MIN_HELD_OUTPUT`` tokens (or less than the
        client's own cap, if smaller): the call is then refused rather than cut to nothing."""
        if (call.route is not CHAT and call.route is not RESPONSES) or call.meter is not None:
            return None
        res = self._reserve.get(call.model) or self.reservation(call.model)
        if res.output <= 0:
            return None
        prompt, cap, n = call_shape(call)  # n: the cap holds each choice, n of them are paid for
        wanted = cap if type(cap) is int and cap > 0 else MIN_HELD_OUTPUT
        out = int((left / NANO - prompt * res.input) / (res.output * n))
        while out > 0 and round((prompt * res.input + out * n * res.output) * NANO) > left:
            out -= 1  # rounding: the reservation must fit what is left
        if out < min(MIN_HELD_OUTPUT, wanted):
            return None
        return prompt + out, round((prompt * res.input + out * n * res.output) * NANO), out

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        """The prompt's tokens as a reservation counts them: ~4 characters a token (1,000 characters per
        non-text part, 16 per message for its framing). What the upstream reads besides the messages counts
        too, by the bytes of its JSON: the tool (and legacy function) definitions, a ``response_format``'s
        schema and the tool calls of earlier assistant turns; a request of long tool schemas and a short
        question would be reserved far below its price otherwise."""
        chars = 0
        messages = body.get("messages")
        if type(messages) is list:
            chars = 16 * len(messages)
            for m in messages:
                if not isinstance(m, dict):
                    continue
                content = m.get("content")
                if type(content) is str:
                    chars += len(content)
                elif isinstance(content, list):
                    for part in content:
                        text = part.get("text") if isinstance(part, dict) else None
                        chars += len(text) if isinstance(text, str) else 1000
                calls = m.get("tool_calls")
                if calls:
                    chars += _json_chars(calls)
        if _BESIDES_MESSAGES.isdisjoint(body):  # one check in C instead of six lookups
            return chars // 4 + 1
        given = body.get("input")
        if given is not None:
            if isinstance(given, str):
                chars += len(given)
            elif isinstance(given, list):
                chars += sum(len(x) if isinstance(x, str) else 4 * len(x) if isinstance(x, list)
                             else _json_chars(x) if isinstance(x, dict) else 0 for x in given)  # Responses items
        for name in _PROMPT_EXTRAS:  # absent from most requests: one dict lookup each
            extra = body.get(name)
            if extra:
                chars += _json_chars(extra)
        instructions = body.get("instructions")  # the Responses API's system prompt
        if type(instructions) is str:
            chars += len(instructions)
        return chars // 4 + 1

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


def call_shape(call: Call) -> tuple[int, Any, int]:
    """The call's prompt tokens as a reservation counts them, the output cap its client set
    (``output_cap_of``) and its choices: from its chat body, or for a foreign client's call not translated
    (the same-dialect fast path) from its own body, without making the chat form (``untranslated`` asked once)."""
    native = call.untranslated
    if native is not None:
        return native.prompt_tokens(), native.output_cap(), native.choices()
    body = call.body
    return Pricing.prompt_tokens(body), output_cap_of(body, call.route), choices(body)


def call_prompt_tokens(call: Call) -> int:
    return call_shape(call)[0]


def call_output_cap(call: Call) -> Any:
    return call_shape(call)[1]


def call_choices(call: Call) -> int:
    return call_shape(call)[2]


def output_cap_of(body: dict[str, Any], route: Route) -> Any:
    """The output cap a generating call's body sets (the Responses API names it ``max_output_tokens``)."""
    if route is RESPONSES:
        return body.get("max_output_tokens")
    return body.get("max_completion_tokens") or body.get("max_tokens")
