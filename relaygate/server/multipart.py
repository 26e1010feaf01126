"""Audio uploads: a client's multipart body parsed as it arrives and re-encoded for the upstream.

The fields before the file are read first (``model`` routes the call); the file is then forwarded chunk by
chunk while it is still arriving, so a 25 MB upload never sits in memory. On the way the file is kept in a
spool (memory up to ``SPOOL_MEMORY``, then a temporary file), so that a retry or fallback to another
deployment can replay it, as nginx's request buffering would, without delaying the first attempt. When the
client sends ``model`` after the file (curl lets it), the body is read to its end before routing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from relaygate.core.errors import BadRequest
from relaygate.server.upload import ClientBody

MAX_FIELD_BYTES = 64 * 1024  # a prompt is short; anything longer is not a form field we forward
MAX_FIELDS = 64
SPOOL_MEMORY = 1024 * 1024
GATEWAY_FIELDS = ("provider",)  # read by relaygate, never forwarded upstream
CRLF = b"\r\n"

Event = tuple[Any, ...]  # ("field", name, value) | ("file", name, filename, type) | ("data", bytes) | ("end",)
Keep = Callable[[str, str], bool]  # (field name, value) -> whether the upstream gets the field


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type (400 when it is anything else)."""
    ctype, options = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise BadRequest("audio uploads must be sent as multipart/form-data", code="invalid_content_type")
    boundary = options.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise BadRequest("the multipart/form-data content type has no valid boundary",
                         code="invalid_multipart")
    return boundary


class FormReader:
    """Pulls events out of a multipart body stream, parsing each chunk as it arrives."""

    def __init__(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        self._chunks = chunks
        self._events: list[Event] = []
        self._pos = 0
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._field: tuple[str, bytearray] | None = None
        self._in_file = False
        self._files = 0
        self._fields = 0
        self._ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        })

    async def next(self) -> Event:
        """The next event; ``("end",)`` once the closing boundary was read."""
        while self._pos >= len(self._events):
            if self._ended:
                return ("end",)
            self._events.clear()
            self._pos = 0
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                raise BadRequest("the multipart body ended before its closing boundary",
                                 code="invalid_multipart") from None
            try:
                self._parser.write(chunk)
            except MultipartParseError as e:
                raise BadRequest(f"the multipart body is malformed ({e})", code="invalid_multipart") from None
        ev = self._events[self._pos]
        self._pos += 1
        return ev

    # -- parser callbacks (synchronous; they only queue events) ------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise BadRequest("a multipart part has no Content-Disposition header", code="invalid_multipart")
        kind, options = parse_options_header(disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise BadRequest("a multipart part is not a named form-data field", code="invalid_multipart")
        if b"filename" in options:
            self._files += 1
            if self._files > 1:
                raise BadRequest("only one file may be uploaded", param="file", code="invalid_multipart")
            self._in_file = True
            ctype = self._headers.get(b"content-type", b"application/octet-stream")
            self._events.append(("file", name.decode("utf-8", "replace"),
                                 options[b"filename"].decode("utf-8", "replace"), ctype.decode("latin-1")))
        else:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise BadRequest(f"too many form fields (at most {MAX_FIELDS})", code="invalid_multipart")
            self._field = (name.decode("utf-8", "replace"), bytearray())

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._events.append(("data", bytes(data[start:end])))
        elif self._field is not None:
            buf = self._field[1]
            buf += data[start:end]
            if len(buf) > MAX_FIELD_BYTES:
                raise BadRequest(f"the form field {self._field[0]!r} is longer than {MAX_FIELD_BYTES} bytes",
                                 param=self._field[0])

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._events.append(("file_end",))
        elif self._field is not None:
            name, buf = self._field
            self._field = None
            try:
                value = buf.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"the form field {name!r} is not UTF-8 text", param=name) from None
            self._events.append(("field", name, value))

    def _end(self) -> None:
        self._ended = True


def encode_field(boundary: bytes, name: str, value: str) -> bytes:
    return (b"--" + boundary + CRLF + b'Content-Disposition: form-data; name="' + _quote(name) + b'"'
            + CRLF + CRLF + value.encode() + CRLF)


def _quote(value: str) -> bytes:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A").encode()


