"""Which models an upstream serves: each provider's listing answer read into ``ListedModel``s.

One reader per wire shape (OpenAI-compatible ``GET /v1/models``, Ollama ``GET /api/tags``, Anthropic
``GET /v1/models``, Gemini ``models.list``, Cohere ``GET /v1/models``, Bedrock ``ListFoundationModels``);
the providers fetch, these read. What an answer says beyond the id (windows, modalities) is kept as a hint
for models the bundled catalog does not know.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

MAX_PAGES = 20  # a paged listing is read at most this many pages deep (1,000 models a page where asked)
MAX_MODELS = 5000


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One model an upstream lists; None where its answer does not say."""

    id: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    mode: str | None = None  # chat or embedding
    supports_vision: bool | None = None
    supports_tools: bool | None = None
    supports_json_schema: bool | None = None
    supports_reasoning: bool | None = None
    supports_audio_input: bool | None = None


async def read_pages(get: Callable[[str], Awaitable[dict[str, Any]]], url: str,
                     read: Callable[[dict[str, Any]], list[ListedModel]],
                     after: Callable[[dict[str, Any]], str | None]) -> list[ListedModel]:
    """A paged listing, page after page: ``get`` fetches one, ``read`` reads its models, ``after(page)`` is the
    query (added to ``url``) that asks for the next, None on the last. At most MAX_PAGES pages, MAX_MODELS."""
    found: list[ListedModel] = []
    page = await get(url)
    for _ in range(MAX_PAGES):
        found += read(page)
        more = after(page)
        if more is None or len(found) >= MAX_MODELS:
            break
        page = await get(url + more)
    return found


def token_after(field: str, param: str) -> Callable[[dict[str, Any]], str | None]:
    """``after`` for a listing whose page names the next one by a token (``field``), asked for as ``param``."""
    def after(page: dict[str, Any]) -> str | None:
        token = page.get(field)
        return f"&{param}={quote(token, safe='')}" if isinstance(token, str) and token else None
    return after


def anthropic_after(page: dict[str, Any]) -> str | None:
    """``after`` for Anthropic's listing: the page after the last id, while ``has_more``."""
    last = page.get("last_id")
    return f"&after_id={quote(last, safe='')}" if page.get("has_more") is True and isinstance(last, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _id(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def openai_models(data: dict[str, Any]) -> list[ListedModel]:
    """``{"object": "list", "data": [{"id": ...}]}`` (OpenAI, Groq, Mistral, xAI, vLLM, Ollama's /v1)."""
    return [ListedModel(i) for m in _objects(data.get("data")) if (i := _id(m.get("id")))]


def ollama_tags(data: dict[str, Any]) -> list[ListedModel]:
    """Ollama's ``{"models": [{"name": "llama3.2:latest", "model": ..., "details": {...}}]}``."""
    return [ListedModel(i) for m in _objects(data.get("models")) if (i := _id(m.get("model") or m.get("name")))]


def anthropic_models(data: dict[str, Any]) -> list[ListedModel]:
    """One page of Anthropic's ``{"data": [ModelInfo], "has_more", "last_id"}``."""
    out = []
    for m in _objects(data.get("data")):
        i = _id(m.get("id"))
        if i is None:
            continue
        caps = m.get("capabilities")
        caps = caps if isinstance(caps, dict) else {}
        out.append(ListedModel(i, _int(m.get("max_input_tokens")), _int(m.get("max_tokens")), "chat",
                               _supported(caps, "image_input"), True, _supported(caps, "structured_outputs"),
                               _supported(caps, "thinking")))
    return out


def _supported(caps: dict[str, Any], name: str) -> bool | None:
    """An Anthropic capability's ``{"supported": bool}``, None when the answer does not say."""
    c = caps.get(name)
    return bool(c.get("supported")) if isinstance(c, dict) and "supported" in c else None


def gemini_models(data: dict[str, Any]) -> list[ListedModel]:
    """One page of Gemini's ``{"models": [{"name": "models/...", "inputTokenLimit", "supportedGenerationMethods"}],
    "nextPageToken"}``."""
    out = []
    for m in _objects(data.get("models")):
        name = _id(m.get("name"))
        if name is None:
            continue
        methods = _list(m.get("supportedGenerationMethods"))
        mode = "chat" if "generateContent" in methods else "embedding" if "embedContent" in methods else None
        thinking = m.get("thinking")
        out.append(ListedModel(name.removeprefix("models/"), _int(m.get("inputTokenLimit")),
                               _int(m.get("outputTokenLimit")), mode,
                               supports_reasoning=thinking if isinstance(thinking, bool) else None))
    return out


def cohere_models(data: dict[str, Any]) -> list[ListedModel]:
    """One page of Cohere's ``{"models": [{"name", "endpoints", "context_length", "features"}],
    "next_page_token"}``."""
    out = []
    for m in _objects(data.get("models")):
        name = _id(m.get("name"))
        if name is None:
            continue
        endpoints = _list(m.get("endpoints"))
        features = _list(m.get("features"))
        mode = "chat" if "chat" in endpoints else "embedding" if "embed" in endpoints else None
        out.append(ListedModel(name, _int(m.get("context_length")), None, mode,
                               "vision" in features or None, "tools" in features or "strict_tools" in features,
                               "json_schema" in features or None))
    return out


def bedrock_models(data: dict[str, Any]) -> list[ListedModel]:
    """Bedrock's ``ListFoundationModels``: ``{"modelSummaries": [{"modelId", "inputModalities",
    "outputModalities", "modelLifecycle": {"status"}}]}`` (models no longer active are left out)."""
    out = []
    for m in _objects(data.get("modelSummaries")):
        i = _id(m.get("modelId"))
        life = m.get("modelLifecycle")
        if i is None or (isinstance(life, dict) and life.get("status") not in (None, "ACTIVE")):
            continue
        inputs = _list(m.get("inputModalities"))
        outputs = _list(m.get("outputModalities"))
        mode = "embedding" if "EMBEDDING" in outputs else "chat" if "TEXT" in outputs else None
        out.append(ListedModel(i, mode=mode, supports_vision="IMAGE" in inputs,
                               supports_audio_input="SPEECH" in inputs or "AUDIO" in inputs))
    return out
