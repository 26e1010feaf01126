"""Where AWS credentials come from: the deployment's own keys, or else botocore's credential chain, the one
the AWS SDKs and CLI use (environment, shared credentials and config files with profiles, assume-role, SSO,
``credential_process``, web identity, container credentials, the EC2 instance role), refreshed before they
expire.

botocore is an optional extra (``pip install 'relaygate[aws]'``), imported only for a deployment without keys
in its config. Its calls block (files, subprocesses, HTTP): they run in a thread, at start-up and when
credentials are due for renewal, never on a signed request's path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from typing import Any

from relaygate.core.errors import AuthError, GatewayError, Unavailable
from relaygate.providers.aws.sigv4 import AwsCredentials

log = logging.getLogger("relaygate")

# Within this many seconds of expiry, calls wait for renewed credentials (botocore's mandatory refresh);
# before that, from botocore's advisory refresh time (15 min), one renewal runs while the current ones serve.
WAIT_MARGIN = 600.0
RETRY_AFTER = 30.0  # seconds between background renewals that keep failing while the credentials are valid
MISSING = ("AWS credentials missing: set aws_access_key_id and aws_secret_access_key (or api_key, a Bedrock "
           "API key), or provide them where the AWS SDKs look: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a "
           "profile (AWS_PROFILE) with keys, a role, SSO or credential_process, a web identity, container "
           "credentials or an EC2 instance role")


class CredentialSource:
    """Fixed credentials; ``get`` is what every signed request calls."""

    def __init__(self, credentials: AwsCredentials | None = None) -> None:
        self.credentials = credentials

    async def start(self) -> None:
        """Find the credentials before the first call; a ValueError says the setup cannot work."""
        return None

    async def get(self) -> AwsCredentials:
        assert self.credentials is not None
        return self.credentials


class BotocoreSource(CredentialSource):
    """Credentials from botocore's resolver, resolved at start-up and renewed as botocore's refresh times say."""

    def __init__(self, region: str) -> None:
        super().__init__()
        if importlib.util.find_spec("botocore") is None:
            raise ValueError("no AWS keys in the config, and finding them elsewhere (environment, profiles, roles, "
                             "SSO, the instance or container) needs botocore: pip install 'relaygate[aws]'")
        self.region = region
        self._botocore: Any = None  # botocore's Credentials (RefreshableCredentials for temporary ones)
        self._refreshable = False
        self._lock = asyncio.Lock()
        self._renewal: asyncio.Future[None] | None = None
        self._retry_at = 0.0

    async def start(self) -> None:
        try:
            await self._renew()  # a ValueError (nothing found, a broken setup) stops start-up
        except GatewayError as e:  # a source is there but answered badly: the first call tries again
            log.warning("AWS credentials: %s; retrying at the first call", e.message)

    async def get(self) -> AwsCredentials:
        frozen = self.credentials
        if frozen is not None and not (self._refreshable and self._botocore.refresh_needed()):
            return frozen
        if frozen is not None and not self._botocore.refresh_needed(WAIT_MARGIN):
            if self._renewal is None and time.monotonic() >= self._retry_at:  # renew early, off this call's path
                self._renewal = asyncio.ensure_future(self._renew_in_background())
            return frozen
        async with self._lock:  # one renewal for every call that found the credentials (nearly) expired
            if self.credentials is None or self._botocore.refresh_needed(WAIT_MARGIN):
                try:
                    await self._renew()
                except ValueError as e:  # nothing found (any more): the deployment cannot sign
                    raise AuthError(str(e), code="upstream_auth_failed") from None
            assert self.credentials is not None
            return self.credentials

    async def _renew_in_background(self) -> None:
        try:
            await self._renew()
        except (GatewayError, ValueError) as e:  # the current credentials serve on, up to the wait margin
            log.warning("AWS credentials: renewal failed: %s", e.message if isinstance(e, GatewayError) else e)
        finally:
            self._renewal = None
            if self._refreshable and self._botocore.refresh_needed():  # botocore kept the old ones
                self._retry_at = time.monotonic() + RETRY_AFTER

    async def _renew(self) -> None:
        """Resolve (first time) or refresh the credentials in a thread; botocore's errors as gateway errors."""
        self._botocore, frozen = await asyncio.to_thread(self._resolve, self._botocore)
        from botocore.credentials import RefreshableCredentials

        self._refreshable = isinstance(self._botocore, RefreshableCredentials)
        if self.credentials is None or frozen != (self.credentials.access_key, self.credentials.secret_key,
                                                  self.credentials.session_token):
            self.credentials = AwsCredentials(*frozen)

    def _resolve(self, found: Any) -> tuple[Any, tuple[str, str, str | None]]:
        """(botocore credentials, their current access key, secret and token); runs in a thread."""
        import botocore.exceptions as bx
        from botocore.credentials import create_credential_resolver
        from botocore.session import Session

        try:
            if found is None:
                found = create_credential_resolver(Session(), region_name=self.region).load_credentials()
                if found is None:
                    raise ValueError(MISSING)
            frozen = found.get_frozen_credentials()  # refreshes temporary credentials when they are due
        except (bx.ProfileNotFound, bx.ConfigParseError, bx.ConfigNotFound, bx.PartialCredentialsError,
                bx.InvalidConfigError) as e:
            raise ValueError(f"AWS credentials: {e}") from None  # the setup itself is wrong
        except ValueError:
            raise
        except bx.HTTPClientError as e:
            raise Unavailable(f"could not reach the AWS credentials source ({type(e).__name__})", status=502) from None
        except Exception as e:  # refused, or a broken answer: the deployment cannot sign (details: botocore's log)
            what = getattr(found, "method", None) or getattr(e, "kwargs", {}).get("provider") or "botocore"
            code = getattr(e, "response", {}).get("Error", {}).get("Code") if isinstance(e, bx.ClientError) else None
            raise AuthError(f"could not get AWS credentials from {what} ({type(e).__name__}"
                            f"{': ' + code if code else ''})", code="upstream_auth_failed") from None
        return found, (frozen.access_key, frozen.secret_key, frozen.token or None)
