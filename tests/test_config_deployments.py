"""Deployments typed per provider: a field belongs to the providers that read it, and the docs say which."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from relaygate.cli.main import main
from relaygate.config import (
    DEPLOYMENT_TYPES,
    PROVIDER_TYPES,
    BedrockDeployment,
    Config,
    ConfigError,
    DeploymentBase,
    StrategyName,
    load_yaml,
    parse_config,
)
from relaygate.gateway import new_client
from relaygate.providers import provider_class
from relaygate.routing.strategies import new_strategy
from tests.config_support import MINIMAL, deployment

REPO = Path(__file__).resolve().parent.parent
# what building each provider's adapter needs besides (credentials the config may leave to the environment)
TO_BUILD: dict[str, dict[str, Any]] = {
    "vertex_anthropic": {"api_key": "ya29.token"},
    "gemini": {"api_key": "AIza-test-key"},
    "vertex": {"api_key": "ya29.token"},
    "bedrock": {"region": "us-east-1", "api_key": "ABSK-test"},
    "bedrock_agent": {"region": "us-east-1", "aws_access_key_id": "AKIATEST", "aws_secret_access_key": "s"},
}


def one_model(*deployments: dict[str, Any]) -> dict[str, Any]:
    return {"models": [{"name": "m", "deployments": list(deployments)}]}


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {})
    return e.value.errors


def test_every_provider_has_a_minimal_config() -> None:
    assert set(MINIMAL) == set(PROVIDER_TYPES)


@pytest.mark.parametrize("provider", PROVIDER_TYPES)
def test_each_providers_minimal_config_loads_as_its_own_class(provider: str) -> None:
    cfg = parse_config(one_model({"provider": provider, **MINIMAL[provider]}), {})
    dep = cfg.models[0].deployments[0]
    assert type(dep) is DEPLOYMENT_TYPES[provider] and dep.provider == provider


@pytest.mark.parametrize("provider", PROVIDER_TYPES)
def test_each_provider_builds_its_adapter_from_its_typed_config(provider: str) -> None:
    dep = deployment(provider, **TO_BUILD.get(provider, {}))

    async def build() -> str:
        client = new_client()
        try:
            adapter = provider_class(dep)(dep, client)
            assert adapter.config is dep
            return adapter.kind
        finally:
            await client.close()

    assert asyncio.run(build()) == provider


@pytest.mark.parametrize("provider,field,value,owners", [
    ("openai", "region", "us-east-1", "bedrock, bedrock_agent"),
    ("openai", "agent_id", "A", "bedrock_agent"),
    ("azure", "guardrail_id", "g1", "bedrock"),
    ("anthropic", "input_type", "search_query", "gemini, vertex, cohere"),
    ("gemini", "voices", ["alloy"], "openai, azure"),
    ("cohere", "project", "p", "vertex_anthropic, vertex"),
    ("vertex", "max_tokens", 100, "anthropic, vertex_anthropic"),
    ("bedrock", "credentials_file", "/sa.json", "vertex_anthropic, vertex"),
    ("demo", "buffer_uploads", True, "openai, azure, cohere"),
])
def test_a_field_of_another_provider_is_an_error_naming_its_path(provider: str, field: str, value: Any,
                                                                  owners: str) -> None:
    good = {"provider": "demo", "model": "demo"}
    errors = errors_of(one_model(good, {"provider": provider, **MINIMAL[provider], field: value}))
    assert errors == [f"models[0].deployments[1].{field}: unknown field for provider {provider} (a field of {owners})"]


def test_a_field_most_providers_take_is_named_without_a_list_of_them() -> None:
    errors = errors_of(one_model({**MINIMAL["bedrock_agent"], "provider": "bedrock_agent", "api_key": "k"},
                                 {"provider": "demo", "model": "d", "api_base": "http://127.0.0.1:1"}))
    assert errors == ["models[0].deployments[0].api_key: unknown field for provider bedrock_agent",
                      "models[0].deployments[1].api_base: unknown field for provider demo"]


@pytest.mark.parametrize("provider,missing", [
    ("azure", ["api_base"]), ("vertex", ["project"]), ("vertex_anthropic", ["project"]),
    ("bedrock_agent", ["agent_id", "agent_alias_id"]),
])
def test_a_providers_required_field_is_named_when_missing(provider: str, missing: list[str]) -> None:
    errors = errors_of(one_model({"provider": provider, "model": "x"}))
    assert errors == [f"models[0].deployments[0].{f}: required for provider {provider}" for f in missing]


def test_nested_errors_keep_their_path_without_the_provider_tag() -> None:
    errors = errors_of(one_model({"provider": "openai", "model": "x", "health_check": {"interval": 0, "colour": 1},
                                  "voices": ["a", "a"], "api_base": "nope"}))
    assert sorted(errors) == [
        "models[0].deployments[0].api_base: not a URL (expected http:// or https://)",
        "models[0].deployments[0].health_check.colour: unknown field",
        "models[0].deployments[0].health_check.interval: Input should be greater than 0",
        "models[0].deployments[0].voices: voices are listed twice",
    ]


def test_an_unknown_provider_lists_the_known_ones_and_the_other_problems_still_show() -> None:
    errors = errors_of(one_model({"provider": "openia", "model": "x", "rpm": 0, "region": "r", "colour": 1}))
    assert errors[0] == ("models[0].deployments[0].provider: unknown provider 'openia'; expected one of "
                         + ", ".join(PROVIDER_TYPES))
    # region is some provider's field: nothing to say about it until the provider is known
    assert sorted(errors[1:]) == ["models[0].deployments[0].colour: unknown field",
                                  "models[0].deployments[0].rpm: Input should be greater than 0"]


def test_a_deployment_without_provider_or_not_a_mapping_is_named() -> None:
    errors = errors_of(one_model({"model": "x"}, "openai"))  # type: ignore[arg-type]
    assert errors == [
        "models[0].deployments[0].provider: required; expected one of " + ", ".join(PROVIDER_TYPES),
        "models[0].deployments[1]: expected a mapping",
    ]


def test_check_config_prints_a_field_on_the_wrong_provider_with_its_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text("""
models:
  - name: gpt
    deployments:
      - provider: openai
        model: gpt-4o-mini
      - provider: openai
        model: gpt-4o
        region: us-east-1
        guardrail_id: g1