class AudioUpload(ClientBody):
    """An upload on its way from the client to an upstream; see the module docstring."""

    def __init__(self, reader: FormReader, check_field: Any) -> None:
        super().__init__()
        self.reader = reader
        self.check_field = check_field  # (name, value) -> None, raising BadRequest: applied to every field
        self.fields: list[tuple[str, str]] = []
        self.file: tuple[str, str, str] | None = None  # (field name, filename, content type)
        self.file_size = 0
        self.boundary = "relaygate-" + os.urandom(12).hex()
        self._spool: IO[bytes] | None = None
        self._file_done = False
        self._read_all = False

    @property
    def content_type(self) -> str:
        return "multipart/form-data; boundary=" + self.boundary

    @property
    def replayable(self) -> bool:
        # what was read is kept in the spool; the rest is still to be read from the client
        return True

    def value(self, name: str) -> str | None:
        return next((v for n, v in self.fields if n == name), None)

    async def start(self) -> None:
        """Read up to the file (or the end); read on to the end when ``model`` comes after the file."""
        while True:
            ev = await self.reader.next()
            if ev[0] == "field":
                self._add_field(ev[1], ev[2])
            elif ev[0] == "file":
                self.file = (ev[1], ev[2], ev[3])
                self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 (close())
                if self.value("model") is None:
                    while await self._take(await self.reader.next()) is not None:
                        pass
                return
            else:  # end
                self._read_all = True
                return

    def _add_field(self, name: str, value: str) -> None:
        self.check_field(name, value)
        self.fields.append((name, value))

    async def _take(self, ev: Event) -> Event | None:
        """Keep one event of the body after the file started (file bytes go to the spool); None at the end."""
        if ev[0] == "data":
            assert self._spool is not None
            self._spool.write(ev[1])
            self.file_size += len(ev[1])
        elif ev[0] == "file_end":
            self._file_done = True
        elif ev[0] == "field":
            self._add_field(ev[1], ev[2])
        else:
            self._read_all = True
            return None
        return ev

    def body(self, upstream_model: str, keep: Keep | None = None) -> AsyncIterator[bytes]:
        """The upstream multipart body with ``model`` rewritten (and only the fields ``keep(name, value)``
        accepts).

        The file streams on as it arrives and is kept in a spool (memory up to ``SPOOL_MEMORY``, then a
        temporary file) on the way, so a retry on another deployment replays what was read and goes on
        reading the client from where the failed attempt stopped.
        """
        self.begin()
        return self.guard(self._encode(upstream_model, keep))

    def _forwarded(self, keep: Keep | None) -> Keep:
        return lambda name, value: name not in GATEWAY_FIELDS and (keep is None or keep(name, value))

    def _head(self, upstream_model: str, keep: Keep | None) -> bytes:
        """The fields read so far and the file part's headers."""
        b, forwarded = self.boundary.encode(), self._forwarded(keep)
        head = b"".join(encode_field(b, n, upstream_model if n == "model" else v) for n, v in self.fields
                        if forwarded(n, v))
        if self.file is None or self._spool is None:
            return head
        name, filename, ctype = self.file
        return head + (b"--" + b + CRLF + b'Content-Disposition: form-data; name="' + _quote(name)
                       + b'"; filename="' + _quote(filename) + b'"' + CRLF + b"Content-Type: "
                       + _quote(ctype) + CRLF + CRLF)

    async def read_all(self) -> None:
        """Read the client's body to its end (the file into the spool): for upstreams that want a length."""
        while not self._read_all:
            ev = await self._take(await self.reader.next())
            if ev is None:
                break
            if ev[0] == "field" and ev[1] in GATEWAY_FIELDS:  # routed already: refused, as when streaming
                raise BadRequest(f"the '{ev[1]}' field must come before the file", param=ev[1])

    def encoded_length(self, upstream_model: str, keep: Keep | None = None) -> int:
        """The length of ``body()`` once ``read_all()`` finished."""
        assert self._read_all
        closing = len(self.boundary) + 6
        if self.file is None or self._spool is None:
            return len(self._head(upstream_model, keep)) + closing
        return len(self._head(upstream_model, keep)) + self.file_size + (2 if self._file_done else 0) + closing

    async def _encode(self, upstream_model: str, keep: Keep | None) -> AsyncIterator[bytes]:
        b = self.boundary.encode()
        closing = b"--" + b + b"--" + CRLF
        forwarded = self._forwarded(keep)
        head = self._head(upstream_model, keep)
        if self.file is None or self._spool is None:
            yield head + closing
            return
        yield head
        spool, kept = self._spool, self.file_size
        if kept:  # a replay: what earlier attempts read, then on from where they stopped
            spool.seek(0)
            while kept > 0 and (piece := spool.read(min(kept, 64 * 1024))):
                kept -= len(piece)
                yield piece
            spool.seek(0, os.SEEK_END)
        if self._file_done:
            yield CRLF
        while not self._read_all:
            ev = await self._take(await self.reader.next())
            if ev is None:
                break
            if ev[0] == "data":
                yield ev[1]
            elif ev[0] == "file_end":
                yield CRLF
            elif ev[1] in GATEWAY_FIELDS:  # the call was routed when the file began: too late to honour it
                raise BadRequest(f"the '{ev[1]}' field must come before the file", param=ev[1])
            elif forwarded(ev[1], ev[2]):  # a field after the file: checked and forwarded in order
                yield encode_field(b, ev[1], ev[2])
        yield closing

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
