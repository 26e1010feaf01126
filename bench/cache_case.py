"""The response cache layer driven synchronously for bench/microinstr.py: a miss (every request refreshed and
kept), a hit, and the pass-through the layer wraps, over the bench's chat request and answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from relaygate.config import parse_config
from relaygate.core.call import Call, Reply, Route, Usage
from relaygate.gateway import Gateway

BENCH_DIR = Path(__file__).resolve().parent


def case(headers: dict[str, str], layered: bool) -> Callable[[], None]:
    """One call through the cache layer (or straight to the stand-in upstream), run without an event loop turn."""
    raw = (BENCH_DIR / "requests" / "chat.json").read_bytes().strip()
    request = orjson.loads(raw)
    answer = (BENCH_DIR / "upstream" / "chat.json").read_bytes().strip()
    config = parse_config({"models": [{"name": "bench-model", "cache": {"mode": "always"}, "deployments": [
        {"provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}]}],
        "request_log": {"enabled": False}}, {})
    loop = asyncio.new_event_loop()
    asyncio.events._set_running_loop(loop)  # what the layer reads; nothing here suspends
    gw = Gateway(config, None)  # type: ignore[arg-type]  # no upstream session: the stand-in answers

    async def upstream(call: Call) -> Reply:
        return Reply(body=answer, usage=Usage(40, 100))

    layer = gw.cache
    assert layer is not None
    layer.next = upstream
    handler: Any = layer if layered else upstream

    def one() -> None:
        call = Call(id="req", route=Route.CHAT, model="bench-model", body=dict(request), headers=headers,
                    raw=raw)  # the client's bytes, as api/chat.py passes them
        if not layered:
            call.deployments = gw.table.resolve(call)
        try:
            handler(call).send(None)
        except StopIteration:
            return
        raise AssertionError("the call suspended")

    one()
    return one
