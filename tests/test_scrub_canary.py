"""The canary battery: every provider adapter and every route against an upstream that echoes everything it
received (relaygate/testing/echo.py), in its 200 answers, its streams' error events, its error bodies and its
headers. The canary keys and the upstream's address must reach no response (status, headers, body), no log
line, no request-log row (the SQLite file, bodies logged) and no spool file; ``/health/providers`` shows
the probes' failures scrubbed, and only to the master key."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaygate.config import parse_config
from relaygate.core.call import Route
from relaygate.core.scrub import FRAGMENT, Scrubber
from relaygate.providers import provider_class
from relaygate.testing.base import BackgroundServer
from relaygate.testing.echo import MODE, create_app
from relaygate.testing.gateway import GatewayThread

CANARY = "sk-canary-7f3a9c2e51d84b6f0a1e9d7c3b5f2a48"  # every upstream key
AWS_SECRET = "cAnArY/aws+secret0123456789abcdefGHIJKLmn"
AWS_TOKEN = "IQoJb3JpZ2luX2VjECanaryTokenZmFrZS1zZXNzaW9uLXRva2Vu"
MASTER = "rg-master-canary-0f9e8d7c6b5a49382716"
SECRETS = (CANARY, AWS_SECRET, AWS_TOKEN, "AKIACANARY0123456789")
STATUSES = (200, 400, 401, 403, 404, 413, 429, 500, 503)


def deployments(echo: str) -> dict[str, dict[str, Any]]:
    """One model per provider adapter, each reached at the echo upstream with the canary credentials."""
    aws = {"api_base": echo, "region": "us-east-1", "aws_access_key_id": "AKIACANARY0123456789",
           "aws_secret_access_key": AWS_SECRET, "aws_session_token": AWS_TOKEN}
    keyed = {"api_base": echo, "api_key": CANARY}
    return {
        "openai": {"provider": "openai", "model": "gpt-4o-mini", **keyed, "api_base": echo + "/v1"},
        "azure": {"provider": "azure", "model": "dep", **keyed, "api_version": "2024-10-21"},
        "anthropic": {"provider": "anthropic", "model": "claude-x", **keyed},
        "vertex_anthropic": {"provider": "vertex_anthropic", "model": "claude-x", **keyed, "project": "p",
                             "location": "us-east5"},
        "gemini": {"provider": "gemini", "model": "gemini-x", **keyed},
        "vertex": {"provider": "vertex", "model": "gemini-x", **keyed, "project": "p", "location": "us-central1"},
        "cohere": {"provider": "cohere", "model": "command-x", **keyed},
        "bedrock": {"provider": "bedrock", "model": "anthropic.claude-x", **aws},
        "bedrock_agent": {"provider": "bedrock_agent", "model": "agent", "agent_id": "AGENT1",
                          "agent_alias_id": "ALIAS1", **aws},
    }


def config(echo: str, tmp: Path) -> dict[str, Any]:
    hc = {"enabled": True, "interval": 0.2, "timeout": 2, "unhealthy_after": 1000}
    deps = deployments(echo)
    return {
        "models": [{"name": name, "deployments": [{**d, "timeout": 5, "health_check": hc}]}
                   for name, d in deps.items()],
        "passthrough": {"model": "openai"},
        "auth": {"master_key": MASTER},
        "request_log": {"bodies": True, "spool_dir": str(tmp / "spool")},
        "database": {"url": f"sqlite:///{tmp}/log.db"},
    }


def requests_for(name: str, dep: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, path, httpx arguments) for every route the provider serves."""
    routes = provider_class(parse_config({"models": [{"name": name, "deployments": [dep]}]}, {})
                            .models[0].deployments[0]).routes
    msgs = [{"role": "user", "content": "hello"}]
    out: list[tuple[str, str, dict[str, Any]]] = []
    if Route.CHAT in routes:
        for stream in (False, True):
            out.append((f"chat stream={stream}", "/v1/chat/completions",
                        {"json": {"model": name, "messages": msgs, "stream": stream}}))
            out.append((f"messages stream={stream}", "/v1/messages",
                        {"json": {"model": name, "max_tokens": 16, "messages": msgs, "stream": stream}}))
    if Route.EMBEDDINGS in routes:
        out.append(("embeddings", "/v1/embeddings", {"json": {"model": name, "input": "hello"}}))
    if Route.SPEECH in routes:
        out.append(("speech", "/v1/audio/speech", {"json": {"model": name, "input": "hello", "voice": "alloy"}}))
    if Route.TRANSCRIPTIONS in routes:
        out.append(("transcription", "/v1/audio/transcriptions",
                    {"data": {"model": name}, "files": {"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")}}))
    if Route.PASSTHROUGH in routes:
        out.append(("passthrough", "/v1/completions", {"json": {"model": name, "prompt": "hello"}}))
    return out


