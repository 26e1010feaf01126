"""The observability sections of the config: metrics, the JSON access log, traces, alerts, fault injection."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from relaygate.config.base import Strict


class MetricsConfig(Strict):
    """``GET /metrics`` (Prometheus): on by default, behind the master key unless ``public``."""

    enabled: bool = True
    public: bool = False  # served without the master key (a gateway without one serves it to anyone anyway)
    # opt-in: spend and requests per key and team, for the keys declared in ``auth.keys`` only (their ids are
    # configured, so the label set stays bounded); any other key is counted as "other"
    key_labels: bool = False
    # upper bounds of the latency and time-to-first-token histograms, in seconds
    latency_buckets: list[float] = Field(
        default_factory=lambda: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                                 300.0], min_length=1, max_length=40)

    @field_validator("latency_buckets")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        if any(b <= 0 for b in v) or any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("bucket bounds must be positive and strictly ascending")
        return v


class AccessLogConfig(Strict):
    """One JSON line per request at INFO on the ``relaygate.access`` logger (off by default)."""

    enabled: bool = False


class TracingConfig(Strict):
    """OpenTelemetry traces over OTLP/HTTP (protobuf): off unless ``endpoint`` is set."""

    endpoint: str | None = None  # the collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = Field("relaygate", min_length=1, max_length=200)
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # sent with every export (a collector's token)
    sample_ratio: float = Field(1.0, ge=0, le=1)  # share of new traces kept; a continued one follows its parent
    batch_delay: float = Field(2.0, gt=0, le=60)  # seconds between exports at most
    queue_size: int = Field(2048, ge=1, le=1_000_000)  # records (a call's spans) waiting for export at most (then dropped)
    timeout: float = Field(10.0, gt=0, le=120)  # one export request

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _http_url(v)


FaultKind = Literal["latency", "error", "timeout", "rate_limit", "drop", "stream_cut"]
RouteName = Literal["chat", "embeddings", "transcriptions", "translations", "speech", "count_tokens", "passthrough"]
RULE_NAME = r"^[A-Za-z0-9_.\-]{1,100}$"


class ChaosRule(Strict):
    """One fault to inject at the upstream boundary, into the calls it matches, with a probability."""

    name: str = Field(pattern=RULE_NAME)
    fault: FaultKind
    probability: float = Field(1.0, gt=0, le=1)
    # the scope: at least one of these (a rule never applies to everything by omission)
    model: str | None = None  # a configured model name
    deployment: str | None = None  # a deployment name
    route: RouteName | None = None
    enabled: bool = True
    latency: float = Field(1.0, ge=0, le=600)  # latency: seconds added before the upstream is called
    status: int = Field(503, ge=400, le=599)  # error: the upstream status it answers as
    retry_after: float = Field(1.0, ge=0, le=3600)  # rate_limit: the retry-after of its 429
    after_chunks: int = Field(1, ge=0, le=1_000_000)  # stream_cut: chunks relayed before the stream breaks

    @model_validator(mode="after")
    def _scoped(self) -> ChaosRule:
        if self.model is None and self.deployment is None and self.route is None:
            raise ValueError("a chaos rule needs a scope: model, deployment or route")
        return self


class ChaosConfig(Strict):
    """Fault injection for drills: off unless ``enabled``; rules from here or ``/admin/chaos`` (master key)."""

    enabled: bool = False
    rules: list[ChaosRule] = Field(default_factory=list, max_length=100)
    seed: int | None = None  # a fixed seed makes which calls are hit reproducible

    @model_validator(mode="after")
    def _unique(self) -> ChaosConfig:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("chaos rule names must be unique")
        return self


AlertKind = Literal["error_rate", "p95_latency", "deployment_unhealthy", "breaker_open", "spend_per_hour",
                    "spool_growing", "budget"]
ChannelType = Literal["webhook", "slack", "email", "log"]


def _http_url(v: str | None) -> str | None:
    if v is not None:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
    return v


class AlertChannel(Strict):
    """Where an alert goes: a webhook (JSON), a Slack incoming webhook, e-mail over SMTP, or the log."""

    type: ChannelType
    url: SecretStr | None = None  # webhook, slack (Slack's URL is itself the secret)
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # webhook: e.g. an authorization header
    timeout: float = Field(5.0, gt=0, le=60)
    # email
    host: str | None = None
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password: SecretStr | None = None
    sender: str | None = None  # the From address
    to: list[str] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _complete(self) -> AlertChannel:
        if self.type in ("webhook", "slack"):
            if self.url is None:
                raise ValueError(f"a {self.type} channel needs url")
            _http_url(self.url.get_secret_value())
        if self.type == "email" and (not self.host or not self.sender or not self.to):
            raise ValueError("an email channel needs host, sender and to")
        return self


class AlertRule(Strict):
    """A condition over the gateway's own figures, checked every ``alerts.interval`` seconds.

    error_rate (share of calls answered 5xx), p95_latency (seconds) and spend_per_hour (USD) are over the
    last ``window`` seconds, optionally of one ``model``; deployment_unhealthy (health score below
    ``threshold``, default 50) and breaker_open are per deployment (one, or each); spool_growing is the
    request log's spooled rows above ``threshold`` and growing over the window; budget is a key's or team's
    spend at ``threshold`` percent of its budget."""

    name: str = Field(pattern=RULE_NAME)
    kind: AlertKind
    threshold: float | None = Field(None, ge=0)
    window: float = Field(300.0, gt=0, le=86400)
    severity: Literal["info", "warning", "critical"] = "warning"
    cooldown: float = Field(600.0, ge=0, le=7 * 86400)  # a firing alert is sent again at most this often
    channels: list[str] = Field(min_length=1)
    model: str | None = None
    deployment: str | None = None
    key: str | None = None  # budget: a key id (cfg_<id> for keys declared in auth.keys)
    team: str | None = None  # budget: a team id
    min_calls: int = Field(10, ge=1)  # error_rate, p95_latency: fewer calls in the window decide nothing

    @model_validator(mode="after")
    def _fits(self) -> AlertRule:
        needs = {"error_rate": True, "p95_latency": True, "spend_per_hour": True, "budget": True}
        if needs.get(self.kind) and self.threshold is None:
            raise ValueError(f"a {self.kind} rule needs threshold")
        if self.kind == "budget" and (self.key is None) == (self.team is None):
            raise ValueError("a budget rule names exactly one of key and team")
        return self


class AlertsConfig(Strict):
    interval: float = Field(15.0, gt=0, le=3600)  # seconds between evaluations
    channels: dict[str, AlertChannel] = Field(default_factory=dict)
    rules: list[AlertRule] = Field(default_factory=list, max_length=200)
    queue_size: int = Field(100, ge=1, le=10000)  # notifications waiting to be sent at most (then dropped)

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        problems = [f"rules[{i}].channels: no channel named {c!r}" for i, r in enumerate(self.rules)
                    for c in r.channels if c not in self.channels]
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            problems.append("rules: names must be unique")
        if problems:
            raise ValueError("; ".join(problems))
        return self
