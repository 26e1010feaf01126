"""Text to speech through relaygate: audio streamed back as it is produced, routing by voice, fallback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from relaygate.testing.openai_audio import speech_audio
from tests.conftest import UPSTREAM_KEY, StartGateway, openai_model

KOKORO_VOICES = ("af_sky", "af_bella", "af_heart")


@pytest.fixture
def kokoro() -> Iterator[BackgroundServer]:
    """A local Kokoro-like server: OpenAI's /v1/audio/speech with its own voices, no key."""
    with BackgroundServer(create_app(OpenAIEmulatorOptions(voices=KOKORO_VOICES))) as srv:
        yield srv


def kokoro_deployment(kokoro: BackgroundServer, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "kokoro", "api_base": kokoro.url + "/v1", "timeout": 10,
            "voices": ["af_sky", "af_bella"], **extra}


def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def test_speech_streams_to_a_file_with_the_upstream_bytes(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, tmp_path: Path) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "tts-1")]})
    out = tmp_path / "hello.wav"
    with client(gw).audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input="Hello from relaygate", response_format="wav") as resp:
        assert resp.headers["content-type"] == "audio/wav"
        resp.stream_to_file(out)
    data = out.read_bytes()
    assert data == speech_audio("Hello from relaygate", "alloy", "wav")
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert openai_emulator.state.requests[-1]["json"]["model"] == "tts-1"


@pytest.mark.parametrize("fmt, magic", [("mp3", b"\xff\xfb"), ("pcm", b""), ("flac", b"fLaC"),
                                        ("opus", b"OggS"), ("aac", b"\xff\xf1")])
def test_every_audio_format_passes_through(
        openai_emulator: BackgroundServer, start_gateway: StartGateway,
        fmt: Literal["mp3", "pcm", "flac", "opus", "aac"], magic: bytes) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "tts-1")]})
    audio = client(gw).audio.speech.create(model="tts", voice="nova", input="format check", response_format=fmt)
    assert audio.content == speech_audio("format check", "nova", fmt)
    assert audio.content.startswith(magic)


def test_speech_reaches_the_client_before_the_upstream_finished(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "tts-1")]})
    httpx.post(openai_emulator.url + "/_emulator/faults", json={"chunk_delay_ms": 150})
    text = "x" * 300  # 6 s of 24 kHz audio: 72 chunks, of which we read the first
    with httpx.stream("POST", gw.base_url + "/audio/speech", timeout=10,
                      json={"model": "tts", "voice": "alloy", "input": text, "response_format": "pcm"}) as r:
        started = time.monotonic()
        first = next(r.iter_raw())
        waited = time.monotonic() - started
    assert first and waited < 2.0  # the whole answer would take 72 x 150 ms = 10.8 s upstream


def test_sse_stream_format_is_forwarded_as_events(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "gpt-4o-mini-tts")]})
    r = httpx.post(gw.base_url + "/audio/speech", json={"model": "tts", "voice": "alloy", "input": "hi",
                                                         "stream_format": "sse"})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert '"speech.audio.done"' in r.text


def test_voice_picks_the_deployment(
        openai_emulator: BackgroundServer, kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [{"name": "tts", "deployments": [
        {**openai_model("tts", openai_emulator, "tts-1")["deployments"][0], "name": "openai"},
        {**kokoro_deployment(kokoro), "name": "kokoro"},
    ]}]})
    c = client(gw)
    for _ in range(3):  # whatever the strategy, each voice has one home
        with c.audio.speech.with_streaming_response.create(model="tts", voice="af_sky", input="local") as r:
            assert r.headers["x-relaygate-deployment"] == "kokoro"
            assert r.read() == speech_audio("local", "af_sky", "mp3")
        with c.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="cloud") as r:
            assert r.headers["x-relaygate-deployment"] == "openai"
            r.read()
    assert {q["json"]["voice"] for q in kokoro.state.requests} == {"af_sky"}
    assert {q["json"]["model"] for q in kokoro.state.requests} == {"kokoro"}
    assert {q["json"]["voice"] for q in openai_emulator.state.requests} == {"alloy"}


def test_a_voice_no_deployment_serves_is_a_400_naming_the_voices(
        kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [{"name": "tts", "deployments": [kokoro_deployment(kokoro)]}]})
    r = httpx.post(gw.base_url + "/audio/speech", json={"model": "tts", "voice": "alloy", "input": "x"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "voice" and "af_bella, af_sky" in err["message"]
    assert kokoro.state.requests == []


def test_voice_map_renames_the_voice_for_that_upstream(
        kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [{"name": "tts", "deployments": [
        kokoro_deployment(kokoro, voice_map={"alloy": "af_heart"})]}]})
    audio = client(gw).audio.speech.create(model="tts", voice="alloy", input="renamed", response_format="wav")
    assert audio.content == speech_audio("renamed", "af_heart", "wav")
    assert kokoro.state.requests[-1]["json"]["voice"] == "af_heart"


@pytest.mark.parametrize("body, param", [
    ({"voice": "alloy", "input": "x"}, "model"),
    ({"model": "tts", "voice": "alloy"}, "input"),
    ({"model": "tts", "voice": "alloy", "input": ""}, "input"),
    ({"model": "tts", "input": "x"}, "voice"),
    ({"model": "tts", "voice": {"name": "x"}, "input": "x"}, "voice"),
    ({"model": "tts", "voice": "alloy", "input": "x", "response_format": "ogg"}, "response_format"),
    ({"model": "tts", "voice": "alloy", "input": "x", "speed": 9}, "speed"),
    ({"model": "tts", "voice": "alloy", "input": "x", "stream_format": "chunks"}, "stream_format"),
])
def test_invalid_speech_requests_get_a_400(openai_emulator: BackgroundServer, start_gateway: StartGateway,
                                           body: dict[str, Any], param: str) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "tts-1")]})
    r = httpx.post(gw.base_url + "/audio/speech", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert openai_emulator.state.requests == []


def test_an_upstream_failure_after_the_first_byte_cuts_the_connection(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "tts-1")]})
    httpx.post(openai_emulator.url + "/_emulator/faults", json={"disconnect_after_chunks": 2})
    with pytest.raises(httpx.RemoteProtocolError):  # a truncated body, never a clean short file
        httpx.post(gw.base_url + "/audio/speech", json={"model": "tts", "voice": "alloy", "input": "y" * 500,
                                                         "response_format": "pcm"})


