"""Typed configuration: one YAML file, ``${ENV_VAR}`` interpolation, every error named by its path.

``schema`` holds the top level, ``deployments`` one model per provider, ``loader`` the reading and the errors.
"""

from relaygate.config.base import ConfigError, Strict
from relaygate.config.deployments import (
    DEPLOYMENT_TYPES,
    PROVIDER_TYPES,
    AnthropicDeployment,
    AnthropicFields,
    AwsFields,
    AzureDeployment,
    BedrockAgentDeployment,
    BedrockDeployment,
    CohereDeployment,
    DemoDeployment,
    DeploymentBase,
    DeploymentConfig,
    GeminiDeployment,
    GeminiFields,
    GoogleCloudFields,
    HealthCheckConfig,
    OpenAIDeployment,
    OpenAIFields,
    VertexAnthropicDeployment,
    VertexDeployment,
    providers_taking,
)
from relaygate.config.loader import default_config, interpolate, load_config, load_yaml, parse_config
from relaygate.config.schema import (
    DEMO_MODEL,
    FALLBACK_KINDS,
    PASSTHROUGH_ROUTES,
    RETRYABLE_KINDS,
    AuthConfig,
    BreakerConfig,
    CacheConfig,
    CondenseConfig,
    Config,
    DatabaseConfig,
    DiscoveryConfig,
    FallbackConfig,
    KeyConfig,
    MemoryCacheConfig,
    ModelCacheConfig,
    ModelConfig,
    PassthroughConfig,
    PriceConfig,
    RedisCacheConfig,
    RequestLogConfig,
    RetryConfig,
    SelectConfig,
    SemanticCacheConfig,
    ServerConfig,
    StateConfig,
    StrategyName,
    deployment_name,
)

__all__ = [
    "DEMO_MODEL", "DEPLOYMENT_TYPES", "FALLBACK_KINDS", "PASSTHROUGH_ROUTES", "PROVIDER_TYPES", "RETRYABLE_KINDS",
    "AnthropicDeployment", "AnthropicFields", "AuthConfig", "AwsFields", "AzureDeployment", "BedrockAgentDeployment",
    "BedrockDeployment", "BreakerConfig", "CacheConfig", "CondenseConfig", "CohereDeployment", "Config", "ConfigError", "DatabaseConfig", "DiscoveryConfig",
    "DemoDeployment", "DeploymentBase", "DeploymentConfig", "FallbackConfig", "GeminiDeployment", "GeminiFields",
    "GoogleCloudFields", "HealthCheckConfig", "KeyConfig", "MemoryCacheConfig", "ModelCacheConfig", "ModelConfig", "OpenAIDeployment", "OpenAIFields",
    "PassthroughConfig", "PriceConfig", "RedisCacheConfig", "RequestLogConfig", "RetryConfig", "SelectConfig", "SemanticCacheConfig", "ServerConfig", "StateConfig", "Strict",
    "StrategyName", "VertexAnthropicDeployment", "VertexDeployment", "default_config", "deployment_name",
    "interpolate", "load_config", "load_yaml", "parse_config", "providers_taking",
]
