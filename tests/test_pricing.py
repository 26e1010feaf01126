"""Pricing: the cost of a call from its usage, the price a budget reserves, the pre-call estimate and the
price the cost strategy compares, all from the price book (deployment prices over config over catalog)."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.core.call import Call, Reply, Route, Usage
from relaygate.core.pricing import NANO
from relaygate.gateway import Gateway
from tests.routing_support import with_gateway


def deployment(name: str, model: str, **prices: float) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "model": model, "api_base": "http://127.0.0.1:9/v1", **prices}


def config(*deployments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "deployments": list(deployments)}], "request_log": {"enabled": False},
            "auth": {"default_output_tokens": 50}, **extra}


def test_a_budget_reserves_at_the_price_of_the_models_dearest_deployment() -> None:
    cfg = config(deployment("a", "x-model", input_cost_per_token=1e-6, output_cost_per_token=4e-6),
                 deployment("b", "x-model", input_cost_per_token=3e-6, output_cost_per_token=2e-6))
    messages = [{"role": "user", "content": "x" * 400}]

    async def run(gw: Gateway) -> list[Any]:
        p = gw.pricing
        capped = Call(id="1", route=Route.CHAT, model="m", body={"messages": messages, "max_tokens": 100})
        uncapped = Call(id="2", route=Route.CHAT, model="m", body={"messages": messages})
        embed = Call(id="3", route=Route.EMBEDDINGS, model="m", body={"input": "y" * 400})
        return [p.reservation("m"), p.estimate(capped, True, True), p.estimate(uncapped, True, False),
                p.estimate(embed, True, True), p.estimate(uncapped, True, True)]

    price, capped, uncapped, embed, held = with_gateway(cfg, run)
    assert (price.input, price.output, price.max_output, price.unpriced, price.bounded) == (3e-6, 4e-6, 0, False,
                                                                                            False)
    prompt = (16 + 400) // 4 + 1  # ~4 characters a token, plus a little per message
    assert capped == (prompt + 100, round((prompt * 3e-6 + 100 * 4e-6) * NANO), 0)
    assert uncapped == (prompt + 50, 0, 0)  # the configured default output; no cost asked for
    assert embed == (101, round(101 * 3e-6 * NANO), 0)  # no output tokens
    # x-model's maximum output is not known: the default output is reserved and the upstream held to it
    assert held == (prompt + 50, round((prompt * 3e-6 + 50 * 4e-6) * NANO), 50)


def test_without_max_tokens_a_budget_reserves_the_models_largest_maximum_output_fallbacks_included() -> None:
    """gpt-4o-mini answers at most 16,384 tokens, gpt-4.1 32,768 (the catalog): a call to m may fall back to
    the dearer and longer one, so that is what its reservation covers; the client's own cap wins."""
    cfg = {"models": [{"name": "m", "deployments": [deployment("a", "gpt-4o-mini")],
                       "fallbacks": [{"models": ["n"]}]},
                      {"name": "n", "deployments": [deployment("b", "gpt-4.1")]}],
           "request_log": {"enabled": False}}
    body = {"messages": [{"role": "user", "content": "x" * 400}]}

    async def run(gw: Gateway) -> list[Any]:
        p = gw.pricing
        return [p.estimate(Call(id="1", route=Route.CHAT, model="m", body=body), True, True),
                p.estimate(Call(id="2", route=Route.CHAT, model="m", body={**body, "max_tokens": 7}), True, True),
                p.book.lookup("gpt-4.1")]

    uncapped, capped, dear = with_gateway(cfg, run)
    prompt = (16 + 400) // 4 + 1
    assert dear.max_output == 32768
    assert uncapped[1:] == (round((prompt * dear.input + 32768 * dear.output) * NANO), 0)
    assert capped[1:] == (round((prompt * dear.input + 7 * dear.output) * NANO), 0)


def test_a_calls_cost_is_computed_once_from_its_deployments_price() -> None:
    """The limits layer and the request log both ask; the second answer is the first one."""
    cfg = config(deployment("a", "gpt-4o-mini", input_cost_per_token=2e-6))  # output from the catalog

    async def run(gw: Gateway) -> tuple[int, int, int | None, int]:
        call = Call(id="1", route=Route.CHAT, model="m", body={})
        call.deployment = gw.deployments()[0]
        reply = Reply(usage=Usage(prompt_tokens=1000, completion_tokens=100))
        first = gw.pricing.cost(call, reply)
        reply.usage = Usage(prompt_tokens=5, completion_tokens=5)
        catalog = gw.pricing.book.lookup("gpt-4o-mini")
        return first, gw.pricing.cost(call, reply), call.cost_nano, round((1000 * 2e-6 + 100 * catalog.output) * NANO)

    first, second, kept, expected = with_gateway(cfg, run)
    assert first == second == kept == expected


