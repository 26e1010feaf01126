"""Voice upstreams that fail: text to speech falls back to a local server before the first byte, an
upload is replayed to the next speech-to-text deployment. (Routing strategies and fallbacks: routing/.)"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from relaygate.testing.openai_audio import speech_audio, tone_pcm, wav_bytes
from tests.conftest import StartGateway, openai_model


@pytest.fixture
def kokoro() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(OpenAIEmulatorOptions(voices=("af_sky", "af_heart")))) as srv:
        yield srv


def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def tts_with_local_backup(openai_emulator: BackgroundServer, kokoro: BackgroundServer) -> dict[str, Any]:
    """The voice-mode pattern: OpenAI first; a local Kokoro (speaking alloy as af_heart) when it fails."""
    return {"models": [{"name": "tts", "strategy": "priority", "deployments": [
        {**openai_model("tts", openai_emulator, "tts-1")["deployments"][0], "name": "openai", "priority": 0},
        {"name": "kokoro", "provider": "openai", "model": "kokoro", "api_base": kokoro.url + "/v1",
         "priority": 1, "voices": ["af_sky"], "voice_map": {"alloy": "af_heart"}},
    ]}]}


def fail_next(emulator: BackgroundServer, **fault: Any) -> None:
    httpx.post(emulator.url + "/_emulator/faults", json={"count": 1, **fault}).raise_for_status()


def test_the_primary_serves_while_it_is_healthy(
        openai_emulator: BackgroundServer, kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(tts_with_local_backup(openai_emulator, kokoro))
    with client(gw).audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="hi") as r:
        assert r.headers["x-relaygate-deployment"] == "openai"
        assert r.read() == speech_audio("hi", "alloy", "mp3")
    assert kokoro.state.requests == []


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 429}, {"drop_connection": True},
                                   {"disconnect_after_chunks": 0}])  # the last: headers sent, then no audio
def test_tts_falls_back_to_the_local_server_before_the_first_byte(
        openai_emulator: BackgroundServer, kokoro: BackgroundServer, start_gateway: StartGateway,
        tmp_path: Path, fault: dict[str, Any]) -> None:
    gw = start_gateway(tts_with_local_backup(openai_emulator, kokoro))
    fail_next(openai_emulator, **fault)
    out = tmp_path / "reply.wav"
    with client(gw).audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input="still talking", response_format="wav") as r:
        assert r.headers["x-relaygate-deployment"] == "kokoro"
        assert r.headers["x-relaygate-attempts"] == "2"
        r.stream_to_file(out)
    assert out.read_bytes() == speech_audio("still talking", "af_heart", "wav")
    assert kokoro.state.requests[-1]["json"]["voice"] == "af_heart"


def test_fallback_to_another_model_keeps_voice_routing(
        openai_emulator: BackgroundServer, kokoro: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [
        {**openai_model("tts", openai_emulator, "tts-1"), "fallbacks": [{"models": ["tts-local"]}]},
        {"name": "tts-local", "deployments": [{"provider": "openai", "model": "kokoro",
                                               "api_base": kokoro.url + "/v1", "voice_map": {"nova": "af_sky"}}]},
    ]})
    fail_next(openai_emulator, status=500)
    audio = client(gw).audio.speech.create(model="tts", voice="nova", input="backup", response_format="pcm")
    assert audio.content == speech_audio("backup", "af_sky", "pcm")


def test_a_failed_transcription_replays_the_upload_to_the_next_deployment(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    with BackgroundServer(create_app(OpenAIEmulatorOptions())) as local_whisper:
        gw = start_gateway({"models": [{"name": "stt", "strategy": "priority", "deployments": [
            {**openai_model("stt", openai_emulator, "whisper-1")["deployments"][0], "name": "openai"},
            {"name": "local", "provider": "openai", "model": "whisper-large-v3", "priority": 1,
             "api_base": local_whisper.url + "/v1"},
        ]}]})
        fail_next(openai_emulator, status=503)
        wav = wav_bytes(tone_pcm(3.0, 300), comment="replayed upload")
        res = client(gw).audio.transcriptions.create(model="stt", file=("a.wav", wav))
        assert res.text == "replayed upload"
        first, second = openai_emulator.state.requests[-1], local_whisper.state.requests[-1]
        assert first["file"]["sha256"] == second["file"]["sha256"] == hashlib.sha256(wav).hexdigest()
        assert second["form"]["model"] == "whisper-large-v3"