""")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: 2 error(s)\n"
        "  models[0].deployments[1].region: unknown field for provider openai (a field of bedrock, bedrock_agent)\n"
        "  models[0].deployments[1].guardrail_id: unknown field for provider openai (a field of bedrock)\n")


def test_secrets_of_every_kind_are_known_for_redaction() -> None:
    dep = BedrockDeployment(model="m", api_key="ABSK-1", aws_access_key_id="AKIA2",
                            aws_secret_access_key="s3", aws_session_token="t4")
    assert sorted(dep.secret_values()) == ["ABSK-1", "AKIA2", "s3", "t4"]


@pytest.mark.parametrize("name", get_args(StrategyName))
def test_every_strategy_name_builds_a_strategy(name: str) -> None:
    assert new_strategy(name, random.Random(0), lambda d: None) is not None  # type: ignore[arg-type]


# ---- the docs ----------------------------------------------------------------------------------------------

class AnyVariable(dict[str, str]):
    """An environment where every ``${VAR}`` is set (to something that passes as a URL, and as a declared
    key: long and random-looking)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "http://127.0.0.1:9/3f9a1c7e5b0d4f28a6c1e9b7d3f05a2c"


def yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            blocks.append((f"{path.name}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return blocks


def variants() -> list[Path]:
    return sorted((REPO / "bench" / "variants").glob("relaygate*.yaml"))


@pytest.mark.parametrize("where,text", yaml_blocks(), ids=[w for w, _ in yaml_blocks()])
def test_docs_yaml_examples_are_valid_configs(where: str, text: str) -> None:
    raw = load_yaml(text)
    if isinstance(raw, list):  # a fragment: some deployments of a model
        assert raw and all(isinstance(d, dict) and "provider" in d for d in raw), f"{where}: not a config"
        raw = {"models": [{"name": "example", "deployments": raw}]}
    assert isinstance(raw, dict) and set(raw) <= set(Config.model_fields), f"{where}: not a config"
    parse_config(raw, AnyVariable())


@pytest.mark.parametrize("path", variants(), ids=lambda p: p.name)
def test_bench_variants_are_valid_configs(path: Path) -> None:
    parse_config(load_yaml(path.read_text()), {"BENCH_UPSTREAM": "http://127.0.0.1:9"})


def docs_section(heading: str) -> str:
    text = (REPO / "docs" / "providers.md").read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def table_rows(section: str, header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with ``header``, as lists of cells."""
    lines = section.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_docs_list_exactly_the_fields_each_provider_takes() -> None:
    section = docs_section("Deployment fields")
    shared = set(DeploymentBase.model_fields)
    rows = table_rows(section, "| provider | its own fields |")
    documented = {}
    for provider_cell, fields_cell in rows:
        provider = provider_cell.strip("`")
        names = re.findall(r"\*\*`(\w+)`\*\*|`(\w+)`", fields_cell)
        documented[provider] = {(a or b): bool(a) for a, b in names}
    assert list(documented) == list(PROVIDER_TYPES)
    for provider, cls in DEPLOYMENT_TYPES.items():
        own = {name: info.is_required() for name, info in cls.model_fields.items() if name not in shared}
        assert documented[provider] == own, provider  # name -> required (bold)

    described = {n for row in table_rows(section, "| field | meaning |") for n in re.findall(r"`(\w+)`", row[0])}
    assert described >= shared
    every = {n for cls in DEPLOYMENT_TYPES.values() for n in cls.model_fields}
    later = section[section.index("| provider | its own fields |"):]
    described_later = {n for row in table_rows(later, "| field | meaning |") for n in re.findall(r"`(\w+)`", row[0])}
    assert described_later == every - shared


def test_docs_list_exactly_the_routing_strategies() -> None:
    text = (REPO / "docs" / "routing.md").read_text()
    documented = [row[0].strip("`") for row in table_rows(text, "| strategy | chooses |")]
    assert sorted(documented) == sorted(get_args(StrategyName))


def test_yaml_is_read_as_yaml_1_2() -> None:
    assert load_yaml("on: [timeout]\nno: 1\nx: true\n") == {"on": ["timeout"], "no": 1, "x": True}
    with pytest.raises(yaml.YAMLError):
        load_yaml("models: [\n")