def test_the_cost_strategy_compares_deployment_prices_then_the_price_book() -> None:
    cfg = config(deployment("own", "gpt-4o", input_cost_per_token=1e-6),
                 deployment("book", "gpt-4o-mini"), deployment("unknown", "no-such-model-anywhere"),
                 prices={"gpt-4o-mini": {"input_cost_per_token": 5e-7, "output_cost_per_token": 1e-6}})

    async def run(gw: Gateway) -> dict[str, float | None]:
        return {d.name: gw.pricing.unit_price(d) for d in gw.deployments()}

    assert with_gateway(cfg, run) == {"own": 1e-6, "book": 1.5e-6, "unknown": None}


def test_a_budget_reserves_the_output_of_every_choice() -> None:
    """n = 3 answers three times the output: the reservation and a held cap count all of them."""
    cfg = config(deployment("a", "x-model", input_cost_per_token=1e-6, output_cost_per_token=4e-6))
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 100}

    async def run(gw: Gateway) -> list[Any]:
        p = gw.pricing
        three = Call(id="1", route=Route.CHAT, model="m", body={**body, "n": 3})
        return [p.estimate(three, True, True), p.affordable(three, round((105 * 1e-6 + 150 * 4e-6) * NANO))]

    three, held = with_gateway(cfg, run)
    prompt = (16 + 400) // 4 + 1
    assert three[1] == round((prompt * 1e-6 + 300 * 4e-6) * NANO)
    assert held is not None and held[2] == 50  # 150 output tokens left: 50 for each of the 3 choices


def test_a_fallback_without_a_known_maximum_output_holds_calls_to_the_largest_known() -> None:
    cfg = {"models": [{"name": "m", "deployments": [deployment("a", "gpt-4o-mini")],
                       "fallbacks": [{"models": ["local"]}]},
                      {"name": "local", "deployments": [deployment("b", "my-llama", input_cost_per_token=0,
                                                                   output_cost_per_token=1e-6)]}],
           "request_log": {"enabled": False}}

    async def run(gw: Gateway) -> Any:
        return gw.pricing.estimate(Call(id="1", route=Route.CHAT, model="m", body={"messages": []}), True, True)

    assert with_gateway(cfg, run)[2] == 16384  # gpt-4o-mini's: my-llama's maximum is not known


def test_the_reservation_counts_tool_definitions_response_schemas_and_earlier_tool_calls() -> None:
    """The upstream reads (and bills) tool schemas, a structured-output schema and the tool calls of earlier
    turns as prompt: a short question with long tool definitions must be reserved at their price too."""
    cfg = config(deployment("a", "x-model", input_cost_per_token=1e-6, output_cost_per_token=4e-6))
    question = [{"role": "user", "content": "x" * 400}]
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "d" * 2000,
                                                "parameters": {"type": "object", "properties": {}}}}
             for i in range(5)]
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "description": "e" * 4000}}}
    turn = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "tool_0", "arguments": "a" * 800}}]}

    async def run(gw: Gateway) -> list[int]:
        def tokens(body: dict[str, Any]) -> int:
            return gw.pricing.estimate(Call(id="1", route=Route.CHAT, model="m", body={**body, "max_tokens": 10}),
                                       True, True)[0] - 10
        return [tokens({"messages": question}), tokens({"messages": question, "tools": tools}),
                tokens({"messages": question, "response_format": schema}),
                tokens({"messages": [*question, turn]})]

    plain, with_tools, with_schema, with_call = with_gateway(cfg, run)
    assert plain == (16 + 400) // 4 + 1
    assert with_tools - plain >= 5 * 2000 // 4  # every definition, at ~4 characters a token
    assert with_schema - plain >= 4000 // 4
    assert with_call - plain >= 16 // 4 + 800 // 4


def test_a_responses_call_reserves_its_max_output_tokens_items_instructions_tools_and_format() -> None:
    """A native Responses call (its body is the Responses request) reserves on ``max_output_tokens`` as chat
    does on ``max_tokens``; its prompt is its input items, instructions, tools and ``text.format`` schema."""
    cfg = config(deployment("a", "x-model", input_cost_per_token=1e-6, output_cost_per_token=4e-6))
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object", "description": "d" * 800}}]
    text = {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object", "description": "e" * 400}}}
    item = {"role": "user", "content": "x" * 400}
    body = {"input": [item], "instructions": "i" * 40, "tools": tools, "text": text, "max_output_tokens": 100}

    async def run(gw: Gateway) -> tuple[int, int, int]:
        return gw.pricing.estimate(Call(id="1", route=Route.RESPONSES, model="m", body=body), True, True)

    prompt = (len(orjson.dumps(item)) + 40 + len(orjson.dumps(tools)) + len(orjson.dumps(text))) // 4 + 1
    assert with_gateway(cfg, run) == (prompt + 100, round((prompt * 1e-6 + 100 * 4e-6) * NANO), 0)
