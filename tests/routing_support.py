"""Helpers of the routing tests: several OpenAI emulators, configs over them, the Router driven in-process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from relaygate.config import parse_config
from relaygate.core.call import Call, Route
from relaygate.core.errors import GatewayError
from relaygate.gateway import Gateway
from relaygate.testing.base import BackgroundServer, FaultPlan, free_port
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

from .conftest import UPSTREAM_KEY

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


@functools.cache
def sdk_client(base_url: str) -> openai.OpenAI:
    """One openai client per gateway URL (building one per call is slow enough to skew timings)."""
    return openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)


def emulator(**options: Any) -> BackgroundServer:
    """A started OpenAI emulator requiring UPSTREAM_KEY (stop it when done)."""
    srv = BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY, **options)))
    srv.state.max_recorded = 5000
    return srv.start()


@contextlib.contextmanager
def emulators(*options: dict[str, Any]) -> Iterator[list[BackgroundServer]]:
    """One started emulator per options dict, stopped at the end."""
    servers = [emulator(**o) for o in options]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def reset(servers: list[BackgroundServer]) -> None:
    """Clear faults, recorded requests and the count of cancelled ones (between tests sharing emulators)."""
    for e in servers:
        e.state.faults = None
        e.state.requests.clear()
        e.state.cancelled = 0


def fault(emu: BackgroundServer, **plan: Any) -> None:
    emu.state.faults = FaultPlan(**plan)


def chat_requests(emu: BackgroundServer) -> int:
    return sum(1 for r in emu.state.requests if r["path"].endswith("/chat/completions"))


def dep(emu: BackgroundServer | None, name: str, **extra: Any) -> dict[str, Any]:
    """A deployment on an emulator (None: a closed port, i.e. connection refused)."""
    base = emu.url + "/v1" if emu is not None else f"http://127.0.0.1:{free_port()}/v1"
    return {"name": name, "provider": "openai", "model": "gpt-4o-mini", "api_base": base,
            "api_key": UPSTREAM_KEY, "timeout": 5, **extra}


def unique(prefix: str) -> str:
    """A deployment name no other test (or earlier run sharing Redis) uses."""
    return f"{prefix}-{os.urandom(4).hex()}"


@dataclass
class Outcome:
    served: Counter[str] = field(default_factory=Counter)  # deployment that served each successful call
    errors: Counter[str] = field(default_factory=Counter)  # error kinds of the failed ones
    attempts: Counter[int] = field(default_factory=Counter)
    stream_errors: int = 0


async def one_call(gw: Gateway, model: str, out: Outcome, stream: bool = False, budget: float = 30) -> None:
    """One chat call through the gateway's pipeline, delivered the way the server delivers it."""
    body: dict[str, Any] = {"model": model, "messages": MESSAGES}
    if stream:
        body["stream"] = True
    call = Call(id="t", route=Route.CHAT, model=model, body=body, stream=stream, deadline=time.monotonic() + budget)
    try:
        reply = await gw.handle(call)
    except GatewayError as e:
        out.errors[e.kind] += 1
        out.attempts[call.attempts] += 1
        return
    error: BaseException | None = None
    if reply.stream is not None:
        try:
            async for _ in reply.stream:
                pass
        except GatewayError as e:
            error = e
            out.stream_errors += 1
    reply.finish(error)
    if error is None:
        assert call.deployment is not None
        out.served[call.deployment.name] += 1
    out.attempts[call.attempts] += 1


async def drive(gw: Gateway, model: str, n: int, concurrency: int = 1, stream: bool = False) -> Outcome:
    """``n`` calls, ``concurrency`` at a time."""
    out = Outcome()
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            await one_call(gw, model, out, stream)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def with_gateway(config: dict[str, Any], body: Callable[[Gateway], Awaitable[Any]]) -> Any:
    """Build a real Gateway from ``config`` in a fresh event loop, run ``body(gw)``, close it."""

    async def main() -> Any:
        gw = await Gateway.create(parse_config(config, {}))
        try:
            return await body(gw)
        finally:
            await gw.close()

    return asyncio.run(main())
