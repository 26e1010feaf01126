"""The config's top level: models and their routing, server, state, database, request log, auth, prices."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from relaygate.catalog.search import MAX_PROVIDER, Conditions
from relaygate.config.base import Strict
from relaygate.config.deployments import DeploymentConfig, HealthCheckConfig
from relaygate.config.observability import (
    AccessLogConfig,
    AlertsConfig,
    ChaosConfig,
    MetricsConfig,
    TracingConfig,
)

DEMO_MODEL = "demo"
# how a model chooses among its deployments (routing/strategies.py builds one class per name)
StrategyName = Literal["round_robin", "weighted", "least_connections", "least_latency", "cost", "adaptive", "priority"]
# error kinds (GatewayError.kind) that a retry may act on: the transient ones
RETRYABLE_KINDS = ("unavailable", "rate_limited", "timeout")
FALLBACK_KINDS = ("unavailable", "rate_limited", "timeout", "context_too_long", "content_filtered",
                  "unsupported", "not_found", "auth", "permission", "bad_request", "internal")


def _kinds(allowed: tuple[str, ...]) -> Any:
    def check(v: list[str]) -> list[str]:
        bad = [k for k in v if k not in allowed]
        if bad:
            raise ValueError(f"unknown error class {bad[0]!r}; expected some of {', '.join(allowed)}")
        return v
    return check


class RetryConfig(Strict):
    """Retries within a model: untried deployments first; the same one again only after a backoff."""

    # total tries across the model's deployments; default: each deployment once (no repeats)
    attempts: int | None = Field(None, ge=1, le=10)
    backoff: float = Field(0.2, ge=0)  # seconds before the 1st repeat on a deployment; doubles each time
    max_backoff: float = Field(5.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)  # the delay is scaled by a random factor in [1-jitter, 1]
    max_retry_after: float = Field(30.0, ge=0)  # an upstream retry-after longer than this is not waited for
    on: list[str] = Field(default_factory=lambda: list(RETRYABLE_KINDS))

    _on = field_validator("on")(_kinds(RETRYABLE_KINDS))


class BreakerConfig(Strict):
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


class FallbackConfig(Strict):
    """On an error of one of the classes ``on``, try these other models in order."""

    models: list[str] = Field(min_length=1)
    on: list[str] = Field(default_factory=lambda: list(RETRYABLE_KINDS), min_length=1)

    _on = field_validator("on")(_kinds(FALLBACK_KINDS))


class SemanticCacheConfig(Strict):
    """A model's semantic cache (docs/cache.md#semantic-matches): a chat request close enough to one answered
    before, by the cosine of their embeddings, is served that answer; off unless set."""

    model: str = Field(min_length=1)  # the configured embeddings model that embeds each conversation
    threshold: float = Field(0.95, gt=0, le=1)  # the least cosine similarity that counts as the same request
    max_entries: int = Field(1000, ge=1, le=100_000)  # vectors kept for this model (least recently matched go)


class ModelCacheConfig(Strict):
    """A model's response cache (docs/cache.md); a model without this section is never cached."""

    # deterministic: only chat requests with temperature 0 or a seed (embeddings and speech always);
    # always: every request
    mode: Literal["deterministic", "always"] = "deterministic"
    ttl: float | None = Field(None, gt=0)  # seconds an answer of this model is served at most (under the levels')
    semantic: SemanticCacheConfig | None = None  # chat only: similar conversations served the same answer


class CondenseConfig(Strict):
    """Context condensation for a model (docs/cache.md#condensation); off unless set."""

    strategy: Literal["truncate_middle", "summarize"] = "truncate_middle"
    # prompt tokens the model takes; default: the catalog's for its deployments' upstream model (the
    # smallest when they differ); unknown and unset: only an upstream's context-length error condenses
    context_window: int | None = Field(None, gt=0)
    headroom: int = Field(1024, ge=0)  # tokens left free beyond the request's own max_tokens
    keep_last: int = Field(4, ge=1)  # the newest turns are always kept (a tool call and its results: one turn)
    pin_first_user: bool = True  # the first user message is always kept
    summarizer: str | None = None  # summarize: the configured model that writes the summaries
    summary_max_tokens: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _summarizer_named(self) -> CondenseConfig:
        if self.strategy == "summarize" and not self.summarizer:
            raise ValueError("strategy summarize needs a summarizer (a configured model)")
        return self


