"""``/v1/responses`` on deployments that serve OpenAI's Responses API themselves (``responses_native``).

The gateway keeps the conversation (``store``, ``previous_response_id``, ``conversation``) for every model, so
a chain may move between native and translated deployments; the request a native deployment gets carries the
whole conversation as its ``input``, unless that deployment answered the previous turn itself: it then chains
on its own stored response (``previous_response_id`` = the upstream's id, kept with the gateway's copy), which
keeps what the gateway cannot replay (reasoning, built-in tool calls). The answer is relayed as it came, event
by event; only the response object (in ``response.created``, ``.in_progress`` and the final event) is rewritten
to carry the gateway's id, ``previous_response_id`` and ``conversation``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from relaygate.api.responses.translate import failed
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Delivered, Route, UpstreamChain
from relaygate.core.errors import GatewayError
from relaygate.providers.delivered import HOLD_EVENTS, RESPONSES_TEXT_DELTAS, responses_events
from relaygate.providers.streaming import SSEDecoder, sse, sse_frame

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

# the request's fields the gateway acts on itself: never sent upstream (the conversation goes as ``input``)
HELD = frozenset({"previous_response_id", "conversation", "provider", "background"})
# the events that carry the response object (OpenAI's documented lifecycle)
LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued", "response.completed",
                       "response.incomplete", "response.failed"})
UPSTREAM = "upstream"  # the stored response's ``extra`` key: {"deployment", "id"} of a native answer
_UNSET: Any = msgspec.UNSET


class _Head(msgspec.Struct):
    """The fields of a whole Response object its relay as it came depends on (every other value skipped)."""
    id: str
    object: str
    previous_response_id: str | None | msgspec.UnsetType = _UNSET
    conversation: msgspec.Raw | msgspec.UnsetType = _UNSET


_head = msgspec.json.Decoder(_Head).decode


def serves_natively(gw: Gateway, call: Call) -> bool:
    """Whether a deployment of the call's model serves the Responses API natively."""
    try:
        deps = gw.table.resolve(call)
    except GatewayError:
        return False  # the pipeline says why (an unknown model)
    return any(Route.RESPONSES in d.provider.routes for d in deps)


