"""Where the Bedrock providers get AWS credentials and region: config, environment, web identity, container
credentials, Bedrock API keys; and what an incomplete setup says."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from relaygate.config import ConfigError, parse_config
from relaygate.core.errors import AuthError
from relaygate.testing.base import BackgroundServer
from relaygate.testing.bedrock import (
    OPTIONS_KEY,
    TEST_ACCESS_KEY,
    TEST_API_KEY,
    TEST_SECRET_KEY,
    BedrockEmulatorOptions,
    create_app,
)
from relaygate.testing.gateway import GatewayThread

from .bedrock_helpers import MODEL_ID, REGION, bedrock_deployment, sent


@pytest.fixture(scope="module")
def emu() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(BedrockEmulatorOptions(region=REGION))) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean(emu: BackgroundServer) -> None:
    emu.state.faults = None
    emu.state.requests.clear()


def test_credentials_and_region_come_from_the_environment_when_the_gateway_is_built(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch,
        start_gateway: Callable[..., GatewayThread]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    gw = start_gateway({"models": [{"name": "c", "deployments": [
        {"provider": "bedrock", "model": MODEL_ID, "api_base": emu.url}]}]})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "changed-later")  # not read per request
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    assert c.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content


AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
           "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_PROFILE",
           "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE")


def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS credentials anywhere the chain looks (CI runners and laptops may have some)."""
    for var in AWS_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def keyless(emu: BackgroundServer) -> dict[str, Any]:
    return {"name": "c", "deployments": [{"provider": "bedrock", "model": MODEL_ID, "api_base": emu.url,
                                          "region": REGION}]}


def test_container_credentials_are_cached_and_renewed_before_expiry(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    token = tmp_path / "token"
    token.write_text("container-auth-token\n")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", emu.url + "/_aws/container-credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token))
    gw = start_gateway({"models": [keyless(emu)]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    opts = emu.app[OPTIONS_KEY]

    def chat_and_count() -> int:
        assert c.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}]).choices
        return len([r for r in emu.state.requests if r["path"] == "/_aws/container-credentials"])

    try:
        opts.temporary_ttl = 60  # inside the 5-minute refresh margin: each call renews them
        assert [chat_and_count() for _ in range(2)] == [1, 2]
        opts.temporary_ttl = 3600  # renewed once more, then reused
        assert [chat_and_count() for _ in range(3)] == [3, 3, 3]
        fetch = next(r for r in emu.state.requests if r["path"] == "/_aws/container-credentials")
        assert fetch["headers"]["authorization"] == "container-auth-token"  # read from the token file
        assert sent(emu)[-1]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIACONTAINER")
        opts.temporary_ttl = 60
        token.write_text("rotated-and-wrong")
        gw2 = start_gateway({"models": [keyless(emu)]})  # a refused first fetch: nothing to sign with
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=gw2.base_url, api_key="k", max_retries=0).chat.completions.create(
                model="c", messages=[{"role": "user", "content": "hi"}])
        assert "refused to issue AWS credentials" in e.value.message
    finally:
        opts.temporary_ttl = 3600


