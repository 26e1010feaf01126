"""Azure OpenAI: deployment URLs, an ``api-version`` query and the ``api-key`` header."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from relaygate.config import AzureDeployment
from relaygate.core.call import Call, Reply, Route
from relaygate.providers.base import Provider, model_segment
from relaygate.providers.listing import ListedModel
from relaygate.providers.openai.provider import OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


class AzureProvider(OpenAIProvider):
    """``{api_base}/openai/deployments/{deployment}/{path}?api-version=…``; the deployment is ``model``."""

    config: AzureDeployment
    # not passthrough: Azure's URLs are per deployment and versioned, not OpenAI's paths
    routes: ClassVar[frozenset[Route]] = OpenAIProvider.routes - {Route.PASSTHROUGH}

    lists_models = False

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """Azure lists its deployments through its management API, not read here."""
        return await Provider.list_models(self, deadline)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_version = self.config.api_version or DEFAULT_API_VERSION
        self.output_cap_field = "max_completion_tokens"  # Azure OpenAI's reasoning models refuse max_tokens
        self._headers = {"content-type": "application/json", **self.config.headers}
        if self.config.api_key is not None:
            self._headers["api-key"] = self.config.api_key.get_secret_value()

    def probe_url(self) -> str:
        return f"{self.base}/openai/models?api-version={quote(self.api_version)}"

    def url(self, path: str, model: str) -> str:
        return f"{self.base}/openai/deployments/{model_segment(model)}{path}?api-version={quote(self.api_version)}"

    def responses_url(self, model: str) -> str:
        """Azure's v1 API, whose Responses route takes the deployment as ``model`` in the body, unversioned."""
        return f"{self.base}/openai/v1/responses"


class AzureResponsesProvider(AzureProvider):
    """An Azure OpenAI resource whose v1 API serves the Responses API (``responses_native``)."""

    routes: ClassVar[frozenset[Route]] = AzureProvider.routes | {Route.RESPONSES}

    async def chat(self, call: Call) -> Reply:
        return await self.chat_natively(call)
