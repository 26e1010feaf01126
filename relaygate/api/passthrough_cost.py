"""What a forwarded request (``/v1/completions``, images, files, batches, …) costs, decided before it goes out.

- moderations, files, listing/reading/cancelling batches: free;
- ``/v1/completions``: its usage at the per-token price of the model its body names; the output reserved
  is ``max_tokens`` (OpenAI's default 16) for each of ``max(n, best_of)`` completions; a stream is asked
  for its usage chunk, which the client only sees if it asked for it too;
- ``/v1/images/generations``: ``n`` images at the per-image price of the model, quality and size asked
  (catalog ``cost_per_image``; "auto" or unset is the dearest the model may choose); no model named: the
  dearest of the models OpenAI may pick (dall-e-2, gpt-image-1);
- everything else (creating a batch, realtime sessions and client secrets, image edits and variations,
  whose multipart bodies are streamed unread, and models without a price) cannot be priced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.common import object_body
from relaygate.core.pricing import NANO, Meter
from relaygate.server.upload import ReadBody

if TYPE_CHECKING:
    from relaygate.catalog.prices import PriceBook
    from relaygate.server.http import Request

FREE_FAMILIES = ("moderations", "files")
COMPLETION_MAX_TOKENS = 16  # what OpenAI's legacy completions generate when max_tokens is not given
IMAGE_DEFAULT_MODELS = ("dall-e-2", "gpt-image-1")  # what OpenAI may use for a request naming no model


@dataclass(slots=True)
class Metered:
    """A passthrough request's meter, and its body when it was read to price it (then forwarded as read)."""

    meter: Meter
    body: ReadBody | None = None
    parsed: dict[str, Any] | None = None
    hide_usage: bool = False  # the stream's usage chunk was asked for by the meter, not by the client


def _count(value: Any) -> int:
    """A positive integer field's value (n, best_of), 1 when it is anything else (the upstream decides)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def prompt_tokens(prompt: Any) -> int:
    """About how many tokens a completions prompt has: a string (~4 characters a token), tokens, or lists."""
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    if isinstance(prompt, list):
        if all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return sum(prompt_tokens(p) for p in prompt)
    return 1


def completions(book: PriceBook, body: dict[str, Any], raw: bytes) -> Metered:
    model = body.get("model")
    price = book.lookup(model) if isinstance(model, str) and model else None
    if price is None or not (price.input or price.output):
        return Metered(Meter(priced=False), ReadBody(raw), body)
    hide = False
    if body.get("stream") is True:
        opts = body.get("stream_options")
        if not isinstance(opts, dict):
            body["stream_options"] = {"include_usage": True}
            hide = True
        elif not opts.get("include_usage"):
            opts["include_usage"] = True
            hide = True
    cap = body.get("max_tokens")
    out = (cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else COMPLETION_MAX_TOKENS) \
        * max(_count(body.get("n")), _count(body.get("best_of")))
    prompt = prompt_tokens(body.get("prompt"))
    meter = Meter(per_token=price, reserve_tokens=prompt + out,
                  reserve_nano=round((prompt * price.input + out * price.output) * NANO))
    return Metered(meter, ReadBody(orjson.dumps(body) if hide else raw), body, hide)


def image_generation(book: PriceBook, body: dict[str, Any], raw: bytes) -> Metered:
    model = body.get("model")
    names = (model,) if isinstance(model, str) and model else IMAGE_DEFAULT_MODELS
    prices = [book.image_price(name) for name in names]
    if any(p is None for p in prices):
        return Metered(Meter(priced=False), ReadBody(raw), body)
    quality, size = body.get("quality"), body.get("size")
    each = max(p.usd(quality if isinstance(quality, str) else None, size if isinstance(size, str) else None)
               for p in prices if p is not None)
    cost = round(_count(body.get("n")) * each * NANO)
    return Metered(Meter(fixed_nano=cost, reserve_nano=cost), ReadBody(raw), body)


async def meter_request(req: Request, family: str, target: str, book: PriceBook, limit: int) -> Metered:
    """How the request to ``target`` (below /v1) is priced; a JSON body read to price it has at most
    ``limit`` bytes."""
    path = target.partition("?")[0].strip("/").split("/")
    if family in FREE_FAMILIES or (family == "batches" and not (req.method == "POST" and len(path) == 1)):
        return Metered(Meter())
    if req.method == "POST" and path in (["completions"], ["images", "generations"]):
        body = object_body(await req.json(limit))
        raw = await req.body(limit)  # read once: the same bytes
        return completions(book, body, raw) if path == ["completions"] else image_generation(book, body, raw)
    return Metered(Meter(priced=False))
