"""A client's request body on its way to an upstream, forwarded as it arrives (``Call.upload``,
``Call.forward``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from relaygate.core.errors import Unavailable


class ClientBody:
    """Streams a body once; remembers a failure reading the client so it is reported instead of the
    broken upstream request it caused (a 413 or 400 is the client's doing, not the upstream's)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._started = False

    @property
    def replayable(self) -> bool:
        """True when the body can be sent again (to another deployment on a retry)."""
        return False

    def begin(self) -> None:
        """Mark the body as being sent; a second send of a body that was not kept is refused."""
        if self._started and not self.replayable:
            err = Unavailable("the request body was already streamed to another upstream and cannot be replayed",
                              status=502)
            err.retryable = False
            raise err
        self._started = True

    async def guard(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Forward ``chunks``, noting a failure of the client side."""
        try:
            async for chunk in chunks:
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as e:
            self.error = e
            raise

    def reraise(self) -> None:
        """Raise the client-side failure, if there was one."""
        if self.error is not None:
            raise self.error


class StreamedBody(ClientBody):
    """A body forwarded chunk by chunk as the client sends it (passthrough): sent once, never kept."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks

    def chunks(self) -> AsyncIterator[bytes]:
        self.begin()
        return self.guard(self._chunks)


class ReadBody(ClientBody):
    """A body the gateway read whole before forwarding it (to price it): sent again on a retry."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    @property
    def replayable(self) -> bool:
        return True

    @staticmethod
    async def _once(data: bytes) -> AsyncIterator[bytes]:
        yield data

    def chunks(self) -> AsyncIterator[bytes]:
        self.begin()
        return self._once(self.data)


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A request to one of OpenAI's other routes as it goes upstream: the client's method, the path below
    ``/v1`` with its query, the headers worth forwarding, and its body (None when it has none, as a GET)."""

    method: str
    target: str
    headers: dict[str, str]
    body: StreamedBody | ReadBody | None
