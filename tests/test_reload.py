"""Hot reload: a changed file, SIGHUP or ``POST /admin/reload`` swaps in a new config checked in full; calls in
flight finish on the old one, none fails; an invalid file is refused and the running config stays; the
upstream pool, limits, log writer and unchanged deployments carry over. Real processes on 127.0.0.1, each
test bounded well under a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import requests
import yaml

from relaygate.config import parse_config
from relaygate.gateway import Gateway
from relaygate.testing.base import BackgroundServer
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

from .conftest import UPSTREAM_KEY, inside_one_minute, openai_model
from .process_support import GatewayProcess, gateway_process
from .test_keys import MASTER
from .test_requestlog import log_rows
from .test_shutdown import StreamReader, chat

LOAD_SECONDS = 10.0  # reload under load: 32 clients for at least this long


def named(name: str, model: str, emulator: BackgroundServer, **extra: Any) -> dict[str, Any]:
    m = openai_model(model, emulator, **extra)
    m["deployments"][0]["name"] = name
    return m


def write_config(path: Path, config: dict[str, Any]) -> None:
    """As an operator should: a whole new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)


def health(gw: GatewayProcess) -> dict[str, Any]:
    return requests.get(gw.url + "/health", timeout=5).json()  # type: ignore[no-any-return]


def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)


def test_reload_under_load_switches_a_route_adds_a_model_and_refuses_an_invalid_file(
        openai_emulator: BackgroundServer, tmp_path: Path) -> None:
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as other, \
            BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as slow:
        requests.post(slow.url + "/_emulator/faults", json={"chunk_delay_ms": 300}, timeout=5)
        db = {"url": f"sqlite:///{tmp_path}/gateway.db"}
        v1 = {"models": [named("m-first", "m", openai_emulator), named("s-old", "s", slow)], "database": db}
        with gateway_process(tmp_path, v1) as gw:
            cfg = tmp_path / "gateway.yaml"
            first_hash = health(gw)["config"]["hash"]
            served: Counter[tuple[str, int, str]] = Counter()
            stream = StreamReader()
            stop = asyncio.Event()

            async def load(s: aiohttp.ClientSession, i: int) -> None:
                while not stop.is_set():
                    model = "n" if i % 4 == 0 and served[("n", 200, "n-new")] + served[("m", 200, "m-second")] else "m"
                    async with s.post(gw.url + "/v1/chat/completions", json=chat(model, "hi", False)) as r:
                        await r.read()
                        served[(model, r.status, r.headers.get("x-relaygate-deployment", ""))] += 1

            loaded: list[float] = []  # when the 32 clients started and stopped

            async def scenario() -> None:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                    loaded.append(time.monotonic())
                    workers = [asyncio.ensure_future(load(s, i)) for i in range(32)]
                    streaming = asyncio.ensure_future(stream.run(s, gw.url, chat("s", "a b c d e f g h i j", True)))
                    await asyncio.wait_for(stream.started.wait(), 10)
                    await asyncio.sleep(1.0)
                    # m moves to another upstream, s to a fast one, n is new
                    write_config(cfg, {"models": [named("m-second", "m", other), named("s-new", "s", other),
                                                  named("n-new", "n", openai_emulator)], "database": db})
                    await asyncio.to_thread(wait_for, lambda: served[("m", 200, "m-second")] > 0, 10, "new route")
                    await asyncio.to_thread(wait_for, lambda: served[("n", 200, "n-new")] > 0, 10, "new model")
                    await asyncio.wait_for(streaming, 15)  # the stream begun on the old config ends on it
                    cfg.write_text("models:\n  - name: broken\n    deployments: []\n")
                    await asyncio.to_thread(wait_for, lambda: "config reload (file changed) refused" in gw.output(),
                                            10, "the invalid file refused")
                    gw.proc.send_signal(signal.SIGHUP)
                    await asyncio.to_thread(wait_for, lambda: "config reload (SIGHUP) refused" in gw.output(),
                                            10, "SIGHUP refused")
                    before = sum(served.values())
                    await asyncio.sleep(1.0)
                    assert sum(served.values()) > before  # still serving on the running config
                    # the figure: c=32 for 10 s through all of the above (bounded: the steps took < 10 s)
                    await asyncio.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - loaded[0])))
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(*workers), 30)
                    loaded.append(time.monotonic())

            asyncio.run(scenario())
            elapsed = loaded[1] - loaded[0]
            assert elapsed >= LOAD_SECONDS
            now = health(gw)
            assert now["config"]["hash"] != first_hash and now["config"]["loaded_at"] > 0
            gw.proc.send_signal(signal.SIGTERM)
            assert gw.proc.wait(20) == 0
        failed = {k: v for k, v in served.items() if k[1] != 200}
        assert not failed, failed
        assert {d for (_, _, d) in served} <= {"m-first", "m-second", "n-new"}
        assert served[("m", 200, "m-first")] and served[("m", 200, "m-second")] and served[("n", 200, "n-new")]
        assert stream.events[-1][1] == "[DONE]" and stream.error() is None
        assert "models[0].deployments: List should have at least 1 item" in gw.output()
        assert "the replaced config" in gw.output() and "Traceback" not in gw.output()
        rows = log_rows(db["url"])
        assert len(rows) == sum(served.values()) + 1  # every call logged, the stream too
        assert [r["deployment"] for r in rows if r["model"] == "s"] == ["s-old"]
        print(f"reload under load: {sum(served.values())} calls in {elapsed:.1f} s at c=32, none failed")


