"""Provider adapters, one module or folder each; ``provider_class`` maps a deployment to its adapter."""

from __future__ import annotations

from typing import assert_never

from relaygate.config import (
    AnthropicDeployment,
    AzureDeployment,
    BedrockAgentDeployment,
    BedrockDeployment,
    CohereDeployment,
    DemoDeployment,
    DeploymentConfig,
    GeminiDeployment,
    OpenAIDeployment,
    VertexAnthropicDeployment,
    VertexDeployment,
)
from relaygate.providers.base import Provider


def provider_class(config: DeploymentConfig) -> type[Provider]:
    """The adapter class for a deployment's config, imported on first use so unused providers cost nothing."""
    match config:
        case OpenAIDeployment():
            from relaygate.providers.openai.provider import OpenAIProvider, OpenAIResponsesProvider
            return OpenAIResponsesProvider if config.responses_native or config.responses_only else OpenAIProvider
        case AzureDeployment():
            from relaygate.providers.openai.azure import AzureProvider, AzureResponsesProvider
            return AzureResponsesProvider if config.responses_native or config.responses_only else AzureProvider
        case DemoDeployment():
            from relaygate.providers.demo import DemoProvider
            return DemoProvider
        case CohereDeployment():
            from relaygate.providers.cohere.provider import CohereProvider
            return CohereProvider
        case GeminiDeployment():
            from relaygate.providers.gemini.provider import GeminiProvider
            return GeminiProvider
        case VertexDeployment():
            from relaygate.providers.gemini.provider import VertexProvider
            return VertexProvider
        case AnthropicDeployment():
            from relaygate.providers.anthropic.provider import AnthropicProvider
            return AnthropicProvider
        case VertexAnthropicDeployment():
            from relaygate.providers.anthropic.vertex import VertexAnthropicProvider
            return VertexAnthropicProvider
        case BedrockDeployment():
            from relaygate.providers.aws.bedrock import BedrockProvider
            return BedrockProvider
        case BedrockAgentDeployment():
            from relaygate.providers.aws.bedrock_agent import BedrockAgentProvider
            return BedrockAgentProvider
        case _:
            assert_never(config)