# A model served by every deployment of the other models whose model card matches (docs/routing.md): the
# conditions of /api/models/search (declared once, with their bounds, in catalog/search.py), all of which must hold.
SelectConfig = Conditions


class ModelConfig(Strict):
    """A model name clients send, served by one or more deployments (or by those ``select`` finds)."""

    name: str = Field(min_length=1)
    # candidates by capability, resolved from the catalog and discovery instead of listed ``deployments``
    select: SelectConfig | None = None
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    description: str | None = None
    cache: ModelCacheConfig | None = None  # the response cache; off unless set (docs/cache.md)
    condense: CondenseConfig | None = None  # context condensation; off unless set (docs/cache.md)
    strategy: StrategyName = "round_robin"
    fallbacks: list[FallbackConfig] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    health_check: HealthCheckConfig | None = None  # for every deployment without its own
    # seconds a call waits for a free slot when every deployment is at its max_parallel (within the call's
    # deadline), before it moves to a fallback model or is refused (429 deployment_capacity); 0: at once
    queue_timeout: float = Field(30.0, ge=0)

    @field_validator("select")
    @classmethod
    def _some_condition(cls, v: SelectConfig | None) -> SelectConfig | None:
        if v is not None and not v.asked():
            raise ValueError("select needs at least one condition")
        return v

    @field_validator("deployments")
    @classmethod
    def _served(cls, v: list[DeploymentConfig], info: ValidationInfo) -> list[DeploymentConfig]:
        selects = info.data.get("select") is not None
        if not v and not selects:
            raise ValueError("List should have at least 1 item (or give the model a select)")
        if v and selects:
            raise ValueError("a model with select has no deployments of its own")
        return v

    @model_validator(mode="after")
    def _deployments_or_select(self) -> ModelConfig:
        if not self.deployments and self.select is None:  # ``deployments`` left out (its validator did not run)
            raise ValueError("a model needs deployments (or a select)")
        return self


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_audio_bytes: int = Field(26 * 1024 * 1024, gt=0)  # audio uploads (multipart); OpenAI accepts 25 MB files
    max_file_bytes: int = Field(512 * 1024 * 1024, gt=0)  # /v1/files and image uploads, streamed (passthrough)
    request_timeout: float = Field(600.0, gt=0)  # the per-request deadline across attempts
    # slow and idle clients (server/guard.py): the request line and headers must arrive within
    # header_timeout of the connection (or of the request's first byte); a body may go silent for at most
    # body_timeout (so may a client that stops reading its answer); an idle keep-alive connection is closed
    # after keepalive_timeout
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    keepalive_timeout: float = Field(5.0, gt=0)
    # more client connections than this are answered 503 at once; None: derived from RLIMIT_NOFILE, leaving
    # room for an upstream socket per connection and the gateway's own files
    max_connections: int | None = Field(None, ge=1)
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line and headers in all (431 beyond)
    max_header_line_bytes: int = Field(8 * 1024, ge=256)  # one header, or the URL (431 / 414 beyond)
    max_headers: int = Field(100, ge=8)
    # on SIGTERM: calls and streams in flight get this long to finish before they are ended (a second
    # SIGTERM ends them at once)
    drain_timeout: float = Field(30.0, ge=0)
    # during the drain, a kept-alive connection that carries no request for this long (counted from the drain's
    # start, or from its last answer if later) is closed. Behind a proxy that keeps connections alive (nginx)
    # this is what keeps the close from racing a request the proxy is sending on it; clients that connect
    # directly need next to none (docs/server.md, "Shutdown")
    drain_idle_grace: float = Field(1.0, ge=0, le=60)
    # upstream connections in use at once, every deployment together (each request holds one until its answer
    # is read); None: derived from RLIMIT_NOFILE like max_connections. A request over the cap waits for one
    # at most upstream_queue_timeout seconds (within its deadline), then gets 503 upstream_connections_full
    max_upstream_connections: int | None = Field(None, ge=1)
    # the same cap per upstream origin (scheme, host, port: a deployment's api_base; deployments on one host
    # share it), so that one slow upstream cannot take every connection; None: only the global cap
    max_upstream_connections_per_origin: int | None = Field(None, ge=1)
    upstream_queue_timeout: float = Field(10.0, ge=0)
    # processes serving the one listening socket (``relaygate serve --workers``): a supervisor starts them,
    # restarts one that dies, and forwards SIGTERM (drain) and SIGHUP (reload); see docs/deploy.md
    workers: int = Field(1, ge=1, le=256)
    # reload the config file when it changes (it is also reloaded on SIGHUP and POST /admin/reload)
    watch_config: bool = True


