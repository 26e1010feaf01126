"""Where the Bedrock providers get AWS credentials and region: the config, Bedrock API keys, or botocore's
credential chain (environment, profiles, assume-role, credential_process, web identity, container credentials,
the instance role) against local fakes; renewals before expiry; and what an incomplete setup says."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from relaygate.config import ConfigError, parse_config
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


AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
           "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_PROFILE",
           "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_STS", "AWS_CREDENTIAL_EXPIRATION")


# the credential tests count signed requests and credential renewals: no model listing beside the calls
NO_LISTING = {"enabled": False}


def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS credentials anywhere botocore looks (CI runners and laptops may have some)."""
    for var in AWS_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def keyless(emu: BackgroundServer) -> dict[str, Any]:
    return {"name": "c", "deployments": [{"provider": "bedrock", "model": MODEL_ID, "api_base": emu.url,
                                          "region": REGION}]}


def chat(gw: GatewayThread) -> str:
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    return str(c.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}]).choices[0]
               .message.content)


def signed_by(emu: BackgroundServer) -> str:
    """The access key the last Converse call was signed with."""
    auth = sent(emu)[-1]["headers"]["authorization"]
    return str(auth.split("Credential=", 1)[1].split("/", 1)[0])


def start_error(config: dict[str, Any]) -> ConfigError:
    """The ConfigError that building and starting a gateway with ``config`` raises."""
    from relaygate.gateway import Gateway

    async def run() -> None:
        gw = await Gateway.create(parse_config(config, {}))
        await gw.close()

    with pytest.raises(ConfigError) as e:
        asyncio.run(run())
    return e.value


def fetches(emu: BackgroundServer, path: str) -> int:
    return len([r for r in emu.state.requests if r["path"] == path])


def test_credentials_and_region_come_from_the_environment_when_the_gateway_starts(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    gw = start_gateway({"models": [{"name": "c", "deployments": [
        {"provider": "bedrock", "model": MODEL_ID, "api_base": emu.url}]}]})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "changed-later")  # not read per request
    assert chat(gw) and signed_by(emu) == TEST_ACCESS_KEY