def test_upstream_key_never_reaches_the_client(start_gateway: StartGateway) -> None:
    bad = BackgroundServer(create_app(OpenAIEmulatorOptions(api_key="sk-other-key-000000000000"))).start()
    try:
        gw = start_gateway({"models": [{"name": "tts", "deployments": [{
            "provider": "openai", "model": "tts-1", "api_base": bad.url + "/v1", "api_key": UPSTREAM_KEY}]}]})
        r = httpx.post(gw.base_url + "/audio/speech", json={"model": "tts", "voice": "alloy", "input": "x"})
        assert r.status_code == 401
        assert UPSTREAM_KEY not in r.text and UPSTREAM_KEY[-4:] not in r.text
    finally:
        bad.stop()


@pytest.mark.parametrize("extra, error", [
    ({"voices": ["af_sky", ""]}, "models[0].deployments[0].voices: voice names must not be empty"),
    ({"voices": ["af_sky", "af_sky"]}, "models[0].deployments[0].voices: voices are listed twice"),
    ({"voice_map": {"alloy": ""}}, "models[0].deployments[0].voice_map: voice names must not be empty"),
    ({"voices": "af_sky"}, "models[0].deployments[0].voices: Input should be a valid list"),
])
def test_voice_config_errors_name_their_path(extra: dict[str, Any], error: str) -> None:
    from relaygate.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "tts", "deployments": [
            {"provider": "openai", "model": "kokoro", "api_base": "http://127.0.0.1:8880/v1", **extra}]}]}, {})
    assert e.value.errors == [error]


OPENAI_TTS1_VOICES = ["alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer"]


def discovered_voices(base_url: str, **params: str) -> list[str]:
    """What voice-mode's provider discovery makes of GET {base_url}/audio/voices (strings or objects with id)."""
    data = httpx.get(base_url + "/audio/voices", params=params).json()
    return [v["id"] if isinstance(v, dict) else v for v in data["voices"]]


def test_voices_lists_what_each_speech_model_speaks_in_kokoro_fastapis_shape(
        openai_emulator: BackgroundServer, kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [
        {"name": "tts", "deployments": [
            openai_model("x", openai_emulator, "tts-1")["deployments"][0],
            kokoro_deployment(kokoro, voice_map={"alloy": "af_heart", "verse": "af_heart"})]},
        openai_model("mini-tts", openai_emulator, "gpt-4o-mini-tts-2025-03-20"),
        {"name": "local", "deployments": [kokoro_deployment(kokoro)]},
        openai_model("chat", openai_emulator),  # no voices: not listed
    ]})
    r = httpx.get(gw.base_url + "/audio/voices")
    assert r.status_code == 200
    body = r.json()
    assert body["models"] == {
        "tts": [*OPENAI_TTS1_VOICES, "af_sky", "af_bella", "verse"],
        "mini-tts": ["alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                     "marin", "cedar"],
        "local": ["af_sky", "af_bella"]}
    by_id = {v["id"]: v for v in body["voices"]}
    assert by_id["af_sky"] == {"id": "af_sky", "name": "af_sky", "models": ["tts", "local"]}
    assert by_id["verse"]["models"] == ["tts", "mini-tts"]
    assert discovered_voices(gw.base_url) == list(by_id)
    # every voice listed for a model is one that model speaks
    for voice in body["models"]["tts"]:
        assert client(gw).audio.speech.create(model="tts", voice=voice, input="hi").content


def test_voices_of_one_model_and_in_the_legacy_shape(
        openai_emulator: BackgroundServer, kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [{"name": "local", "deployments": [kokoro_deployment(kokoro)]},
                                   openai_model("*", openai_emulator, "*")]})
    assert discovered_voices(gw.base_url, model="local") == ["af_sky", "af_bella"]
    assert httpx.get(gw.base_url + "/audio/voices", params={"model": "local", "legacy": "true"}).json()[
        "voices"] == ["af_sky", "af_bella"]
    # a wildcard model forwards any name: OpenAI's documented voices for an OpenAI speech model
    assert discovered_voices(gw.base_url, model="tts-1-hd") == OPENAI_TTS1_VOICES
    assert httpx.get(gw.base_url + "/audio/voices", params={"model": "gpt-4o"}).json()["models"] == {"gpt-4o": []}


def test_voices_of_an_unknown_model_is_a_404_in_openais_shape(
        kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [{"name": "local", "deployments": [kokoro_deployment(kokoro)]}]})
    r = httpx.get(gw.base_url + "/audio/voices", params={"model": "nope"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
