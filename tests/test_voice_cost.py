"""Voice and embeddings calls are metered like chat: the request log prices characters, seconds, tokens."""

from __future__ import annotations

import openai

from relaygate.testing.base import BackgroundServer
from relaygate.testing.openai_audio import tone_pcm, wav_bytes
from tests.conftest import StartGateway, openai_model
from tests.test_requestlog import gateway_rows


def test_speech_is_priced_per_character_and_transcription_per_second(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("tts", openai_emulator, "tts-1"),
                                   openai_model("stt", openai_emulator, "whisper-1"),
                                   openai_model("embed", openai_emulator, "text-embedding-3-small")]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="sk-x", max_retries=0)
    text = "Metered by the character."
    c.audio.speech.create(model="tts", voice="alloy", input=text)
    c.audio.transcriptions.create(model="stt", file=("a.wav", wav_bytes(tone_pcm(2.5, 440), comment="x")))
    e = c.embeddings.create(model="embed", input=["one two three", "four"])
    rows = {r["route"]: r for r in gateway_rows(gw, expected=3)}
    assert rows["speech"]["cost_nano"] == round(len(text) * 15e-6 * 1e9)  # tts-1: $15 / 1M characters
    assert rows["transcriptions"]["cost_nano"] == round(3 * 0.0001 * 1e9)  # whisper-1: $0.006 / minute, whole s
    assert rows["embeddings"]["cost_nano"] == round(e.usage.prompt_tokens * 2e-8 * 1e9) > 0
    assert rows["speech"]["status"] == rows["transcriptions"]["status"] == 200