def test_a_shared_credentials_profile_is_used_and_a_missing_one_stops_start_up(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = other\n\n"
                     f"[work]\naws_access_key_id = {TEST_ACCESS_KEY}\naws_secret_access_key = {TEST_SECRET_KEY}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert chat(start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})) and signed_by(emu) == TEST_ACCESS_KEY
    monkeypatch.setenv("AWS_PROFILE", "missing")
    error = start_error({"models": [keyless(emu)]})
    assert error.errors == ["models[0].deployments[0]: AWS credentials: The config profile (missing) could not "
                            "be found"]


def test_a_profile_that_assumes_a_role_gets_temporary_credentials_from_sts(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    (tmp_path / "credentials").write_text(
        f"[base]\naws_access_key_id = {TEST_ACCESS_KEY}\naws_secret_access_key = {TEST_SECRET_KEY}\n")
    (tmp_path / "config").write_text("[profile bedrock]\nrole_arn = arn:aws:iam::000000000000:role/relaygate\n"
                                     "source_profile = base\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "bedrock")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emu.url)
    gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
    assert chat(gw) == "Hello! You said: hi"
    assert signed_by(emu).startswith("ASIAASSUMEDROLE")
    [assume] = [r for r in emu.state.requests if r["path"] == "/"]  # signed with the base profile's keys
    assert f"Credential={TEST_ACCESS_KEY}/" in assume["headers"]["authorization"]


CREDENTIAL_PROCESS = """
import json, sys, time
runs = sys.argv[1]
with open(runs, "a") as f:
    f.write("x")
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[2], "SecretAccessKey": sys.argv[3],
                  "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + int(sys.argv[4])))}))
"""


def test_credential_process_runs_at_start_and_again_before_its_credentials_expire(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    script, runs, ttl = tmp_path / "creds.py", tmp_path / "runs", tmp_path / "ttl"
    script.write_text(CREDENTIAL_PROCESS)
    ttl.write_text("3600")

    def profile(seconds: int) -> None:
        (tmp_path / "config").write_text(f"[profile proc]\ncredential_process = {sys.executable} {script} {runs} "
                                         f"{TEST_ACCESS_KEY} {TEST_SECRET_KEY} {seconds}\n")

    profile(3600)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "proc")
    gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
    assert runs.read_text() == "x"  # at start-up, not on the first call
    for _ in range(2):
        assert chat(gw) and signed_by(emu) == TEST_ACCESS_KEY
    assert runs.read_text() == "x"  # an hour left: kept
    profile(120)  # credentials that expire within the wait margin: every call waits for a renewal
    gw2 = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
    before = len(runs.read_text())
    assert chat(gw2) and chat(gw2)
    assert len(runs.read_text()) == before + 2


def test_web_identity_is_exchanged_for_temporary_credentials_at_sts(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    token = tmp_path / "token"
    token.write_text("eyJ-web-identity-token")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::000000000000:role/relaygate")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emu.url)
    gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
    assert chat(gw) == "Hello! You said: hi"
    assert signed_by(emu).startswith("ASIAWEBIDENTITY")


def test_an_ec2_instance_role_is_used_through_imdsv2(emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch,
                                                     start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", emu.url)
    gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
    for _ in range(2):
        assert chat(gw)
    imds = [(r["method"], r["path"], r["headers"].get("x-aws-ec2-metadata-token")) for r in emu.state.requests
            if r["path"].startswith("/latest/")]
    assert imds == [("PUT", "/latest/api/token", None),
                    ("GET", "/latest/meta-data/iam/security-credentials/", "imds-session-token"),
                    ("GET", "/latest/meta-data/iam/security-credentials/emulated-instance-role",
                     "imds-session-token")]  # fetched once, at start-up, for both calls
    assert signed_by(emu).startswith("ASIAINSTANCE")


CONTAINER = "/_aws/container-credentials"


def container_environment(emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          token_text: str) -> Path:
    """Container credentials from the emulator, with an authorization token file holding ``token_text``."""
    no_aws_environment(monkeypatch)
    token = tmp_path / "token"
    token.write_text(token_text)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", emu.url + CONTAINER)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token))
    return token


def test_container_credentials_are_renewed_before_expiry(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    container_environment(emu, monkeypatch, tmp_path, "container-auth-token")
    opts = emu.app[OPTIONS_KEY]
    try:
        opts.temporary_ttl = 120  # within the wait margin: every call waits for renewed credentials
        gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
        started = fetches(emu, CONTAINER)
        assert started >= 1
        assert chat(gw) and fetches(emu, CONTAINER) == started + 1
        opts.temporary_ttl = 3600  # renewed once more, then kept
        assert [chat(gw) and fetches(emu, CONTAINER) for _ in range(3)] == [started + 2] * 3
        fetch = next(r for r in emu.state.requests if r["path"] == CONTAINER)
        assert fetch["headers"]["authorization"] == "container-auth-token"  # read from the token file
        assert signed_by(emu).startswith("ASIACONTAINER")
    finally:
        opts.temporary_ttl = 3600


def test_credentials_in_their_last_quarter_hour_serve_while_one_renewal_runs(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    """Between botocore's advisory (15 min) and mandatory (10 min) refresh times, calls do not wait: a renewal
    runs beside them, and one that fails leaves the still valid credentials in use."""
    token = container_environment(emu, monkeypatch, tmp_path, "container-auth-token")
    opts = emu.app[OPTIONS_KEY]
    try:
        opts.temporary_ttl = 750
        gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})
        at_start = fetches(emu, CONTAINER)
        token.write_text("rotated-and-wrong")  # renewals are refused from now on
        began = time.monotonic()
        keys = set()
        for _ in range(3):
            assert chat(gw)
            keys.add(signed_by(emu))
        assert time.monotonic() - began < 2  # none waited for the renewal (botocore retries a refusal for 3 s)
        [key] = keys
        assert key.startswith("ASIACONTAINER")
        deadline = time.monotonic() + 10
        while fetches(emu, CONTAINER) == at_start and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(4)  # botocore's attempts at the refused renewal are over
        tried = fetches(emu, CONTAINER)
        assert tried > at_start
        for _ in range(2):  # still valid: they serve, and a failed renewal is not tried again at every call
            assert chat(gw) and signed_by(emu) == key
        assert fetches(emu, CONTAINER) == tried
    finally:
        opts.temporary_ttl = 3600


def test_a_credentials_source_that_refuses_at_start_up_is_asked_again_at_the_first_call(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    token = container_environment(emu, monkeypatch, tmp_path, "wrong")
    gw = start_gateway({"models": [keyless(emu)], "discovery": NO_LISTING})  # starts: the source exists, it refused this time
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gw)
    assert "could not get AWS credentials from container-role" in e.value.message
    assert "wrong" not in e.value.response.text
    token.write_text("container-auth-token")
    assert chat(gw) and signed_by(emu).startswith("ASIACONTAINER")


def test_setups_that_cannot_work_stop_start_up_naming_the_deployment(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch) -> None:
    no_aws_environment(monkeypatch)
    assert start_error({"models": [keyless(emu)]}).errors[0].startswith(
        "models[0].deployments[0]: AWS credentials missing")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.0.0.8/creds")  # not a container host
    assert "10.0.0.8" in start_error({"models": [keyless(emu)]}).errors[0]


def test_keys_in_the_config_need_no_botocore_and_other_sources_say_they_do(
        emu: BackgroundServer, monkeypatch: pytest.MonkeyPatch,
        start_gateway: Callable[..., GatewayThread]) -> None:
    no_aws_environment(monkeypatch)
    monkeypatch.setitem(sys.modules, "botocore", None)  # as if relaygate[aws] was not installed
    gw = start_gateway({"models": [{"name": "c", "deployments": [bedrock_deployment(emu)]}]})
    assert chat(gw) and signed_by(emu) == TEST_ACCESS_KEY
    with pytest.raises(ConfigError) as e:
        parse_and_build({"models": [keyless(emu)]})
    assert e.value.errors == ["models[0].deployments[0]: no AWS keys in the config, and finding them elsewhere "
                              "(environment, profiles, roles, SSO, the instance or container) needs botocore: "
                              "pip install 'relaygate[aws]'"]


def parse_and_build(config: dict[str, Any]) -> None:
    from relaygate.gateway import check_deployments

    check_deployments(parse_config(config, {}))


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
    ({"provider": "bedrock", "model": "m", "aws_access_key_id": "AKIA1", "aws_secret_access_key": "s"},
     "AWS region missing"),
    ({"provider": "bedrock", "model": "m", "region": "r", "aws_access_key_id": "AKIA1"}, "given together"),
    ({"provider": "bedrock", "model": "m", "region": "r", "aws_session_token": "t"}, "goes with aws_access_key_id"),
    ({"provider": "bedrock", "model": "m", "region": "r", "api_key": "k", "guardrail_id": "g1"},
     "guardrail_id and guardrail_version"),
])
def test_incomplete_aws_config_is_a_config_error_naming_the_deployment(
        deployment: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    no_aws_environment(monkeypatch)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError) as e:
        parse_and_build({"models": [{"name": "x", "deployments": [deployment]}]})
    assert e.value.errors[0].startswith("models[0].deployments[0]: ") and message in e.value.errors[0]
