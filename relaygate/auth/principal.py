"""Who is calling and what it may do: a principal (a virtual key with its team and user scopes, or the master
key), its limits, and the hash its secret is looked up by.

Apart from the key store (``keys.py``, which reads and writes them through SQLAlchemy): the authenticator, the
limiters and the request path use these on every gateway, and a gateway without keys loads no SQLAlchemy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaygate.routing.deployment import Deployment


def hash_secret(secret: str) -> str:
    """sha256 of the secret, unsalted: generated keys are 256 random bits and declared ones must pass
    auth.strength, so no guess list reaches them and a slow hash would only slow every lookup down."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class Limits:
    """What one key, team or user may do; None means unlimited."""

    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_nano: int | None = None
    budget_period: str = "total"
    # the x-ratelimit-limit/remaining-* header lines of a call let through, in wire form with the limits written
    # once: the remaining requests and tokens (those of the limits set) go in its %d (limits/base.py rate_headers)
    rate_lines: bytes = field(init=False, default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        lines = b""
        if self.rpm is not None:
            lines += b"x-ratelimit-limit-requests: %d\r\nx-ratelimit-remaining-requests: %%d\r\n" % self.rpm
        if self.tpm is not None:
            lines += b"x-ratelimit-limit-tokens: %d\r\nx-ratelimit-remaining-tokens: %%d\r\n" % self.tpm
        object.__setattr__(self, "rate_lines", lines)

    @classmethod
    def of(cls, row: Any) -> Limits:
        return cls(models=frozenset(row.models) if row.models is not None else None, rpm=row.rpm, tpm=row.tpm,
                   max_parallel=row.max_parallel, budget_nano=row.budget_nano,
                   budget_period=row.budget_period or "total")

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_parallel, self.budget_nano))


@dataclass(frozen=True, slots=True)
class Scope:
    """A subject limits apply to: ``key:<id>``, ``team:<id>`` or ``user:<id>``."""

    name: str
    limits: Limits


@dataclass(slots=True)
class Principal:
    """Who is calling: a virtual key (with its team and user scopes) or the master key."""

    id: str
    team_id: str | None = None
    user_id: str | None = None
    scopes: tuple[Scope, ...] = ()
    expires_at: float | None = None
    hash: str = ""
    old_hash: str | None = None
    old_expires_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    # derived once, read on every call: the scopes with rate/budget limits, and what they need estimated
    limited: tuple[Scope, ...] = field(init=False, default=())
    wants_tokens: bool = field(init=False, default=False)
    wants_cost: bool = field(init=False, default=False)
    restricts_models: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.limited = tuple(s for s in self.scopes if s.limits.any)
        self.wants_tokens = any(s.limits.tpm is not None for s in self.limited)
        self.wants_cost = any(s.limits.budget_nano is not None for s in self.limited)
        self.restricts_models = any(s.limits.models is not None for s in self.scopes)

    def allows_model(self, name: str, upstream: tuple[str, ...] = ()) -> bool:
        """Whether every scope that lists models lists ``name``, a model name as the router resolved it
        (compared exactly: never a string transformed later). For a ``*`` wildcard, a scope that does not
        list ``*`` may instead list every model name the call sends upstream (``upstream``)."""
        for s in self.scopes:
            allowed = s.limits.models
            if allowed is not None and name not in allowed and not (upstream and all(u in allowed for u in upstream)):
                return False
        return True


    def allows_deployments(self, name: str, deployments: Sequence[Deployment], asked: str) -> bool:
        """``allows_model`` for a resolved model: for the ``*`` wildcard, with the names its deployments send
        upstream for the model ``asked``."""
        upstream = tuple({d.upstream_model(asked) for d in deployments}) if name == "*" else ()
        return self.allows_model(name, upstream)


MASTER = Principal(id="master")
