"""OpenAI's embeddings and audio routes for the emulator: deterministic vectors, transcripts and real audio.

- Embeddings: unit vectors seeded by a hash of each input (same input, same vector; ``dimensions`` honoured).
- Transcriptions/translations: the transcript is the ``ICMT`` comment of a WAV's ``LIST/INFO`` chunk when
  present (tests write what "was said" there), else a description of the audio's duration and size.
- Speech: a sine tone (its pitch derived from the voice, its length from the input) in the requested format,
  streamed in chunks. ``wav`` and ``pcm`` (24 kHz, 16-bit mono, as OpenAI) are real audio; ``mp3`` is real,
  silent MPEG-1 Layer III frames; ``opus``/``aac``/``flac`` are only valid-looking: the format's magic bytes
  followed by the PCM samples (enough for checking that bytes stream through, not for decoding).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import re
import struct
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from relaygate.core.call import Usage
from relaygate.providers.openai_format import embeddings_response
from relaygate.testing.base import STATE_KEY, FaultPlan, apply_latency, json_response, tracked
from relaygate.testing.openai import (
    MAX_EMBEDDING_DIMS,
    MAX_EMBEDDING_INPUTS,
    auth_error,
    error_body,
    fault_response,
    out_of_range,
)

if TYPE_CHECKING:
    from relaygate.testing.openai import OpenAIEmulatorOptions

PCM_RATE = 24000
SECONDS_PER_CHAR = 0.02
CHUNK = 4096
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
FAKE_MAGIC = {"opus": b"OggS\x00\x02", "aac": b"\xff\xf1\x50\x80", "flac": b"fLaC"}
TEXT_FORMATS = ("text", "srt", "vtt")
_WORD = re.compile(r"\w+")


# ---- pure helpers (also used by tests to build inputs) ----------------------------------------------

def embedding_vector(item: Any, dims: int) -> list[float]:
    """A unit vector determined by the input (a string or a token array). A text's vector is the sum of its
    words' (each word a fixed sparse vector of random signs), so that texts sharing most of their words are
    close (a cosine near 1) and unrelated ones are not, as with a real embeddings model (what a semantic cache
    needs); other input, a random vector of its own."""
    words = _WORD.findall(item.lower()) if isinstance(item, str) else []
    if words:
        vec = [0.0] * dims
        for word in words:
            h = hashlib.sha256(word.encode()).digest()
            for j in range(8):  # 8 features a word
                vec[int.from_bytes(h[2 * j:2 * j + 2], "big") % dims] += 1.0 if h[16 + j] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vec))
        if norm:
            return [v / norm for v in vec]
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def tone_pcm(seconds: float, freq: float, rate: int = PCM_RATE) -> bytes:
    """16-bit little-endian mono samples of a sine tone."""
    n = max(1, int(seconds * rate))
    step = 2 * math.pi * freq / rate
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(i * step)) for i in range(n)))


def wav_bytes(pcm: bytes, rate: int = PCM_RATE, comment: str | None = None) -> bytes:
    """A RIFF/WAVE file of 16-bit mono ``pcm``, with an optional ``LIST/INFO/ICMT`` comment."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    extra = b""
    if comment is not None:
        text = comment.encode() + b"\x00"
        if len(text) % 2:
            text += b"\x00"
        info = b"INFO" + b"ICMT" + struct.pack("<I", len(text)) + text
        extra = b"LIST" + struct.pack("<I", len(info)) + info
    data = b"data" + struct.pack("<I", len(pcm)) + pcm
    body = b"WAVE" + fmt + extra + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def wav_info(data: bytes) -> tuple[float, str | None] | None:
    """(seconds, ICMT comment) of a WAV file, or None when ``data`` is not one."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, byte_rate, seconds, comment = 12, 0, 0.0, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunk = data[pos + 8:pos + 8 + size]
        if cid == b"fmt " and len(chunk) >= 16:
            byte_rate = struct.unpack("<I", chunk[8:12])[0]
        elif cid == b"data" and byte_rate:
            seconds = len(chunk) / byte_rate
        elif cid == b"LIST" and chunk[:4] == b"INFO":
            i = 4
            while i + 8 <= len(chunk):
                sid, ssize = chunk[i:i + 4], struct.unpack("<I", chunk[i + 4:i + 8])[0]
                if sid == b"ICMT":
                    comment = chunk[i + 8:i + 8 + ssize].rstrip(b"\x00").decode("utf-8", "replace")
                i += 8 + ssize + (ssize % 2)
        pos += 8 + size + (size % 2)
    return seconds, comment


def transcript_of(audio: bytes) -> tuple[str, float]:
    """(text, seconds) the emulator "hears" in an audio file."""
    info = wav_info(audio)
    if info is None:
        return f"{len(audio)} bytes of audio", len(audio) / 16000  # ~128 kbit/s compressed audio
    seconds, comment = info
    return (comment if comment is not None else f"{seconds:.2f} seconds of audio"), seconds


def silent_mp3(seconds: float) -> bytes:
    """MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, mono) with empty side info: real, silent audio."""
    frame = b"\xff\xfb\x90\xc4" + bytes(413)  # 417-byte frames of 1152 samples
    return frame * max(1, round(seconds * 44100 / 1152))


def speech_audio(text: str, voice: str, fmt: str, speed: float = 1.0) -> bytes:
    """The audio the emulator "speaks" for ``text`` in ``voice`` (see the module docstring)."""
    seconds = max(0.05, len(text) * SECONDS_PER_CHAR / max(speed, 0.25))
    freq = 200 + hashlib.sha256(voice.encode()).digest()[0] * 2
    if fmt == "mp3":
        return silent_mp3(seconds)
    pcm = tone_pcm(seconds, freq)
    if fmt == "wav":
        return wav_bytes(pcm)
    return FAKE_MAGIC.get(fmt, b"") + pcm


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def format_transcript(text: str, seconds: float, fmt: str, task: str, language: str | None,
                      granularities: list[str]) -> tuple[bytes, str]:
    """A transcript in one of OpenAI's response formats: (body, content type)."""
    if fmt == "text":
        return (text + "\n").encode(), "text/plain; charset=utf-8"
    if fmt == "srt":
        return f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n".encode(), "text/plain"
    if fmt == "vtt":
        return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n".encode(), "text/vtt"
    if fmt == "verbose_json":
        out: dict[str, Any] = {"task": task, "language": language or "english", "duration": round(seconds, 3),
                               "text": text}
        if not granularities or "segment" in granularities:
            out["segments"] = [{"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text,
                                "tokens": [], "temperature": 0.0, "avg_logprob": -0.1,
                                "compression_ratio": 1.0, "no_speech_prob": 0.0}]
        if "word" in granularities:
            words = text.split() or [""]
            per = seconds / len(words)
            out["words"] = [{"word": w, "start": round(i * per, 3), "end": round((i + 1) * per, 3)}
                            for i, w in enumerate(words)]
        out["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
        return orjson.dumps(out), "application/json"
    return orjson.dumps({"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}), \
        "application/json"


# ---- routes ----------------------------------------------------------------------------------------

def add_audio_routes(app: web.Application, opts: OpenAIEmulatorOptions) -> None:
    """Mount embeddings and audio routes (OpenAI paths and Azure's deployment paths)."""

    async def gate(request: web.Request) -> tuple[FaultPlan | None, web.Response | None]:
        """Auth, then the armed fault (if this request is hit): (plan, the answer that ends the request)."""
        denied = auth_error(request, opts, "deployment" in request.match_info)
        if denied is not None:
            return None, denied
        plan = request.app[STATE_KEY].take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.drop_connection:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
            return plan, web.Response(status=500)
        if plan is not None and plan.status:
            return plan, fault_response(plan)
        return plan, None

    async def json_request(request: web.Request) -> tuple[dict[str, Any], FaultPlan | None, web.Response | None]:
        """The JSON body, recorded; then ``gate``. A third item that is not None is the answer to send."""
        raw = await request.read()
        request.app[STATE_KEY].remember(request, raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}, None, json_response(error_body(400, "We could not parse the JSON body of your request."), 400)
        if not isinstance(body, dict):
            return {}, None, json_response(error_body(400, "expected a JSON object"), 400)
        plan, stop = await gate(request)
        return body, plan, stop

    async def embeddings(request: web.Request) -> web.StreamResponse:
        body, _, stop = await json_request(request)
        if stop is not None:
            return stop
        inp = body.get("input")
        if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], int)):
            inp = [inp]
        if not isinstance(inp, list) or not inp:
            return json_response(error_body(400, "'input' is a required property"), 400)
        if len(inp) > MAX_EMBEDDING_INPUTS:
            err = error_body(400, f"Invalid 'input': array too long. Expected an array with maximum length "
                                  f"{MAX_EMBEDDING_INPUTS}, but got an array with length {len(inp)} instead.",
                             "array_above_max_length")
            err["error"]["param"] = "input"
            return json_response(err, 400)
        model = str(body.get("model") or request.match_info.get("deployment", ""))
        refused = out_of_range(body, "dimensions", 1, MAX_EMBEDDING_DIMS.get(model, 3072))
        if refused is not None:
            return refused
        dims = body.get("dimensions") or (3072 if "large" in model else 1536)
        vectors = [embedding_vector(item, dims) for item in inp]
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inp)
        return json_response(embeddings_response(vectors, model, Usage(prompt_tokens=tokens),
                                                 body.get("encoding_format") or "float"))

    async def transcribe(request: web.Request, task: str) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        grans: list[str] = []
        audio, filename, ctype = b"", None, None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise ValueError("nested multipart bodies are not accepted")
                if part.filename is not None:
                    filename, ctype = part.filename, part.headers.get("content-type")
                    audio = await part.read()
                elif part.name == "timestamp_granularities[]":
                    grans.append(await part.text())
                else:
                    fields[str(part.name)] = await part.text()
        except (ValueError, AssertionError) as e:
            return json_response(error_body(400, f"could not parse multipart form: {e}"), 400)
        state = request.app[STATE_KEY]
        state.requests.append({"method": request.method, "path": request.path,
                               "headers": {k.lower(): v for k, v in request.headers.items()},
                               "form": fields, "timestamp_granularities": grans,
                               "file": {"name": filename, "content_type": ctype, "size": len(audio),
                                        "sha256": hashlib.sha256(audio).hexdigest()}})
        _, stop = await gate(request)
        if stop is not None:
            return stop
        if not filename:
            return json_response(error_body(400, "you must provide a 'file'"), 400)
        if not fields.get("model") and "deployment" not in request.match_info:
            return json_response(error_body(400, "you must provide a model parameter"), 400)
        language = fields.get("language")
        if language is not None and not (language.isascii() and language.isalpha() and len(language) == 2) \
                and not (opts.auto_language and language == "auto"):
            return json_response(error_body(400, f"Invalid language '{language}'. Language parameter must be "
                                                 "specified in ISO-639-1 format.", "invalid_language_format"), 400)
        text, seconds = transcript_of(audio)
        if task == "translate":
            text = f"[translated to English] {text}"
        if fields.get("stream") == "true":
            return await stream_transcript(request, text, seconds)
        fmt = fields.get("response_format", "json")
        body, media = format_transcript(text, seconds, fmt, task, fields.get("language"), grans)
        return web.Response(body=body, headers={"content-type": media})

    async def stream_transcript(request: web.Request, text: str, seconds: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        words = text.split(" ")
        for i, w in enumerate(words):
            delta = w if i == len(words) - 1 else w + " "
            await resp.write(b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": delta}) + b"\n\n")
        usage = {"type": "tokens", "input_tokens": math.ceil(seconds * 10), "output_tokens": len(words),
                 "total_tokens": math.ceil(seconds * 10) + len(words)}
        await resp.write(b"data: " + orjson.dumps({"type": "transcript.text.done", "text": text,
                                                   "usage": usage}) + b"\n\n")
        await resp.write_eof()
        return resp

    async def transcriptions(request: web.Request) -> web.StreamResponse:
        return await transcribe(request, "transcribe")

    async def translations(request: web.Request) -> web.StreamResponse:
        return await transcribe(request, "translate")

    async def speech(request: web.Request) -> web.StreamResponse:
        body, plan, stop = await json_request(request)
        if stop is not None:
            return stop
        voice, text = body.get("voice"), body.get("input")
        voice_id = voice.get("id") if isinstance(voice, dict) else voice
        if not isinstance(voice_id, str) or not isinstance(text, str) or not text:
            return json_response(error_body(400, "'input' and 'voice' are required"), 400)
        if opts.voices is not None and voice_id not in opts.voices and not voice_id.startswith("voice_"):
            return json_response(error_body(400, f"Invalid value: '{voice_id}'. Supported values are: "
                                                 + ", ".join(f"'{v}'" for v in opts.voices), "invalid_value"), 400)
        fmt = body.get("response_format") or "mp3"
        if fmt not in MEDIA_TYPES:
            return json_response(error_body(400, f"Invalid response_format '{fmt}'"), 400)
        audio = speech_audio(text, voice_id, fmt, float(body.get("speed") or 1.0))
        sse = body.get("stream_format") == "sse"
        resp = web.StreamResponse(headers={"content-type": "text/event-stream" if sse else MEDIA_TYPES[fmt]})
        await resp.prepare(request)
        delay = plan.chunk_delay_ms / 1000 if plan is not None else 0.0
        cut = plan.disconnect_after_chunks if plan is not None else None
        for n, i in enumerate(range(0, len(audio), CHUNK)):
            if cut is not None and n >= cut:
                assert request.transport is not None
                request.transport.close()
                return resp
            piece = audio[i:i + CHUNK]
            if sse:
                piece = b"data: " + orjson.dumps({"type": "speech.audio.delta",
                                                  "audio": base64.b64encode(piece).decode()}) + b"\n\n"
            await resp.write(piece)
            if delay:
                await asyncio.sleep(delay)
        if sse:
            usage = {"input_tokens": len(text.split()), "output_tokens": len(audio) // CHUNK + 1}
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            await resp.write(b"data: " + orjson.dumps({"type": "speech.audio.done", "usage": usage}) + b"\n\n")
        await resp.write_eof()
        return resp

    for prefix in ("/v1", "/openai/deployments/{deployment}"):
        app.router.add_post(f"{prefix}/embeddings", tracked(embeddings))
        app.router.add_post(f"{prefix}/audio/transcriptions", tracked(transcriptions))
        app.router.add_post(f"{prefix}/audio/translations", tracked(translations))
        app.router.add_post(f"{prefix}/audio/speech", tracked(speech))
