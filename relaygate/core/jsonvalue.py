"""JSON the gateway parses and will serialise again: depth bounded, integers exact and within 64 bits.

orjson serialises at most 254 levels of nesting and integers between -2^63 and 2^64-1, while parsers accept
more (orjson.loads 1,024 levels, and integers beyond 64 bits become floats). A body the gateway accepted but
cannot serialise again would fail later, at the upstream call or the request log, as an internal error. So
every client JSON body is decoded by msgspec, which keeps big integers exact, and checked once by serialising
it (``loads``): what passes can be forwarded as it is. A translation nests what it copies deeper, so what a
translator reads (a chat body, tool-call arguments) must also fit with ``ROOM`` levels to spare
(``check(value, ROOM)``), which only translated calls pay for. Costs: docs/inputs.md.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from relaygate.core.errors import BadRequest

ORJSON_MAX_DEPTH = 254  # the deepest nesting orjson.dumps serialises
# levels a translation may nest a copied value deeper: Bedrock's tool schemas go 2 down, and tool-call arguments
# (parsed from their JSON string, so their own depth starts again at 1) land 7 levels down in Gemini's and
# Bedrock's bodies; 14 leaves room to spare
ROOM = 14
MAX_DEPTH = ORJSON_MAX_DEPTH - ROOM  # the deepest nesting a translator takes: 240
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 64 - 1  # what orjson serialises exactly

_decode = msgspec.json.Decoder().decode


class JSONRejected(ValueError):
    """Not JSON the gateway can carry: malformed, nested too deeply, or an integer beyond 64 bits.
    ``param`` names where, when it is known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def loads(raw: bytes | str, room: int = 0) -> Any:
    """The JSON value of ``raw``, serialisable with ``room`` levels to spare, or JSONRejected."""
    data = _decoded(raw, room)
    check(data, room)
    return data


def loads_dumped(raw: bytes | str) -> tuple[Any, bytes]:
    """The JSON value of ``raw`` (as ``loads``) and its serialisation by orjson, which the check made anyway:
    the bytes that say exactly what the gateway read. ``raw`` itself may say something else to another parser
    (a key given twice: msgspec keeps the last, another parser may keep the first)."""
    data = _decoded(raw, 0)
    return data, check(data)


def _decoded(raw: bytes | str, room: int) -> Any:
    try:
        return _decode(raw)
    except RecursionError:
        raise JSONRejected(f"JSON nested deeper than {ORJSON_MAX_DEPTH - room} levels") from None
    except msgspec.DecodeError as e:  # malformed, or a number out of range (1e400)
        raise JSONRejected(f"not valid JSON ({e})") from None


def check(data: Any, room: int = 0) -> bytes:
    """Raise JSONRejected unless ``data`` can be serialised, nested ``room`` levels deeper; its serialisation
    (within ``room`` one-element arrays)."""
    if room == ROOM:
        return _check_nested(data)
    wrapped = data
    for _ in range(room):  # the hot path passes none: each level costs ~450 instructions to build
        wrapped = (wrapped,)
    try:
        return orjson.dumps(wrapped)
    except orjson.JSONEncodeError as e:
        raise _rejected(e, data, room) from None


# ROOM-deep nests of one-element lists (each with its innermost list), made once and reused: building ROOM
# levels cost ~6k instructions, more than serialising a small body. Taken from this pool while in use, so
# that no thread fills a nest another one is serialising (list.pop and append are atomic)
_NESTS: list[tuple[list[Any], list[Any]]] = []


def _check_nested(data: Any) -> bytes:
    try:
        nest, inner = _NESTS.pop()
    except IndexError:
        inner = [None]
        nest = inner
        for _ in range(ROOM - 1):
            nest = [nest]
    inner[0] = data
    try:
        return orjson.dumps(nest)
    except orjson.JSONEncodeError as e:
        raise _rejected(e, data, ROOM) from None
    finally:
        inner[0] = None
        _NESTS.append((nest, inner))


def _rejected(e: orjson.JSONEncodeError, data: Any, room: int) -> JSONRejected:
    if "Integer" in str(e):
        where = _big_int_path(data)
        what = f"'{where}' is an integer" if where else "an integer is"
        return JSONRejected(f"{what} beyond 64 bits; integers must lie between -2^63 and 2^64-1", param=where)
    return JSONRejected(f"JSON nested deeper than {ORJSON_MAX_DEPTH - room} levels")


def room_to_translate(body: Any) -> None:
    """A client's request about to be translated (to chat, and maybe on to another dialect), checked for
    ``ROOM`` levels to spare: else the 400 that says why."""
    try:
        check(body, ROOM)
    except JSONRejected as e:
        raise BadRequest(f"the request is not accepted: {e.message}", param=e.param) from None


def _big_int_path(data: Any) -> str | None:
    """Where the first integer beyond 64 bits is (``messages[0].seed``); only walked once one was found."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
        elif type(value) is int and not INT_MIN <= value <= INT_MAX:
            return path[:200] or None
    return None
