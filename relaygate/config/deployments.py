"""Deployments: one model per provider, told apart by ``provider``.

A field lives on the providers that read it, so a Bedrock ``region`` on an OpenAI deployment is a config
error, not a setting silently ignored. The tags of ``DeploymentConfig`` are the one list of provider names.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from relaygate.config.base import Strict


class HealthCheckConfig(Strict):
    """Active health checks: a cheap probe every ``interval`` seconds."""

    enabled: bool = True
    interval: float = Field(30.0, gt=0)
    timeout: float = Field(5.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)  # consecutive failed probes that take a deployment out
    healthy_after: int = Field(1, ge=1)  # consecutive good probes that bring it back


class DeploymentBase(Strict):
    """What every deployment has: its upstream model, timeouts, extra headers and the router's hints."""

    provider: str
    model: str
    name: str | None = None  # unique id; derived from model/provider/index when omitted
    timeout: float = Field(60.0, gt=0)  # total seconds for a call
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float | None = Field(None, gt=0)  # max silence between bytes; default: timeout
    headers: dict[str, str] = Field(default_factory=dict)  # extra upstream headers (config only)
    # routing hints (used by routing strategies)
    weight: float = Field(1.0, ge=0)
    priority: int = 0
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    max_parallel: int | None = Field(None, gt=0)
    tags: list[str] = Field(default_factory=list)
    health_check: HealthCheckConfig | None = None  # overrides the model's

    def secret_values(self) -> list[str]:
        """The secrets this deployment holds (keys, tokens, credential-like extra headers), to be redacted from
        upstream text."""
        values = (getattr(self, name) for name in type(self).model_fields)
        found = [v.get_secret_value() for v in values if isinstance(v, SecretStr) and v.get_secret_value()]
        return found + [v for k, v in self.headers.items() if _CREDENTIAL_HEADER.search(k) and v]


# extra upstream headers whose values are credentials (x-api-key, authorization, x-goog-user-project-token…)
_CREDENTIAL_HEADER = re.compile(r"(?i)auth|key|token|secret|passw|signature|cookie|session")


class Upstream(DeploymentBase):
    """A deployment reached over HTTP; ``api_base`` replaces the provider's default endpoint."""

    api_base: str | None = None

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("not a URL (expected http:// or https://)")
        return v.rstrip("/")


class KeyedUpstream(Upstream):
    api_key: SecretStr | None = None


