"""Async iterators: closing one now. Here, below every layer, so that the server, the pipeline layers and the
providers share one way of stopping the stream they wrap."""

from __future__ import annotations


async def aclose(stream: object) -> None:
    """Close an async iterator that can be closed (a generator), now rather than when it is collected."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
