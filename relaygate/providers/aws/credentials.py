"""Where AWS credentials come from: fixed keys (config, environment, a shared credentials profile), or temporary ones that the runtime hands out and relaygate
refreshes ahead of expiry (EKS web identity via STS, ECS/EKS container credentials, EC2 instance roles).

Which source applies is decided once, when the gateway is built, from the deployment config and the standard
environment variables; temporary credentials are fetched on first use and refreshed by one call at a time.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from relaygate.core.errors import AuthError, GatewayError, Unavailable
from relaygate.providers.aws.sigv4 import AwsCredentials

REFRESH_MARGIN = 300.0  # seconds before expiry at which credentials are renewed
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)
ECS_HOST = "http://169.254.170.2"
IMDS = "http://169.254.169.254"
IMDS_ROLES = "meta-data/iam/security-credentials/"
# the hosts botocore also accepts for container credentials over plain http (ECS, EKS Pod Identity)
_CONTAINER_HOSTS = {"169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost"}
_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"

Fetch = Callable[[aiohttp.ClientSession], Awaitable[tuple[AwsCredentials, float]]]


class CredentialSource:
    """Fixed credentials; ``get`` is what every signed request calls."""

    name = "static"

    def __init__(self, credentials: AwsCredentials | None = None) -> None:
        self.credentials = credentials

    async def get(self, session: aiohttp.ClientSession) -> AwsCredentials:
        assert self.credentials is not None
        return self.credentials


class RefreshingSource(CredentialSource):
    """Temporary credentials from ``fetch``; renewed REFRESH_MARGIN seconds before they expire."""

    def __init__(self, name: str, fetch: Fetch) -> None:
        super().__init__()
        self.name = name
        self._fetch = fetch
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def get(self, session: aiohttp.ClientSession) -> AwsCredentials:
        if self.credentials is not None and time.time() < self._expires - REFRESH_MARGIN:
            return self.credentials
        async with self._lock:  # one fetch for all the requests that found the credentials stale
            if self.credentials is not None and time.time() < self._expires - REFRESH_MARGIN:
                return self.credentials
            try:
                self.credentials, self._expires = await self._fetch(session)
            except GatewayError:
                if self.credentials is not None and time.time() < self._expires:
                    return self.credentials  # still valid: try again on the next call
                raise
            return self.credentials


def instance_source(env: Mapping[str, str]) -> RefreshingSource | None:
    """EC2 instance roles through IMDSv2; used on EC2, or wherever AWS_EC2_METADATA_SERVICE_ENDPOINT points."""
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    if not endpoint and not _on_ec2():
        return None  # elsewhere a missing credential stays a config error, not a timeout on every call
    base = (endpoint or IMDS).rstrip("/") + "/latest/"
    what = "the instance metadata service"

    async def fetch(session: aiohttp.ClientSession) -> tuple[AwsCredentials, float]:
        token = await _get(session, "PUT", base + "api/token", {"x-aws-ec2-metadata-token-ttl-seconds": "21600"},
                           None, what)
        headers = {"x-aws-ec2-metadata-token": token.decode("latin-1")}
        roles = (await _get(session, "GET", base + IMDS_ROLES, headers, None, what)).decode("latin-1").split()
        if not roles:
            raise AuthError("this EC2 instance has no IAM role", code="upstream_auth_failed")
        return _json_credentials(await _get(session, "GET", base + IMDS_ROLES + roles[0], headers, None, what), what)

    return RefreshingSource("instance", fetch)


def _on_ec2() -> bool:
    """What the instance's firmware says (read once, at build time; no network)."""
    for path, mark in (("/sys/devices/virtual/dmi/id/sys_vendor", "Amazon EC2"), ("/sys/hypervisor/uuid", "ec2")):
        try:
            with open(path, encoding="utf-8") as f:
                if f.read().strip().startswith(mark):
                    return True
        except OSError:
            continue
    return False


def _json_credentials(raw: bytes, what: str) -> tuple[AwsCredentials, float]:
    """The JSON shape both IMDS and the container endpoint answer with."""
    try:
        data = orjson.loads(raw)
        creds = AwsCredentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise Unavailable(f"{what} sent no credentials", status=502) from None
    return creds, _expiry(data.get("Expiration"))


