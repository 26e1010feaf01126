"""What a forwarded request (``/v1/completions``, images, files, batches, …) costs, decided before it goes out.

- moderations, files, listing/reading/cancelling batches: free;
- ``/v1/completions``: its usage at the per-token price of the model its body names; the output reserved
  is ``max_tokens`` (OpenAI's default 16) for each of ``max(n, best_of)`` completions; a stream is asked
  for its usage chunk, which the client only sees if it asked for it too;
- ``/v1/images/generations``: ``n`` images at the per-image price of the model, quality and size asked
  (catalog ``cost_per_image``; "auto" or unset is the dearest the model may choose); no model named: the
  dearest of the models OpenAI may pick (dall-e-2, gpt-image-1);
- ``/v1/images/edits`` and ``/variations``: multipart uploads streamed as they arrive, their small fields
  read on the way (``ImageForm``): the same per-image price once the body went up; what is reserved before
  is the dearest such a request can cost (10 images of the dearest model that serves the route), and what
  the fields do not settle (a body the tap could not read, a model without prices) is charged that much;
- everything else (creating a batch, realtime sessions and client secrets, models without a price) cannot
  be priced here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.common import object_body
from relaygate.core.pricing import NANO, Meter
from relaygate.server.upload import ReadBody

if TYPE_CHECKING:
    from relaygate.catalog.prices import ImagePrice, PriceBook
    from relaygate.server.http import Request

FREE_FAMILIES = ("moderations", "files")
COMPLETION_MAX_TOKENS = 16  # what OpenAI's legacy completions generate when max_tokens is not given
IMAGE_DEFAULT_MODELS = ("dall-e-2", "gpt-image-1")  # what OpenAI may use for a request naming no model
# the models OpenAI's image uploads may use: edits (dall-e-2 unless told), variations (dall-e-2 only)
UPLOAD_MODELS = {"edits": ("dall-e-2", "gpt-image-1", "gpt-image-1-mini"), "variations": ("dall-e-2",)}
MAX_IMAGES = 10  # OpenAI's cap on n
PRICE_FIELDS = ("model", "n", "size", "quality")


@dataclass(slots=True)
class Metered:
    """A passthrough request's meter, and its body when it was read to price it (then forwarded as read)."""

    meter: Meter
    body: ReadBody | None = None
    parsed: dict[str, Any] | None = None
    hide_usage: bool = False  # the stream's usage chunk was asked for by the meter, not by the client
    form: ImageForm | None = None  # an image upload: reads its price fields as it streams up


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


def images_cost(book: PriceBook, fields: dict[str, Any], defaults: tuple[str, ...]) -> int | None:
    """``n`` images at the price of the model, quality and size the fields name (no model: the dearest of
    ``defaults``); None when a model has no per-image price."""
    model = fields.get("model")
    prices = [book.image_price(name) for name in ((model,) if isinstance(model, str) and model else defaults)]
    if any(p is None for p in prices):
        return None
    quality, size = fields.get("quality"), fields.get("size")
    each = max(p.usd(quality if isinstance(quality, str) else None, size if isinstance(size, str) else None)
               for p in prices if p is not None)
    n = fields.get("n")
    if isinstance(n, str):  # a form field
        n = int(n) if n.isdigit() else None
    return round(_count(n) * each * NANO)


def image_generation(book: PriceBook, body: dict[str, Any], raw: bytes) -> Metered:
    cost = images_cost(book, body, IMAGE_DEFAULT_MODELS)
    if cost is None:
        return Metered(Meter(priced=False), ReadBody(raw), body)
    return Metered(Meter(fixed_nano=cost, reserve_nano=cost), ReadBody(raw), body)


class ImageForm:
    """Reads the fields that price an image upload (model, n, size, quality) as its multipart body streams
    past to the upstream; files are skipped, never kept. Once the body ended, the meter's charge is the price
    those fields name; until then (or when the body could not be read) it stays the reservation."""

    def __init__(self, book: PriceBook, meter: Meter, boundary: bytes, defaults: tuple[str, ...]) -> None:
        self.book = book
        self.meter = meter
        self.defaults = defaults
        self.fields: dict[str, str] = {}
        self._headers: list[bytes] = []  # the values of the current part's headers
        self._header = bytearray()
        self._name: str | None = None  # the price field being read
        self._value = bytearray()
        from python_multipart.multipart import MultipartParser  # image uploads alone need it: on first use

        self._parser = MultipartParser(boundary, {
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end})
        self._broken = False

    async def tap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        from python_multipart.exceptions import MultipartParseError

        async for chunk in chunks:
            if not self._broken:
                try:
                    self._parser.write(chunk)
                except MultipartParseError:  # the upstream judges the body; it is charged the reservation
                    self._broken = True
            yield chunk

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_end(self) -> None:
        self._headers.append(bytes(self._header))
        self._header = bytearray()

    def _headers_finished(self) -> None:
        # the part's Content-Disposition names it; a file (it has a filename) is never a price field
        from python_multipart.multipart import parse_options_header

        name = None
        for value in self._headers:
            kind, options = parse_options_header(value)
            if kind == b"form-data" and b"filename" not in options:
                name = options.get(b"name", b"").decode("utf-8", "replace")
        self._headers = []
        self._name = name if name in PRICE_FIELDS else None
        self._value = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is not None and len(self._value) < 256:
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._name is not None:
            self.fields[self._name] = self._value.decode("utf-8", "replace").strip()
            self._name = None

    def _end(self) -> None:
        cost = images_cost(self.book, self.fields, self.defaults)
        if cost is not None:
            self.meter.fixed_nano = cost


def image_upload(book: PriceBook, req: Request, kind: str) -> Metered:
    """The meter of an image edit or variation, with the form tap that settles it as the body streams by."""
    from python_multipart.multipart import parse_options_header

    defaults = UPLOAD_MODELS[kind]
    ctype, options = parse_options_header(req.headers.get("content-type", ""))
    prices: list[ImagePrice | None] = [book.image_price(m) for m in defaults]
    if ctype != b"multipart/form-data" or not options.get(b"boundary") or any(p is None for p in prices):
        return Metered(Meter(priced=False))
    dearest = max(max(max(t.values()) for t in p.per_image.values()) for p in prices if p is not None)
    bound = round(MAX_IMAGES * dearest * NANO)
    meter = Meter(fixed_nano=bound, reserve_nano=bound)
    return Metered(meter, form=ImageForm(book, meter, options[b"boundary"], defaults))


async def meter_request(req: Request, family: str, target: str, book: PriceBook, limit: int) -> Metered:
    """How the request to ``target`` (below /v1) is priced; a JSON body read to price it has at most
    ``limit`` bytes."""
    path = target.partition("?")[0].strip("/").split("/")
    if family in FREE_FAMILIES or (family == "batches" and not (req.method == "POST" and len(path) == 1)):
        return Metered(Meter())
    if req.method == "POST" and len(path) == 2 and path[0] == "images" and path[1] in UPLOAD_MODELS:
        return image_upload(book, req, path[1])
    if req.method == "POST" and path in (["completions"], ["images", "generations"]):
        body = object_body(await req.json(limit))
        raw = await req.body(limit)  # read once: the same bytes
        return completions(book, body, raw) if path == ["completions"] else image_generation(book, body, raw)
    return Metered(Meter(priced=False))
