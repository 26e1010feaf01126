"""The upstream client's own errors: the providers map each to a gateway error.

Messages name the origin (host and port) at most, never a path or query: a query may hold a key.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every error the upstream client raises about the upstream or the pool."""


class ConnectFailed(UpstreamError):
    """No connection: the name did not resolve, the port refused, TLS failed, or the proxy refused the tunnel.

    ``errno`` is the socket error's when there was one (EMFILE: the gateway, not the upstream, is out of files).
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class TimedOut(UpstreamError, TimeoutError):
    """A timeout, with the ``phase`` it hit: ``connect``, ``write``, ``read`` (silence) or ``total`` (deadline)."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


class ProtocolError(UpstreamError):
    """The upstream's bytes are not HTTP/1.1 we accept (strict parsing), or break a limit such as header size."""


class ConnectionClosed(UpstreamError):
    """The connection closed before the response was complete.

    ``request_sent`` is False only when provably no byte of the request reached the upstream, so that a
    caller may send it again; when True the upstream may have acted on it.
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class PoolTimeout(UpstreamError):
    """No connection slot came free in time: the per-origin or the global cap is full (map to 503/429)."""
