"""Request checks of the Gemini emulator: the subset of the real API's validation that a translating client
can get wrong (unknown fields, roles, empty parts, base64, function-call/response pairing and ids, thought
signatures on ``gemini-3`` models, thinking options)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

_REQUEST_FIELDS = {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "generationConfig",
                   "cachedContent", "labels", "model"}
_GENERATION_FIELDS = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
    "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
    "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
    "thinkingConfig", "mediaResolution", "imageConfig",
}
_DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
                "codeExecutionResult")


class ApiError(Exception):
    """An error answered in Google's shape."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


# ---- reading a request --------------------------------------------------------------------------------

def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def normalise(obj: Any) -> Any:
    """Proto JSON accepts snake_case names too; use camelCase throughout (not inside free-form values)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = _camel(k) if isinstance(k, str) else k
            free = key in ("args", "response", "parametersJsonSchema", "responseJsonSchema", "labels",
                           "parameters", "responseSchema")
            out[key] = v if free else normalise(v)
        return out
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    return obj


def _unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    for k in obj:
        if _camel(k) not in known:
            at = f" at '{where}'" if where else ""
            raise ApiError(400, f'Invalid JSON payload received. Unknown name "{k}"{at}: Cannot find field.',
                           [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                             "fieldViolations": [{"field": where, "description": f'Invalid JSON payload received. '
                                                  f'Unknown name "{k}"{at}: Cannot find field.'}]}])


MAX_CANDIDATES = 8  # candidateCount: Gemini generates 1 to 8 candidates per request


def validate(body: dict[str, Any], model: str) -> None:
    """Reject what the real API rejects (the subset a translating client can get wrong); ``body`` is as
    sent (field names in either case), so that errors name fields the way the client spelled them."""
    _unknown(body, _REQUEST_FIELDS, "")
    gc = body.get("generationConfig", body.get("generation_config"))
    if gc is not None:
        if not isinstance(gc, dict):
            raise ApiError(400, "Invalid value at 'generation_config' (type.googleapis.com/google.ai."
                                "generativelanguage.v1beta.GenerationConfig)")
        _unknown(gc, _GENERATION_FIELDS, "generation_config")
    body = normalise(body)
    gc = body.get("generationConfig")
    if gc is not None:
        thinking = gc.get("thinkingConfig") or {}
        if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
            raise ApiError(400, "You cannot set both thinking_level and the legacy thinking_budget parameter.")
        if "thinkingLevel" in thinking and not model.startswith("gemini-3"):
            raise ApiError(400, "Thinking level is not supported for this model.")
        count = gc.get("candidateCount")
        if count is not None and (not isinstance(count, int) or not 1 <= count <= MAX_CANDIDATES):
            raise ApiError(400, f"* GenerateContentRequest.generation_config.candidate_count: must be between 1 "
                                f"and {MAX_CANDIDATES}, got {count}\n")
        temp = gc.get("temperature")
        if temp is not None and (not isinstance(temp, (int, float)) or not 0 <= temp <= 2):
            raise ApiError(400, "Unable to submit request because it has a temperature value of "
                                f"{temp} but the supported range is from 0 (inclusive) to 2.0001 (exclusive).")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified\n")
    signatures = model.startswith("gemini-3")
    pending_calls = 0
    pending_ids: set[str] = set()  # ids of the previous turn's function calls (Gemini 3 returns them)
    for i, c in enumerate(contents):
        if not isinstance(c, dict):
            raise ApiError(400, f"Invalid value at 'contents[{i}]'")
        role = c.get("role", "user")
        if role not in ("user", "model"):
            raise ApiError(400, "Please use a valid role: user, model.")
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            raise ApiError(400, f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
        calls = responses = 0
        ids: set[str] = set()
        for j, p in enumerate(parts):
            where = f"contents[{i}].parts[{j}]"
            if not isinstance(p, dict) or sum(1 for k in _DATA_FIELDS if k in p) != 1:
                raise ApiError(400, f"* GenerateContentRequest.{where}.data: required oneof field 'data' must "
                                    "have one initialized field\n")
            if "inlineData" in p:
                data = p["inlineData"]
                try:
                    base64.b64decode(str(data.get("data", "")), validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(400, f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 "
                                        "decoding failed") from None
                if not data.get("mimeType"):
                    raise ApiError(400, f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                                        "mime_type is required\n")
            if "fileData" in p and not (p["fileData"].get("fileUri") and p["fileData"].get("mimeType")):
                raise ApiError(400, f"* GenerateContentRequest.{where}.file_data: file_uri and mime_type "
                                    "are required\n")
            if "functionCall" in p:
                if role != "model":
                    raise ApiError(400, "Please ensure that function call turn comes immediately after a user "
                                        "turn or after a function response turn.")
                if signatures and calls == 0 and not p.get("thoughtSignature"):
                    raise ApiError(400, f"Function call is missing a thought_signature in functionCall parts. "
                                        f"This is required for tools to work correctly, and missing "
                                        f"thought_signature may lead to degraded model performance. Additional "
                                        f"data, function call `default_api:{p['functionCall'].get('name')}` , "
                                        f"position {i + 1}. Please refer to https://ai.google.dev/gemini-api/"
                                        "docs/thought-signatures for more details.")
                calls += 1
                if p["functionCall"].get("id"):
                    ids.add(str(p["functionCall"]["id"]))
            if "functionResponse" in p:
                if not isinstance(p["functionResponse"].get("response"), dict):
                    raise ApiError(400, f"Invalid value at '{where}.function_response.response' "
                                        "(type.googleapis.com/google.protobuf.Struct)")
                responses += 1
                rid = p["functionResponse"].get("id")  # optional (Google's SDK omits it), but must match
                if rid is not None and rid not in pending_ids:
                    raise ApiError(400, "functionResponse.id does not match functionCall.id of the function "
                                        "call turn.")
        if pending_calls and responses != pending_calls:
            raise ApiError(400, "Please ensure that the number of function response parts is equal to the "
                                "number of function call parts of the function call turn.")
        pending_calls, pending_ids = calls, ids
