"""Shared fixtures: emulators and the real gateway, each on a free loopback port."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx._transports.default as httpx_transports
import httpx2._transports.default as httpx2_transports
import pytest

from relaygate.config import Config, DatabaseConfig
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"


class StartGateway(Protocol):
    """The ``start_gateway`` fixture: runs the real server on a config (a dict or a loaded ``Config``)."""

    def __call__(self, config: dict[str, Any] | Config,
                 env: dict[str, str] | None = None) -> GatewayThread: ...


@pytest.fixture(autouse=True, scope="session")
def one_default_tls_context() -> Iterator[None]:
    """Every httpx client builds its SSL context when it is made, loading the whole CA bundle (~40 ms of CPU),
    whatever it then connects to: the OpenAI, Anthropic and Gemini SDKs' clients (httpx2), Cohere's and each
    ``httpx.get``/``post`` (httpx). A test makes several (a client fixture, emulator resets), all speaking
    plain HTTP to 127.0.0.1; so each stack's default context (verify=True, no client certificate) is built
    once per session and shared, as httpx lets clients share one. A context a test passes itself is used as
    it is; TLS is still verified against the same CAs. (httpcore sets a context's ALPN protocols per TLS
    connection: no test makes TLS connections through httpx clients of different HTTP versions at once.)"""
    shared: dict[tuple[str, bool, str | None, str | None], ssl.SSLContext] = {}

    def sharing(module: Any) -> Any:
        original = module.create_ssl_context  # (the transports' module attribute: fails loudly if it moves)

        def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
            if verify is not True or cert is not None:
                return original(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[no-any-return]
            key = (module.__name__, trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
            if key not in shared:
                shared[key] = original(verify=verify, cert=cert, trust_env=trust_env)
            return shared[key]

        return create_ssl_context

    with pytest.MonkeyPatch.context() as mp:
        for module in (httpx_transports, httpx2_transports):
            mp.setattr(module, "create_ssl_context", sharing(module))
        yield


@pytest.fixture
def openai_emulator() -> Iterator[BackgroundServer]:
    """An OpenAI emulator that requires UPSTREAM_KEY."""
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as srv:
        yield srv


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """``start_gateway(config_dict)`` runs the real server; all are stopped at the end of the test.

    Without a ``database`` section the request log goes to a SQLite file in the test's tmp_path.
    """
    started: list[GatewayThread] = []

    def start(config: dict[str, Any] | Config, env: dict[str, str] | None = None) -> GatewayThread:
        url = f"sqlite:///{tmp_path}/relaygate-{len(started)}.db"
        if isinstance(config, Config):
            if "database" not in config.model_fields_set:
                config = config.model_copy(update={"database": DatabaseConfig(url=url)})
        elif "database" not in config:
            config = {**config, "database": {"url": url}}
        elif (not str(config["database"].get("url", "")).startswith("sqlite")
              and "spool_dir" not in config.get("request_log", {})):
            # a database that is not a SQLite file spools into ./relaygate-spool by default: one per test, so a
            # row one test left there is never replayed into another test's database
            spool = str(tmp_path / f"spool-{len(started)}")
            config = {**config, "request_log": {**config.get("request_log", {}), "spool_dir": spool}}
        gw = GatewayThread(config, env=env).start()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        gw.stop()


def openai_model(name: str, emulator: BackgroundServer, upstream_model: str = "gpt-4o-mini",
                 **extra: Any) -> dict[str, Any]:
    """A config ``models`` entry served by the OpenAI emulator."""
    return {"name": name, "deployments": [{
        "provider": "openai", "model": upstream_model, "api_base": emulator.url + "/v1",
        "api_key": UPSTREAM_KEY, "timeout": 10, **extra}]}


def require_service(name: str) -> None:
    """Skip when a real service is missing, except under CI=true where that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required under CI=true but is not reachable")
    pytest.skip(f"{name} is not reachable")


PG_ADMIN_URL = os.environ.get("RELAYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the machine's server (dropped afterwards)."""
    yield from _pg_database()


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """Like ``pg_url``, one for a whole test module."""
    yield from _pg_database()


def _pg_database() -> Iterator[str]:
    import psycopg

    name = "relaygate_t_" + os.urandom(6).hex()
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        require_service("postgresql")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def inside_one_minute(seconds: float = 5.0) -> None:
    """Rate windows are UTC minutes: start a counted sequence with at least ``seconds`` left in this one (a
    sequence that straddles two minutes sees its count start again)."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)
