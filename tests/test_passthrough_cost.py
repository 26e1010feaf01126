"""OpenAI's other routes are priced: completions by their usage, images per image, moderations and files free;
what cannot be priced is refused to a caller with a budget, so budgets hold on every route."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import requests

from relaygate.testing.base import BackgroundServer
from tests.conftest import StartGateway, openai_model
from tests.test_keys import MASTER, Admin
from tests.test_requestlog import gateway_rows

NANO = 1_000_000_000


def gateway(start_gateway: Any, emulator: Any, **passthrough: Any) -> Any:
    return start_gateway({"models": [openai_model("rest", emulator, "*")], "auth": {"master_key": MASTER},
                          "passthrough": {"model": "rest", **passthrough}})


def new_key(gw: Any, **fields: Any) -> str:
    r = Admin(gw)("POST", "/keys", fields)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def client(gw: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def test_legacy_completions_are_charged_their_usage_whole_and_streamed(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = gateway(start_gateway, openai_emulator)
    c = client(gw, new_key(gw, budget_usd=1))
    whole = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    chunks = list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text  # no usage chunk unasked
    asked = list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True,
                                      stream_options={"include_usage": True}))
    assert asked[-1].choices == [] and asked[-1].usage is not None
    sent = [r["json"] for r in openai_emulator.state.requests]
    assert [b.get("stream_options") for b in sent] == [None, {"include_usage": True}, {"include_usage": True}]
    u = whole.usage
    assert u is not None and u == asked[-1].usage
    # gpt-3.5-turbo-instruct list price: $1.50 / $2.00 per million tokens
    cost = round((u.prompt_tokens * 1.5e-6 + u.completion_tokens * 2e-6) * NANO)
    rows = gateway_rows(gw, expected=3)
    assert [(r["route"], r["prompt_tokens"], r["completion_tokens"], r["cost_nano"]) for r in rows] == \
        [("passthrough", u.prompt_tokens, u.completion_tokens, cost)] * 3
    assert cost > 0


@pytest.mark.parametrize("request_body, usd", [
    ({"model": "dall-e-3", "quality": "hd", "size": "1792x1024"}, 0.12),
    ({"model": "dall-e-3"}, 0.04),  # standard, 1024x1024: OpenAI's defaults
    ({"model": "dall-e-2", "size": "256x256", "n": 3}, 3 * 0.016),
    ({"model": "gpt-image-1", "quality": "low", "size": "1024x1024", "n": 2}, 2 * 0.011),
    ({"model": "gpt-image-1"}, 0.25),  # quality and size "auto": the dearest the model may choose
    ({"model": "gpt-image-1-mini", "quality": "medium", "size": "1536x1024"}, 0.015),
    ({}, 0.25),  # no model: the dearest of what OpenAI may pick (dall-e-2 or gpt-image-1)
])
def test_image_generations_are_charged_per_image(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, request_body: dict[str, Any],
        usd: float) -> None:
    gw = gateway(start_gateway, openai_emulator)
    key = new_key(gw, budget_usd=10)
    r = requests.post(gw.base_url + "/images/generations", json={"prompt": "a red square", **request_body},
                      headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    [row] = gateway_rows(gw)
    assert row["cost_nano"] == round(usd * NANO)


def png_file() -> bytes:
    from relaygate.testing.openai_files import png

    return png(4, 4, (255, 0, 0))


def test_image_edits_and_variations_are_charged_the_price_their_fields_name(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """Their multipart bodies stream up unread but for the fields that set the price, read on the way."""
    gw = gateway(start_gateway, openai_emulator)
    c = client(gw, new_key(gw, budget_usd=10))
    edit = c.images.edit(image=("a.png", png_file(), "image/png"), prompt="bluer", model="gpt-image-1", n=2,
                         size="1024x1024", quality="low")
    assert len(edit.data or []) == 2
    variation = c.images.create_variation(image=("a.png", png_file(), "image/png"), n=3, size="256x256")
    assert len(variation.data or []) == 3
    assert [r["form"]["n"] for r in openai_emulator.state.requests] == ["2", "3"]
    rows = gateway_rows(gw, expected=2)
    assert [r["cost_nano"] for r in rows] == [round(2 * 0.011 * NANO), round(3 * 0.016 * NANO)]


def test_an_image_edit_naming_its_price_after_the_image_is_still_charged_it(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = gateway(start_gateway, openai_emulator)
    key = new_key(gw, budget_usd=10)
    b = "b0undary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png_file() + (
        f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\np\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndall-e-2\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n4\r\n--{b}--\r\n").encode()
    r = requests.post(gw.base_url + "/images/edits", data=body, timeout=10, headers={
        "authorization": f"Bearer {key}", "content-type": f"multipart/form-data; boundary={b}"})
    assert r.status_code == 200 and len(r.json()["data"]) == 4
    [row] = gateway_rows(gw)
    assert row["cost_nano"] == round(4 * 0.02 * NANO)  # dall-e-2 at its default size, 1024x1024


def test_an_image_edit_reserves_the_most_it_can_cost(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """Its fields are only known once the body went up: what it reserves is 10 images of the dearest model."""
    gw = gateway(start_gateway, openai_emulator)
    c = client(gw, new_key(gw, budget_usd=2))
    with pytest.raises(openai.RateLimitError) as e:
        c.images.edit(image=("a.png", png_file(), "image/png"), prompt="p", model="dall-e-2")
    assert e.value.code == "budget_exceeded"
    assert openai_emulator.state.requests == []


def test_moderations_files_and_reading_batches_are_free_for_a_budgeted_key(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = gateway(start_gateway, openai_emulator)
    c = client(gw, new_key(gw, budget_usd=0.01))
    c.moderations.create(input="hello")
    f = c.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    c.files.retrieve(f.id)
    c.batches.list()
    rows = gateway_rows(gw, expected=4)
    assert [(r["status"], r["cost_nano"]) for r in rows] == [(200, 0)] * 4


UNPRICED = [("/batches", {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            ("/realtime/client_secrets", {"session": {"type": "realtime", "model": "gpt-realtime"}}),
            ("/images/generations", {"model": "some-new-image-model", "prompt": "p"}),
            ("/completions", {"model": "my-finetune-without-a-price", "prompt": "p"})]


def test_what_cannot_be_priced_is_refused_to_a_budgeted_key_and_team(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = gateway(start_gateway, openai_emulator)
    assert Admin(gw)("POST", "/teams", {"id": "t1", "budget_usd": 100}).status_code == 201
    for key in (new_key(gw, budget_usd=100), new_key(gw, team_id="t1")):
        for path, body in UNPRICED:
            r = requests.post(gw.base_url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
            assert r.status_code == 403 and r.json()["error"]["code"] == "unpriced_request", (path, r.text)
    assert openai_emulator.state.requests == []
    unbudgeted = new_key(gw)
    r = requests.post(gw.base_url + "/realtime/client_secrets", json=UNPRICED[1][1], timeout=10,
                      headers={"authorization": f"Bearer {unbudgeted}"})
    assert r.status_code == 200


def test_unpriced_requests_may_be_allowed_to_budgeted_keys_by_config(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = gateway(start_gateway, openai_emulator, allow_unpriced_with_budget=True)
    key = new_key(gw, budget_usd=100)
    r = requests.post(gw.base_url + "/realtime/client_secrets", json=UNPRICED[1][1], timeout=10,
                      headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and gateway_rows(gw)[0]["cost_nano"] == 0


def test_a_budget_holds_on_image_generations(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """$0.10 buys two $0.04 images; the third would pass the budget and is refused before it is made."""
    gw = gateway(start_gateway, openai_emulator)
    key = new_key(gw, budget_usd=0.10)
    statuses = [requests.post(gw.base_url + "/images/generations", json={"model": "dall-e-3", "prompt": "p"},
                              headers={"authorization": f"Bearer {key}"}, timeout=10).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert len(openai_emulator.state.requests) == 2
    rows = gateway_rows(gw, expected=3)
    assert [(r["status"], r["cost_nano"]) for r in rows] == [(200, 40_000_000), (200, 40_000_000), (429, 0)]
