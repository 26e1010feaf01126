"""OpenAI Responses request -> OpenAI chat request, and chat replies (whole or streamed) -> a Response object or
the Responses API's event sequence. Pure translation; ``api/responses/endpoints.py`` runs it on the pipeline."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson

from relaygate.api.chunks import stream_error_message
from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest, GatewayError, Unsupported
from relaygate.providers.streaming import sse

# tools that run at OpenAI, not in the model: served only by an upstream that runs them
BUILT_IN_TOOLS = ("web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use_preview",
                  "image_generation", "mcp", "local_shell", "shell", "apply_patch", "custom")
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def item_id(prefix: str) -> str:
    return prefix + os.urandom(20).hex()


def _text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"'{where}' must be a string", param=where, code="invalid_type")
    return value


# ---- input items ---------------------------------------------------------------------------------------

def input_items(value: Any, where: str = "input", keep_unknown: bool = False) -> list[dict[str, Any]]:
    """The ``input`` of a request (a string or a list of items) as items in their full form, each with an
    id: what ``input_items`` lists and what later turns replay. With ``keep_unknown`` an item chat cannot
    carry (for a deployment serving the Responses API natively) is kept as the client sent it."""
    if isinstance(value, str):
        return [{"type": "message", "id": item_id("msg_"), "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise BadRequest(f"'{where}' must be a string or an array of input items", param=where, code="invalid_type")
    out = []
    for i, it in enumerate(value):
        try:
            out.append(_item(it, f"{where}[{i}]"))
        except Unsupported:
            if not keep_unknown or not isinstance(it, dict):
                raise
            out.append(dict(it))
    return out


def _item(it: Any, where: str) -> dict[str, Any]:
    if not isinstance(it, dict):
        raise BadRequest(f"{where} must be an object", param=where, code="invalid_type")
    kind = it.get("type", "message" if "role" in it else None)
    if kind == "message":
        role = it.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"{where}.role must be one of user, assistant, system, developer", param=f"{where}.role",
                             code="invalid_value")
        content = it.get("content")
        if isinstance(content, str):
            part = "output_text" if role == "assistant" else "input_text"
            content = [{"type": part, "text": content, **({"annotations": []} if role == "assistant" else {})}]
        elif not isinstance(content, list):
            raise BadRequest(f"{where}.content must be a string or an array of content parts",
                             param=f"{where}.content", code="invalid_type")
        for j, p in enumerate(content):
            _check_part(p, f"{where}.content[{j}]")
        return {"type": "message", "id": it.get("id") if isinstance(it.get("id"), str) else item_id("msg_"),
                "role": role, "status": "completed", "content": content}
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            _text_of(it.get(name), f"{where}.{name}")
        return {"type": "function_call", "id": it.get("id") if isinstance(it.get("id"), str) else item_id("fc_"),
                "call_id": it["call_id"], "name": it["name"], "arguments": it["arguments"], "status": "completed"}
    if kind == "function_call_output":
        _text_of(it.get("call_id"), f"{where}.call_id")
        output = it.get("output")
        if not isinstance(output, (str, list)):
            raise BadRequest(f"{where}.output must be a string or an array of content parts",
                             param=f"{where}.output", code="invalid_type")
        return {"type": "function_call_output", "id": it.get("id") if isinstance(it.get("id"), str)
                else item_id("fco_"), "call_id": it["call_id"], "output": output, "status": "completed"}
    if kind == "reasoning":
        return {**it, "id": it.get("id") if isinstance(it.get("id"), str) else item_id("rs_")}
    if kind == "item_reference":
        raise Unsupported(f"{where}: item references are not supported here; send the item itself",
                          param=f"{where}.type")
    raise Unsupported(f"{where}.type {kind!r} is not supported here (messages, function_call, "
                      "function_call_output and reasoning items are)", param=f"{where}.type")


PART_TYPES = ("input_text", "output_text", "text", "refusal", "input_image", "input_file", "input_audio",
              "summary_text", "reasoning_text")


def _check_part(p: Any, where: str) -> None:
    if not isinstance(p, dict) or p.get("type") not in PART_TYPES:
        kind = p.get("type") if isinstance(p, dict) else None
        raise BadRequest(f"{where}.type {kind!r} is not a content part type ({', '.join(PART_TYPES)})",
                         param=f"{where}.type", code="invalid_value")


def _chat_part(p: dict[str, Any], n: int, j: int) -> dict[str, Any]:
    kind = p["type"]  # (the part is named, input[n].content[j], only where it is refused)
    if kind == "input_image":
        url = p.get("image_url")
        if not isinstance(url, str):
            where = f"input[{n}].content[{j}]"
            raise Unsupported(f"{where}: images are taken as image_url (a URL or a data: URL), not file_id",
                              param=f"{where}.image_url")
        image: dict[str, Any] = {"url": url}
        if isinstance(p.get("detail"), str):
            image["detail"] = p["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = p.get("file_data")
        if not isinstance(data, str):
            where = f"input[{n}].content[{j}]"
            raise Unsupported(f"{where}: files are taken as file_data, not file_id or file_url",
                              param=f"{where}.file_data")
        file = {"file_data": data}
        if isinstance(p.get("filename"), str):
            file["filename"] = p["filename"]
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": p.get("input_audio") or {}}
    text = p.get("refusal") if kind == "refusal" else p.get("text")
    return {"type": "text", "text": text if isinstance(text, str) else ""}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items (already checked by ``input_items`` or produced by the gateway) as chat messages."""
    out: list[dict[str, Any]] = []
    for n, it in enumerate(items):
        kind = it.get("type")  # (items only a native deployment took are left out)
        if kind == "message":
            role = ROLES[it["role"]]
            parts = [_chat_part(p, n, j) for j, p in enumerate(it["content"])]
            texts = [p["text"] for p in parts if p["type"] == "text"]
            if role == "user" and len(texts) < len(parts):
                out.append({"role": role, "content": parts})
            else:
                out.append({"role": role, "content": "".join(texts)})
        elif kind == "function_call":
            call = {"id": it["call_id"], "type": "function",
                    "function": {"name": it["name"], "arguments": it["arguments"]}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = it["output"]
            if isinstance(output, list):
                output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
            out.append({"role": "tool", "tool_call_id": it["call_id"], "content": output})
        # reasoning items: the chat format has no way to send them back
    return out


# ---- the request -----------------------------------------------------------------------------------------

def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools", code="invalid_type")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise BadRequest(f"tools[{i}] must be an object", param=f"tools[{i}]", code="invalid_type")
        kind = t.get("type")
        if kind != "function":
            if not isinstance(kind, str) or not kind:
                raise BadRequest(f"tools[{i}].type must be a tool type", param=f"tools[{i}].type",
                                 code="invalid_value")
            # a built-in tool (or one newer than this list): only an upstream serving the API natively runs it
            what = "the built-in tool" if kind in BUILT_IN_TOOLS else "the tool type"
            raise Unsupported(f"{what} {kind!r} (tools[{i}]) cannot run here: it runs at OpenAI, and no "
                              "deployment of this model serves the Responses API natively (responses_native); "
                              "only function tools are translated for other models", param=f"tools[{i}].type",
                              code="unsupported_tool")
        name = _text_of(t.get("name"), f"tools[{i}].name")
        fn: dict[str, Any] = {"name": name, "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        if isinstance(t.get("strict"), bool):
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str) and choice["type"] != "function":
        raise Unsupported(f"tool_choice {choice['type']!r} cannot be served here (a built-in tool, or a choice "
                          "among tools, which only a deployment serving the Responses API natively takes)",
                          param="tool_choice", code="unsupported_tool")
    raise BadRequest("'tool_choice' must be auto, none, required or {\"type\": \"function\", \"name\": …}",
                     param="tool_choice", code="invalid_value")


def _text_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise BadRequest("'text' must be an object", param="text", code="invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("'text.format.schema' must be an object", param="text.format.schema",
                             code="invalid_type")
        spec: dict[str, Any] = {"name": fmt.get("name") if isinstance(fmt.get("name"), str) else "output",
                                "schema": schema}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        if isinstance(fmt.get("description"), str):
            spec["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest("'text.format.type' must be text, json_object or json_schema", param="text.format.type",
                     code="invalid_value")


def chat_request(body: dict[str, Any], context: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request for a Responses request whose whole conversation (earlier turns and this input, as
    items) is ``context``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide the 'model' parameter", param="model", code="missing_required_parameter")
    messages = chat_messages(context)
    instructions = body.get("instructions")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": _text_of(instructions, "instructions")})
    if not messages:
        raise BadRequest("'input' must contain at least one item", param="input", code="invalid_value")
    req: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("tools"):
        req["tools"] = _tools(body["tools"])
        if body.get("tool_choice") is not None:
            req["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        fmt = _text_format(body["text"])
        if fmt is not None:
            req["response_format"] = fmt
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequest("'max_output_tokens' must be a positive integer", param="max_output_tokens",
                             code="invalid_value")
        req["max_completion_tokens"] = limit
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest(f"'{name}' must be a number", param=name, code="invalid_type")
            req[name] = value
    if isinstance(body.get("parallel_tool_calls"), bool) and "tools" in req:
        req["parallel_tool_calls"] = body["parallel_tool_calls"]
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        if isinstance(body.get(name), str):
            req["user" if name == "safety_identifier" else name] = body[name]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        if reasoning["effort"] not in EFFORTS:
            raise BadRequest(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}", param="reasoning.effort",
                             code="invalid_value")
        req["reasoning_effort"] = reasoning["effort"]
    if isinstance(body.get("provider"), str):
        req["provider"] = body["provider"]
    if body.get("stream"):
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req


# ---- the response ----------------------------------------------------------------------------------------

def response_shell(rid: str, created_at: int, body: dict[str, Any], previous: str | None,
                   conversation: str | None) -> dict[str, Any]:
    """The Response object for ``body`` before any output (status ``in_progress``)."""
    fmt: dict[str, Any] = body["text"] if isinstance(body.get("text"), dict) else {}
    reasoning: dict[str, Any] = body["reasoning"] if isinstance(body.get("reasoning"), dict) else {}
    out = {
        "id": rid, "object": "response", "created_at": created_at, "status": "in_progress", "background": False,
        "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": body.get("model"), "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": previous,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True) is not False, "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"), "usage": None,
        "user": body.get("user"), "metadata": body.get("metadata") or {},
    }
    if conversation is not None:
        out["conversation"] = {"id": conversation}
    return out


