"""Forward proxies: which origin goes through one (HTTPS_PROXY / HTTP_PROXY / NO_PROXY), and CONNECT tunnels.

The caller reads the variables (from the config or the environment) and passes them in: the client
never looks at the environment itself.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from httptools import HttpParserError, HttpResponseParser

from relaygate.upstream.errors import ConnectFailed


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy; ``authorization`` is the Proxy-Authorization value from the URL's user:password."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @property
    def what(self) -> str:
        return f"proxy {_authority(self.host, self.port)}"

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme.lower() != "http":
            raise ValueError(f"proxy URLs must be http:// (a TLS tunnel runs inside), not {parts.scheme}://")
        if not parts.hostname:
            raise ValueError("a proxy URL needs a host")
        auth = None
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = "Basic " + base64.b64encode(cred).decode("ascii")
        return cls(parts.hostname, parts.port or 80, auth)


class ProxySettings:
    """Which proxy an origin goes through: ``https`` for https:// origins, ``http`` for http:// ones, none
    for hosts that ``no_proxy`` names (comma-separated: ``*``, domains and their subdomains with or
    without a leading dot, IP addresses and CIDR ranges, each optionally with ``:port``)."""

    def __init__(self, http: str | None = None, https: str | None = None, no_proxy: str | None = None) -> None:
        self.http = Proxy.from_url(http) if http else None
        self.https = Proxy.from_url(https) if https else None
        self._all = False
        self._names: list[tuple[str, int | None]] = []
        self._nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        for entry in (no_proxy or "").replace(" ", ",").split(","):
            self._add_exception(entry.strip().lower())

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxySettings:
        """From the usual variables, upper- or lower-case (lower wins, as curl reads it)."""
        def var(name: str) -> str | None:
            return env.get(name.lower()) or env.get(name.upper()) or None
        return cls(http=var("HTTP_PROXY"), https=var("HTTPS_PROXY"), no_proxy=var("NO_PROXY"))

    def _add_exception(self, entry: str) -> None:
        if not entry:
            return
        if entry == "*":
            self._all = True
            return
        port: int | None = None
        host = entry
        if host.startswith("["):  # [v6]:port
            close = host.find("]")
            rest = host[close + 1:]
            host = host[1:close]
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif host.count(":") == 1:
            name, _, p = host.partition(":")
            if p.isdigit():
                host, port = name, int(p)
        try:
            self._nets.append((ipaddress.ip_network(host, strict=False), port))
            return
        except ValueError:
            pass
        self._names.append((host.lstrip("*").lstrip("."), port))

    def select(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for an origin, or None to connect directly."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self._all:
            return None
        for name, p in self._names:
            if (p is None or p == port) and (host == name or host.endswith("." + name)):
                return None
        if self._nets:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return proxy
            for net, p in self._nets:
                if (p is None or p == port) and ip in net:
                    return None
        return proxy


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int,
                      max_head: int) -> asyncio.Transport:
    """A TCP connection through ``proxy`` to host:port (CONNECT), ready for TLS."""
    reply = _TunnelReply(loop, proxy, max_head)
    try:
        transport, _ = await loop.create_connection(lambda: reply, proxy.host, proxy.port)
    except OSError as e:
        raise ConnectFailed(f"cannot connect to {proxy.what}: {e.strerror or type(e).__name__}") from None
    target = _authority(host, port)
    auth = f"proxy-authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
    transport.write(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{auth}\r\n".encode("latin-1"))
    try:
        status = await reply.done
    except BaseException:
        transport.abort()
        raise
    if status != 200:
        transport.abort()
        hint = " (proxy authentication required)" if status == 407 else ""
        raise ConnectFailed(f"{proxy.what} refused the tunnel to {target}: HTTP {status}{hint}")
    return transport


class _TunnelReply(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: a status line and headers, and nothing after them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proxy: Proxy, max_head: int) -> None:
        self.done: asyncio.Future[int] = loop.create_future()
        self.buf = bytearray()
        self.proxy = proxy
        self.max_head = max_head
        self.head_done = False

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > self.max_head:
                self._fail("an oversized reply")
            return
        if end + 4 != len(self.buf):  # the far end cannot speak before our TLS hello
            self._fail("bytes after its reply")
            return
        parser = HttpResponseParser(self)
        try:
            parser.feed_data(bytes(self.buf))
        except HttpParserError:
            pass
        if not self.head_done:
            self._fail("a malformed reply")
            return
        self.done.set_result(parser.get_status_code())

    def on_headers_complete(self) -> None:
        self.head_done = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectFailed(f"{self.proxy.what} closed the connection during CONNECT"))

    def _fail(self, what: str) -> None:
        self.done.set_exception(ConnectFailed(f"{self.proxy.what} sent {what} to CONNECT"))


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
