"""Voice, embeddings and passthrough routes go through the same pipeline as chat: keys apply to them."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai_audio import tone_pcm, wav_bytes
from tests.conftest import StartGateway, openai_model

MASTER = "rg-master-voice-0123456789abcdef"


@pytest.fixture
def gateway(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> GatewayThread:
    return start_gateway({"auth": {"master_key": MASTER}, "passthrough": {"model": "rest"}, "models": [
        openai_model("tts", openai_emulator, "tts-1"), openai_model("whisper", openai_emulator, "whisper-1"),
        openai_model("embed", openai_emulator, "text-embedding-3-small"), openai_model("rest", openai_emulator, "*"),
    ]})


def calls(c: openai.OpenAI) -> dict[str, Any]:
    wav = wav_bytes(tone_pcm(0.2, 440), comment="hi")
    return {
        "speech": lambda: c.audio.speech.create(model="tts", voice="alloy", input="hi").content,
        "transcription": lambda: c.audio.transcriptions.create(model="whisper", file=("a.wav", wav)).text,
        "embeddings": lambda: c.embeddings.create(model="embed", input="hi").data,
        "passthrough": lambda: c.moderations.create(input="hi").results,
    }


def test_without_a_key_every_voice_route_is_refused_before_the_upstream(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    c = openai.OpenAI(base_url=gateway.base_url, api_key="rg-wrong", max_retries=0)
    for call in calls(c).values():
        with pytest.raises(openai.AuthenticationError):
            call()
    assert openai_emulator.state.requests == []


def test_a_virtual_key_serves_every_voice_route(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    r = httpx.post(gateway.url + "/admin/keys", json={}, headers={"authorization": f"Bearer {MASTER}"})
    c = openai.OpenAI(base_url=gateway.base_url, api_key=r.json()["key"], max_retries=0)
    for name, call in calls(c).items():
        assert call(), name
    assert all(q["headers"]["authorization"] != "Bearer " + r.json()["key"] for q in openai_emulator.state.requests)


def test_voices_need_a_key_and_show_only_the_models_it_may_use(gateway: GatewayThread) -> None:
    admin = {"authorization": f"Bearer {MASTER}"}
    assert httpx.get(gateway.base_url + "/audio/voices").status_code == 401
    key = httpx.post(gateway.url + "/admin/keys", json={"models": ["whisper"]}, headers=admin).json()["key"]
    auth = {"authorization": f"Bearer {key}"}
    assert httpx.get(gateway.base_url + "/audio/voices", headers=auth).json()["voices"] == []
    assert httpx.get(gateway.base_url + "/audio/voices", params={"model": "tts"}, headers=auth).status_code == 404
    listed = httpx.get(gateway.base_url + "/audio/voices", headers=admin).json()
    assert list(listed["models"]) == ["tts"] and "alloy" in listed["models"]["tts"]