def usage_of(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens,
                                                                      "cache_write_tokens": u.cache_write_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens}


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def finish(response: dict[str, Any], finish_reason: str | None, usage: Usage | None) -> dict[str, Any]:
    """``response`` with its final status (completed, or incomplete and why) and usage."""
    reason = INCOMPLETE.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["usage"] = usage_of(usage)
    return response


def message_item(text: str, refusal: bool = False) -> dict[str, Any]:
    part = ({"type": "refusal", "refusal": text} if refusal
            else {"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    return {"type": "message", "id": item_id("msg_"), "status": "completed", "role": "assistant", "content": [part]}


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole chat message as output items: reasoning summary, text (or refusal), function calls."""
    out: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.append({"type": "reasoning", "id": item_id("rs_"), "summary": [{"type": "summary_text",
                                                                           "text": reasoning}]})
    if isinstance(message.get("content"), str) and message["content"]:
        out.append(message_item(message["content"]))
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        out.append(message_item(message["refusal"], refusal=True))
    seen: set[str] = set()
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        call_id = tc.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in seen:
            call_id = item_id("call_")
        seen.add(call_id)
        out.append({"type": "function_call", "id": item_id("fc_"), "call_id": call_id,
                    "name": fn.get("name") or "", "status": "completed",
                    "arguments": args if isinstance(args, str) else orjson.dumps(args or {}).decode()})
    return out


def failed(response: dict[str, Any], err: GatewayError) -> dict[str, Any]:
    """``response`` failed: its ``error.code`` is one of the codes OpenAI documents for a response."""
    code = "rate_limit_exceeded" if err.status == 429 else "invalid_prompt" if err.status == 400 else "server_error"
    response["status"] = "failed"
    response["error"] = {"code": code, "message": err.message}
    return response


class ResponseEvents:
    """OpenAI chat chunks in, the Responses API's events out (each with its ``sequence_number``); output items
    are opened and closed in order. ``on_end(response)`` gets the final Response (completed, incomplete or
    failed) once."""

    def __init__(self, response: dict[str, Any], on_end: Callable[[dict[str, Any]], None]) -> None:
        self.response = response
        self.on_end = on_end
        self.seq = 0
        self.started = False
        self.ended = False
        self.output: list[dict[str, Any]] = response["output"]
        self.open: int | None = None  # the output index of the open message or reasoning item
        self.tools: dict[int, int] = {}  # chat tool_calls index -> output index
        self.open_tools: list[int] = []
        self.call_ids: set[str] = set()
        self.finish_reason: str | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(data, kind.encode())

    def start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return (self.event("response.created", response=self.response)
                + self.event("response.in_progress", response=self.response))

    def _add(self, item: dict[str, Any]) -> tuple[int, bytes]:
        self.output.append(item)
        index = len(self.output) - 1
        return index, self.event("response.output_item.added", output_index=index, item=item)

    def _close_open(self, status: str = "completed") -> bytes:
        """Close the open message or reasoning item (``incomplete`` when the stream failed)."""
        index, self.open = self.open, None
        if index is None:
            return b""
        item = self.output[index]
        item["status"] = status
        iid = item["id"]
        if item["type"] == "reasoning":
            part = item["summary"][0]
            out = self.event("response.reasoning_summary_text.done", item_id=iid, output_index=index,
                             summary_index=0, text=part["text"])
            out += self.event("response.reasoning_summary_part.done", item_id=iid, output_index=index,
                              summary_index=0, part=part)
        else:
            part = item["content"][0]
            if part["type"] == "refusal":
                out = self.event("response.refusal.done", item_id=iid, output_index=index, content_index=0,
                                 refusal=part["refusal"])
            else:
                out = self.event("response.output_text.done", item_id=iid, output_index=index, content_index=0,
                                 text=part["text"], logprobs=[])
            out += self.event("response.content_part.done", item_id=iid, output_index=index, content_index=0,
                              part=part)
        return out + self.event("response.output_item.done", output_index=index, item=item)

    def _close_tools(self, status: str = "completed") -> bytes:
        out = b""
        for index in self.open_tools:
            item = self.output[index]
            item["status"] = status
            out += self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              name=item["name"], arguments=item["arguments"])
            out += self.event("response.output_item.done", output_index=index, item=item)
        self.open_tools = []
        return out

    def _text(self, kind: str, text: str) -> bytes:
        """A piece of reasoning, text or refusal: into the open item of that kind, else a new one."""
        out = b""
        index = self.open
        item = self.output[index] if index is not None else None
        want = "reasoning" if kind == "reasoning" else "message"
        part_type = {"reasoning": "summary_text", "text": "output_text", "refusal": "refusal"}[kind]
        current = None
        if item is not None and item["type"] == want:
            parts = item["summary"] if want == "reasoning" else item["content"]
            current = parts[0] if parts else None
        if item is None or current is None or current["type"] != part_type:
            out += self._close_open() + self._close_tools()
            if want == "reasoning":
                index, added = self._add({"type": "reasoning", "id": item_id("rs_"), "summary": [],
                                          "status": "in_progress"})
                part: dict[str, Any] = {"type": "summary_text", "text": ""}
                out += added + self.event("response.reasoning_summary_part.added", item_id=self.output[index]["id"],
                                          output_index=index, summary_index=0, part=part)
                self.output[index]["summary"].append(part)
            else:
                index, added = self._add({"type": "message", "id": item_id("msg_"), "status": "in_progress",
                                          "role": "assistant", "content": []})
                part = ({"type": "refusal", "refusal": ""} if kind == "refusal"
                        else {"type": "output_text", "text": "", "annotations": [], "logprobs": []})
                out += added + self.event("response.content_part.added", item_id=self.output[index]["id"],
                                          output_index=index, content_index=0, part=part)
                self.output[index]["content"].append(part)
            self.open = index
            item = self.output[index]
        assert index is not None and item is not None
        iid = item["id"]
        if want == "reasoning":
            item["summary"][0]["text"] += text
            return out + self.event("response.reasoning_summary_text.delta", item_id=iid, output_index=index,
                                    summary_index=0, delta=text)
        if kind == "refusal":
            item["content"][0]["refusal"] += text
            return out + self.event("response.refusal.delta", item_id=iid, output_index=index, content_index=0,
                                    delta=text)
        item["content"][0]["text"] += text
        return out + self.event("response.output_text.delta", item_id=iid, output_index=index, content_index=0,
                                delta=text, logprobs=[])

    def _tool_delta(self, tc: dict[str, Any]) -> bytes:
        out = b""
        ci = tc.get("index", 0)
        fn = tc.get("function") or {}
        index = self.tools.get(ci)
        if index is None:
            out += self._close_open()
            call_id = tc.get("id")
            if not isinstance(call_id, str) or not call_id or call_id in self.call_ids:
                call_id = item_id("call_")  # (a model that repeats an id: each call must be told apart)
            self.call_ids.add(call_id)
            index, added = self._add({"type": "function_call", "id": item_id("fc_"),
                                      "call_id": call_id, "name": fn.get("name") or "",
                                      "arguments": "", "status": "in_progress"})
            out += added
            self.tools[ci] = index
            self.open_tools.append(index)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item = self.output[index]
            item["arguments"] += args
            out += self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                              delta=args)
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self.start()
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out += self._text("reasoning", reasoning)
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text("text", delta["content"])
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                out += self._text("refusal", delta["refusal"])
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    out += self._tool_delta(tc)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def end(self, usage: Usage | None) -> bytes:
        out = self.start() + self._close_open() + self._close_tools()
        finish(self.response, self.finish_reason, usage)
        self._ended()
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        return out + self.event(kind, response=self.response)

    def error(self, err: dict[str, Any]) -> bytes:
        """An error object the upstream put inside its stream."""
        return self.fail(GatewayError(stream_error_message(err), status=502, code="upstream_error"))

    def fail(self, err: GatewayError) -> bytes:
        """The events that end a stream that failed after its first byte."""
        out = self.start() + self._close_open("incomplete") + self._close_tools("incomplete")
        out += self.event("error", code=err.code or err.kind, message=err.message, param=err.param)
        failed(self.response, err)
        self._ended()
        return out + self.event("response.failed", response=self.response)

    def _ended(self) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(self.response)
