"""Writes the fake upstream's canned Anthropic, Gemini, Cohere, Bedrock (Converse) and OpenAI Responses answers
(run once; the outputs are committed).

The shapes come from the project's emulators (relaygate/testing/anthropic.py, gemini.py, cohere.py,
bedrock.py, openai_responses.py), which are
checked against the official SDKs, so the bench translates what the real APIs send. The text is the
same 20 pieces in every format, so translated and OpenAI streams carry the same payload.

    PYTHONPATH=. python bench/upstream/make_canned.py
"""

from __future__ import annotations

from pathlib import Path

import orjson

from relaygate.testing import anthropic as anth
from relaygate.testing import bedrock as br
from relaygate.testing import cohere as co
from relaygate.testing import gemini as gem
from relaygate.testing import openai_responses as resp

HERE = Path(__file__).resolve().parent
PIECES = ["A", " gateway", " sits", " between", " your", " application", " and", " the", " model", " providers",
          ",", " giving", " every", " team", " one", " endpoint", ",", " one", " key", " format."]
TEXT = "".join(PIECES)
PROMPT_TOKENS = 41
MODEL_ANTHROPIC = "claude-haiku-4-5"
MODEL_GEMINI = "gemini-2.5-flash"
MODEL_OPENAI = "gpt-4o-mini"


def anthropic() -> tuple[bytes, list[bytes]]:
    """The whole Message, and the stream: message_start, content_block_start, a text_delta per piece,
    content_block_stop, message_delta, message_stop (the emulator's events with our pieces as deltas)."""
    body = {"model": MODEL_ANTHROPIC, "messages": [{"role": "user", "content": "bench"}]}
    a = anth.Answer(TEXT, None, "end_turn", None, len(PIECES), [{"type": "text", "text": TEXT}])
    usage = anth._usage(a, PROMPT_TOKENS, 0, 0)
    whole = orjson.dumps(anth.message(body, a, usage))
    emulated = anth.stream_events(body, a, usage)
    head = [e for e in emulated if e.startswith(b"event: message_start")]
    tail = [e for e in emulated if not e.startswith((b"event: message_start", b"event: ping",
                                                     b"event: content_block_start", b"event: content_block_delta"))]
    start = [e for e in emulated if e.startswith(b"event: content_block_start")]
    deltas = [anth.sse_event(b"content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": p}}) for p in PIECES]
    return whole, head + start + deltas + tail


def gemini() -> tuple[bytes, list[bytes]]:
    """The whole GenerateContentResponse, and one chunk per piece (finish reason and full usage on the
    last), framed as Google frames them (CRLF pairs, no terminator)."""
    a = gem.Answer([{"text": TEXT}], "STOP", PROMPT_TOKENS, len(PIECES))
    rid = "benchGeminiResponse0001"
    whole = {"candidates": [gem._candidate(a, 0, a.parts, a.finish_reason)], "usageMetadata": gem._usage(a, 0),
             "modelVersion": MODEL_GEMINI, "responseId": rid}
    chunks = []
    for i, piece in enumerate(PIECES):
        last = i == len(PIECES) - 1
        chunks.append(b"data: " + orjson.dumps({
            "candidates": [gem._candidate(a, 0, [{"text": piece}], a.finish_reason if last else None)],
            "usageMetadata": gem._usage(a, 0, final=last), "modelVersion": MODEL_GEMINI, "responseId": rid,
        }) + b"\r\n\r\n")
    return orjson.dumps(whole), chunks


def cohere() -> bytes:
    """The whole v2 chat response (the bench measures Cohere clients' whole answers only)."""
    usage = {"billed_units": {"input_tokens": PROMPT_TOKENS, "output_tokens": len(PIECES)},
             "tokens": {"input_tokens": PROMPT_TOKENS, "output_tokens": len(PIECES)}}
    return orjson.dumps(co.chat_response(co.Reply("5b0e7a3c-1f2d-4c8e-9a6b-0d3f7e2c1a9b", TEXT, None, None,
                                                  "COMPLETE", usage)))


def bedrock() -> bytes:
    """The whole Converse response as the emulator answers it (ConverseStream's binary framing cannot be
    echoed from nginx's config: the bench's Bedrock cells do not stream)."""
    a = br.ConverseAnswer([{"text": TEXT}], "end_turn", {"inputTokens": PROMPT_TOKENS, "outputTokens": len(PIECES),
                                                         "totalTokens": PROMPT_TOKENS + len(PIECES)})
    return orjson.dumps({"output": {"message": {"role": "assistant", "content": a.blocks}},
                         "stopReason": a.stop_reason, "usage": a.usage, "metrics": {"latencyMs": 42}})


def responses() -> bytes:
    """The whole Response object (``store: false``, as the bench's Responses request asks) as the emulator makes it
    for the bench's request, with our text and token counts and fixed ids (the bench measures whole answers only
    on Responses-native deployments)."""
    body = orjson.loads((HERE.parent / "requests" / "responses.json").read_bytes())
    body["model"] = MODEL_OPENAI
    r, _ = resp.respond(body, [], "", len(PIECES))
    (message,) = r["output"]
    message["id"] = "msg_bench0001"
    message["content"][0]["text"] = TEXT
    r |= {"id": "resp_bench0001", "created_at": 1700000000,
          "usage": {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": len(PIECES), "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": PROMPT_TOKENS + len(PIECES)}}
    return orjson.dumps(r)


def main() -> None:
    for name, (whole, events) in {"anthropic": anthropic(), "gemini": gemini()}.items():
        (HERE / f"{name}.json").write_bytes(whole + b"\n")
        (HERE / f"{name}-stream.sse").write_bytes(b"".join(events))
        print(f"{name}: {len(whole)} B whole, {len(events)} stream events")
    (HERE / "cohere.json").write_bytes(cohere() + b"\n")
    (HERE / "bedrock.json").write_bytes(bedrock() + b"\n")
    (HERE / "responses.json").write_bytes(responses() + b"\n")


if __name__ == "__main__":
    main()
