"""``/v1/audio/transcriptions``, ``/v1/audio/translations`` (multipart uploads, streamed to the upstream as
they arrive), ``/v1/audio/speech`` (JSON in, audio streamed back as the upstream produces it) and
``/v1/audio/voices`` (the voices of the configured speech models)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from relaygate.api.common import body_call, check, require, respond, respond_stream
from relaygate.api.query import Query
from relaygate.auth.authenticator import caller
from relaygate.core.call import Call, Route
from relaygate.core.errors import BadRequest, ModelNotFound
from relaygate.core.shapes.openai import SpeechRequest
from relaygate.routing.voices import documented_voices, offered_voices
from relaygate.server.http import Request, Response, StreamResponse, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
GRANULARITIES = ("word", "segment")


def _number(name: str, value: str, low: float, high: float) -> float:
    try:
        x = float(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be a number", param=name, code="invalid_type") from None
    if not low <= x <= high:
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}", param=name)
    return x


def check_form_field(name: str, value: str) -> None:
    """Validate one form field of an audio upload as it arrives (fields after the file too)."""
    if name == "model" and not value:
        raise BadRequest("'model' must not be empty", param="model")
    elif name == "response_format" and value not in TRANSCRIPT_FORMATS:
        raise BadRequest(f"'response_format' must be one of {', '.join(TRANSCRIPT_FORMATS)}, not {value!r}",
                         param="response_format")
    elif name == "temperature":
        _number(name, value, 0.0, 1.0)
    elif name in ("timestamp_granularities[]", "timestamp_granularities") and value not in GRANULARITIES:
        raise BadRequest(f"timestamp granularities must be 'word' or 'segment', not {value!r}",
                         param="timestamp_granularities")
    elif name == "stream" and value not in ("true", "false"):
        raise BadRequest("'stream' must be true or false", param="stream", code="invalid_type")
    elif name == "provider" and not value:
        raise BadRequest("'provider' must be a non-empty string", param="provider")


async def _upload(gw: Gateway, req: Request, route: Route) -> Response | StreamResponse:
    # the multipart reader (python-multipart) is imported by the first upload, not by every gateway
    from relaygate.server.multipart import AudioUpload, FormReader, boundary_of

    key = await caller(gw.auth, req.headers)
    boundary = boundary_of(req.headers.get("content-type", ""))
    upload = AudioUpload(FormReader(req.stream(gw.config.server.max_audio_bytes), boundary), check_form_field)
    try:
        await upload.start()
        model = upload.value("model")
        if model is None:
            raise BadRequest("you must provide the 'model' field", param="model", code="missing_required_parameter")
        if upload.file is None:
            raise BadRequest("you must provide the audio 'file'", param="file", code="missing_required_parameter")
        provider = upload.value("provider")  # gateway-only: the upload never forwards it
        body: dict[str, Any] = {n: v for n, v in upload.fields if n != "provider"}
        call = Call(id=req.id, route=route, model=model, body=body, stream=body.get("stream") == "true",
                    headers=req.headers, client_ip=req.client_ip, provider=provider, upload=upload, key=key,
                    deadline=time.monotonic() + gw.config.server.request_timeout)
        reply = await gw.handle(call)
    except BaseException:
        upload.close()
        raise
    reply.on_done(lambda r, e: upload.close())
    return respond(call, reply)


async def transcriptions(gw: Gateway, req: Request) -> Response | StreamResponse:
    return await _upload(gw, req, Route.TRANSCRIPTIONS)


async def translations(gw: Gateway, req: Request) -> Response | StreamResponse:
    return await _upload(gw, req, Route.TRANSLATIONS)


def validate_speech(body: dict[str, Any]) -> None:
    model = require(body, "model", str, "a string")
    if not model:
        raise BadRequest("'model' must not be empty", param="model")
    text = require(body, "input", str, "a string")
    if not text:
        raise BadRequest("'input' must not be empty", param="input")
    voice = require(body, "voice", (str, dict), "a string or an object with an 'id'")
    if isinstance(voice, dict) and not (isinstance(voice.get("id"), str) and voice["id"]):
        raise BadRequest("a custom voice must be an object with a string 'id'", param="voice")
    if isinstance(voice, str) and not voice:
        raise BadRequest("'voice' must not be empty", param="voice")
    fmt = check(body, "response_format", str, "a string")
    if fmt is not None and fmt not in SPEECH_FORMATS:
        raise BadRequest(f"'response_format' must be one of {', '.join(SPEECH_FORMATS)}, not {fmt!r}",
                         param="response_format")
    speed = check(body, "speed", (int, float), "a number")
    if speed is not None and not 0.25 <= speed <= 4.0:
        raise BadRequest("'speed' must be between 0.25 and 4.0", param="speed")
    sf = check(body, "stream_format", str, "a string")
    if sf is not None and sf not in ("sse", "audio"):
        raise BadRequest("'stream_format' must be 'sse' or 'audio'", param="stream_format")
    check(body, "instructions", str, "a string")


async def speech(gw: Gateway, req: Request) -> Response | StreamResponse:
    call = await body_call(gw, req, Route.SPEECH, validate_speech, SpeechRequest, stream=True)
    return respond_stream(call, await gw.handle(call))


async def voices(gw: Gateway, req: Request) -> Response:
    """The voices each speech model offers, in Kokoro-FastAPI's shape (``{"voices": [{"id", "name"}]}``, which
    voice-mode and Open WebUI read; ``?legacy=true``: plain names), plus ``models``: each model's own voices.
    ``?model=`` narrows to one model; a key sees only the models it may use."""
    key = await caller(gw.auth, req.headers)
    query = Query(req.query)
    table = gw.table.models
    documented = documented_voices()
    asked = query.text("model", 200)
    if asked is not None:
        deps = table.get(asked) if asked != "*" else None
        deps = deps if deps is not None else table.get("*")  # a wildcard model serves any name
        if deps is None or (key is not None and not key.allows_model(asked)):
            raise ModelNotFound(f"The model {asked!r} does not exist on this gateway.", param="model")
        per_model = {asked: offered_voices(deps, asked, documented)}
    else:
        per_model = {}
        for name in gw.table.names():
            if key is None or key.allows_model(name):
                offered = offered_voices(table[name], name, documented)
                if offered:
                    per_model[name] = offered
    models_of: dict[str, list[str]] = {}
    for name, offered in per_model.items():
        for v in offered:
            models_of.setdefault(v, []).append(name)
    if query.flag("legacy"):
        listed: list[Any] = list(models_of)
    else:
        listed = [{"id": v, "name": v, "models": ms} for v, ms in models_of.items()]
    return json_response({"object": "list", "voices": listed, "models": per_model})


ROUTES = [
    ("GET", "/v1/audio/voices", voices),
    ("GET", "/audio/voices", voices),
    ("POST", "/v1/audio/transcriptions", transcriptions),
    ("POST", "/v1/audio/translations", translations),
    ("POST", "/v1/audio/speech", speech),
    ("POST", "/audio/transcriptions", transcriptions),
    ("POST", "/audio/translations", translations),
    ("POST", "/audio/speech", speech),
]

