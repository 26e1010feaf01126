"""Typed configuration: one YAML file, ``${ENV_VAR}`` interpolation, every error named by its path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

PROVIDER_TYPES = ("openai", "azure", "demo", "anthropic", "gemini", "vertex", "bedrock", "bedrock_agent", "cohere",
                  "vertex_anthropic")
DEMO_MODEL = "demo"
STRATEGIES = ("round_robin", "weighted", "least_connections", "least_latency", "cost", "adaptive", "priority")
Strategy = Literal["round_robin", "weighted", "least_connections", "least_latency", "cost", "adaptive", "priority"]
# error kinds (GatewayError.kind) that a retry may act on: the transient ones
RETRYABLE_KINDS = ("unavailable", "rate_limited", "timeout")
FALLBACK_KINDS = ("unavailable", "rate_limited", "timeout", "context_too_long", "content_filtered",
                  "unsupported", "not_found", "auth", "permission", "bad_request", "internal")


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` lists every problem with its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _kinds(allowed: tuple[str, ...]) -> Any:
    def check(v: list[str]) -> list[str]:
        bad = [k for k in v if k not in allowed]
        if bad:
            raise ValueError(f"unknown error class {bad[0]!r}; expected some of {', '.join(allowed)}")
        return v
    return check


class HealthCheckConfig(_Strict):
    """Active health checks: a cheap probe every ``interval`` seconds."""

    enabled: bool = True
    interval: float = Field(30.0, gt=0)
    timeout: float = Field(5.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)  # consecutive failed probes that take a deployment out
    healthy_after: int = Field(1, ge=1)  # consecutive good probes that bring it back


class DeploymentConfig(_Strict):
    """One upstream that can serve a model."""

    provider: str
    model: str
    name: str | None = None  # unique id; derived from model/provider/index when omitted
    api_base: str | None = None
    api_key: SecretStr | None = None
    api_version: str | None = None  # azure api-version; anthropic-version for anthropic
    timeout: float = Field(60.0, gt=0)  # total seconds for a call
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float | None = Field(None, gt=0)  # max silence between bytes; default: timeout
    headers: dict[str, str] = Field(default_factory=dict)  # extra upstream headers (config only)
    max_tokens: int | None = Field(None, gt=0)  # output limit sent when the client sets none (anthropic needs one)
    # routing hints (used by routing strategies)
    weight: float = Field(1.0, ge=0)
    priority: int = 0
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    max_parallel: int | None = Field(None, gt=0)
    tags: list[str] = Field(default_factory=list)
    health_check: HealthCheckConfig | None = None  # overrides the model's
    # provider-specific settings (each provider validates what it needs)
    region: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    project: str | None = None
    location: str | None = None
    credentials_file: str | None = None  # vertex: a Google credentials JSON (service account…); needs google-auth
    agent_id: str | None = None
    agent_alias_id: str | None = None
    guardrail_id: str | None = None  # bedrock: a guardrail applied to every Converse call (id or ARN)
    guardrail_version: str | None = None  # bedrock: that guardrail's version (a number or DRAFT)
    # voice routing (text-to-speech): the voices this deployment serves (empty: any) and client voice ->
    # upstream voice renames (e.g. alloy -> af_sky on a local Kokoro server that stands in for OpenAI)
    voices: list[str] = Field(default_factory=list)
    voice_map: dict[str, str] = Field(default_factory=dict)
    embedding_batch_size: int | None = Field(None, gt=0)  # split longer embedding input arrays
    # read an audio upload whole (spooled to disk past 1 MiB) and send it with a Content-Length, for upstreams
    # that refuse chunked request bodies; by default it streams up while it arrives
    buffer_uploads: bool = False
    input_type: str | None = None  # embeddings: Cohere's input_type (default search_document); Gemini's task type

    @field_validator("voices")
    @classmethod
    def _voices(cls, v: list[str]) -> list[str]:
        if any(not x for x in v):
            raise ValueError("voice names must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("voices are listed twice")
        return v

    @field_validator("voice_map")
    @classmethod
    def _voice_map(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not k or not x for k, x in v.items()):
            raise ValueError("voice names must not be empty")
        return v

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        if v not in PROVIDER_TYPES:
            raise ValueError(f"unknown provider {v!r}; expected one of {', '.join(PROVIDER_TYPES)}")
        return v

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("not a URL (expected http:// or https://)")
        return v.rstrip("/")


class RetryConfig(_Strict):
    """Retries within a model: untried deployments first; the same one again only after a backoff."""

    # total tries across the model's deployments; default: each deployment once (no repeats)
    attempts: int | None = Field(None, ge=1, le=10)
    backoff: float = Field(0.2, ge=0)  # seconds before the 1st repeat on a deployment; doubles each time
    max_backoff: float = Field(5.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)  # the delay is scaled by a random factor in [1-jitter, 1]
    max_retry_after: float = Field(30.0, ge=0)  # an upstream retry-after longer than this is not waited for
    on: list[str] = Field(default_factory=lambda: list(RETRYABLE_KINDS))

    _on = field_validator("on")(_kinds(RETRYABLE_KINDS))


class BreakerConfig(_Strict):
    """Circuit breaker per deployment: closed -> open -> half-open (probes) -> closed."""

    # default: on when the model has somewhere else to go (several deployments or fallbacks); a lone
    # deployment then shows its own errors instead of the breaker's 503
    enabled: bool | None = None
    failures: int = Field(5, ge=1)  # consecutive failures that open it
    failure_rate: float = Field(0.5, gt=0, le=1)  # or this share of failures within ``window``…
    min_calls: int = Field(20, ge=1)  # …once the window holds at least this many calls
    window: float = Field(30.0, gt=0)  # seconds
    cooldown: float = Field(30.0, gt=0)  # seconds open before admitting probes
    probes: int = Field(1, ge=1)  # calls admitted at once while half-open
    on: list[str] = Field(default_factory=lambda: ["unavailable", "timeout"])

    _on = field_validator("on")(_kinds(RETRYABLE_KINDS))


class FallbackConfig(_Strict):
    """On an error of one of the classes ``on``, try these other models in order."""

    models: list[str] = Field(min_length=1)
    on: list[str] = Field(default_factory=lambda: list(RETRYABLE_KINDS), min_length=1)

    _on = field_validator("on")(_kinds(FALLBACK_KINDS))


class ModelConfig(_Strict):
    """A model name clients send, served by one or more deployments."""

    name: str = Field(min_length=1)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    description: str | None = None
    strategy: Strategy = "round_robin"
    fallbacks: list[FallbackConfig] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    health_check: HealthCheckConfig | None = None  # for every deployment without its own


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_audio_bytes: int = Field(26 * 1024 * 1024, gt=0)  # audio uploads (multipart); OpenAI accepts 25 MB files
    max_file_bytes: int = Field(512 * 1024 * 1024, gt=0)  # /v1/files and image uploads, streamed (passthrough)
    request_timeout: float = Field(600.0, gt=0)  # the per-request deadline across attempts


class StateConfig(_Strict):
    """Where state shared by gateway instances lives: in-process (default) or Redis."""

    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0; rate limits, budgets, breakers go there

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a Redis URL (expected redis://, rediss:// or unix://)")
        return v


PASSTHROUGH_ROUTES = ("files", "batches", "images", "moderations", "completions", "realtime")


class PassthroughConfig(_Strict):
    """Which model's deployments serve the OpenAI routes relaygate forwards as they are (files, images…)."""

    model: str | None = None  # the default for every passthrough route; unset: those routes answer 404
    routes: dict[str, str] = Field(default_factory=dict)  # per route family, e.g. {images: dall-e-upstream}

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(PASSTHROUGH_ROUTES))
        if unknown:
            raise ValueError(f"unknown passthrough route {unknown[0]!r}; expected one of {', '.join(PASSTHROUGH_ROUTES)}")
        return v

    def model_for(self, family: str) -> str | None:
        return self.routes.get(family, self.model)


