"""What the Bedrock emulator's ``ListFoundationModels`` (``GET /foundation-models``) answers: a few foundation
models in the control plane's ``FoundationModelSummary`` shape (botocore's ``bedrock`` service model)."""

from __future__ import annotations

from typing import Any

# model id -> (provider name, input modalities, output modalities, lifecycle status)
FOUNDATION_MODELS: dict[str, tuple[str, list[str], list[str], str]] = {
    "anthropic.claude-3-haiku-20240307-v1:0": ("Anthropic", ["TEXT", "IMAGE"], ["TEXT"], "ACTIVE"),
    "anthropic.claude-sonnet-4-5-20250929-v1:0": ("Anthropic", ["TEXT", "IMAGE"], ["TEXT"], "ACTIVE"),
    "amazon.nova-pro-v1:0": ("Amazon", ["TEXT", "IMAGE", "VIDEO"], ["TEXT"], "ACTIVE"),
    "amazon.nova-micro-v1:0": ("Amazon", ["TEXT"], ["TEXT"], "ACTIVE"),
    "amazon.titan-embed-text-v2:0": ("Amazon", ["TEXT"], ["EMBEDDING"], "ACTIVE"),
    "amazon.titan-text-express-v1": ("Amazon", ["TEXT"], ["TEXT"], "LEGACY"),
    "meta.llama3-3-70b-instruct-v1:0": ("Meta", ["TEXT"], ["TEXT"], "ACTIVE"),
}


def model_summaries(region: str, provider: str | None) -> dict[str, Any]:
    """``{"modelSummaries": [...]}``, only ``provider``'s when ``byProvider`` asks (case-insensitive)."""
    out = []
    for model_id, (name, inputs, outputs, status) in FOUNDATION_MODELS.items():
        if provider and provider.lower() != name.lower():
            continue
        out.append({"modelArn": f"arn:aws:bedrock:{region}::foundation-model/{model_id}", "modelId": model_id,
                    "modelName": model_id.split(".", 1)[1].split("-v")[0], "providerName": name,
                    "inputModalities": inputs, "outputModalities": outputs, "responseStreamingSupported": True,
                    "customizationsSupported": [], "inferenceTypesSupported": ["ON_DEMAND"],
                    "modelLifecycle": {"status": status}})
    return {"modelSummaries": out}