def test_admin_reload_answers_the_errors_and_carries_a_keys_rate_count(openai_emulator: BackgroundServer,
                                                                       tmp_path: Path) -> None:
    secret = "sk-" + os.urandom(16).hex()
    base = {"models": [openai_model("m", openai_emulator)], "auth": {
        "master_key": MASTER, "keys": [{"id": f"r{time.time_ns()}", "key": secret, "rpm": 3}]}}
    with gateway_process(tmp_path, {**base, "server": {"watch_config": False}}) as gw:
        cfg = tmp_path / "gateway.yaml"
        admin = {"authorization": f"Bearer {MASTER}"}
        user = {"authorization": f"Bearer {secret}"}
        inside_one_minute(8)  # the three calls and the fourth in one minute
        for _ in range(3):
            assert requests.post(gw.url + "/v1/chat/completions", json=chat("m", "hi", False), headers=user,
                                 timeout=10).status_code == 200
        assert requests.post(gw.url + "/admin/reload", headers=user, timeout=10).status_code == 401
        config = yaml.safe_load(cfg.read_text())
        cfg.write_text(yaml.safe_dump({**config, "models": [{"name": "m", "deployments": [
            {"provider": "openai", "model": "x", "api_base": "not a url"}]}]}))
        r = requests.post(gw.url + "/admin/reload", headers=admin, timeout=10)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_config" and err["type"] == "invalid_request_error"
        assert any(e.startswith("models[0].deployments[0].api_base") for e in err["errors"]), err
        hash_before = health(gw)["config"]["hash"]
        assert hash_before in err["message"]
        # valid: another model added, a restart-only setting changed; the key's count of this minute goes on
        cfg.write_text(yaml.safe_dump({**config, "models": [*config["models"], openai_model("n", openai_emulator)],
                                       "server": {"watch_config": False, "port": 1}}))
        r = requests.post(gw.url + "/admin/reload", headers=admin, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "reloaded" and body["config"]["hash"] == health(gw)["config"]["hash"] != hash_before
        assert body["warnings"] == ["server.port: changed; takes effect at the next start"]
        assert requests.post(gw.url + "/admin/reload", headers=admin, timeout=10).json()["status"] == "unchanged"
        r = requests.post(gw.url + "/v1/chat/completions", json=chat("n", "hi", False), headers=user, timeout=10)
        assert r.status_code == 429, r.text  # the 4th call this minute: the limiter carried over
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(20) == 0


def test_a_reload_carries_over_the_parts_whose_config_is_unchanged(openai_emulator: BackgroundServer,
                                                                   tmp_path: Path) -> None:
    db = {"url": f"sqlite:///{tmp_path}/carry.db"}
    two = {"name": "two", "deployments": [openai_model("x", openai_emulator)["deployments"][0]] * 2}
    first = parse_config({"models": [openai_model("m", openai_emulator), two], "database": db,
                          "auth": {"master_key": MASTER}}, {})
    second = parse_config({"models": [openai_model("m", openai_emulator, timeout=20), two], "database": db,
                           "auth": {"master_key": MASTER}}, {})
    third = parse_config({"models": [two], "database": db, "auth": {"master_key": MASTER},
                          "request_log": {"batch_size": 7}}, {})

    async def scenario() -> None:
        old = await Gateway.create(first)
        new = await Gateway.create(second, previous=old)
        assert (new.client, new.db, new.reads, new.auth, new.limiter, new.writer, new.breakers) == \
               (old.client, old.db, old.reads, old.auth, old.limiter, old.writer, old.breakers)
        assert new.table.models["two"] == old.table.models["two"]  # the same objects: breakers, stats
        assert new.table.models["m"][0] is not old.table.models["m"][0]  # its timeout changed
        assert new.health is not old.health
        await old.close(keep=[new])
        assert not new.client.closed and new.writer is not None and new.writer._thread.is_alive()
        newest = await Gateway.create(third, previous=new, keep=[new])
        assert newest.writer is not new.writer and newest.db is new.db and newest.client is new.client
        await new.close(keep=[newest])
        assert not newest.client.closed and newest.writer is not None and newest.writer._thread.is_alive()
        await newest.close()
        assert newest.client.closed

    asyncio.run(scenario())
