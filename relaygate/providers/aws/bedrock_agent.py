"""A Bedrock Agent (Agent Runtime ``InvokeAgent``) served as a chat model.

The agent keeps the conversation itself, per session: only the last user message is sent (``inputText``).
The session id is the request's ``x-relaygate-session-id`` header or ``user`` field, else derived from the
conversation (its opening turns and the caller), so follow-up turns of one conversation land in one session;
behind keys it is scoped to the caller's key.
Bedrock reports no token usage for agents: replies say so (usage null, ``x-relaygate-usage: unknown``).
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from relaygate.config import BedrockAgentDeployment
from relaygate.core.call import Call, Reply, Route, Usage, delivered_of
from relaygate.core.errors import BadRequest, Unavailable, Unsupported
from relaygate.providers.aws.base import AwsProvider, stream_reply
from relaygate.providers.aws.eventstream import EventMessage
from relaygate.providers.openai_format import ChunkWriter, completion, completion_id, text_of
from relaygate.providers.streaming import UpstreamBody, closing, peek

SESSION_HEADER = "x-relaygate-session-id"
USAGE_HEADERS = {"x-relaygate-usage": "unknown"}
_SESSION_ID = re.compile(r"^[0-9a-zA-Z._:-]{2,100}$")  # what InvokeAgent accepts


def session_ids(call: Call, deployment: str) -> tuple[str, str]:
    """(the session id the client names or is told, the one sent to the agent).

    Behind keys, the agent's id is derived from the client's and the caller's key, so that one key can never
    continue another's session (agents remember what was said in it)."""
    asked = call.headers.get(SESSION_HEADER) or call.body.get("user")
    owner = call.key.id if call.key is not None else None
    if asked is not None:
        if not isinstance(asked, str) or not _SESSION_ID.match(asked):
            raise BadRequest("the session id (x-relaygate-session-id header or 'user') must be 2-100 characters "
                             "of letters, digits, '.', '_', ':' or '-'", param="user")
        client = asked
    else:
        opening: list[Any] = []
        for m in call.body.get("messages") or []:  # a conversation is known by its turns up to the first user's
            opening.append([m.get("role"), m.get("content")])
            if m.get("role") == "user":
                break
        # without keys, the client address keeps strangers who open alike ("hi") apart
        seed = orjson.dumps([deployment, owner or call.client_ip, opening], option=orjson.OPT_SORT_KEYS)
        client = "rg-" + hashlib.sha256(seed).hexdigest()[:40]
    if owner is None:
        return client, client
    return client, "k-" + hashlib.sha256(f"{owner}\0{client}".encode()).hexdigest()[:40]


class BedrockAgentProvider(AwsProvider):
    """Bedrock Agent Runtime (``provider: bedrock_agent``, with ``agent_id`` and ``agent_alias_id``)."""

    config: BedrockAgentDeployment
    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT})
    endpoint_prefix = "bedrock-agent-runtime"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._agent_path = (f"/agents/{quote(self.config.agent_id, safe='-_.~')}"
                            f"/agentAliases/{quote(self.config.agent_alias_id, safe='-_.~')}/sessions/")

    async def chat(self, call: Call) -> Reply:
        assert call.deployment is not None
        body = call.body
        if body.get("tools"):
            raise Unsupported("a Bedrock agent runs its own action groups; 'tools' cannot be passed to it",
                              param="tools")
        last_user = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), None)
        text = text_of(last_user.get("content")) if last_user else ""
        if not text.strip():
            raise BadRequest("a Bedrock agent needs a user message with text", param="messages")
        session, upstream_session = session_ids(call, call.deployment.name)
        request: dict[str, Any] = {"inputText": text}
        if call.stream:  # without it the agent sends its whole answer as one chunk at the end
            request["streamingConfigurations"] = {"streamFinalResponse": True}
        resp = await self.post_json(call.deadline, self._agent_path + upstream_session + "/text", request)
        headers = {**USAGE_HEADERS, SESSION_HEADER: session}
        upstream = UpstreamBody(resp, self.kind)
        events = _texts(self.events(upstream))
        if not call.stream:
            try:
                parts = [t async for t in events]
            finally:
                upstream.close()
            data = completion(id=completion_id(), model=call.model, content="".join(parts), finish_reason="stop",
                              usage=None)
            return Reply(body=orjson.dumps(data), headers=headers, usage=Usage(known=False),
                         first_byte_at=time.monotonic())
        # a throttling frame up front can still be retried; an answer with no text is an empty one
        first = await peek(upstream, anext(events, ""))
        reply = stream_reply(headers)
        reply.usage = Usage(known=False)
        writer = ChunkWriter(call.model, include_usage=call.wants_usage, delivered=delivered_of(reply))
        reply.stream = closing(upstream, self._relay(first, events, writer))
        return reply

    @staticmethod
    async def _relay(first: str, events: AsyncIterator[str], writer: ChunkWriter) -> AsyncIterator[bytes]:
        yield writer.role() + writer.text(first)
        async for text in events:
            out = writer.text(text)
            if out:
                yield out
        yield writer.finish("stop") + writer.usage(Usage(known=False)) + writer.done()


async def _texts(events: AsyncIterator[EventMessage]) -> AsyncIterator[str]:
    """The answer's text, chunk by chunk (UTF-8 sequences split across chunks are joined)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    async for msg in events:
        if msg.event_type == "chunk":
            try:
                raw = orjson.loads(msg.payload).get("bytes") or ""
                piece = decoder.decode(base64.b64decode(raw))
            except (orjson.JSONDecodeError, AttributeError, ValueError):
                raise Unavailable("Bedrock agent sent a malformed chunk", status=502) from None
            if piece:
                yield piece
        elif msg.event_type == "returnControl":
            raise Unsupported("the Bedrock agent returned control to the caller (an action group with "
                              "RETURN_CONTROL), which relaygate cannot serve as a chat completion")
        # trace and files events have no chat-completion shape
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
