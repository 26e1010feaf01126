"""Every provider's emulator behind one real gateway: the input and fuzz tests aim at all of them at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from relaygate.testing import anthropic, bedrock, cohere, gemini, openai
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

MASTER = "sk-master-" + "f3a9c1e7" * 5
KEYS = {"openai": "sk-upstream-openai-0123456789abcdef", "anthropic": "sk-ant-upstream-0123456789abcdef",
        "gemini": "AIzaSyTestKey0123456789abcdefghijklmnop", "cohere": "co-upstream-0123456789abcdef"}
CHAT_MODELS = ("gpt", "claude", "gemini", "cohere", "bedrock")  # one per provider, named for it


@dataclass
class Stack:
    gateway: GatewayThread
    emulators: dict[str, BackgroundServer]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {MASTER}"}


def deployments(urls: dict[str, str]) -> list[dict[str, Any]]:
    """A chat model per provider at ``urls`` (emulators, or one upstream for all), plus embeddings and speech."""
    def model(name: str, **dep: Any) -> dict[str, Any]:
        return {"name": name, "deployments": [{"timeout": 10, **dep}]}

    return [
        model("gpt", provider="openai", model="gpt-4o-mini", api_base=urls["openai"] + "/v1", api_key=KEYS["openai"]),
        model("claude", provider="anthropic", model="claude-sonnet-4-6", api_base=urls["anthropic"],
              api_key=KEYS["anthropic"]),
        model("gemini", provider="gemini", model="gemini-2.5-flash", api_base=urls["gemini"],
              api_key=KEYS["gemini"]),
        model("cohere", provider="cohere", model="command-a-03-2025", api_base=urls["cohere"],
              api_key=KEYS["cohere"]),
        model("bedrock", provider="bedrock", model="anthropic.claude-3-5-sonnet-20240620-v1:0",
              api_base=urls["bedrock"], region="us-east-1", aws_access_key_id=bedrock.TEST_ACCESS_KEY,
              aws_secret_access_key=bedrock.TEST_SECRET_KEY),
        model("text-embedding-3-small", provider="openai", model="text-embedding-3-small",
              api_base=urls["openai"] + "/v1", api_key=KEYS["openai"]),
        model("embed-cohere", provider="cohere", model="embed-v4.0", api_base=urls["cohere"],
              api_key=KEYS["cohere"]),
        model("embed-gemini", provider="gemini", model="gemini-embedding-001", api_base=urls["gemini"],
              api_key=KEYS["gemini"]),
        model("tts-1", provider="openai", model="tts-1", api_base=urls["openai"] + "/v1", api_key=KEYS["openai"]),
        model("whisper-1", provider="openai", model="whisper-1", api_base=urls["openai"] + "/v1",
              api_key=KEYS["openai"]),
    ]


@contextlib.contextmanager
def run_stack(database_url: str) -> Iterator[Stack]:
    """The emulators and a gateway with the master key and the request log (and keys) in ``database_url``."""
    with contextlib.ExitStack() as es:
        emus = {
            "openai": openai.create_app(openai.OpenAIEmulatorOptions(api_key=KEYS["openai"])),
            "anthropic": anthropic.create_app(anthropic.AnthropicEmulatorOptions(api_key=KEYS["anthropic"])),
            "gemini": gemini.create_app(gemini.GeminiEmulatorOptions(api_key=KEYS["gemini"])),
            "cohere": cohere.create_app(cohere.CohereEmulatorOptions(api_key=KEYS["cohere"])),
            "bedrock": bedrock.create_app(bedrock.BedrockEmulatorOptions()),
        }
        servers = {name: es.enter_context(BackgroundServer(app)) for name, app in emus.items()}
        config: dict[str, Any] = {"models": deployments({n: s.url for n, s in servers.items()}),
                                  "auth": {"master_key": MASTER}, "database": {"url": database_url}}
        gw = es.enter_context(GatewayThread(config))
        yield Stack(gw, servers)
