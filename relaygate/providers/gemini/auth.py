"""Vertex AI access tokens from a Google credentials file (a service account key…), refreshed early.

Uses google-auth when it is installed (an optional dependency); its blocking refresh runs in a thread,
one at a time, and the token is reused until five minutes before it expires.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import Any
from urllib.parse import quote

from relaygate.config import VertexAnthropicDeployment, VertexDeployment
from relaygate.core.errors import AuthError, UpstreamTimeout
from relaygate.core.scrub import Scrubber

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN = 300.0  # seconds before expiry at which a token is replaced


class TokenSource:
    """``await source.header()`` is a valid ``Bearer …`` value for Google APIs."""

    def __init__(self, path: str, timeout: float) -> None:
        try:
            from google.oauth2 import credentials, service_account
        except ImportError:
            raise ValueError("credentials_file needs the google-auth package (pip install google-auth)") from None
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
            kind = info.get("type") if isinstance(info, dict) else None
            # only these two kinds: "external_account" configs can make google-auth run programs
            if kind == "service_account":
                self._creds: Any = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
            elif kind == "authorized_user":
                self._creds = credentials.Credentials.from_authorized_user_info(info, scopes=[SCOPE])
            else:
                raise ValueError(f"type {kind!r} is not supported (expected service_account or authorized_user)")
        except (OSError, ValueError) as e:
            raise ValueError(f"credentials_file {path!r} cannot be used: {e}") from None
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._header = ""
        self.token = ""  # the current access token (the provider's scrubber learns it)
        self._expires = 0.0

    async def header(self) -> str:
        if self._header and time.time() < self._expires - REFRESH_MARGIN:
            return self._header
        async with self._lock:  # one refresh at a time; the others wait for its token
            if not self._header or time.time() >= self._expires - REFRESH_MARGIN:
                try:
                    await asyncio.wait_for(asyncio.to_thread(self._refresh), self._timeout)
                except TimeoutError:
                    raise UpstreamTimeout("getting a Google access token timed out") from None
        return self._header

    def _refresh(self) -> None:
        import google.auth.exceptions
        import google.auth.transport.requests

        try:
            self._creds.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.GoogleAuthError as e:
            raise AuthError(f"cannot get a Google access token from the credentials file: {type(e).__name__}",
                            code="upstream_auth_failed") from None
        expiry = self._creds.expiry  # naive UTC, or None when the token server gave no lifetime
        self._expires = (expiry.replace(tzinfo=datetime.UTC).timestamp() if expiry is not None
                         else time.time() + REFRESH_MARGIN * 2)
        self.token = str(self._creds.token)
        self._header = "Bearer " + self.token


class GoogleAuth:
    """Vertex AI credentials for a provider: an OAuth access token (``api_key``) or a credentials file."""

    config: VertexDeployment | VertexAnthropicDeployment
    scrub: Scrubber
    _tokens: TokenSource | None = None

    def publisher_url(self, publisher: str, default_location: str, version: str) -> str:
        """Where a Vertex AI publisher's models are: ``…/{version}/projects/{project}/locations/{location}/
        publishers/{publisher}`` on the location's host (the global one for ``global``) or ``api_base``."""
        project, location = self.config.project, self.config.location or default_location
        if not project:
            raise ValueError(f"{self.config.provider} deployments need project (and location, default "
                             f"{default_location})")
        host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        base = self.config.api_base or f"https://{host}"
        return (f"{base}/{version}/projects/{quote(project, safe='')}/locations/{quote(location, safe='')}"
                f"/publishers/{publisher}")

    def google_auth(self, kind: str) -> dict[str, str]:
        """The static auth header; ``{}`` when tokens come from ``credentials_file`` (see ``with_token``)."""
        token = self.config.api_key.get_secret_value() if self.config.api_key is not None else ""
        self._tokens = None
        if token:
            return {"authorization": "Bearer " + token}
        if self.config.credentials_file:
            self._tokens = TokenSource(self.config.credentials_file, self.config.timeout)
            return {}
        raise ValueError(f"{kind} deployments need credentials_file (a service account key) or api_key (an OAuth "
                         "access token)")

    async def with_token(self, headers: dict[str, str]) -> dict[str, str]:
        if self._tokens is None:
            return headers
        header = await self._tokens.header()
        self.scrub.dynamic((id(self), "token"), (self._tokens.token,))  # a fetched token is a secret too
        return {**headers, "authorization": header}
