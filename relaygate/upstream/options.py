"""The upstream client's settings: timeouts per request, limits per client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds per phase; None is no limit. A request's absolute deadline is passed beside these.

    ``read`` is the longest silence while waiting on the upstream (for the response, or for it to take
    more of a streamed upload); a consumer that is slow to read does not count. ``total`` runs from the
    call to ``request`` until the body is complete.
    """

    connect: float | None = 10.0
    read: float | None = None
    total: float | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection caps and lifetimes of one client.

    A request over a cap waits for a slot at most ``queue_timeout`` seconds (or until its deadline),
    then raises ``PoolTimeout``.
    """

    max_per_origin: int | None = None  # connections to one (scheme, host, port, proxy)
    max_total: int | None = None  # connections of the whole client
    queue_timeout: float = 30.0
    idle_timeout: float = 60.0  # an idle keep-alive connection is closed after this
    check_idle_after: float = 1.0  # a connection idle this long is polled for a close before reuse
    max_head_bytes: int = 64 * 1024  # a response's status line and headers (and, separately, trailers)
    read_buffer: int = 256 * 1024  # body bytes buffered ahead of a slow consumer before reading pauses
