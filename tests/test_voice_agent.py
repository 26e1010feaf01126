"""One voice agent turn through one base URL: speech to text, chat, text to speech (as Pipecat or
voice-mode do it), each served by a different upstream behind relaygate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai

from relaygate.testing.base import BackgroundServer
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from relaygate.testing.openai_audio import speech_audio, tone_pcm, wav_bytes
from tests.conftest import StartGateway, openai_model


def test_a_voice_agent_turn_transcribe_chat_speak(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, tmp_path: Path) -> None:
    with BackgroundServer(create_app(OpenAIEmulatorOptions())) as whisper, \
            BackgroundServer(create_app(OpenAIEmulatorOptions(voices=("af_sky",)))) as kokoro:
        gw = start_gateway({"models": [
            {"name": "whisper-1", "deployments": [{"provider": "openai", "model": "whisper-large-v3-turbo",
                                                   "api_base": whisper.url + "/v1"}]},
            openai_model("gpt-4o-mini", openai_emulator),
            {"name": "tts-1", "deployments": [
                {**openai_model("tts-1", openai_emulator, "tts-1")["deployments"][0]},
                {"provider": "openai", "model": "kokoro", "api_base": kokoro.url + "/v1", "voices": ["af_sky"]}]},
        ]})
        question = wav_bytes(tone_pcm(1.2, 220), comment="what is the capital of France")
        out = tmp_path / "answer.wav"

        async def turn() -> str:
            client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-voice-agent", max_retries=0)
            heard = await client.audio.transcriptions.create(model="whisper-1", file=("turn.wav", question))
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", stream=True,
                messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": heard.text}])
            reply = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            async with client.audio.speech.with_streaming_response.create(
                    model="tts-1", voice="af_sky", input=reply, response_format="wav") as speech:
                assert speech.headers["x-relaygate-deployment"] == "tts-1/openai/1"
                await speech.stream_to_file(out)
            return reply

        reply = asyncio.run(turn())
        assert reply.startswith("Hello! You said: what is the capital of France")
        assert out.read_bytes() == speech_audio(reply, "af_sky", "wav")
        assert whisper.state.requests[-1]["form"]["model"] == "whisper-large-v3-turbo"
        assert kokoro.state.requests[-1]["json"]["input"] == reply