def leaks(text: str, address: str) -> list[str]:
    """What of the secrets (whole, or any window of FRAGMENT characters) or the address ``text`` holds."""
    found = [address] if address in text else []
    for s in (*SECRETS, MASTER):
        found += [s[i:i + FRAGMENT] for i in range(len(s) - FRAGMENT + 1) if s[i:i + FRAGMENT] in text][:1]
    return found


def test_no_canary_key_or_upstream_address_leaves_through_any_route(
        start_gateway: Callable[..., GatewayThread], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with BackgroundServer(create_app()) as echo:
        address = echo.url.removeprefix("http://")
        gw = start_gateway(config(echo.url, tmp_path))
        mode = echo.app[MODE]
        auth = {"authorization": f"Bearer {MASTER}"}
        checked = errors = 0
        problems: list[str] = []
        with httpx.Client(base_url=gw.url, headers=auth, timeout=30) as client:
            for status in STATUSES:
                mode["status"] = status
                for name, dep in deployments(echo.url).items():
                    for label, path, kwargs in requests_for(name, dep):
                        r = client.post(path, **kwargs)
                        seen = f"{r.status_code} {dict(r.headers)} {r.text}"
                        checked += 1
                        errors += r.status_code >= 400 or "error" in r.text
                        found = leaks(seen, address)
                        if found:
                            problems.append(f"{name} {label} upstream {status} -> {r.status_code}: {found}: "
                                            f"{seen[:300]}")
            # the probes have failed by now (the echo answers every probe with the last status): the operator's
            # view names the failures, scrubbed, and only the master key reads it
            assert client.get("/health/providers", headers={"authorization": ""}).status_code == 401
            assert client.get("/health/providers", headers={"authorization": f"Bearer {CANARY}"}).status_code == 401
            health = client.get("/health/providers")
            assert health.status_code == 200
            assert any(d.get("health_check", {}).get("last_error") for d in health.json()["deployments"])
            problems += [f"/health/providers: {f}" for f in leaks(health.text, address)]
        assert mode["seen"] > checked  # every call reached the upstream (and the probes did too)
        gw.stop()
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    problems += [f"log: {f}" for f in leaks(logged, address)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    for f in files:
        problems += [f"{f.name}: {x}" for x in leaks(f.read_bytes().decode("latin-1"), address)]
    assert not problems, "\n".join(problems[:40])
    # the battery's size, for the record (docs/security.md)
    print(f"canary battery: {checked} calls, {errors} error paths, {len(files)} files, "
          f"{len(caplog.records)} log records checked")
    assert errors >= 8 * (len(STATUSES) - 1)


def test_the_scrubber_finds_fragments_masked_echoes_and_addresses() -> None:
    s = Scrubber([CANARY, "pw12"], {"http://10.1.2.3:8080/v1": "private/0", "https://my.azure.com": "az"})
    assert s.text(f"key {CANARY} end") == "key [REDACTED] end"
    assert s.text(f"partial {CANARY[5:5 + FRAGMENT]} end") == "partial [REDACTED] end"
    assert CANARY[3:3 + FRAGMENT - 1] in s.text(CANARY[3:3 + FRAGMENT - 1])  # shorter than a fragment: not one
    assert s.text(f"Incorrect API key provided: sk-cana{'*' * 20}{CANARY[-4:]}.") == \
        "Incorrect API key provided: [REDACTED]"
    assert s.text(f"key sk-...{CANARY[-4:]}") == "key [REDACTED]"
    assert s.text("POST http://10.1.2.3:8080/v1/chat/completions failed") == "POST [upstream private/0] failed"
    assert s.text("host my.azure.com refused") == "host [upstream az] refused"
    assert s.text("pw12 is short") == "[REDACTED] is short"
    body = b'{"ok": "nothing secret here"}'
    assert s.data(body) is body  # the happy path: no copy


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64])
def test_a_stream_scrubs_secrets_split_across_chunks(size: int) -> None:
    import asyncio

    s = Scrubber([CANARY], {"http://10.1.2.3:8080": "d"})
    data = f"audio{CANARY}bytes 10.1.2.3:8080 tail".encode()

    async def chunks() -> Any:
        for i in range(0, len(data), size):
            yield data[i:i + size]

    async def collect() -> bytes:
        return b"".join([c async for c in s.stream(chunks())])

    out = asyncio.run(collect()).decode()
    assert not leaks(out.replace("10.1.2.3:8080", "\0"), "\0") and "10.1.2.3:8080" not in out


def test_sse_chunks_pass_at_once() -> None:
    import asyncio

    s = Scrubber([CANARY], {})
    events = [b'data: {"a": 1}\n\n', b'data: {"b": 2}\n\n']

    async def chunks() -> Any:
        for e in events:
            yield e

    async def collect() -> list[bytes]:
        return [c async for c in s.stream(chunks())]

    assert asyncio.run(collect()) == events  # nothing held back: whole events go on as they came
