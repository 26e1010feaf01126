"""Reading a config: YAML 1.2, ``${ENV_VAR}`` interpolation, and every problem reported with its path."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from relaygate.config.base import ConfigError
from relaygate.config.deployments import DEPLOYMENT_TYPES, PROVIDER_TYPES, DeploymentBase, providers_taking
from relaygate.config.schema import DEMO_MODEL, Config

if TYPE_CHECKING:
    import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a missing variable is an error."""
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""
        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    return node


def _path(loc: tuple[Any, ...]) -> tuple[str, str | None, int]:
    """``models[0].deployments[1].region`` from pydantic's location, without the union's tag (``…[1].openai.``);
    also that tag (the deployment's provider) and how many parts follow it."""
    out = ""
    tag: str | None = None
    after = 0
    for i, part in enumerate(loc):
        if (tag is None and i >= 2 and loc[i - 2] == "deployments" and isinstance(loc[i - 1], int)
                and part in DEPLOYMENT_TYPES):
            tag = part
            continue
        if tag is not None:
            after += 1
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>", tag, after


def _message(err: Mapping[str, Any], provider: str | None = None, field: str | None = None) -> str:
    """pydantic's message, said plainly; ``field`` is set when the error is on a deployment's own field."""
    kind = err.get("type")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's field; a dataclass's (a select)
        if provider is None or field is None:
            return "unknown field"
        others = providers_taking(field)
        hint = f" (a field of {', '.join(others)})" if 0 < len(others) <= 3 else ""  # only when it points somewhere
        return f"unknown field for provider {provider}{hint}"
    if kind == "missing" and provider is not None and field is not None:
        return f"required for provider {provider}"
    if kind in ("model_attributes_type", "dataclass_type"):
        return "expected a mapping"
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _describe(err: Mapping[str, Any]) -> list[str]:
    path, provider, after = _path(tuple(err["loc"]))
    kind = err.get("type")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = f"expected one of {', '.join(PROVIDER_TYPES)}"
        tag = (err.get("ctx") or {}).get("tag")
        what = f"unknown provider {tag!r}" if kind == "union_tag_invalid" else "required"
        data = err.get("input")
        return [f"{path}.provider: {what}; {expected}",
                *(_untyped_errors(path, data) if isinstance(data, dict) else [])]
    field = str(err["loc"][-1]) if provider is not None and after == 1 else None
    return [f"{path}: {_message(err, provider, field)}"]


def _untyped_errors(path: str, data: dict[Any, Any]) -> list[str]:
    """What is wrong besides the provider in a deployment whose provider is unknown: its shared fields, and
    fields no provider has."""
    shared = {k: v for k, v in data.items() if k in DeploymentBase.model_fields and k != "provider"}
    errors = [f"{path}.{k}: unknown field" for k in data if not providers_taking(str(k))]
    try:
        DeploymentBase.model_validate({**shared, "provider": ""})
    except ValidationError as e:
        errors.extend(f"{path}.{_path(tuple(x['loc']))[0]}: {_message(x)}" for x in e.errors())
    return errors


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: the config must be a mapping"])
    errors: list[str] = []
    data = interpolate(raw, env, "", errors)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        errors.extend(line for err in e.errors() for line in _describe(err))
        raise ConfigError(errors) from None
    errors.extend(cfg.reference_errors())
    if errors:
        raise ConfigError(errors)
    return cfg


@functools.cache
def _yaml12_loader() -> type[yaml.SafeLoader]:
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 would read ``on:`` (the fallback and
    breaker key) and ``no``/``yes``/``off`` as booleans, silently breaking configs. Made on first use: the
    zero-config gateway reads no YAML and never imports the parser."""
    import yaml

    class Yaml12Loader(yaml.SafeLoader):
        pass

    Yaml12Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Yaml12Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Yaml12Loader


def load_yaml(stream: str | IO[str]) -> Any:
    """A YAML document read the way config files are (YAML 1.2 booleans); yaml.YAMLError when malformed."""
    import yaml

    return yaml.load(stream, Loader=_yaml12_loader())  # noqa: S506 (a SafeLoader subclass)


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config at ``path``, or the zero-config default when ``path`` is None."""
    env = os.environ if env is None else env
    if path is None:
        return default_config(env)
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = load_yaml(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    return parse_config(raw, env)


def default_config(env: Mapping[str, str]) -> Config:
    """The zero-config gateway: a local ``demo`` model, plus OpenAI's models when OPENAI_API_KEY is set."""
    models: list[dict[str, Any]] = [{
        "name": DEMO_MODEL,
        "description": "Built-in demo model answered locally by relaygate's OpenAI emulator (not a real LLM).",
        "deployments": [{"provider": "demo", "model": DEMO_MODEL}],
    }]
    key = env.get("OPENAI_API_KEY")
    if key:
        base = env.get("OPENAI_API_BASE") or env.get("OPENAI_UPSTREAM_BASE_URL") or "https://api.openai.com/v1"
        models.append({
            "name": "*",
            "description": "Any OpenAI model, forwarded with OPENAI_API_KEY.",
            "deployments": [{"provider": "openai", "model": "*", "api_base": base, "api_key": key}],
        })
    return parse_config({"models": models}, env)
