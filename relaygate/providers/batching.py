"""Embedding input arrays longer than an upstream accepts: split into batches, send, merge in order."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from relaygate.core.call import Call, Reply, Usage
from relaygate.core.errors import Unavailable

MAX_PARALLEL_BATCHES = 4  # enough to hide latency without a burst that trips the upstream's rate limit


def needs_batches(body: dict[str, Any], size: int) -> bool:
    """True when ``input`` is an array of more than ``size`` inputs (a flat token array is one input)."""
    inp = body.get("input")
    return isinstance(inp, list) and len(inp) > size and not isinstance(inp[0], int)


async def embed_in_batches(call: Call, size: int, one: Callable[[Call], Awaitable[Reply]]) -> Reply:
    """Serve ``call`` with one upstream call per ``size`` inputs, indexes and usage merged; a call that fits
    in one is served by ``one`` as it is."""
    if not needs_batches(call.body, size):
        return await one(call)
    inputs: list[Any] = call.body["input"]
    parts = [dataclasses.replace(call, body={**call.body, "input": inputs[i:i + size]})
             for i in range(0, len(inputs), size)]
    gate = asyncio.Semaphore(MAX_PARALLEL_BATCHES)

    async def run(sub: Call) -> Reply:
        async with gate:
            return await one(sub)

    tasks = [asyncio.ensure_future(run(p)) for p in parts]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    for t in pending:
        t.cancel()
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return merge([t.result() for t in tasks])


def merge(replies: list[Reply]) -> Reply:
    """One embeddings list from the batches' replies, in input order."""
    data: list[dict[str, Any]] = []
    model = None
    usage = Usage()
    for r in replies:
        try:
            body = orjson.loads(r.body or b"")
            items = body["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise Unavailable("an upstream embeddings batch returned an unreadable body", status=502) from None
        model = model or body.get("model")
        offset = len(data)
        for item in sorted(items, key=lambda it: it.get("index", 0)):
            data.append({**item, "index": offset + int(item.get("index", 0))})
        if r.usage is None or not r.usage.known:
            usage.known = False
        else:
            usage.prompt_tokens += r.usage.prompt_tokens
    out: dict[str, Any] = {"object": "list", "data": data, "model": model,
                           "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
                           if usage.known else None}
    return Reply(body=orjson.dumps(out), usage=usage if usage.known else None, headers=replies[0].headers,
                 first_byte_at=time.monotonic())
