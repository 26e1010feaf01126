"""Run a real relaygate server (uvicorn, the production app) in a thread: for tests and in-process use."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from relaygate.config import Config, parse_config
from relaygate.server.app import App
from relaygate.server.serve import GatewayServer
from relaygate.testing.base import free_port

# ``server.drain_idle_grace`` of a gateway in a thread unless its config sets one: its clients connect directly
# (no proxy in front that may be sending on an idle connection as the drain closes it), so a stop need not
# wait the production default (1 s) for the keep-alive connections their pools hold
DIRECT_DRAIN_IDLE_GRACE = 0.05


def with_direct_drain(config: Config) -> Config:
    """``config`` with the drain grace for directly connected clients, unless it sets its own."""
    if "drain_idle_grace" in config.server.model_fields_set:
        return config
    server = config.server.model_copy(update={"drain_idle_grace": DIRECT_DRAIN_IDLE_GRACE})
    return config.model_copy(update={"server": server})


class GatewayThread:
    """``with GatewayThread(config) as gw: gw.base_url`` — the gateway on 127.0.0.1:<free port>; its clients
    connect directly (a config for one behind a proxy sets ``server.drain_idle_grace``)."""

    def __init__(self, config: Config | dict[str, Any], env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = with_direct_drain(config if isinstance(config, Config) else parse_config(config, env or {}))
        self.host = host
        self.port = port or free_port(host)
        self.app = App(self.config)
        self.server = GatewayServer(self.app, self.host, self.port)
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    @property
    def gateway(self) -> Any:
        return self.app.gateway

    def start(self) -> GatewayThread:
        def run() -> None:
            import uvloop

            loop = uvloop.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.server.serve())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"relaygate:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("relaygate did not start")
            time.sleep(0.01)
        return self

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's event loop (to inspect or change live state in tests)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.request_stop()
        if self._thread is not None:
            self._thread.join(35)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