class StateConfig(Strict):
    """Where state shared by gateway instances lives: in-process (default) or Redis."""

    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0; rate limits, budgets, breakers go there
    # seconds any Redis wait may take (a reply; a call's wait for a connection) before Redis counts as down:
    # calls then fall back at once (limits and breakers in-process, budgets refused) without waiting on it
    redis_timeout: float = Field(0.05, gt=0, le=10)
    redis_retry: float = Field(1.0, gt=0, le=300)  # at most this many seconds between probes of a down Redis

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a Redis URL (expected redis://, rediss:// or unix://)")
        return v


class MemoryCacheConfig(Strict):
    """The response cache's in-process level: an LRU bounded in bytes."""

    max_bytes: int = Field(64 * 1024 * 1024, ge=0)  # 0: no memory level
    ttl: float = Field(300.0, gt=0)  # seconds an answer stays in memory
    compress: bool = False  # zlib the bodies (fewer bytes held, some CPU per store and hit)


class RedisCacheConfig(Strict):
    """The response cache's shared level, in ``state.redis_url``'s Redis."""

    ttl: float = Field(3600.0, gt=0)  # seconds an answer stays in Redis
    prefix: str = Field("relaygate:cache:", min_length=1, max_length=200)


class DiskCacheConfig(Strict):
    """The response cache's level on disk: an SQLite file bounded in bytes (one node; survives a restart)."""

    path: str = Field("relaygate-cache.db", min_length=1)
    max_bytes: int = Field(1024 * 1024 * 1024, gt=0)  # the entries' bytes at most; least recently used go first
    ttl: float = Field(86400.0, gt=0)  # seconds an answer stays on disk
    timeout: float = Field(0.1, gt=0, le=10)  # seconds a read may take before the call goes on without it


class CacheConfig(Strict):
    """Where cached answers live and who shares them; which models are cached is each model's ``cache``."""

    # who shares an answer: everyone, the callers of one team (a key without a team: its own), or one key
    namespace: Literal["shared", "team", "key"] = "shared"
    memory: MemoryCacheConfig = Field(default_factory=MemoryCacheConfig)
    disk: DiskCacheConfig | None = None  # a second level on this node's disk, behind memory (before Redis)
    redis: RedisCacheConfig | None = None  # a second level shared by instances; needs state.redis_url
    max_entry_bytes: int = Field(4 * 1024 * 1024, gt=0)  # a larger answer is passed on, not cached


PASSTHROUGH_ROUTES = ("files", "batches", "images", "moderations", "completions", "realtime")


class PassthroughConfig(Strict):
    """Which model's deployments serve the OpenAI routes relaygate forwards as they are (files, images…)."""

    model: str | None = None  # the default for every passthrough route; unset: those routes answer 404
    routes: dict[str, str] = Field(default_factory=dict)  # per route family, e.g. {images: dall-e-upstream}
    # a request the gateway cannot price (a batch, a realtime session, an image model without prices) from a
    # caller with a budget (key, team or user): refused (403 unpriced_request) unless this is true
    allow_unpriced_with_budget: bool = False

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(PASSTHROUGH_ROUTES))
        if unknown:
            raise ValueError(f"unknown passthrough route {unknown[0]!r}; expected one of {', '.join(PASSTHROUGH_ROUTES)}")
        return v

    def model_for(self, family: str) -> str | None:
        return self.routes.get(family, self.model)


