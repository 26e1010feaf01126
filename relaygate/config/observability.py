"""The observability sections of the config: metrics, the JSON access log, traces, fault injection."""

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
    """OpenTelemetry traces over OTLP/HTTP (protobuf): off unless ``endpoint`` is set; needs the ``otel``
    extra (``pip install 'relaygate[otel]'``)."""

    endpoint: str | None = None  # the collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = Field("relaygate", min_length=1, max_length=200)
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # sent with every export (a collector's token)
    sample_ratio: float = Field(1.0, ge=0, le=1)  # share of new traces kept; a continued one follows its parent
    batch_delay: float = Field(2.0, gt=0, le=60)  # seconds between exports at most
    queue_size: int = Field(2048, ge=1, le=1_000_000)  # spans waiting for export at most (then dropped)
    timeout: float = Field(10.0, gt=0, le=120)  # one export request

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("not an http(s) URL")
        return v


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
