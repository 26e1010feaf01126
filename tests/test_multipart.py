"""The incremental multipart reader and the re-encoded upload: any chunking, replays after a failed attempt."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from relaygate.core.errors import BadRequest
from relaygate.server.multipart import AudioUpload, FormReader

FILE = os.urandom(300_000)  # past the spool's in-memory part: the replay reads it back from disk


def client_body(model_first: bool = True, file: bytes = FILE) -> bytes:
    parts = [b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n',
             b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav'
             b"\r\n\r\n" + file + b"\r\n"]
    if not model_first:
        parts.reverse()
    return b"".join(parts) + b'--B\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n--B--\r\n'


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@dataclass
class _Part:
    """The part python-multipart is in the middle of, while ``decode`` parses."""
    name: str = ""
    is_file: bool = False
    buf: bytearray = field(default_factory=bytearray)
    hdr: bytes = b""


def decode(body: bytes, content_type: str) -> tuple[dict[str, str], bytes]:
    """Parse a multipart body whole with python-multipart: (fields, file bytes)."""
    fields: dict[str, str] = {}
    part = _Part()
    file = bytearray()

    def on_header_value(d: bytes, s: int, e: int) -> None:
        part.hdr += d[s:e]

    def on_header_end() -> None:
        hdr, part.hdr = part.hdr, b""
        if b"form-data" in hdr:
            _, opts = parse_options_header(hdr)
            part.name, part.is_file = opts[b"name"].decode(), b"filename" in opts

    def on_part_data(d: bytes, s: int, e: int) -> None:
        (file if part.is_file else part.buf).extend(d[s:e])

    def on_part_end() -> None:
        if not part.is_file:
            fields[part.name] = bytes(part.buf).decode()
        part.buf = bytearray()

    _, opts = parse_options_header(content_type)
    p = MultipartParser(opts[b"boundary"], {"on_header_value": on_header_value, "on_header_end": on_header_end,
                                            "on_part_data": on_part_data, "on_part_end": on_part_end})
    p.write(body)
    p.finalize()
    return fields, bytes(file)


async def collect(it: AsyncIterator[bytes], limit: int | None = None) -> bytes:
    out = b""
    async for piece in it:
        out += piece
        if limit is not None and len(out) >= limit:
            break
    return out


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_any_chunking_of_the_client_body_gives_the_same_upload(size: int) -> None:
    sent = FILE if size > 1 else FILE[:3000] + b"\r\n--Bx"  # byte by byte: a short file; near-boundary bytes

    async def run() -> tuple[dict[str, str], bytes]:
        up = AudioUpload(FormReader(chunks(client_body(file=sent), size), b"B"), lambda n, v: None)
        await up.start()
        return decode(await collect(up.body("whisper-1")), up.content_type)

    fields, file = asyncio.run(run())
    assert fields == {"model": "whisper-1", "language": "en"}
    assert file == sent


def test_a_retry_replays_what_the_failed_attempt_read_and_reads_on() -> None:
    async def run() -> tuple[bytes, bytes]:
        up = AudioUpload(FormReader(chunks(client_body(), 8192), b"B"), lambda n, v: None)
        await up.start()
        first = up.body("whisper-1")
        await collect(first, limit=150_000)  # the first upstream died half way through the file
        await first.aclose()  # type: ignore[attr-defined]
        second = await collect(up.body("whisper-large-v3"))
        third = await collect(up.body("other"))  # and again, now that everything was read
        up.close()
        return second, third

    second, third = asyncio.run(run())
    ctype = "multipart/form-data; boundary=x"
    for body, model in ((second, "whisper-large-v3"), (third, "other")):
        boundary = body.split(b"\r\n", 1)[0][2:].decode()
        fields, file = decode(body, ctype.replace("x", boundary))
        assert file == FILE
        assert fields == {"model": model, "language": "en"}


def test_model_after_the_file_reads_the_body_to_its_end_first() -> None:
    async def run() -> tuple[AudioUpload, bytes]:
        up = AudioUpload(FormReader(chunks(client_body(model_first=False), 65536), b"B"), lambda n, v: None)
        await up.start()
        return up, await collect(up.body("whisper-1"))

    up, body = asyncio.run(run())
    assert up.value("model") == "whisper" and up.file_size == len(FILE)
    assert decode(body, up.content_type)[1] == FILE


def test_a_field_check_failing_after_the_file_is_reported_as_the_upload_error() -> None:
    def check(name: str, value: str) -> None:
        if name == "language":
            raise BadRequest("no", param="language")

    async def run() -> AudioUpload:
        up = AudioUpload(FormReader(chunks(client_body(), 65536), b"B"), check)
        await up.start()
        with pytest.raises(BadRequest):
            await collect(up.body("whisper-1"))
        return up

    assert isinstance(asyncio.run(run()).error, BadRequest)


@pytest.mark.parametrize("model_first", [True, False])
def test_encoded_length_is_the_length_of_the_body(model_first: bool) -> None:
    async def run() -> tuple[int, bytes]:
        up = AudioUpload(FormReader(chunks(client_body(model_first), 65536), b"B"), lambda n, v: None)
        await up.start()
        await up.read_all()
        return up.encoded_length("whisper-large-v3"), await collect(up.body("whisper-large-v3"))

    length, body = asyncio.run(run())
    assert length == len(body)
