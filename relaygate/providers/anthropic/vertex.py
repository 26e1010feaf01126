"""Claude on Google Vertex AI: the Messages API at ``…/publishers/anthropic/models/{model}:rawPredict``
(``:streamRawPredict`` for streams), the version in the body as ``anthropic_version``, a Google access token
as the key. Everything else (translation, streams, errors, native /v1/messages) is the anthropic provider's.
"""

from __future__ import annotations

from typing import Any

from relaygate.config import VertexAnthropicDeployment
from relaygate.providers.anthropic.provider import AnthropicProvider
from relaygate.providers.anthropic.wire import VERSION_2026, VERTEX_VERSION
from relaygate.providers.base import Provider, model_segment
from relaygate.providers.gemini.auth import GoogleAuth
from relaygate.providers.listing import ListedModel


class VertexAnthropicProvider(GoogleAuth, AnthropicProvider):
    """``provider: vertex_anthropic`` with ``project`` and ``location`` (default ``global``)."""

    config: VertexAnthropicDeployment
    versions = (VERTEX_VERSION, VERSION_2026)
    default_version = VERTEX_VERSION

    def messages_url(self) -> str:
        return self.publisher_url("anthropic", "global", "v1") + "/models"

    def static_headers(self) -> dict[str, str]:
        return {**self.config.headers, "content-type": "application/json", **self.google_auth(self.kind)}

    def endpoint(self, model: str, *, count: bool, stream: bool) -> str:
        if count:
            return self.url + "/count-tokens:rawPredict"
        return f"{self.url}/{model_segment(model, safe='@')}:{'streamRawPredict' if stream else 'rawPredict'}"

    def outgoing(self, body: dict[str, Any], *, count: bool) -> dict[str, Any]:
        # the model is in the URL (count_tokens keeps it in the body, as the anthropic SDK sends it)
        out = body if count else {k: v for k, v in body.items() if k != "model"}
        return {**out, "anthropic_version": self.version}

    lists_models = False

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """Vertex AI lists publisher models through another API (Model Garden), not read here."""
        return await Provider.list_models(self, deadline)

    async def auth_headers(self) -> dict[str, str]:
        return await self.with_token(self._headers)
