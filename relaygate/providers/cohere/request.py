"""OpenAI requests as Cohere's v2 ones: a chat request as a ``/v2/chat`` body (with the headers naming what
was left out or moved into Cohere's ranges), an embeddings input as ``/v2/embed``'s texts."""

from __future__ import annotations

from typing import Any

from relaygate.core.errors import BadRequest, Unsupported
from relaygate.providers.openai_format import ADJUSTED_HEADER, DROPPED_HEADER, Image, content_parts, text_of

# reasoning_effort -> Cohere's thinking: none disables it and high leaves it unbounded, as Cohere's own
# OpenAI-compatible API does; minimal/low/medium (which that API refuses) get budgets instead of an error
THINKING = {"none": {"type": "disabled"}, "minimal": {"type": "disabled"},
            "low": {"type": "enabled", "token_budget": 1024}, "medium": {"type": "enabled", "token_budget": 8192},
            "high": {"type": "enabled"}}
# OpenAI options Cohere has no counterpart for: not forwarded, named in the x-relaygate-dropped-params header
NO_COUNTERPART = ("logit_bias", "top_logprobs", "prediction", "modalities", "audio", "verbosity",
                  "web_search_options", "service_tier")
# Cohere's own chat options, forwarded as they are when a client sends them (extra_body with the openai SDK)
NATIVE = ("k", "safety_mode", "priority", "documents", "citation_options", "thinking")
# OpenAI options with the same meaning under another name (or the same) in Cohere's v2 chat
RENAMED = {"seed": "seed", "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens"}
# sampling options whose range is narrower at Cohere: (Cohere name, low, high); values outside are moved to
# the nearest bound and named in x-relaygate-adjusted-params (top_p=1, OpenAI's default, becomes p=0.99)
RANGED = {"temperature": ("temperature", 0.0, 1.0), "top_p": ("p", 0.01, 0.99),
          "frequency_penalty": ("frequency_penalty", 0.0, 1.0), "presence_penalty": ("presence_penalty", 0.0, 1.0)}


def chat_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Cohere's ``/v2/chat`` body for an OpenAI chat request, and response headers naming the parameters
    left out or moved into Cohere's ranges (BadRequest for what Cohere cannot do at all)."""
    n = body.get("n")
    if n not in (None, 1):
        raise Unsupported("Cohere returns one choice per request; 'n' must be 1", param="n")
    if body.get("logprobs"):
        raise Unsupported("logprobs are not available through Cohere on this gateway", param="logprobs")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise Unsupported(f"the legacy '{legacy}' parameter is not translated for Cohere; use 'tools' and "
                              "'tool_choice'", param=legacy)
    documents: list[dict[str, Any]] = []  # text file parts, which Cohere reads as request-level documents
    out: dict[str, Any] = {"model": model,
                           "messages": [_message(m, i, documents) for i, m in enumerate(body["messages"])]}
    if stream:
        out["stream"] = True
    adjusted = []
    for src, dst in RENAMED.items():
        if body.get(src) is not None:
            out[dst] = body[src]
    for src, (dst, low, high) in RANGED.items():
        value = body.get(src)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"'{src}' must be a number", param=src, code="invalid_type")
        out[dst] = min(high, max(low, value))
        if out[dst] != value:
            adjusted.append(src)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("'stop' must be a string or an array of strings", param="stop")
        if stops:
            out["stop_sequences"] = stops
    for name in NATIVE:
        if body.get(name) is not None:
            out[name] = body[name]
    if documents:
        given = out.get("documents")
        out["documents"] = (given if isinstance(given, list) else []) + documents
    effort = body.get("reasoning_effort")
    if effort is not None and "thinking" not in out:
        if effort not in THINKING:
            raise BadRequest(f"reasoning_effort must be one of {', '.join(THINKING)}", param="reasoning_effort")
        out["thinking"] = THINKING[effort]
    rf = _response_format(body.get("response_format"))
    if rf is not None:
        out["response_format"] = rf
    tools, strict = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if tools:
        out["tools"] = tools
        if strict:
            out["strict_tools"] = True
        if choice == "required":
            out["tool_choice"] = "REQUIRED"
        elif choice == "none":
            out["tool_choice"] = "NONE"
        elif isinstance(choice, dict):
            # Cohere cannot name one tool: offer only that one and require a call
            wanted = (choice.get("function") or {}).get("name")
            chosen = [t for t in tools if t["function"]["name"] == wanted]
            if not chosen:
                raise BadRequest(f"tool_choice names {wanted!r}, which is not in 'tools'", param="tool_choice")
            out["tools"], out["tool_choice"] = chosen, "REQUIRED"
        elif choice not in (None, "auto"):
            raise BadRequest("tool_choice must be 'auto', 'none', 'required' or a function", param="tool_choice")
    dropped = [name for name in NO_COUNTERPART if body.get(name) is not None]
    if body.get("parallel_tool_calls") is False and tools:  # Cohere may always call tools in parallel
        dropped.append("parallel_tool_calls")
    notes = {DROPPED_HEADER: ",".join(dropped), ADJUSTED_HEADER: ",".join(adjusted)}
    return out, {k: v for k, v in notes.items() if v}


