"""OTLP's ``ExportTraceServiceRequest`` written straight to the protobuf wire format.

The export thread used ``opentelemetry-proto``'s message classes: ~60k instructions a span, most of them
protobuf's Python API setting fields one by one, more than the rest of a traced call together
(docs/observability.md, Traces: cost). The few messages a span needs (the request, resource spans, scope
spans, span, key-value attributes, status) have a fixed, documented encoding (protobuf's wire format:
field tags, varints, length-delimited bytes, little-endian fixed64), so they are written here as bytes;
an attribute that repeats from span to span (the model, the deployment, a status) is encoded once and its
bytes reused. The output is what ``opentelemetry-proto`` serialises for the same spans, byte for byte
(``tests/test_otlpwire.py`` holds it to that, and parses it back with the library's own classes).

Field numbers (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto,
collector/trace/v1/trace_service.proto):

    ExportTraceServiceRequest  1 resource_spans (ResourceSpans)
    ResourceSpans              1 resource (Resource), 2 scope_spans (ScopeSpans)
    Resource                   1 attributes (KeyValue)
    ScopeSpans                 1 scope (InstrumentationScope), 2 spans (Span)
    InstrumentationScope       1 name (string)
    Span                       1 trace_id (bytes), 2 span_id (bytes), 3 trace_state, 4 parent_span_id, 5 name,
                               6 kind (enum), 7 start_time_unix_nano (fixed64), 8 end_time_unix_nano (fixed64),
                               9 attributes (KeyValue), 15 status (Status), 16 flags (fixed32)
    Status                     3 code (enum)
    KeyValue                   1 key (string), 2 value (AnyValue)
    AnyValue                   1 string_value, 2 bool_value, 3 int_value (int64), 4 double_value (double),
                               5 array_value (ArrayValue: 1 values)

Fields are written in field-number order and fields at their default (an empty string, 0) are left out, as
protobuf's own serialiser does; a oneof's value is written even when it is a default (``int_value: 0``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaygate.observability.otlp import Span

MASK64 = (1 << 64) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_ONE_BYTE = [bytes((i,)) for i in range(128)]
_TIMES = struct.Struct("<BQBQ")  # Span 7 and 8: tag, fixed64, tag, fixed64
_DOUBLE = struct.Struct("<d")
_FLAGS = struct.Struct("<I")
SAMPLED, HAS_IS_REMOTE, IS_REMOTE = 0x01, 0x100, 0x200  # Span.flags: W3C trace flags and SpanFlags bits
_LOCAL_FLAGS = b"\x85\x01" + _FLAGS.pack(SAMPLED | HAS_IS_REMOTE)  # Span 16 (fixed32): tag, value
_REMOTE_FLAGS = b"\x85\x01" + _FLAGS.pack(SAMPLED | HAS_IS_REMOTE | IS_REMOTE)
KINDS = (b"", b"\x30\x01", b"\x30\x02", b"\x30\x03", b"\x30\x04", b"\x30\x05")  # Span 6: SpanKind 0-5
_ERROR = b"\x7a\x02\x18\x02"  # 15 status: {3 code: STATUS_CODE_ERROR (2)}
# a span's last fields (15 status when an error, 16 flags), by [error][remote parent]
TAILS = ((_LOCAL_FLAGS, _REMOTE_FLAGS), (_ERROR + _LOCAL_FLAGS, _ERROR + _REMOTE_FLAGS))
TRACE_ID, SPAN_ID, PARENT_ID = b"\x0a\x10", b"\x12\x08", b"\x22\x08"  # Span 1, 2 and 4: tag, length
pack_times = _TIMES.pack  # (0x39, start, 0x41, end): Span 7 and 8
pack_double = _DOUBLE.pack


def varint(n: int) -> bytes:
    """An unsigned varint (``n`` ≥ 0): 7 bits a byte, low first, the high bit set on all but the last."""
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: its tag, the length, the bytes."""
    n = len(data)
    return tag + (_ONE_BYTE[n] if n < 0x80 else varint(n)) + data


HEADS = [b"\x12" + varint(n) for n in range(4096)]  # ScopeSpans 2 (spans): tag and length, of a short span


