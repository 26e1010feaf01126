"""HTTP/1.1 wire pieces: the request head we write and the response headers we read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

_UNSAFE_TARGET = re.compile(r"[^!-~]")  # anything but visible ASCII: quoted before it reaches the wire
METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
LAST_CHUNK = b"0\r\n\r\n"


class EncodedHeaders:
    """Request headers checked and encoded once: what a caller passes when it sends the same headers on
    every request (a deployment's authorization), instead of a dict encoded per request.

    Framing belongs to the client: a ``transfer-encoding`` is dropped, and a ``content-length`` is kept
    aside as the declared length of a streamed body (a bytes body is always sent with its own length).
    """

    __slots__ = ("block", "has_host", "length")

    def __init__(self, headers: Mapping[str, str]) -> None:
        lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        n = len(headers)
        if lines.count("\n") != n or lines.count("\r") != n or "\0" in lines:
            raise ValueError("a header name or value contains CR, LF or NUL")
        low = "\n" + lines.lower()
        self.length: int | None = None
        if "\ncontent-length:" in low or "\ntransfer-encoding:" in low:
            kept = []
            for k, v in headers.items():
                if k.lower() == "content-length":
                    if not v.strip().isdigit():
                        raise ValueError("content-length must be a non-negative integer")
                    self.length = int(v)
                elif k.lower() != "transfer-encoding":
                    kept.append(f"{k}: {v}\r\n")
            lines = "".join(kept)
        self.has_host = "\nhost:" in low
        self.block = lines.encode("latin-1")


    def plus(self, lines: str) -> EncodedHeaders:
        """These headers and more: ``lines`` (``name: value\\r\\n`` each) made by the caller of values it
        knows hold no CR, LF or NUL and name no framing header (a signature and its date), not checked again."""
        out = EncodedHeaders.__new__(EncodedHeaders)
        out.block = self.block + lines.encode("latin-1")
        out.has_host = self.has_host
        out.length = self.length
        return out


def decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Response headers by lower-case name (latin-1, so every byte round-trips); repeated fields are joined
    with ", " (the raw pairs stay on the response)."""
    headers = {n.lower().decode("latin-1"): v.decode("latin-1") for n, v in raw}
    if len(headers) != len(raw):
        headers = {}
        for n, v in raw:
            k = n.lower().decode("latin-1")
            headers[k] = headers[k] + ", " + v.decode("latin-1") if k in headers else v.decode("latin-1")
    joined = "\0".join(headers.values()) + "\0"
    if " \0" in joined or "\t\0" in joined:  # llhttp keeps trailing whitespace, which is not the value's
        headers = {k: v.rstrip(" \t") for k, v in headers.items()}
    return headers


def request_line(target: str) -> bytes:
    """What follows the method on the request line: `` <target> HTTP/1.1``, characters that may not appear
    on the wire percent-encoded."""
    if _UNSAFE_TARGET.search(target):
        target = quote(target, safe="!$&'()*+,;=:@/?%[]~")
    return f" {target} HTTP/1.1\r\n".encode("ascii")


def method_bytes(method: str) -> bytes:
    m = METHODS.get(method)
    if m is None:
        if not method.isascii() or not method.isalpha():
            raise ValueError("invalid HTTP method")
        m = method.encode("ascii")
    return m


def encode_head(method: bytes, line: bytes, host: bytes, headers: EncodedHeaders | None, extra: bytes,
                length: int | None, chunked: bool) -> bytes:
    """The request head: ``length`` is the body's (None with ``chunked`` for a streamed body of unknown
    size, None alone for no body); ``host`` (a whole header line) is left out when the caller set one (a
    signed request names it); ``extra`` holds lines the client adds (proxy authorization)."""
    if chunked:
        framing = b"transfer-encoding: chunked\r\n"
    elif length is not None:
        framing = b"content-length: %d\r\n" % length
    elif method in _BODY_METHODS:
        framing = b"content-length: 0\r\n"
    else:
        framing = b""
    if headers is None:
        return b"".join((method, line, host, extra, framing, b"\r\n"))
    return b"".join((method, line, b"" if headers.has_host else host, headers.block, extra, framing, b"\r\n"))


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)
