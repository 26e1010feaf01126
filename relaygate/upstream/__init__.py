"""relaygate's own upstream HTTP/1.1 client (issue 20): a fifth of aiohttp's cost per request.

    client = Client(timeouts=Timeouts(connect=10, read=60, total=600), limits=Limits(max_per_origin=100))
    resp = await client.request("POST", url, headers=headers, data=body, deadline=call.deadline)
    async for chunk in resp: ...          # or: await resp.read()
"""

from relaygate.upstream.client import Client
from relaygate.upstream.errors import (
    ConnectFailed,
    ConnectionClosed,
    PoolTimeout,
    ProtocolError,
    TimedOut,
    UpstreamError,
)
from relaygate.upstream.http11 import EncodedHeaders
from relaygate.upstream.options import Limits, Timeouts
from relaygate.upstream.proxy import Proxy, ProxySettings
from relaygate.upstream.response import Response

__all__ = ["Client", "ConnectFailed", "ConnectionClosed", "EncodedHeaders", "Limits", "PoolTimeout", "ProtocolError",
           "Proxy", "ProxySettings", "Response", "TimedOut", "Timeouts", "UpstreamError"]