class AssistantsConfig(Strict):
    """Who serves the Assistants API (``/v1/assistants``, ``/v1/threads``…): the gateway itself (hosted, the
    default), or, with ``passthrough`` naming a model, that model's upstream (one that still serves it),
    forwarded as it is with ``/v1/vector_stores`` (docs/assistants.md)."""

    passthrough: str | None = None


class DatabaseConfig(Strict):
    """Where keys, teams and the request log live: SQLite (WAL) by default, PostgreSQL by URL."""

    url: str = "sqlite:///relaygate.db"  # sqlite:///relative.db, sqlite:////abs/path.db, postgresql://…
    pool_size: int = Field(5, ge=1, le=100)
    # seconds a request waits for a database read (a key not cached, a budget's spend this period) before
    # it is answered 503; also the reads' statement timeout. The database is then marked down with backoff.
    # Unset: 1 s for PostgreSQL (a server that stopped answering), 5 s for SQLite (a local file is never
    # unreachable; a read slower than 1 s is a starved machine, and a 503 plus an outage would only add to it)
    lookup_timeout: float | None = Field(None, gt=0, le=60)

    def read_timeout(self, dialect: str) -> float:
        if self.lookup_timeout is not None:
            return self.lookup_timeout
        return 1.0 if dialect == "postgresql" else 5.0

    @field_validator("url")
    @classmethod
    def _db_url(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("not a database URL (expected sqlite:///path or postgresql://…)")
        return v


class RequestLogConfig(Strict):
    """The audit log: one row per call, written in the background."""

    enabled: bool = True
    bodies: bool = False  # also store request/response bodies (redacted)
    max_body_chars: int = Field(32768, ge=0)
    redact: list[str] = Field(default_factory=list)  # extra regexes whose matches are replaced before writing
    queue_size: int = Field(10000, ge=1)
    batch_size: int = Field(500, ge=1)
    flush_interval: float = Field(0.5, gt=0)  # seconds between batches at most
    # seconds a batch's write may take (every database wait of the writer is bounded by it); past it the
    # batch goes to the spool and the database counts as down until a retry succeeds
    write_timeout: float = Field(2.0, gt=0)
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


class KeyConfig(Strict):
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
    def _strong_enough(cls, v: SecretStr) -> SecretStr:
        from relaygate.auth.strength import weakness

        problem = weakness(v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v


class AuthConfig(Strict):
    """Who may call: a master key (admin API + all models) and virtual keys stored in the database."""

    master_key: SecretStr | None = None  # default: the RELAYGATE_MASTER_KEY environment variable
    cache_ttl: float = Field(10.0, ge=0)  # seconds a key lookup is cached: the bound on revocation delay
    # seconds past cache_ttl a cached key is still served while its background refresh fails (database down)
    stale_ttl: float = Field(600.0, ge=0)
    rotation_grace: float = Field(86400.0, ge=0)  # seconds an old key stays valid after a rotation
    # output a budget reserves, and holds the upstream to, without max_tokens when the model's maximum output
    # (catalog / prices: max_output_tokens) is not known; also the tokens-per-minute estimate without max_tokens
    default_output_tokens: int = Field(256, ge=0)
    keys: list[KeyConfig] = Field(default_factory=list)  # keys declared here rather than through the admin API


CardMode = Literal["chat", "completion", "embedding", "transcription", "speech", "image_generation"]


class PriceConfig(Strict):
    """A model card override (``prices.<upstream model>``): prices in USD per unit, and any other field of the
    bundled card (catalog/models.json); a name the catalog does not know becomes a card of its own."""

    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    cached_input_cost_per_token: float | None = Field(None, ge=0)
    cache_write_cost_per_token: float | None = Field(None, ge=0)
    input_cost_per_audio_token: float | None = Field(None, ge=0)
    output_cost_per_audio_token: float | None = Field(None, ge=0)
    cost_per_second: float | None = Field(None, ge=0)  # audio transcription
    cost_per_character: float | None = Field(None, ge=0)  # speech
    max_output_tokens: int | None = Field(None, gt=0)  # most output tokens per answer: what budgets reserve
    # the rest of the card (docs/models.md): shown by /api/models, read by the context checks and ``select``
    provider: str | None = Field(None, min_length=1, max_length=MAX_PROVIDER)
    mode: CardMode | None = None
    context_window: int | None = Field(None, gt=0)
    supports_vision: bool | None = None
    supports_tools: bool | None = None
    supports_json_schema: bool | None = None
    supports_reasoning: bool | None = None
    supports_audio_input: bool | None = None
    supports_audio_output: bool | None = None
    source: str | None = Field(None, max_length=500)
    as_of: str | None = Field(None, max_length=40)


class DiscoveryConfig(Strict):
    """Model discovery (docs/models.md): ask each deployment's upstream which models it serves, at start and
    every ``interval`` seconds, in the background (on by default; ``enabled: false`` switches it off)."""

    enabled: bool = True
    interval: float = Field(3600.0, ge=1)  # seconds between refreshes
    timeout: float = Field(10.0, gt=0, le=300)  # seconds one upstream's listing may take (all its pages)


class Config(Strict):
    models: list[ModelConfig] = Field(default_factory=list)
    server: ServerConfig = Field(default_factory=ServerConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)  # the response cache's levels (models opt in)
    passthrough: PassthroughConfig = Field(default_factory=PassthroughConfig)
    assistants: AssistantsConfig = Field(default_factory=AssistantsConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)  # upstream model name -> card/price override
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)

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
        """Cross-references a field validator cannot see: passthrough and fallback models, unique deployment
        names."""
        errors = self._passthrough_errors()
        if self.cache.redis is not None and not self.state.redis_url:
            errors.append("cache.redis: needs state.redis_url (the Redis the cache level lives in)")
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
            if m.select is not None and m.name == "*":
                errors.append(f"models[{mi}].select: the wildcard model cannot select (it sends the client's name)")
            if m.cache is not None and m.cache.semantic is not None and m.cache.semantic.model not in names:
                errors.append(f"models[{mi}].cache.semantic.model: unknown model {m.cache.semantic.model!r}")
            if m.condense is not None and m.condense.summarizer is not None and m.condense.summarizer not in names:
                errors.append(f"models[{mi}].condense.summarizer: unknown model {m.condense.summarizer!r}")
            for di in range(len(m.deployments)):
                dn = deployment_name(m, di)
                if dn in deps:
                    errors.append(f"models[{mi}].deployments[{di}].name: duplicate deployment name {dn!r}")
                deps.add(dn)
        return errors

    def _passthrough_errors(self) -> list[str]:
        """Passthrough routes must name a configured model whose deployments all speak OpenAI's REST API."""
        from relaygate.core.call import Route
        from relaygate.providers import provider_class

        errors = []
        by_name = {m.name: m for m in self.models}
        pt = self.passthrough
        targets = [("passthrough.model", pt.model)] + [(f"passthrough.routes.{k}", v) for k, v in pt.routes.items()]
        targets.append(("assistants.passthrough", self.assistants.passthrough))
        for path, name in targets:
            if name is None:
                continue
            model = by_name.get(name)
            if model is None:
                errors.append(f"{path}: no model named {name!r}")
            elif any(Route.PASSTHROUGH not in provider_class(d).routes for d in model.deployments):
                errors.append(f"{path}: model {name!r} has deployments whose provider does not serve OpenAI's "
                              "other routes (files, batches, images, …) as they are; use provider openai")
        return errors

    def deployment_names(self) -> list[str]:
        return [deployment_name(m, i) for m in self.models for i in range(len(m.deployments))]


def deployment_name(model: ModelConfig, index: int) -> str:
    """The stable id of a model's deployment: its ``name`` or ``model-name/provider/index``."""
    d = model.deployments[index]
    return d.name or f"{model.name}/{d.provider}/{index}"
