"""A transport for driving a server protocol in-process (no socket): tests and bench/protocol_case.py."""

from __future__ import annotations

import asyncio
from typing import Any


class HeldTransport(asyncio.Transport):
    """A client connection from 127.0.0.1 that is always writable and keeps what the server writes."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 4000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.data += bytes(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0