def _message(m: dict[str, Any], i: int, documents: list[dict[str, Any]]) -> dict[str, Any]:
    role = m.get("role")
    param = f"messages[{i}]"
    content = m.get("content")
    if role in ("system", "developer"):
        return {"role": "system", "content": _text(content, param)}
    if role == "user":
        return {"role": "user", "content": _user_content(content, param, documents)}
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant"}
        text = _text(content, param) if content is not None else ""
        calls = m.get("tool_calls")
        if calls:
            out["tool_calls"] = [_tool_call(tc, f"{param}.tool_calls[{j}]") for j, tc in enumerate(calls)]
            if text:
                out["tool_plan"] = text
        else:
            out["content"] = text
        return out
    if role == "tool":
        tool_call_id = m.get("tool_call_id")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            raise BadRequest(f"{param}.tool_call_id is required for tool messages", param=f"{param}.tool_call_id")
        return {"role": "tool", "tool_call_id": tool_call_id, "content": _text(content, param)}
    raise BadRequest(f"{param}.role {role!r} is not supported by Cohere (use system, user, assistant or tool)",
                     param=f"{param}.role")


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        if any(isinstance(p, dict) and p.get("type") != "text" for p in content):
            raise BadRequest(f"{param}.content may only contain text parts for this role", param=f"{param}.content")
        return text_of(content)
    if content is None:
        return ""
    raise BadRequest(f"{param}.content must be a string or an array of content parts", param=f"{param}.content")


def _user_content(content: Any, param: str, documents: list[dict[str, Any]]) -> Any:
    """Text stays a string; parts become Cohere's text and image_url blocks (data: URIs and web URLs), and
    text ``file`` parts become ``documents`` (Cohere has no file blocks in messages)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{param}.content must be a string or an array of content parts", param=f"{param}.content")
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(p.get("text", ""))})
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise BadRequest(f"{where}.image_url.url must be an http(s) URL or a data: URI", param=where)
            image: dict[str, Any] = {"url": url}
            if isinstance(iu, dict) and iu.get("detail") in ("auto", "low", "high"):
                image["detail"] = iu["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "file":
            documents.append(_document(p, where, len(documents)))
        else:
            raise BadRequest(f"content part type {kind!r} is not supported by Cohere", param=f"{where}.type")
    return parts or ""


def _document(part: dict[str, Any], param: str, n: int) -> dict[str, Any]:
    """A text ``file`` part as a Cohere document (PDFs and other binary files are refused)."""
    media = content_parts([part], param, media=True)[0]
    kind = media.media_type if isinstance(media, Image) else None
    if kind is None or not (kind.startswith("text/") or kind in ("application/json", "application/xml")):
        raise Unsupported(f"Cohere reads text documents only, not {kind or 'this file'}", param=f"{param}.file")
    assert isinstance(media, Image)
    try:
        text = (media.data or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("a text file part must be UTF-8", param=f"{param}.file") from None
    name = part["file"].get("filename")
    title = name if isinstance(name, str) and name else f"document {n + 1}"
    return {"id": f"doc_{n}", "data": {"title": title, "snippet": text}}


def _tool_call(tc: Any, param: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
        raise BadRequest(f"{param} must have an id and a function with a name", param=param)
    args = fn.get("arguments")
    return {"id": tc["id"], "type": "function",
            "function": {"name": fn["name"], "arguments": args if isinstance(args, str) and args else "{}"}}


def _tools(tools: Any) -> tuple[list[dict[str, Any]], bool]:
    if not tools:
        return [], False
    out = []
    strict = False
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Unsupported("Cohere only offers function tools with a name", param=f"tools[{i}]")
        spec: dict[str, Any] = {"name": fn["name"],
                                "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        strict = strict or bool(fn.get("strict"))
        out.append({"type": "function", "function": spec})
    return out, strict


def _response_format(rf: Any) -> dict[str, Any] | None:
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"json_schema": schema} if isinstance(schema, dict) else {})}
    raise BadRequest("response_format.type must be 'text', 'json_object' or 'json_schema'",
                     param="response_format")


def embedding_inputs(value: Any) -> list[str]:
    """OpenAI's ``input`` as a list of texts (Cohere embeds text, not token ids)."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise BadRequest("'input' must be a non-empty string or array of strings", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise Unsupported("Cohere embeds text only; token-id inputs are not supported", param="input")
    for i, t in enumerate(texts):
        if not t:
            raise BadRequest(f"input[{i}] must not be empty", param="input")
    return texts