class OpenAIFields(KeyedUpstream):
    """What the OpenAI adapter reads (``openai`` and ``azure``)."""

    embedding_batch_size: int | None = Field(None, gt=0)  # split longer embedding input arrays
    # voice routing (text-to-speech): the voices this deployment serves (empty: any) and client voice ->
    # upstream voice renames (e.g. alloy -> af_sky on a local Kokoro server that stands in for OpenAI)
    voices: list[str] = Field(default_factory=list)
    voice_map: dict[str, str] = Field(default_factory=dict)
    # read an audio upload whole (spooled to disk past 1 MiB) and send it with a Content-Length, for upstreams
    # that refuse chunked request bodies; by default it streams up while it arrives
    buffer_uploads: bool = False
    # transcriptions: forward ``language=auto`` as it is, for an upstream that reads it (whisper.cpp's server, whose
    # own default language applies otherwise); by default it is left out, which OpenAI's API reads as "detect"
    keep_language_auto: bool = False
    # the upstream serves OpenAI's Responses API itself (OpenAI, Azure OpenAI's v1 API, a compatible server with
    # /v1/responses): /v1/responses calls routed here are forwarded as they are, built-in tools included,
    # instead of being translated to chat (docs/responses.md)
    responses_native: bool = False
    # the upstream serves only the Responses API (OpenAI's o1-pro, o3-pro, codex models; a server without
    # /chat/completions): chat calls, whatever dialect the client spoke, are translated to it (implies
    # responses_native)
    responses_only: bool = False

    @field_validator("voices")
    @classmethod
    def _voices(cls, v: list[str]) -> list[str]:
        if any(not x for x in v):
            raise ValueError("voice names must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("voices are listed twice")
        return v

    @field_validator("voice_map")
    @classmethod
    def _voice_map(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not k or not x for k, x in v.items()):
            raise ValueError("voice names must not be empty")
        return v


class OpenAIDeployment(OpenAIFields):
    """OpenAI, or any server that speaks its REST API."""

    provider: Literal["openai"] = "openai"
    # model discovery (catalog/discovery.py): which listing the upstream answers: OpenAI's GET /v1/models, or
    # Ollama's GET /api/tags (an Ollama server's api_base is http://host:11434/v1)
    models_api: Literal["openai", "ollama"] = "openai"


class AzureDeployment(OpenAIFields):
    """Azure OpenAI: ``model`` is the Azure deployment name."""

    provider: Literal["azure"] = "azure"
    api_base: str  # https://<resource>.openai.azure.com (no default endpoint)
    api_version: str | None = None  # the api-version query parameter


class DemoDeployment(DeploymentBase):
    """The built-in demo model, answered in-process."""

    provider: Literal["demo"] = "demo"


class AnthropicFields(KeyedUpstream):
    """What the Anthropic adapter reads (``anthropic`` and ``vertex_anthropic``)."""

    api_version: str | None = None  # the anthropic-version
    max_tokens: int | None = Field(None, gt=0)  # output limit sent when the client sets none (Anthropic needs one)


class GoogleCloudFields(Strict):
    """Where on Google Cloud, and how to get access tokens (``vertex`` and ``vertex_anthropic``)."""

    project: str
    location: str | None = None
    credentials_file: str | None = None  # a Google credentials JSON (service account…); needs google-auth


class AnthropicDeployment(AnthropicFields):
    provider: Literal["anthropic"] = "anthropic"


class VertexAnthropicDeployment(AnthropicFields, GoogleCloudFields):
    """Claude on Vertex AI; ``api_key`` is an OAuth access token."""

    provider: Literal["vertex_anthropic"] = "vertex_anthropic"


class GeminiFields(KeyedUpstream):
    """What the Gemini adapter reads (``gemini`` and ``vertex``)."""

    api_version: str | None = None  # the URL's version segment (v1beta on AI Studio, v1 on Vertex AI)
    embedding_batch_size: int | None = Field(None, gt=0)
    input_type: str | None = None  # embeddings: Gemini's task type (or Cohere's search_query/search_document)


class GeminiDeployment(GeminiFields):
    """Gemini on Google AI Studio."""

    provider: Literal["gemini"] = "gemini"


class VertexDeployment(GeminiFields, GoogleCloudFields):
    """Gemini on Vertex AI; ``api_key`` is an OAuth access token."""

    provider: Literal["vertex"] = "vertex"


class AwsFields(Upstream):
    """Where on AWS and with which keys (default: the standard AWS environment and credential chain)."""

    region: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None


class BedrockDeployment(AwsFields, KeyedUpstream):
    """Bedrock Runtime (Converse); ``api_key`` is a Bedrock API key, used instead of SigV4."""

    provider: Literal["bedrock"] = "bedrock"
    guardrail_id: str | None = None  # a guardrail applied to every Converse call (id or ARN)
    guardrail_version: str | None = None  # that guardrail's version (a number or DRAFT)


class BedrockAgentDeployment(AwsFields):
    """A Bedrock Agent as a chat model (Agent Runtime signs with AWS credentials only)."""

    provider: Literal["bedrock_agent"] = "bedrock_agent"
    agent_id: str
    agent_alias_id: str


class CohereDeployment(KeyedUpstream):
    """Cohere's API v2."""

    provider: Literal["cohere"] = "cohere"
    embedding_batch_size: int | None = Field(None, gt=0)
    input_type: str | None = None  # embeddings: Cohere's input_type (default search_document)
    buffer_uploads: bool = False  # as for openai


DeploymentConfig = Annotated[
    OpenAIDeployment | AzureDeployment | DemoDeployment | AnthropicDeployment | VertexAnthropicDeployment
    | GeminiDeployment | VertexDeployment | BedrockDeployment | BedrockAgentDeployment | CohereDeployment,
    Field(discriminator="provider"),
]
"""One upstream that can serve a model: the class its ``provider`` names."""


def _tag(cls: type[DeploymentBase]) -> str:
    (tag,) = get_args(cls.model_fields["provider"].annotation)
    return str(tag)


# provider name -> its deployment class, in the union's order (the order error messages list them in)
DEPLOYMENT_TYPES: dict[str, type[DeploymentBase]] = {_tag(c): c for c in get_args(get_args(DeploymentConfig)[0])}
PROVIDER_TYPES: tuple[str, ...] = tuple(DEPLOYMENT_TYPES)


def providers_taking(field: str) -> list[str]:
    """The providers whose deployments have ``field``."""
    return [p for p, cls in DEPLOYMENT_TYPES.items() if field in cls.model_fields]

