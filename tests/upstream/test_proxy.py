"""Forward proxies: CONNECT tunnels for https (TLS inside, to the origin), absolute-form for http, NO_PROXY."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relaygate.upstream import Client, ConnectFailed, Proxy, ProxySettings
from tests.upstream.certs import Authority
from tests.upstream.rawserver import Peer, RawServer, respond, serve_forever

Arun = Callable[..., Any]
AUTH = "Basic " + base64.b64encode(b"user:p@ss").decode()


class LoopbackProxy:
    """A loopback proxy: tunnels CONNECT and forwards absolute-form requests; records what it was asked."""

    def __init__(self, require_auth: bool = True) -> None:
        self.require_auth = require_auth
        self.asked: list[tuple[str, str | None]] = []  # (request line, proxy-authorization)
        self.server = RawServer(self._script)

    def url(self, userinfo: str = "user:p%40ss@") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server.port}"

    async def __aenter__(self) -> LoopbackProxy:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.server.__aexit__(*exc)

    async def _script(self, peer: Peer) -> None:
        reader, writer = peer.reader, peer.writer
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            self.asked.append((lines[0], headers.get("proxy-authorization")))
            if self.require_auth and headers.get("proxy-authorization") != AUTH:
                await peer.send(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                return
            method, target, _ = lines[0].split(" ")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_r, up_w = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
                return
            await self._forward(target, lines, headers, reader, writer)

    async def _forward(self, target: str, lines: list[str], headers: dict[str, str],
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        u = urlsplit(target)
        assert u.scheme == "http" and u.hostname and u.port
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith("proxy-authorization")]
        head = "\r\n".join([f"{lines[0].split(' ')[0]} {u.path}{'?' + u.query if u.query else ''} HTTP/1.1",
                            *kept, "", ""]).encode("latin-1")
        up_r, up_w = await asyncio.open_connection(u.hostname, u.port)
        up_w.write(head + body)
        answer = await up_r.readuntil(b"\r\n\r\n")
        length = next(int(ln.split(b":")[1]) for ln in answer.split(b"\r\n") if ln.lower().startswith(b"content-length"))
        writer.write(answer + await up_r.readexactly(length))
        await writer.drain()
        up_w.close()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    finally:
        w.close()


def test_https_goes_through_a_connect_tunnel_with_the_proxy_credentials(arun: Arun, tmp_path: Path) -> None:
    ca = Authority.create("proxy test CA")
    server_ctx = ca.server_context(tmp_path, ["localhost"])

    async def test() -> None:
        async with RawServer(serve_forever(respond(body=b"via tunnel")), tls=server_ctx) as srv, \
                LoopbackProxy() as proxy:
            proxies = ProxySettings(https=proxy.url())
            async with Client(proxies=proxies, ca_file=ca.write(tmp_path / "ca.pem")) as client:
                for _ in range(2):
                    resp = await client.request("POST", srv.url(host="localhost"), data=b"{}")
                    assert await resp.read() == b"via tunnel"
            assert proxy.asked == [(f"CONNECT localhost:{srv.port} HTTP/1.1", AUTH)]  # one tunnel, kept alive
            assert "proxy-authorization" not in srv.requests[0][1]  # never sent inside the tunnel
    arun(test)


def test_the_tunnel_still_checks_the_origins_certificate(arun: Arun, tmp_path: Path) -> None:
    server_ctx = Authority.create("not trusted").server_context(tmp_path, ["localhost"])
    ca = Authority.create("trusted")

    async def test() -> None:
        async with RawServer(serve_forever(respond()), tls=server_ctx) as srv, LoopbackProxy() as proxy:
            async with Client(proxies=ProxySettings(https=proxy.url()),
                              ca_file=ca.write(tmp_path / "ca.pem")) as client:
                with pytest.raises(ConnectFailed, match="certificate"):
                    await client.request("GET", srv.url(host="localhost"))
    arun(test)


def test_a_proxy_that_wants_other_credentials_is_a_clear_connect_failure(arun: Arun, tmp_path: Path) -> None:
    async def test() -> None:
        async with LoopbackProxy() as proxy:
            proxies = ProxySettings(https=proxy.url(userinfo="user:wrong@"))
            async with Client(proxies=proxies) as client:
                with pytest.raises(ConnectFailed, match="407 .proxy authentication required") as e:
                    await client.request("GET", "https://localhost:9/v1/models")
                assert "wrong" not in str(e.value)
    arun(test)


def test_http_is_forwarded_in_absolute_form(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(serve_forever(respond(body=b"forwarded"))) as srv, LoopbackProxy() as proxy:
            async with Client(proxies=ProxySettings(http=proxy.url())) as client:
                for _ in range(2):
                    resp = await client.request("POST", srv.url("/v1/chat/completions?x=1"), data=b"{}")
                    assert await resp.read() == b"forwarded"
            line = f"POST http://127.0.0.1:{srv.port}/v1/chat/completions?x=1 HTTP/1.1"
            assert proxy.asked == [(line, AUTH), (line, AUTH)]
            assert srv.requests[0][0] == "POST /v1/chat/completions?x=1 HTTP/1.1"
    arun(test)


def test_no_proxy_hosts_connect_directly(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(serve_forever(respond(body=b"direct"))) as srv, LoopbackProxy() as proxy:
            proxies = ProxySettings.from_env({"HTTP_PROXY": proxy.url(), "NO_PROXY": "example.com, 127.0.0.0/8"})
            async with Client(proxies=proxies) as client:
                assert await (await client.request("GET", srv.url())).read() == b"direct"
            assert proxy.asked == []
    arun(test)


@pytest.mark.parametrize("no_proxy,host,port,proxied", [
    ("", "api.openai.com", 443, True),
    ("*", "api.openai.com", 443, False),
    ("openai.com", "api.openai.com", 443, False),
    (".openai.com", "openai.com", 443, False),
    ("*.openai.com", "api.openai.com", 443, False),
    ("openai.com", "notopenai.com", 443, True),
    ("openai.com:8443", "api.openai.com", 443, True),
    ("openai.com:443", "api.openai.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", 443, False),
    ("10.0.0.0/8", "11.1.2.3", 443, True),
    ("10.0.0.0/8", "internal.corp", 443, True),
    ("::1", "::1", 443, False),
    ("[::1]:443", "::1", 443, False),
    ("[::1]:8443", "::1", 443, True),
    ("localhost 127.0.0.1", "localhost", 80, False),
])
def test_no_proxy_rules(no_proxy: str, host: str, port: int, proxied: bool) -> None:
    s = ProxySettings(https="http://proxy.corp:3128", no_proxy=no_proxy)
    assert (s.select("https", host, port) is not None) is proxied


def test_proxy_settings_from_the_environment() -> None:
    s = ProxySettings.from_env({"https_proxy": "http://a:b@proxy:8080", "HTTPS_PROXY": "http://other:1",
                                "HTTP_PROXY": "proxy2"})
    assert s.https == Proxy("proxy", 8080, "Basic " + base64.b64encode(b"a:b").decode())
    assert s.http == Proxy("proxy2", 80)
    assert "a:b" not in repr(s.https) and "Basic" not in repr(s.https)
    assert s.select("http", "x", 80) is s.http
    with pytest.raises(ValueError, match="http://"):
        ProxySettings(https="https://proxy:443")


def test_the_gateways_providers_follow_the_proxy_environment(arun: Arun) -> None:
    from relaygate.config import ConfigError, OpenAIDeployment
    from relaygate.gateway import new_client
    from relaygate.providers.openai.provider import OpenAIProvider

    async def probe(base: str, env: dict[str, str]) -> None:
        client = new_client(env)
        try:
            await OpenAIProvider(OpenAIDeployment(model="gpt-4o-mini", api_base=base, api_key="sk-up-secret"),
                                 client).probe(time.monotonic() + 10)
        finally:
            await client.close()

    async def test() -> None:
        async with RawServer(serve_forever(respond(body=b'{"data":[]}'))) as srv, LoopbackProxy() as proxy:
            base = f"http://127.0.0.1:{srv.port}/v1"
            await probe(base, {"HTTP_PROXY": proxy.url()})
            assert proxy.asked == [(f"GET {base}/models HTTP/1.1", AUTH)]  # absolute form, through the proxy
            await probe(base, {"http_proxy": proxy.url(), "NO_PROXY": "localhost,127.0.0.0/8"})
            assert len(proxy.asked) == 1 and len(srv.requests) == 2  # the exemption went direct
        with pytest.raises(ConfigError, match="proxy"):
            new_client({"HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    arun(test)


def test_a_deployment_url_with_credentials_is_a_502_that_names_neither(arun: Arun) -> None:
    from relaygate.config import OpenAIDeployment
    from relaygate.core.errors import Unavailable
    from relaygate.gateway import new_client
    from relaygate.providers.openai.provider import OpenAIProvider

    async def test() -> None:
        client = new_client({})
        try:
            provider = OpenAIProvider(OpenAIDeployment(model="m", api_base="http://user:pw-secret@127.0.0.1:9/v1"),
                                      client)
            with pytest.raises(Unavailable) as e:
                await provider.probe(time.monotonic() + 5)
            assert e.value.status == 502 and e.value.code == "upstream_misconfigured"
            assert "pw-secret" not in e.value.message and "user" not in e.value.message
        finally:
            await client.close()
    arun(test)
