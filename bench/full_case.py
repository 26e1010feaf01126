"""Set-up of microinstr.py's ``full-call*`` cases: one chat call of the bench's key through the pipeline of
``variants/relaygate-full.yaml``: the key checked as the chat route checks it, the Call made as it makes it, then
observe, audit, auth, limits and the router, the provider's chat handler replaced by a stand-in that answers
the canned chat answer, and the reply finished (its bookkeeping: the settlement, the log row queued). The HTTP
server, the body's read and the upstream client are left out, and the log's writer thread is not started (its
queue is emptied after each call)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from relaygate.api.chat import chat_call
from relaygate.auth.authenticator import presented_key
from relaygate.config import parse_config
from relaygate.core.call import Call, Reply, Route
from relaygate.gateway import Gateway
from relaygate.providers.openai.usage import usage_of
from relaygate.server.http import RequestIds

BENCH_DIR = Path(__file__).resolve().parent
KEY = "sk-bench-5f0c2a9e71d43b86a1e07c9d2f4b6e38"


class _Req:
    """What chat_call reads of a request."""

    def __init__(self, rid: str, headers: dict[str, str]) -> None:
        self.id = rid
        self.headers = headers
        self.client_ip = "127.0.0.1"


def case(log: bool = True, limits: bool = True) -> Callable[[], None]:
    raw = (BENCH_DIR / "requests" / "chat.json").read_bytes().strip()
    answer = (BENCH_DIR / "upstream" / "chat.json").read_bytes().strip()
    text = (BENCH_DIR / "variants" / "relaygate-full.yaml").read_text().replace("${BENCH_UPSTREAM}", "http://127.0.0.1:9")
    data: dict[str, Any] = yaml.safe_load(text)
    data["database"] = {"url": "sqlite:///" + os.path.join(tempfile.mkdtemp(), "relaygate.db")}
    data["request_log"] = {"enabled": log}
    if not limits:
        data["auth"]["keys"][0] = {"id": "bench", "key": KEY}
    config = parse_config(data, {})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    gw = loop.run_until_complete(Gateway.create(config))
    if gw.writer is not None:  # rows are queued, never written: the writer's threads are not counted
        gw.writer.batch_size = 1 << 30
    assert gw.auth is not None
    ids = RequestIds()
    headers = {"host": "127.0.0.1:4000", "user-agent": "Python/3.11 aiohttp", "accept": "*/*",
               "accept-encoding": "gzip, deflate", "content-type": "application/json",
               "authorization": "Bearer " + KEY, "content-length": str(len(raw))}

    async def upstream(call: Call) -> Reply:
        return Reply(body=answer, usage=usage_of(answer))

    for dep in gw.table.models["bench-model"]:  # the provider's chat handler answers: the router runs as usual
        dep.provider.handlers[Route.CHAT] = upstream
    auth = gw.auth
    queue = gw.writer.queue if gw.writer is not None else None

    async def first() -> None:  # the key looked up and the budget's spend loaded: what later calls find cached
        key = await auth.authenticate(presented_key(headers))
        call = chat_call(gw, _Req(ids.new(), headers), orjson.loads(raw), key)  # type: ignore[arg-type]
        (await gw.handle(call)).finish()

    loop.run_until_complete(first())
    asyncio.events._set_running_loop(loop)  # what the layers read; nothing here suspends

    def one() -> None:
        key = auth.quick(presented_key(headers))
        req = _Req(ids.new(), headers)
        call = chat_call(gw, req, orjson.loads(raw), key)  # type: ignore[arg-type]
        call.raw = raw
        try:
            gw.handle(call).send(None)  # type: ignore[attr-defined]
        except StopIteration as done:
            reply: Reply = done.value
        else:
            raise AssertionError("the call suspended")
        reply.finish()
        one.last = (call, reply)  # type: ignore[attr-defined]
        if queue is not None:
            queue.clear()

    one()
    one.gw = gw  # type: ignore[attr-defined]
    return one
