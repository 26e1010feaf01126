"""Audio uploads through relaygate: transcriptions and translations with the openai SDK, size limits
enforced while reading, malformed multipart bodies answered with 400."""

from __future__ import annotations

import hashlib
import socket
import time
from typing import Literal

import httpx
import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai_audio import tone_pcm, wav_bytes
from tests.conftest import UPSTREAM_KEY, StartGateway, openai_model

LIMIT = 300_000


@pytest.fixture
def gateway(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> GatewayThread:
    return start_gateway({"server": {"max_audio_bytes": LIMIT, "max_body_bytes": 1000}, "models": [
        openai_model("whisper", openai_emulator, "whisper-1"),
        openai_model("transcribe-stream", openai_emulator, "gpt-4o-transcribe"),
    ]})


def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def speech_wav(text: str, seconds: float = 1.0) -> bytes:
    """A real WAV file (a tone); the emulator "hears" the ICMT comment as what was said."""
    return wav_bytes(tone_pcm(seconds, 440), comment=text)


def test_transcription_of_a_wav_file_reaches_the_upstream_intact(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    wav = speech_wav("what is the weather in Paris")
    res = client(gateway).audio.transcriptions.create(model="whisper", file=("q.wav", wav, "audio/wav"),
                                                       language="en", prompt="weather", temperature=0.2)
    assert res.text == "what is the weather in Paris"
    seen = openai_emulator.state.requests[-1]
    assert seen["file"] == {"name": "q.wav", "content_type": "audio/wav", "size": len(wav),
                            "sha256": hashlib.sha256(wav).hexdigest()}
    assert seen["form"] == {"model": "whisper-1", "language": "en", "prompt": "weather", "temperature": "0.2"}
    assert seen["headers"]["authorization"] == "Bearer sk-upstream-secret-0123456789abcdef"
    assert seen["headers"].get("transfer-encoding") == "chunked"  # streamed up, not assembled first


@pytest.mark.parametrize("after", [[], [("language", b"en", None), ("prompt", b"p", None)]])
def test_buffer_uploads_sends_a_content_length_instead_of_chunks(
        openai_emulator: BackgroundServer, start_gateway: StartGateway,
        after: list[tuple[str, bytes, str | None]]) -> None:
    gw = start_gateway({"models": [openai_model("whisper", openai_emulator, "whisper-1", buffer_uploads=True)]})
    wav = speech_wav("with a length", 2.0)
    r = post_form(gw, multipart([("model", b"whisper", None), ("file", wav, "a.wav"), *after]))
    assert r.json()["text"] == "with a length"
    seen = openai_emulator.state.requests[-1]
    assert "transfer-encoding" not in seen["headers"] and int(seen["headers"]["content-length"]) > len(wav)
    assert seen["file"]["sha256"] == hashlib.sha256(wav).hexdigest()
    assert seen["form"] == {"model": "whisper-1", **{n: v.decode() for n, v, _ in after}}


def test_language_auto_is_left_out_for_an_upstream_that_takes_iso_codes(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    """voice-mode sends whisper.cpp's language=auto; OpenAI refuses it (400 invalid_language_format) and detects
    the language when none is given."""
    wav = speech_wav("bonjour")
    direct = httpx.post(openai_emulator.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                        data={"model": "whisper-1", "language": "auto"},
                        headers={"authorization": f"Bearer {UPSTREAM_KEY}"})
    assert direct.status_code == 400 and direct.json()["error"]["code"] == "invalid_language_format"
    assert client(gateway).audio.transcriptions.create(model="whisper", file=("a.wav", wav), language="auto",
                                                       prompt="p").text == "bonjour"
    assert openai_emulator.state.requests[-1]["form"] == {"model": "whisper-1", "prompt": "p"}
    r = post_form(gateway, multipart([("model", b"whisper", None), ("file", wav, "a.wav"), ("language", b"AUTO", None),
                                      ("response_format", b"text", None)]))  # after the file, as curl may send it
    assert r.text == "bonjour\n"
    assert openai_emulator.state.requests[-1]["form"] == {"model": "whisper-1", "response_format": "text"}
    client(gateway).audio.transcriptions.create(model="whisper", file=("a.wav", wav), language="fr")
    assert openai_emulator.state.requests[-1]["form"]["language"] == "fr"


@pytest.mark.parametrize("buffer", [False, True])
def test_language_auto_reaches_an_upstream_that_reads_it(start_gateway: StartGateway, buffer: bool) -> None:
    from relaygate.testing.base import BackgroundServer
    from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

    with BackgroundServer(create_app(OpenAIEmulatorOptions(auto_language=True))) as whisper_cpp:
        gw = start_gateway({"models": [{"name": "whisper", "deployments": [{
            "provider": "openai", "model": "ggml-base", "api_base": whisper_cpp.url + "/v1",
            "keep_language_auto": True, "buffer_uploads": buffer}]}]})
        wav = speech_wav("hallo")
        assert client(gw).audio.transcriptions.create(model="whisper", file=("a.wav", wav),
                                                      language="auto").text == "hallo"
        assert whisper_cpp.state.requests[-1]["form"] == {"model": "ggml-base", "language": "auto"}


@pytest.mark.parametrize("fmt, expected", [
    ("text", "hello there\n"),
    ("srt", "1\n00:00:00,000 --> 00:00:01,000\nhello there\n\n"),
    ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello there\n\n"),
])
def test_text_response_formats_pass_through_unchanged(
        gateway: GatewayThread, fmt: Literal["text", "srt", "vtt"], expected: str) -> None:
    res = client(gateway).audio.transcriptions.create(model="whisper", file=("a.wav", speech_wav("hello there")),
                                                       response_format=fmt)
    assert res == expected


def test_verbose_json_with_word_timestamps(gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    res = client(gateway).audio.transcriptions.create(
        model="whisper", file=("a.wav", speech_wav("one two three", 1.5)), response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert [w.word for w in res.words or []] == ["one", "two", "three"]
    assert res.duration == pytest.approx(1.5)
    assert openai_emulator.state.requests[-1]["timestamp_granularities"] == ["word", "segment"]


def test_streamed_transcript_events_are_forwarded(gateway: GatewayThread) -> None:
    stream = client(gateway).audio.transcriptions.create(
        model="transcribe-stream", file=("a.wav", speech_wav("stream me please")), stream=True)
    events = list(stream)
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == "stream me please"
    assert events[-1].type == "transcript.text.done" and events[-1].text == "stream me please"


def test_translation(gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    res = client(gateway).audio.translations.create(model="whisper", file=("a.wav", speech_wav("bonjour")))
    assert res.text == "[translated to English] bonjour"
    assert openai_emulator.state.requests[-1]["path"] == "/v1/audio/translations"


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post_form(
        gw: GatewayThread, body: bytes, ctype: str = "multipart/form-data; boundary=XyZ") -> httpx.Response:
    return httpx.post(gw.base_url + "/audio/transcriptions", content=body, headers={"content-type": ctype})


def test_model_after_the_file_is_spooled_then_routed(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    wav = speech_wav("late model field")
    r = post_form(gateway, multipart([("file", wav, "x.wav"), ("model", b"whisper", None)]))
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "late model field"
    assert openai_emulator.state.requests[-1]["file"]["sha256"] == hashlib.sha256(wav).hexdigest()


def test_fields_after_the_file_are_checked_and_forwarded(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    wav = speech_wav("ok")
    r = post_form(gateway, multipart([("model", b"whisper", None), ("file", wav, "x.wav"),
                                      ("response_format", b"text", None)]))
    assert r.text == "ok\n"
    bad = post_form(gateway, multipart([("model", b"whisper", None), ("file", wav, "x.wav"),
                                        ("response_format", b"mp5", None)]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"


def test_the_provider_field_picks_a_deployment_and_is_not_forwarded(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    from relaygate.testing.base import BackgroundServer
    from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key="az-key-0123456789"))) as azure:
        gw = start_gateway({"models": [{"name": "whisper", "deployments": [
            openai_model("whisper", openai_emulator, "whisper-1")["deployments"][0],
            {"provider": "azure", "model": "az-whisper", "api_base": azure.url, "api_key": "az-key-0123456789"}]}]})
        for place in ("before", "after"):
            fields = [("model", b"whisper", None), ("provider", b"azure", None)]
            parts = [*fields, ("file", speech_wav("x"), "a.wav")] if place == "before" else \
                [fields[0], ("file", speech_wav("x"), "a.wav"), fields[1]]
            r = post_form(gw, multipart(parts))
            if place == "before":
                assert r.status_code == 200 and r.headers["x-relaygate-deployment"] == "whisper/azure/1"
                assert "provider" not in azure.state.requests[-1]["form"]
            else:  # routing happened when the file began: a pin that comes later is refused, not ignored
                assert r.status_code == 400 and r.json()["error"]["param"] == "provider"
        assert openai_emulator.state.requests == []


@pytest.mark.parametrize("body, ctype", [
    (b"not multipart at all", "multipart/form-data; boundary=XyZ"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ\r\nContent-Dispo",
     "multipart/form-data; boundary=XyZ"),  # ends in the middle of a part
    (b"--XyZ\r\nX-Nothing: 1\r\n\r\nwhisper\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n",
     "multipart/form-data"),  # no boundary
    (b'{"model": "whisper"}', "application/json"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n",
     "multipart/form-data; boundary=XyZ"),  # no file
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XyZ--\r\n",
     "multipart/form-data; boundary=XyZ"),  # no model
])
def test_malformed_multipart_gets_400_never_500(gateway: GatewayThread, body: bytes, ctype: str) -> None:
    r = post_form(gateway, body, ctype)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_body_cut_mid_file_while_streaming_upstream_gets_400(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    wav = speech_wav("x", 2.0)
    body = multipart([("model", b"whisper", None), ("file", wav, "x.wav")])
    r = post_form(gateway, body[: len(body) // 2])
    assert r.status_code == 400
    assert "closing boundary" in r.json()["error"]["message"]


def _raw_request(gw: GatewayThread, headers: str, body_part: bytes) -> tuple[bytes, float]:
    """Send headers and only part of a body, keep the socket open, and read what the gateway answers."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(headers.encode() + body_part)
        started = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data or b'"error"' not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - started


def test_declared_upload_over_the_limit_is_refused_before_the_body_is_sent(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    headers = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {25 * 1024 * 1024}\r\n\r\n")
    data, _ = _raw_request(gateway, headers, b"--XyZ\r\n")  # 25 MB announced, 7 bytes sent
    assert data.startswith(b"HTTP/1.1 413")
    assert b"request_too_large" in data
    assert openai_emulator.state.requests == []


def test_chunked_upload_over_the_limit_is_refused_while_reading(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    head = multipart([("model", b"whisper", None)]).rsplit(b"--XyZ--", 1)[0]
    head += b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
    sent = head + b"\0" * (LIMIT + 1000 - len(head))  # just over the limit; the body's end is never sent
    body = b"".join(b"%x\r\n%s\r\n" % (len(sent[i:i + 16384]), sent[i:i + 16384])
                    for i in range(0, len(sent), 16384))
    headers = ("POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n")
    data, _ = _raw_request(gateway, headers, body)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"exceeds the limit" in data


def test_azure_deployments_serve_audio_at_their_url_form(start_gateway: StartGateway) -> None:
    from relaygate.testing.base import BackgroundServer
    from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key="azure-key-0123456789"))) as azure:
        dep = {"provider": "azure", "api_base": azure.url, "api_key": "azure-key-0123456789"}
        gw = start_gateway({"models": [{"name": "whisper", "deployments": [{**dep, "model": "my-whisper"}]},
                                       {"name": "tts", "deployments": [{**dep, "model": "my-tts"}]}]})
        c = client(gw)
        assert c.audio.transcriptions.create(model="whisper", file=("a.wav", speech_wav("azure"))).text == "azure"
        assert c.audio.speech.create(model="tts", voice="alloy", input="x", response_format="wav").content[:4] == b"RIFF"
        stt, tts = azure.state.requests[-2:]
        assert stt["path"] == "/openai/deployments/my-whisper/audio/transcriptions"
        assert tts["path"] == "/openai/deployments/my-tts/audio/speech" and "api-version" in tts["query"]
        assert stt["headers"]["api-key"] == "azure-key-0123456789" and "authorization" not in stt["headers"]


def test_a_client_leaving_mid_upload_aborts_the_upstream_request(
        gateway: GatewayThread, openai_emulator: BackgroundServer, caplog: pytest.LogCaptureFixture) -> None:
    head = multipart([("model", b"whisper", None)]).rsplit(b"--XyZ--", 1)[0]
    head += b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n"
                  b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n" + head + b"\0" * 50_000)
        deadline = time.monotonic() + 5
        while openai_emulator.state.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the upload is on its way upstream
    deadline = time.monotonic() + 5
    while openai_emulator.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_emulator.state.in_flight == 0
    assert openai_emulator.state.requests == []  # the upstream never saw a whole request
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert client(gateway).audio.transcriptions.create(model="whisper", file=("a.wav", speech_wav("ok"))).text == "ok"


def test_a_client_leaving_after_its_upload_cancels_the_upstream_transcription(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    from relaygate.testing.base import FaultPlan

    openai_emulator.state.faults = FaultPlan(latency_ms=5000, count=1)
    body = multipart([("model", b"whisper", None), ("file", speech_wav("slow"), "a.wav")])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                  b"boundary=XyZ\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 5
        while not openai_emulator.state.requests and time.monotonic() < deadline:
            time.sleep(0.01)  # the whole upload reached the upstream, which now takes its time
    deadline = time.monotonic() + 3
    while openai_emulator.state.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_emulator.state.cancelled == 1 and openai_emulator.state.in_flight == 0

