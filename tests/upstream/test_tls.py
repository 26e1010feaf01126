"""TLS upstreams: the certificate and the host name are checked, SNI is sent, a wrong CA is refused."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relaygate.upstream import Client, ConnectFailed
from tests.upstream.certs import Authority
from tests.upstream.rawserver import RawServer, respond, serve_forever

Arun = Callable[..., Any]


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.create("relaygate test CA")


def test_a_tls_upstream_signed_by_the_configured_ca_is_trusted_with_sni(arun: Arun, ca: Authority,
                                                                          tmp_path: Path) -> None:
    server_ctx = ca.server_context(tmp_path, ["localhost", "127.0.0.1"])
    seen: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen.append(name)

    async def test() -> None:
        async with RawServer(serve_forever(respond(body=b"secure")), tls=server_ctx) as srv, \
                Client(ca_file=ca.write(tmp_path / "ca.pem")) as client:
            for _ in range(3):
                resp = await client.request("POST", srv.url(host="localhost"), data=b"{}")
                assert await resp.read() == b"secure"
            assert srv.connections == 1  # kept alive over TLS
            assert seen == ["localhost"]
            resp = await client.request("GET", srv.url(host="127.0.0.1"))  # an IP: checked against its SAN
            assert await resp.read() == b"secure"
    arun(test)


def test_a_certificate_from_another_ca_is_refused(arun: Arun, ca: Authority, tmp_path: Path) -> None:
    server_ctx = Authority.create("someone else").server_context(tmp_path, ["localhost"])

    async def test() -> None:
        async with RawServer(serve_forever(respond()), tls=server_ctx) as srv, \
                Client(ca_file=ca.write(tmp_path / "ca.pem")) as client:
            with pytest.raises(ConnectFailed, match="certificate .* refused"):
                await client.request("GET", srv.url(host="localhost"))
            assert not srv.requests
    arun(test)


def test_the_system_store_does_not_trust_a_private_ca(arun: Arun, ca: Authority, tmp_path: Path) -> None:
    server_ctx = ca.server_context(tmp_path, ["localhost"])

    async def test() -> None:
        async with RawServer(serve_forever(respond()), tls=server_ctx) as srv, Client() as client:
            with pytest.raises(ConnectFailed, match="certificate"):
                await client.request("GET", srv.url(host="localhost"))
    arun(test)


def test_a_certificate_for_another_host_name_is_refused(arun: Arun, ca: Authority, tmp_path: Path) -> None:
    server_ctx = ca.server_context(tmp_path, ["api.other.test"])

    async def test() -> None:
        async with RawServer(serve_forever(respond()), tls=server_ctx) as srv, \
                Client(ca_file=ca.write(tmp_path / "ca.pem")) as client:
            with pytest.raises(ConnectFailed, match="refused"):
                await client.request("GET", srv.url(host="localhost"))
    arun(test)


def test_a_given_ssl_context_is_used_as_it_is(arun: Arun, ca: Authority, tmp_path: Path) -> None:
    server_ctx = ca.server_context(tmp_path, ["localhost"])
    ctx = ssl.create_default_context(cafile=ca.write(tmp_path / "ca.pem"))

    async def test() -> None:
        async with RawServer(serve_forever(respond(body=b"ok")), tls=server_ctx) as srv, \
                Client(ssl_context=ctx) as client:
            assert await (await client.request("GET", srv.url(host="localhost"))).read() == b"ok"
    arun(test)