def head(n: int) -> bytes:
    """The tag and length of a ``Span`` message of ``n`` bytes as a field of ``ScopeSpans`` (2: spans)."""
    return HEADS[n] if n < 4096 else b"\x12" + varint(n)


def framed(span: bytes) -> bytes:
    """A ``Span`` message as a field of ``ScopeSpans`` (2: spans): its tag, its length, the message."""
    n = len(span)
    return (HEADS[n] if n < 4096 else b"\x12" + varint(n)) + span


def text(value: str) -> bytes:
    # a string protobuf would refuse (a lone surrogate) must not cost the whole batch: replaced
    return value.encode("utf-8", "replace")


def any_value(value: Any) -> bytes:
    """The fields of an ``AnyValue`` holding ``value`` (without its own tag and length)."""
    # bool before int: a bool is an int in Python, not in OTLP (subclasses, an IntEnum or a StrEnum, as their base)
    if isinstance(value, str):
        return field(b"\x0a", text(value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return b"\x18" + varint(int(value) & MASK64)  # int64: a negative number is its 64-bit two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, (list, tuple)):
        return field(b"\x2a", b"".join(field(b"\x0a", any_value(item)) for item in value))
    return field(b"\x0a", text(str(value)))  # anything else (an int beyond int64): its text


def key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message's bytes."""
    return (field(b"\x0a", text(key)) if key else b"") + field(b"\x12", any_value(value))


def string_prefix(key: str, size: int) -> bytes:
    """Span field 9 holding ``key`` and a string value of ``size`` bytes, but for those bytes: what precedes
    any such value (a value of a known length is then one concatenation)."""
    return field(b"\x4a", key_value(key, "x" * size))[:-size]


def double_prefix(key: str) -> bytes:
    """Span field 9 holding ``key`` and a double, but for its 8 bytes (``pack_double``)."""
    return field(b"\x4a", key_value(key, 0.0))[:-8]


def resource(attributes: dict[str, Any]) -> bytes:
    """A ``Resource`` message's bytes."""
    return b"".join(field(b"\x0a", key_value(k, v)) for k, v in attributes.items())


def scope(name: str) -> bytes:
    """An ``InstrumentationScope`` message's bytes."""
    return field(b"\x0a", text(name)) if name else b""


class SpanEncoder:
    """Writes spans as one ``ExportTraceServiceRequest`` under a fixed resource and scope. Attributes (but
    those of a few keys: ``unique``, and lists) are kept encoded for the next spans (at most ``most`` of them;
    cleared when full), as are the keys; one encoder belongs to one thread."""

    def __init__(self, resource_attributes: dict[str, Any], scope_name: str, unique: Iterable[str] = (),
                 most: int = 4096) -> None:
        self.head = field(b"\x0a", resource(resource_attributes))  # ResourceSpans 1: resource
        self.scope = field(b"\x0a", scope(scope_name))  # ScopeSpans 1: scope
        self.unique = frozenset(unique)
        self.most = most
        self.kept: dict[tuple[Any, ...], bytes] = {}  # (key, [type,] value): Span field 9 (tag, length, KeyValue)
        self.keys: dict[str, bytes] = {}  # key: KeyValue field 1 (tag, length, key)
        self.groups: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}  # group(): name and attributes, encoded
        self.shared: dict[tuple[Any, ...], Any] = {}  # share(): what a span type makes once for many spans
        self.last: tuple[Any, Any] = ((), None)  # a span type's own use: its last key in ``shared`` and what it holds
        self.memo: dict[Any, bytes] = {}  # remember(): what a span type keeps encoded, under its own keys

    def attribute(self, key: str, value: Any) -> bytes:
        """Span field 9 (``attributes``) holding one ``KeyValue``, reusing what was encoded before: a string
        value under ``(key, value)``, a number or bool under ``(key, type, value)`` (``True == 1 == 1.0``)."""
        t = type(value)
        if t is str:
            kv: tuple[Any, ...] = (key, value)
        elif t is int or t is bool or t is float:
            kv = (key, t, value)
        else:  # a list, an enum: encoded each time
            return field(b"\x4a", self._key(key) + field(b"\x12", any_value(value)))
        kept = self.kept.get(kv)
        if kept is not None:
            return kept
        encoded = field(b"\x4a", self._key(key) + field(b"\x12", any_value(value)))
        if key not in self.unique:
            if len(self.kept) >= self.most:
                self.kept.clear()
            self.kept[kv] = encoded
        return encoded

    def remember(self, key: Any, encoded: bytes) -> bytes:
        """Keep ``encoded`` in ``memo`` under ``key`` (the caller's: what it was made of) for the next spans."""
        memo = self.memo
        if len(memo) >= self.most:
            memo.clear()
        memo[key] = encoded
        return encoded

    def _key(self, key: str) -> bytes:
        encoded = self.keys.get(key)
        if encoded is None:
            if len(self.keys) >= self.most:
                self.keys.clear()
            encoded = self.keys[key] = field(b"\x0a", text(key)) if key else b""
        return encoded

    def attributes(self, attrs: dict[str, Any]) -> bytes:
        """Span fields 9 of every attribute in ``attrs``, joined."""
        attribute = self.attribute
        kept = self.kept
        out = []
        for kv in attrs.items():
            hit = kept.get(kv) if kv[1].__class__ is str else None  # the usual: a string seen before
            out.append(hit if hit is not None else attribute(*kv))
        return b"".join(out)

    def named(self, name: str, attrs: dict[str, Any]) -> tuple[bytes, bytes]:
        """A span's name field (5) and its attributes' fields (9): what ``Span.wire`` answers."""
        return field(b"\x2a", text(name)) if name else b"", self.attributes(attrs)

    def group(self, key: tuple[Any, ...], make: Callable[[], tuple[str, dict[str, Any]]]) -> tuple[bytes, bytes]:
        """The name and attributes ``make`` gives, encoded once for every span whose ``key`` is the same (the
        values they are made of: most spans of a model and deployment share all but a few)."""
        hit = self.groups.get(key)
        if hit is None:
            hit = self.named(*make())
            if len(self.groups) >= self.most:
                self.groups.clear()
            self.groups[key] = hit
        return hit

    def share(self, key: tuple[Any, ...], make: Callable[[SpanEncoder], Any]) -> Any:
        """What ``make`` makes, kept under ``key`` for every span with the same key (like ``group``, for a span
        type that shares more than one span's name and attributes)."""
        hit = self.shared.get(key)
        if hit is None:
            hit = make(self)
            if len(self.shared) >= self.most:
                self.shared.clear()
            self.shared[key] = hit
        return hit

    def span(self, rec: Span) -> bytes:
        """A ``Span`` message of any span (``Span.encoded`` when it has no quicker way)."""
        parts = [TRACE_ID, rec.trace_id.to_bytes(16, "big"), SPAN_ID, rec.span_id.to_bytes(8, "big")]
        if rec.trace_state:
            parts.append(field(b"\x1a", text(rec.trace_state)))
        if rec.parent_id:
            parts += (PARENT_ID, rec.parent_id.to_bytes(8, "big"))
        name, attributes = self.named(rec.name, rec.attrs)
        parts += (name, KINDS[rec.kind], pack_times(0x39, rec.start, 0x41, rec.end_time), attributes,
                  TAILS[rec.error][rec.remote_parent])
        return b"".join(parts)

    def encode(self, batch: Iterable[Span]) -> bytes:
        """One ``ExportTraceServiceRequest`` of ``batch``, serialised: each record's messages written by the
        record, framed (``Span.encoded``: one span's, or a call's and its first attempt's), the lengths of the
        messages around them taken once, and the whole joined once (the spans are not joined apart first: that
        copied every byte of the batch twice, ~0.5k instructions a call)."""
        parts = [rec.encoded(self) for rec in batch]  # ScopeSpans 2: spans
        size = len(self.scope) + sum(map(len, parts))
        scope_spans = b"\x12" + varint(size)  # ResourceSpans 2: scope_spans
        resource_spans = len(self.head) + len(scope_spans) + size
        parts[:0] = (b"\x0a", varint(resource_spans), self.head, scope_spans, self.scope)  # Request 1
        return b"".join(parts)
