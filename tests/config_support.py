"""A deployment of each provider with only its required fields."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from relaygate.config import DeploymentConfig

MINIMAL: dict[str, dict[str, Any]] = {
    "openai": {"model": "gpt-4o-mini"},
    "azure": {"model": "my-deployment", "api_base": "https://r.openai.azure.com"},
    "demo": {"model": "demo"},
    "anthropic": {"model": "claude-sonnet-4-6"},
    "vertex_anthropic": {"model": "claude-sonnet-4-6", "project": "p"},
    "gemini": {"model": "gemini-2.5-flash"},
    "vertex": {"model": "gemini-2.5-flash", "project": "p"},
    "bedrock": {"model": "anthropic.claude-3-5-sonnet-20240620-v1:0"},
    "bedrock_agent": {"model": "agent", "agent_id": "A", "agent_alias_id": "B"},
    "cohere": {"model": "command-a-03-2025"},
}

_DEPLOYMENT: TypeAdapter[DeploymentConfig] = TypeAdapter(DeploymentConfig)


def deployment(provider: str, **fields: Any) -> DeploymentConfig:
    """A validated deployment of ``provider``: its minimal fields, and ``fields``."""
    return _DEPLOYMENT.validate_python({"provider": provider, **MINIMAL[provider], **fields})
