"""The observability sections of the config: metrics, the JSON access log."""

from __future__ import annotations

from pydantic import Field, field_validator

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