def _expiry(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Unavailable("AWS credentials came with an unreadable expiration time", status=502) from None


def container_source(env: Mapping[str, str]) -> RefreshingSource | None:
    """ECS task roles and EKS Pod Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI / _RELATIVE_URI."""
    full, relative = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"), env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    if not full and not relative:
        return None
    url = full or ECS_HOST + str(relative)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" and host not in _CONTAINER_HOSTS and not _is_loopback(host):
        raise ValueError(f"AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, loopback or a container credentials "
                         f"host ({', '.join(sorted(_CONTAINER_HOSTS))}), not {host!r}")
    token, token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"), env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")

    async def fetch(session: aiohttp.ClientSession) -> tuple[AwsCredentials, float]:
        headers = {"accept": "application/json"}
        auth = _read_file(token_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") if token_file else token
        if auth:  # the file is read on every fetch: EKS rotates it
            headers["authorization"] = auth
        what = "the container credentials endpoint"
        return _json_credentials(await _get(session, "GET", url, headers, None, what), what)

    return RefreshingSource("container", fetch)


def profile_source(env: Mapping[str, str]) -> CredentialSource | None:
    """Access keys of a profile in the shared credentials file (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE);
    profiles that assume roles or use SSO are not resolved."""
    path = env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(env.get("HOME") or "~", ".aws", "credentials")
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    parser = configparser.RawConfigParser()
    try:
        found = parser.read(os.path.expanduser(path), encoding="utf-8")
    except configparser.Error as e:
        raise ValueError(f"the shared AWS credentials file cannot be parsed ({type(e).__name__})") from None
    if not found or not parser.has_section(profile):
        if env.get("AWS_PROFILE"):
            raise ValueError(f"AWS_PROFILE names {profile!r}, which has no access keys in {path}")
        return None
    section = parser[profile]
    key_id, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key_id or not secret:
        raise ValueError(f"profile {profile!r} in {path} has no aws_access_key_id / aws_secret_access_key (profiles "
                         "that assume roles or use SSO are not resolved)")
    return CredentialSource(AwsCredentials(key_id, secret, section.get("aws_session_token") or None))


def web_identity_source(env: Mapping[str, str], region: str) -> RefreshingSource | None:
    """EKS IAM roles for service accounts: AssumeRoleWithWebIdentity with the projected token file."""
    token_file, role = env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), env.get("AWS_ROLE_ARN")
    if not token_file or not role:
        return None
    endpoint = env.get("AWS_ENDPOINT_URL_STS") or f"https://sts.{region}.amazonaws.com"
    session_name = env.get("AWS_ROLE_SESSION_NAME") or f"relaygate-{int(time.time())}"

    async def fetch(session: aiohttp.ClientSession) -> tuple[AwsCredentials, float]:
        form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role,
                "RoleSessionName": session_name,
                "WebIdentityToken": _read_file(token_file, "AWS_WEB_IDENTITY_TOKEN_FILE")}
        raw = await _get(session, "POST", endpoint.rstrip("/") + "/", {"accept": "text/xml"}, form, "AWS STS")
        try:
            node = ET.fromstring(raw).find(f"{_STS_NS}AssumeRoleWithWebIdentityResult/{_STS_NS}Credentials")
            assert node is not None
            value = {child.tag.removeprefix(_STS_NS): child.text or "" for child in node}
            creds = AwsCredentials(value["AccessKeyId"], value["SecretAccessKey"], value["SessionToken"])
        except (ET.ParseError, AssertionError, KeyError):
            raise Unavailable("AWS STS sent no credentials", status=502) from None
        return creds, _expiry(value.get("Expiration"))

    return RefreshingSource("web identity", fetch)


async def _get(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
               form: dict[str, str] | None, what: str) -> bytes:
    try:
        async with session.request(method, url, headers=headers, data=form, timeout=FETCH_TIMEOUT,
                                   allow_redirects=False) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise Unavailable(f"could not get AWS credentials from {what} ({type(e).__name__})", status=502) from None
    if resp.status in (400, 401, 403):  # the runtime refused this workload: not a passing outage
        raise AuthError(f"{what} refused to issue AWS credentials (HTTP {resp.status})",
                        code="upstream_auth_failed")
    if resp.status >= 300:
        raise Unavailable(f"{what} answered HTTP {resp.status} instead of AWS credentials", status=502)
    return body


def _read_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise AuthError(f"cannot read {what} ({e.strerror})", code="upstream_auth_failed") from None


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
