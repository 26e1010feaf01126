"""Config loading: the documented shape, env interpolation, and errors that name their path."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaygate.cli.main import main
from relaygate.config import ConfigError, OpenAIDeployment, default_config, load_config, parse_config

ISSUE_SHAPE = """
models:
  - name: gpt-4o-mini
    deployments:
      - provider: openai
        model: gpt-4o-mini
        api_base: http://127.0.0.1:9000/v1
        api_key: ${OPENAI_API_KEY}
        timeout: 60
server:
  max_body_bytes: 10485760
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "relaygate.yaml"
    p.write_text(text)
    return str(p)


def test_documented_shape_loads_with_env_interpolated(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ISSUE_SHAPE), {"OPENAI_API_KEY": "sk-abc"})
    dep = cfg.models[0].deployments[0]
    assert isinstance(dep, OpenAIDeployment)
    assert dep.api_key is not None and dep.api_key.get_secret_value() == "sk-abc"
    assert dep.api_base == "http://127.0.0.1:9000/v1"
    assert cfg.server.max_body_bytes == 10485760


def test_missing_env_var_is_an_error_naming_it_and_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ISSUE_SHAPE), {})
    assert e.value.errors == ["models[0].deployments[0].api_key: environment variable OPENAI_API_KEY is not set"]


def test_env_default_syntax_is_used_when_variable_is_absent() -> None:
    cfg = parse_config({"server": {"host": "${HOST:-0.0.0.0}"}}, {})
    assert cfg.server.host == "0.0.0.0"


def test_every_error_is_listed_with_its_exact_path() -> None:
    raw = {"models": [
        {"name": "a", "deployments": [{"provider": "openai", "model": "x"}]},
        {"name": "b", "deployments": [{"provider": "openai", "model": "x"}]},
        {"name": "c", "deployments": [{"provider": "openai", "model": "x", "api_base": "ftp//nope"}]},
        {"name": "d", "deployments": [{"provider": "nosuch", "model": "x", "timeout": -1, "colour": "red"}]},
    ], "server": {"max_body_bytes": "big"}}
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {})
    errors = e.value.errors
    assert "models[2].deployments[0].api_base: not a URL (expected http:// or https://)" in errors
    assert any(err.startswith("models[3].deployments[0].provider: unknown provider 'nosuch'") for err in errors)
    assert any(err.startswith("models[3].deployments[0].timeout:") for err in errors)
    assert "models[3].deployments[0].colour: unknown field" in errors
    assert any(err.startswith("server.max_body_bytes:") for err in errors)
    assert len(errors) == 5


def test_duplicate_model_names_are_rejected() -> None:
    dep = [{"provider": "openai", "model": "x"}]
    with pytest.raises(ConfigError, match="duplicate model name 'a'"):
        parse_config({"models": [{"name": "a", "deployments": dep}, {"name": "a", "deployments": dep}]}, {})


def test_a_model_needs_at_least_one_deployment() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "a", "deployments": []}]}, {})
    assert e.value.errors[0].startswith("models[0].deployments:")


def test_non_mapping_and_bad_yaml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "models: [\n"), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), {})


def test_zero_config_serves_the_demo_model_only_without_an_openai_key() -> None:
    cfg = default_config({})
    assert [m.name for m in cfg.models] == ["demo"]
    assert cfg.models[0].deployments[0].provider == "demo"


def test_zero_config_exposes_openai_when_the_key_is_set() -> None:
    cfg = default_config({"OPENAI_API_KEY": "sk-live", "OPENAI_API_BASE": "http://127.0.0.1:9/v1"})
    wildcard = cfg.models[1].deployments[0]
    assert isinstance(wildcard, OpenAIDeployment)
    assert cfg.models[1].name == "*" and wildcard.model == "*"
    assert wildcard.api_base == "http://127.0.0.1:9/v1"


def test_check_config_exits_zero_on_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert main(["check-config", write(tmp_path, ISSUE_SHAPE)]) == 0
    assert "ok (1 models, 1 deployments)" in capsys.readouterr().out


def test_check_config_lists_every_error_and_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    bad = ISSUE_SHAPE.replace("http://127.0.0.1:9000/v1", "not-a-url")
    assert main(["check-config", write(tmp_path, bad)]) == 1
    err = capsys.readouterr().err
    assert "2 error(s)" in err
    assert "models[0].deployments[0].api_base: not a URL" in err
    assert "OPENAI_API_KEY is not set" in err


def test_check_config_reports_provider_level_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "models:\n  - name: a\n    deployments:\n      - {provider: anthropic, model: c, api_version: '2020-01-01'}\n"
    assert main(["check-config", write(tmp_path, text)]) == 1
    assert ("models[0].deployments[0]: api_version '2020-01-01' is not an anthropic-version relaygate knows"
            in capsys.readouterr().err)


def test_yaml_on_key_is_a_string_not_a_boolean(tmp_path: Path) -> None:
    text = """
models:
  - name: big
    deployments: [{provider: openai, model: gpt-4.1, api_base: "http://127.0.0.1:9/v1"}]
  - name: small
    deployments: [{provider: openai, model: gpt-4o-mini, api_base: "http://127.0.0.1:9/v1"}]
    fallbacks:
      - on: [context_too_long]
        models: [big]
"""
    cfg = load_config(write(tmp_path, text), {})
    assert cfg.models[1].fallbacks[0].on == ["context_too_long"]


def test_yaml_true_and_false_still_are_booleans(tmp_path: Path) -> None:
    text = "models: []\nrequest_log:\n  enabled: false\n"
    assert load_config(write(tmp_path, text), {}).request_log.enabled is False
