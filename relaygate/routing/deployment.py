"""A deployment: one configured upstream for a model, its provider adapter and its live statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import DeploymentConfig

if TYPE_CHECKING:
    from ..providers.base import Provider


@dataclass(slots=True)
class DeploymentStats:
    """Live figures the routing strategies read; updated after every attempt."""

    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    latency_ewma: float | None = None  # seconds, whole call (non-stream) or time to first token (stream)

    def record(self, ok: bool, latency: float | None, alpha: float = 0.2) -> None:
        self.requests += 1
        if not ok:
            self.failures += 1
        if latency is not None:
            prev = self.latency_ewma
            self.latency_ewma = latency if prev is None else prev + alpha * (latency - prev)


@dataclass(slots=True, eq=False)
class Deployment:
    """One upstream that can serve ``model_name``."""

    name: str
    model_name: str  # the client-facing model name
    config: DeploymentConfig
    provider: Provider
    stats: DeploymentStats = field(default_factory=DeploymentStats)

    @property
    def provider_type(self) -> str:
        return self.config.provider

    def upstream_model(self, asked: str) -> str:
        """The model name to send upstream: the configured one, or the client's for a ``*`` wildcard."""
        return asked if self.config.model == "*" else self.config.model