def test_web_identity_is_exchanged_for_temporary_credentials_at_sts(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    token = tmp_path / "token"
    token.write_text("eyJ-web-identity-token")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::000000000000:role/relaygate")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emu.url)
    gw = start_gateway({"models": [keyless(emu)]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    r = c.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello! You said: hi"
    assert sent(emu)[-1]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIAWEBIDENTITY")


def test_an_ec2_instance_role_is_used_through_imdsv2(emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch,
                                                     start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", emu.url)
    gw = start_gateway({"models": [keyless(emu)]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    for _ in range(2):
        assert c.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}]).choices
    imds = [(r["method"], r["path"], r["headers"].get("x-aws-ec2-metadata-token")) for r in emu.state.requests
            if r["path"].startswith("/latest/")]
    assert imds == [("PUT", "/latest/api/token", None),
                    ("GET", "/latest/meta-data/iam/security-credentials/", "imds-session-token"),
                    ("GET", "/latest/meta-data/iam/security-credentials/emulated-instance-role",
                     "imds-session-token")]  # fetched once for both calls
    assert sent(emu)[-1]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIAINSTANCE")


def test_a_failed_renewal_keeps_credentials_that_are_still_valid() -> None:
    import asyncio
    import time as _time

    from relaygate.providers.aws.credentials import RefreshingSource
    from relaygate.providers.aws.sigv4 import AwsCredentials

    issued = AwsCredentials("ASIA1", "s1", "t1")
    answers: list[Any] = [(issued, _time.time() + 60), AuthError("refused"), AuthError("refused")]

    async def fetch(session: Any) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run() -> None:
        source = RefreshingSource("test", fetch)
        assert await source.get(None) is issued  # type: ignore[arg-type]
        assert await source.get(None) is issued  # type: ignore[arg-type]  # renewal refused, still valid
        source._expires = _time.time() - 1
        with pytest.raises(AuthError):
            await source.get(None)  # type: ignore[arg-type]

    asyncio.run(run())


def test_a_shared_credentials_profile_is_read_when_the_gateway_is_built(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = other\n\n"
                     f"[work]\naws_access_key_id = {TEST_ACCESS_KEY}\naws_secret_access_key = {TEST_SECRET_KEY}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "work")
    gw = start_gateway({"models": [keyless(emu)]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    assert c.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}]).choices
    monkeypatch.setenv("AWS_PROFILE", "missing")
    with pytest.raises(ValueError, match="has no access keys"):
        from relaygate.providers.aws.credentials import profile_source

        profile_source({"AWS_PROFILE": "missing", "AWS_SHARED_CREDENTIALS_FILE": str(creds)})


def test_instance_metadata_can_be_disabled() -> None:
    from relaygate.providers.aws.credentials import instance_source

    endpoint = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}
    assert instance_source(endpoint) is not None
    assert instance_source({**endpoint, "AWS_EC2_METADATA_DISABLED": "TRUE"}) is None


def test_container_credentials_url_must_be_a_container_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from relaygate.providers.aws.credentials import container_source

    with pytest.raises(ValueError, match="container credentials host"):
        container_source({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.0.0.8/creds"})
    assert container_source({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/x"}) is not None


def test_session_token_is_sent_and_checked(start_gateway: Callable[..., GatewayThread]) -> None:
    opts = BedrockEmulatorOptions(session_tokens={TEST_ACCESS_KEY: "token-abc-123"})
    with BackgroundServer(create_app(opts)) as srv:
        gw = start_gateway({"models": [
            {"name": "ok", "deployments": [bedrock_deployment(srv, aws_session_token="token-abc-123")]},
            {"name": "no-token", "deployments": [bedrock_deployment(srv)]}]})
        c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
        c.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
        assert srv.state.requests[-1]["headers"]["x-amz-security-token"] == "token-abc-123"
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="no-token", messages=[{"role": "user", "content": "hi"}])


def test_bedrock_api_key_is_sent_as_a_bearer_token_instead_of_sigv4(
        emu: BackgroundServer, start_gateway: Callable[..., GatewayThread], monkeypatch: pytest.MonkeyPatch) -> None:
    def key_only(**extra: Any) -> dict[str, Any]:
        d = bedrock_deployment(emu, **extra)
        del d["aws_access_key_id"], d["aws_secret_access_key"]
        return d

    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", TEST_API_KEY)
    gw = start_gateway({"models": [{"name": "by-config", "deployments": [key_only(api_key=TEST_API_KEY)]},
                                   {"name": "by-env", "deployments": [key_only()]},
                                   {"name": "bad-key", "deployments": [key_only(api_key="ABSKwrong-key-000")]}]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    for model in ("by-config", "by-env"):
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello! You said: hi"
        assert emu.state.requests[-1]["headers"]["authorization"] == f"Bearer {TEST_API_KEY}"
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="bad-key", messages=[{"role": "user", "content": "hi"}])
    assert "ABSKwrong" not in e.value.response.text


@pytest.mark.parametrize("deployment,message", [
    ({"provider": "bedrock", "model": "m", "region": "us-east-1"}, "AWS credentials missing"),
    ({"provider": "bedrock", "model": "m", "aws_access_key_id": "AKIA1", "aws_secret_access_key": "s"},
     "AWS region missing"),
    ({"provider": "bedrock", "model": "m", "region": "r", "aws_access_key_id": "AKIA1"}, "given together"),
    ({"provider": "bedrock", "model": "m", "region": "r", "api_key": "k", "guardrail_id": "g1"},
     "guardrail_id and guardrail_version"),
])
def test_incomplete_aws_config_is_a_config_error_naming_the_deployment(
        deployment: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from relaygate.gateway import build_deployments, new_session
    from relaygate.routing.breaker import Breakers

    no_aws_environment(monkeypatch)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    cfg = parse_config({"models": [{"name": "x", "deployments": [deployment]}]}, {})

    async def build() -> None:
        session = new_session()
        try:
            build_deployments(cfg, session, Breakers())
        finally:
            await session.close()

    with pytest.raises(ConfigError) as e:
        asyncio.run(build())
    assert e.value.errors[0].startswith("models[0].deployments[0]: ") and message in e.value.errors[0]
