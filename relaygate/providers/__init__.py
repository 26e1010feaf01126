"""Provider adapters, one file each; ``provider_class`` maps a config ``provider`` to its adapter."""

from __future__ import annotations

import importlib

from relaygate.providers.base import Provider

# provider type -> "module:Class"; imported lazily so unused providers cost nothing at start
REGISTRY: dict[str, str] = {
    "openai": "openai.provider:OpenAIProvider",
    "azure": "openai.azure:AzureProvider",
    "demo": "demo:DemoProvider",
    "cohere": "cohere:CohereProvider",
    "gemini": "gemini.provider:GeminiProvider",
    "vertex": "gemini.provider:VertexProvider",
    "anthropic": "anthropic.provider:AnthropicProvider",
    "vertex_anthropic": "anthropic.vertex:VertexAnthropicProvider",
    "bedrock": "aws.bedrock:BedrockProvider",
    "bedrock_agent": "aws.bedrock_agent:BedrockAgentProvider",
}


def provider_class(kind: str) -> type[Provider]:
    """The adapter class for a provider type (ValueError when none is installed)."""
    target = REGISTRY.get(kind)
    if target is None:
        raise ValueError(f"provider {kind!r} is not available in this build")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