class DatabaseConfig(_Strict):
    """Where keys, teams and the request log live: SQLite (WAL) by default, PostgreSQL by URL."""

    url: str = "sqlite:///relaygate.db"  # sqlite:///relative.db, sqlite:////abs/path.db, postgresql://…
    pool_size: int = Field(5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _db_url(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("not a database URL (expected sqlite:///path or postgresql://…)")
        return v


class RequestLogConfig(_Strict):
    """The audit log: one row per call, written in the background."""

    enabled: bool = True
    bodies: bool = False  # also store request/response bodies (redacted)
    max_body_chars: int = Field(32768, ge=0)
    redact: list[str] = Field(default_factory=list)  # extra regexes whose matches are replaced before writing
    queue_size: int = Field(10000, ge=1)
    batch_size: int = Field(500, ge=1)
    flush_interval: float = Field(0.5, gt=0)  # seconds between batches at most
    spool_dir: str | None = None  # where rows wait while the database is down; default: beside the DB / cwd

    @field_validator("redact")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for i, pattern in enumerate(v):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"redact[{i}] is not a valid regex: {e}") from None
        return v


class KeyConfig(_Strict):
    """A virtual key declared in the config (kept in the database like the others, updated at every start)."""

    id: str = Field(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9_.\-]+$")
    key: SecretStr  # the secret clients send
    name: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    models: list[str] | None = None
    rpm: int | None = Field(None, gt=0, lt=2**31)
    tpm: int | None = Field(None, gt=0, lt=2**31)
    max_parallel: int | None = Field(None, gt=0, lt=2**31)
    budget_usd: float | None = Field(None, ge=0, le=9e9)
    budget_period: str = Field("total", pattern=r"^(day|month|total)$")
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 8:
            raise ValueError("a key must have at least 8 characters")
        return v


class AuthConfig(_Strict):
    """Who may call: a master key (admin API + all models) and virtual keys stored in the database."""

    master_key: SecretStr | None = None  # default: the RELAYGATE_MASTER_KEY environment variable
    cache_ttl: float = Field(10.0, ge=0)  # seconds a key lookup is cached: the bound on revocation delay
    rotation_grace: float = Field(86400.0, ge=0)  # seconds an old key stays valid after a rotation
    default_output_tokens: int = Field(256, ge=0)  # output estimate for budgets when max_tokens is absent
    keys: list[KeyConfig] = Field(default_factory=list)  # keys declared here rather than through the admin API


class PriceConfig(_Strict):
    """A model's price override, USD per unit."""

    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    cached_input_cost_per_token: float | None = Field(None, ge=0)
    cache_write_cost_per_token: float | None = Field(None, ge=0)
    cost_per_second: float | None = Field(None, ge=0)  # audio transcription
    cost_per_character: float | None = Field(None, ge=0)  # speech


class Config(_Strict):
    models: list[ModelConfig] = Field(default_factory=list)
    server: ServerConfig = Field(default_factory=ServerConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    passthrough: PassthroughConfig = Field(default_factory=PassthroughConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)  # upstream model name -> price override

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        errors = []
        for m in self.models:
            if m.name in seen:
                errors.append(f"duplicate model name {m.name!r}")
            seen.add(m.name)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def reference_errors(self) -> list[str]:
        """Cross-references a field validator cannot see: fallback models, unique deployment names."""
        errors: list[str] = []
        names = {m.name for m in self.models}
        deps: set[str] = set()
        for mi, m in enumerate(self.models):
            for fi, f in enumerate(m.fallbacks):
                for ni, target in enumerate(f.models):
                    path = f"models[{mi}].fallbacks[{fi}].models[{ni}]"
                    if target == m.name:
                        errors.append(f"{path}: a model cannot fall back to itself")
                    elif target not in names:
                        errors.append(f"{path}: unknown model {target!r}")
            for di in range(len(m.deployments)):
                dn = deployment_name(m, di)
                if dn in deps:
                    errors.append(f"models[{mi}].deployments[{di}].name: duplicate deployment name {dn!r}")
                deps.add(dn)
        return errors

    def deployment_names(self) -> list[str]:
        return [deployment_name(m, i) for m in self.models for i in range(len(m.deployments))]


def _passthrough_errors(cfg: Config) -> list[str]:
    """Passthrough routes must name a configured model whose deployments all speak OpenAI's REST API."""
    from relaygate.core.call import Route
    from relaygate.providers import provider_class

    errors = []
    by_name = {m.name: m for m in cfg.models}
    pt = cfg.passthrough
    targets = [("passthrough.model", pt.model)] + [(f"passthrough.routes.{k}", v) for k, v in pt.routes.items()]
    for path, name in targets:
        if name is None:
            continue
        model = by_name.get(name)
        if model is None:
            errors.append(f"{path}: no model named {name!r}")
        elif any(Route.PASSTHROUGH not in provider_class(d.provider).routes for d in model.deployments):
            errors.append(f"{path}: model {name!r} has deployments whose provider does not serve OpenAI's "
                          "other routes (files, batches, images, …) as they are; use provider openai")
    return errors


def deployment_name(model: ModelConfig, index: int) -> str:
    """The stable id of a model's deployment: its ``name`` or ``model-name/provider/index``."""
    d = model.deployments[index]
    return d.name or f"{model.name}/{d.provider}/{index}"


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


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return msg


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
        errors.extend(f"{_loc(err['loc'])}: {_message(err)}" for err in e.errors())
        raise ConfigError(errors) from None
    errors.extend(_passthrough_errors(cfg))
    errors.extend(cfg.reference_errors())
    if errors:
        raise ConfigError(errors)
    return cfg


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 would read ``on:`` (the fallback and
    breaker key) and ``no``/``yes``/``off`` as booleans, silently breaking configs."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config at ``path``, or the zero-config default when ``path`` is None."""
    env = os.environ if env is None else env
    if path is None:
        return default_config(env)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
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