def upstream_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as input items any Responses upstream accepts: without the gateway's ids and statuses
    (they name nothing that upstream stored); an assistant message as its text; reasoning only when it carries
    its ``encrypted_content`` (an upstream cannot look another's up); other items as they were sent."""
    out: list[dict[str, Any]] = []
    for it in items:
        kind = it.get("type")
        if kind == "message":
            content = it.get("content")
            if it.get("role") == "assistant" and isinstance(content, list):
                content = "".join(str(p.get("text") or p.get("refusal") or "") for p in content
                                  if isinstance(p, dict))
            out.append({"type": "message", "role": it.get("role"), "content": content})
        elif kind in ("function_call", "function_call_output"):
            out.append({k: v for k, v in it.items() if k not in ("id", "status")})
        elif kind == "reasoning":
            if it.get("encrypted_content"):
                out.append({k: v for k, v in it.items() if k != "status"})
        else:
            out.append(it)
    return out


def native_request(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The Responses request a native deployment gets: the client's, without the fields the gateway holds,
    the conversation so far (``history``) before the turn's own input."""
    # (the usual request holds none of them: copied whole, a fraction of the comprehension's cost)
    req = dict(body) if HELD.isdisjoint(body) else {k: v for k, v in body.items() if k not in HELD}
    if history:
        given = req.get("input")
        turn = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        req["input"] = upstream_items(history) + turn
    return req


def chain_of(extra: dict[str, Any] | None, given: Any) -> UpstreamChain | None:
    """How the deployment that answered a stored response natively may chain on it (None if none did)."""
    up = (extra or {}).get(UPSTREAM)
    if not isinstance(up, dict) or not isinstance(up.get("id"), str) or not isinstance(up.get("deployment"), str):
        return None
    return UpstreamChain(up["deployment"], up["id"], given if given is not None else [])


class NativeAnswer:
    """A native deployment's answer made the gateway's: the response object's ``id``, ``previous_response_id``
    and ``conversation`` rewritten, the upstream's id kept (``upstream_id``); ``on_end(response)`` gets the
    final response once: the upstream's last, or, for a stream that broke before it, the last response object
    relayed made ``failed`` with the output items it had finished."""

    def __init__(self, rid: str, previous: str | None, conversation: str | None,
                 on_end: Callable[[dict[str, Any]], None], kept: bool = True) -> None:
        self.rid = rid
        self.kept = kept  # whether ``on_end`` keeps anything (False: neither stored nor in a conversation)
        self.previous = previous
        self.conversation = conversation
        self.on_end = on_end
        self.upstream_id: str | None = None
        self.seq = -1  # the last sequence_number relayed
        self.ended = False
        self.response: dict[str, Any] | None = None  # the last response object relayed (a stream's)
        self.done: dict[int, dict[str, Any]] = {}  # a stream's finished output items, by output_index

    def adopt(self, response: dict[str, Any]) -> dict[str, Any]:
        if self.upstream_id is None and isinstance(response.get("id"), str):
            self.upstream_id = response["id"]
        response["id"] = self.rid
        response["previous_response_id"] = self.previous
        if self.conversation is not None:
            response["conversation"] = {"id": self.conversation}
        else:
            response.pop("conversation", None)
        return response

    def whole(self, data: bytes) -> bytes:
        """A whole answer (a Response object); ValueError when it is not one."""
        if not self.kept and self.previous is None and self.conversation is None:
            out = self._relayed(data)
            if out is not None:
                return out
        response = orjson.loads(data)
        if not isinstance(response, dict) or response.get("object") != "response":
            raise ValueError("not a response object")
        self._end(self.adopt(response))
        return orjson.dumps(response)

    def _relayed(self, data: bytes) -> bytes | None:
        """An answer nothing keeps, as it came with only its id replaced, where that gives what ``adopt``
        would: the top-level ``id`` first (as OpenAI sends it) and its value nowhere else, ``previous_response_id``
        null and no ``conversation`` (the gateway sent neither); None otherwise (the answer is parsed then)."""
        try:
            head = _head(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        up = head.id.encode()
        start = b'{"id":"' + up + b'"'  # the id's bytes exactly as decoded: no escape in them
        if head.object != "response" or head.previous_response_id is not None or \
                head.conversation is not _UNSET or not data.startswith(start) or data.count(up) != 1:
            return None
        self.upstream_id = head.id
        self.ended = True  # (``on_end`` keeps nothing)
        return b'{"id":"' + self.rid.encode() + data[len(start) - 1:]

    async def relay(self, stream: AsyncIterator[bytes], delivered: Delivered) -> AsyncIterator[bytes]:
        """The upstream's events as they come (each read's whole events at once), the text of their deltas
        counted in ``delivered`` (what a stream cut before its final event is billed for)."""
        decoder = SSEDecoder()
        try:
            async for piece in stream:
                out = self._events(decoder.feed(piece), delivered)
                if out:
                    yield out
            out = self._events(decoder.end(), delivered)
            if out:
                yield out
        finally:
            await aclose(stream)

    def _events(self, events: list[tuple[str, bytes]], delivered: Delivered) -> bytes:
        out: list[bytes] = []
        held = delivered.held if delivered.held is not None else delivered.hold(responses_events)
        for kind, data in events:
            if kind in LIFECYCLE or (kind == "message" and data.find(b'"response":{') >= 0):
                obj = orjson.loads(data)
                response = obj.get("response") if isinstance(obj, dict) else None
                if isinstance(response, dict):
                    self.response = self.adopt(response)
                    if isinstance(obj.get("sequence_number"), int):
                        self.seq = obj["sequence_number"]
                    if response.get("status") in ("completed", "incomplete", "failed"):
                        self._end(response)
                    out.append(sse(obj, kind.encode() if kind != "message" else b""))
                    continue
            if kind == "response.output_item.done":  # few: parsed to store a stream that breaks later
                self._item_done(data)
            if kind in RESPONSES_TEXT_DELTAS or kind == "message":  # held: counted should the usage never come
                held.append((kind, data))
                if len(held) > HOLD_EVENTS:
                    delivered.fold()
            at = data.rfind(b'"sequence_number":')
            if at >= 0:
                digits = data[at + 18:at + 40].lstrip().split(b",", 1)[0].split(b"}", 1)[0].strip()
                if digits.isdigit():
                    self.seq = int(digits)
            out.append(sse_frame(data, kind.encode() if kind != "message" else b""))
        return b"".join(out)

    def _end(self, response: dict[str, Any]) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(response)

    def _item_done(self, data: bytes) -> None:
        obj = orjson.loads(data)
        if isinstance(obj, dict) and isinstance(obj.get("item"), dict) and isinstance(obj.get("output_index"), int):
            self.done[obj["output_index"]] = obj["item"]

    def fail(self, err: GatewayError) -> bytes:
        """The events that end a native stream that broke after its first byte, before its final event:
        OpenAI's ``error`` event, then ``response.failed`` with the response as it stood (stored so)."""
        self.seq += 1
        out = sse({"type": "error", "sequence_number": self.seq, "code": err.code or err.kind,
                   "message": err.message, "param": err.param}, b"error")
        if self.ended or self.response is None:  # ended already, or nothing relayed said what it was
            return out
        response = failed(self.response, err)
        response["output"] = [self.done[i] for i in sorted(self.done)]
        response["usage"] = None
        self._end(response)
        self.seq += 1
        return out + sse({"type": "response.failed", "sequence_number": self.seq, "response": response},
                         b"response.failed")
