"""AWS event-stream framing (``application/vnd.amazon.eventstream``): an incremental decoder and an encoder.

A message is: total length (u32) | headers length (u32) | prelude CRC32 | headers | payload | message CRC32,
big-endian; both CRCs are checked. Bedrock's ConverseStream and InvokeAgent answer in this framing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

EVENTSTREAM = "application/vnd.amazon.eventstream"  # the media type of a body in this framing
PRELUDE = 12  # two lengths and the prelude CRC
MIN_MESSAGE = PRELUDE + 4
MAX_HEADERS = 128 * 1024  # the limits AWS documents for a message
MAX_MESSAGE = 16 * 1024 * 1024 + MAX_HEADERS + MIN_MESSAGE

_U32 = struct.Struct(">I")
_PRELUDE = struct.Struct(">II")
_STRING = 7


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad lengths, bad CRC, bad headers)."""


@dataclass(slots=True)
class EventMessage:
    """One decoded message: its headers (``:event-type`` …) and raw payload."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def message_type(self) -> str:
        return str(self.headers.get(":message-type", "event"))

    @property
    def event_type(self) -> str:
        return str(self.headers.get(":event-type", ""))


class EventStreamDecoder:
    """Feed bytes as they arrive; ``feed`` returns the messages completed so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still buffered (non-zero at EOF means a truncated stream)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EventMessage]:
        buf = self._buf
        buf += data
        out: list[EventMessage] = []
        while len(buf) >= PRELUDE:
            total, headers_len = _PRELUDE.unpack_from(buf, 0)
            if zlib.crc32(buf[:8]) != _U32.unpack_from(buf, 8)[0]:
                raise EventStreamError("event stream prelude CRC mismatch")
            if total < MIN_MESSAGE or total > MAX_MESSAGE or headers_len > min(MAX_HEADERS, total - MIN_MESSAGE):
                raise EventStreamError(f"event stream message has invalid lengths ({total}, {headers_len})")
            if len(buf) < total:
                break
            if zlib.crc32(memoryview(buf)[: total - 4]) != _U32.unpack_from(buf, total - 4)[0]:
                raise EventStreamError("event stream message CRC mismatch")
            headers = _parse_headers(bytes(buf[PRELUDE:PRELUDE + headers_len]))
            payload = bytes(buf[PRELUDE + headers_len: total - 4])
            del buf[:total]
            out.append(EventMessage(headers, payload))
        return out


# header value types: (struct or fixed size) by type id; 6 (bytes) and 7 (string) have a u16 length
_FIXED: dict[int, struct.Struct] = {2: struct.Struct(">b"), 3: struct.Struct(">h"), 4: struct.Struct(">i"),
                                    5: struct.Struct(">q"), 8: struct.Struct(">q")}


def _parse_headers(raw: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i, end = 0, len(raw)
    try:
        while i < end:
            n = raw[i]
            name = raw[i + 1: i + 1 + n].decode("utf-8")
            i += 1 + n
            kind = raw[i]
            i += 1
            value: Any
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                s = _FIXED[kind]
                value = s.unpack_from(raw, i)[0]
                i += s.size
            elif kind in (6, 7):
                length = struct.unpack_from(">H", raw, i)[0]
                value = raw[i + 2: i + 2 + length]
                if len(value) != length:
                    raise EventStreamError("event stream header value is truncated")
                i += 2 + length
                if kind == _STRING:
                    value = value.decode("utf-8")
            elif kind == 9:
                value = raw[i: i + 16]
                i += 16
            else:
                raise EventStreamError(f"unknown event stream header type {kind}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise EventStreamError("event stream headers are malformed") from None
    if i != end:
        raise EventStreamError("event stream headers are malformed")
    return headers


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message with string headers (what Bedrock sends)."""
    hb = bytearray()
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += bytes((len(n),)) + n + bytes((_STRING,)) + struct.pack(">H", len(v)) + v
    total = PRELUDE + len(hb) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(hb))
    msg = prelude + _U32.pack(zlib.crc32(prelude)) + bytes(hb) + payload
    return msg + _U32.pack(zlib.crc32(msg))


def event(event_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    """An ``event`` message."""
    return encode_message({":event-type": event_type, ":content-type": content_type, ":message-type": "event"},
                          payload)


def exception(exception_type: str, payload: bytes) -> bytes:
    """A modelled ``exception`` message (``:exception-type`` is the stream member, e.g. throttlingException)."""
    return encode_message({":exception-type": exception_type, ":content-type": "application/json",
                           ":message-type": "exception"}, payload)
