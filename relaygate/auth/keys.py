"""Virtual keys (``rg-…``), teams and users in the database: hashed secrets, limits, rotation, revocation.

Everything here is blocking database code: the gateway calls it through ``Database.run``, the CLI directly.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import IntegrityError

from relaygate.auth.principal import Limits, Principal, Scope, hash_secret
from relaygate.core.errors import BadRequest, NotFound
from relaygate.core.pricing import NANO
from relaygate.store import tables

KEY_PREFIX = "rg-"
SHOWN = 10  # characters of a secret shown again after creation ("rg-" + 7)
# of a key declared in the config (named by its id anyway): fewer, so that the part nobody was shown keeps
# nearly all of the strength auth.strength asks of it
DECLARED_SHOWN = 4
PERIODS = ("day", "month", "total")
MAX_INT = 2**31 - 1  # limits are 32-bit integer columns
MAX_USD = 9e9  # budgets are 64-bit nano-dollars


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# ---- validation of admin input -------------------------------------------------------------------------

def _int_or_none(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_INT:
        raise BadRequest(f"'{name}' must be a positive integer (at most {MAX_INT}) or null", param=name,
                         code="invalid_value")
    return v


def parse_fields(body: dict[str, Any], *, partial: bool, owner: bool = False) -> dict[str, Any]:
    """Validated column values from an admin request body (only the fields present when ``partial``)."""
    allowed = {"name", "models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_period", "metadata", "tags"}
    if not owner:
        allowed |= {"team_id", "user_id", "expires_at", "expires_in"}
    else:
        allowed |= {"id"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; expected some of {', '.join(sorted(allowed))}",
                         param=unknown[0], code="unknown_parameter")
    out: dict[str, Any] = {}
    for name in ("name", "team_id", "user_id"):
        if name in body:
            v = body[name]
            if v is not None and (not isinstance(v, str) or not v or len(v) > 100):
                raise BadRequest(f"'{name}' must be a non-empty string of at most 100 characters",
                                 param=name, code="invalid_value")
            out[name] = v
    for name in ("rpm", "tpm", "max_parallel"):
        if name in body:
            out[name] = _int_or_none(body, name)
    if "models" in body:
        v = body["models"]
        if v is not None and (not isinstance(v, list) or not all(isinstance(m, str) and m for m in v)):
            raise BadRequest("'models' must be an array of model names or null", param="models", code="invalid_value")
        out["models"] = v
    if "tags" in body:
        v = body["tags"]
        if v is not None and (not isinstance(v, list) or not all(isinstance(t, str) for t in v)):
            raise BadRequest("'tags' must be an array of strings", param="tags", code="invalid_value")
        out["tags"] = v
    if "metadata" in body:
        v = body["metadata"]
        if v is not None and not isinstance(v, dict):
            raise BadRequest("'metadata' must be an object", param="metadata", code="invalid_value")
        out["metadata"] = v
    if "budget_usd" in body:
        v = body["budget_usd"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_USD):
            raise BadRequest(f"'budget_usd' must be a number from 0 to {MAX_USD:.0f}, or null", param="budget_usd",
                             code="invalid_value")
        out["budget_nano"] = None if v is None else round(v * NANO)
    if "budget_period" in body:
        v = body["budget_period"]
        if v not in PERIODS:
            raise BadRequest(f"'budget_period' must be one of {', '.join(PERIODS)}", param="budget_period",
                             code="invalid_value")
        out["budget_period"] = v
    elif not partial:
        out["budget_period"] = "total"
    if "expires_in" in body and "expires_at" in body:
        raise BadRequest("give 'expires_at' or 'expires_in', not both", param="expires_in")
    for name in ("expires_at", "expires_in"):
        if name in body:
            v = body[name]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise BadRequest(f"'{name}' must be a positive number of seconds or null", param=name,
                                 code="invalid_value")
            out["expires_at"] = v if name == "expires_at" or v is None else time.time() + v
    return out


# ---- the store -----------------------------------------------------------------------------------------

def key_view(row: Any) -> dict[str, Any]:
    """A key as the admin API shows it: never its hash or secret, only the prefix."""
    return {
        "id": row.id, "object": "key", "name": row.name, "prefix": row.prefix + "…",
        "team_id": row.team_id, "user_id": row.user_id, "models": row.models, "rpm": row.rpm, "tpm": row.tpm,
        "max_parallel": row.max_parallel,
        "budget_usd": None if row.budget_nano is None else row.budget_nano / NANO,
        "budget_period": row.budget_period, "metadata": row.metadata or {}, "tags": row.tags or [],
        "created_at": row.created_at, "updated_at": row.updated_at, "expires_at": row.expires_at,
        "revoked_at": row.revoked_at, "rotated_grace_until": row.old_expires_at,
    }


def owner_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "object": row.kind, "name": row.name, "models": row.models, "rpm": row.rpm, "tpm": row.tpm,
        "max_parallel": row.max_parallel,
        "budget_usd": None if row.budget_nano is None else row.budget_nano / NANO,
        "budget_period": row.budget_period, "metadata": row.metadata or {}, "tags": row.tags or [],
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


class KeyStore:
    """Blocking CRUD of keys and owners (teams, users) over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_key(self, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A new key; returns the secret (shown this once) and its view."""
        secret = new_secret()
        now = time.time()
        values = {"id": "key_" + os.urandom(8).hex(), "hash": hash_secret(secret), "prefix": secret[:SHOWN],
                  "created_at": now, "updated_at": now, **fields}
        with self.engine.begin() as conn:
            conn.execute(tables.api_keys.insert().values(**values))
            row = conn.execute(select(tables.api_keys).where(tables.api_keys.c.id == values["id"])).one()
        return secret, key_view(row)

    def list_keys(self, team_id: str | None = None, user_id: str | None = None,
                  include_revoked: bool = False) -> list[dict[str, Any]]:
        k = tables.api_keys
        q = select(k).order_by(k.c.created_at)
        if team_id is not None:
            q = q.where(k.c.team_id == team_id)
        if user_id is not None:
            q = q.where(k.c.user_id == user_id)
        if not include_revoked:
            q = q.where(k.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [key_view(r) for r in conn.execute(q)]

    def get_key(self, key_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(tables.api_keys).where(tables.api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFound(f"no key with id {key_id!r}", param="id")
        return key_view(row)

    def update_key(self, key_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        k = tables.api_keys
        with self.engine.begin() as conn:
            done = conn.execute(k.update().where(k.c.id == key_id).values(**fields, updated_at=time.time()))
            if done.rowcount == 0:
                raise NotFound(f"no key with id {key_id!r}", param="id")
            return key_view(conn.execute(select(k).where(k.c.id == key_id)).one())

    def rotate_key(self, key_id: str, grace: float) -> tuple[str, dict[str, Any]]:
        """A new secret for the same key (same limits and spend); the old one works ``grace`` seconds more."""
        k = tables.api_keys
        secret = new_secret()
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(select(k).where(k.c.id == key_id)).first()
            if row is None or row.revoked_at is not None:
                raise NotFound(f"no active key with id {key_id!r}", param="id")
            conn.execute(k.update().where(k.c.id == key_id).values(
                hash=hash_secret(secret), prefix=secret[:SHOWN], old_hash=row.hash if grace > 0 else None,
                old_expires_at=now + grace if grace > 0 else None, updated_at=now))
            return secret, key_view(conn.execute(select(k).where(k.c.id == key_id)).one())

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        k = tables.api_keys
        now = time.time()
        with self.engine.begin() as conn:
            done = conn.execute(k.update().where(k.c.id == key_id, k.c.revoked_at.is_(None))
                                .values(revoked_at=now, updated_at=now, old_hash=None, old_expires_at=None))
            if done.rowcount == 0 and conn.execute(select(k.c.id).where(k.c.id == key_id)).first() is None:
                raise NotFound(f"no key with id {key_id!r}", param="id")
            return key_view(conn.execute(select(k).where(k.c.id == key_id)).one())

    def lookup(self, digest: str) -> Principal | None:
        """The active key whose secret (or, in its rotation grace, previous secret) hashes to ``digest``."""
        k = tables.api_keys
        return self._principal(select(k).where(or_(k.c.hash == digest, k.c.old_hash == digest),
                                               k.c.revoked_at.is_(None)))

    def lookup_id(self, key_id: str) -> Principal | None:
        """The active key with this id (a SigV4 access key id names its key: see auth/aws.py)."""
        k = tables.api_keys
        return self._principal(select(k).where(k.c.id == key_id, k.c.revoked_at.is_(None)))

    def _principal(self, query: Any) -> Principal | None:
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            scopes = [Scope("key:" + row.id, Limits.of(row))]
            o = tables.owners
            for kind, oid in (("team", row.team_id), ("user", row.user_id)):
                if oid is None:
                    continue
                orow = conn.execute(select(o).where(o.c.kind == kind, o.c.id == oid)).first()
                if orow is not None:
                    scopes.append(Scope(f"{kind}:{oid}", Limits.of(orow)))
        return Principal(id=row.id, team_id=row.team_id, user_id=row.user_id, scopes=tuple(scopes),
                         expires_at=row.expires_at, hash=row.hash, old_hash=row.old_hash,
                         old_expires_at=row.old_expires_at, metadata=row.metadata or {}, tags=tuple(row.tags or ()))

    # -- teams and users ------------------------------------------------------------------------------

    def put_owner(self, kind: str, owner_id: str, fields: dict[str, Any], create: bool) -> dict[str, Any]:
        o = tables.owners
        now = time.time()
        with self.engine.begin() as conn:
            exists = conn.execute(select(o.c.id).where(o.c.kind == kind, o.c.id == owner_id)).first()
            if create:
                if exists:
                    raise BadRequest(f"{kind} {owner_id!r} already exists", param="id", code="already_exists")
                conn.execute(o.insert().values(kind=kind, id=owner_id, created_at=now, updated_at=now, **fields))
            else:
                if not exists:
                    raise NotFound(f"no {kind} with id {owner_id!r}", param="id")
                conn.execute(o.update().where(o.c.kind == kind, o.c.id == owner_id).values(**fields, updated_at=now))
            return owner_view(conn.execute(select(o).where(o.c.kind == kind, o.c.id == owner_id)).one())

    def get_owner(self, kind: str, owner_id: str) -> dict[str, Any]:
        o = tables.owners
        with self.engine.connect() as conn:
            row = conn.execute(select(o).where(o.c.kind == kind, o.c.id == owner_id)).first()
        if row is None:
            raise NotFound(f"no {kind} with id {owner_id!r}", param="id")
        return owner_view(row)

    def list_owners(self, kind: str) -> list[dict[str, Any]]:
        o = tables.owners
        with self.engine.connect() as conn:
            return [owner_view(r) for r in conn.execute(select(o).where(o.c.kind == kind).order_by(o.c.id))]


def spent_since(engine: Engine, scope_name: str, start: float) -> int:
    """Nano-dollars a scope (``key:…``, ``team:…``, ``user:…``) spent since ``start``, from the request log."""
    from sqlalchemy import func

    kind, _, ident = scope_name.partition(":")
    r = tables.request_log
    column = {"key": r.c.key_id, "team": r.c.team_id, "user": r.c.user_id}[kind]
    with engine.connect() as conn:
        total = conn.execute(select(func.coalesce(func.sum(r.c.cost_nano), 0))
                             .where(column == ident, r.c.ts >= start)).scalar()
    return int(total or 0)


def keys_spent_since(engine: Engine, key_ids: list[str], start: float, kind: str = "key") -> dict[str, int]:
    """Nano-dollars each key (or team, or user: ``kind``) spent since ``start``, from the request log (those
    without calls are left out)."""
    from sqlalchemy import func

    r = tables.request_log
    column = {"key": r.c.key_id, "team": r.c.team_id, "user": r.c.user_id}[kind]
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for i in range(0, len(key_ids), 500):  # bounded IN lists
            rows = conn.execute(select(column, func.sum(r.c.cost_nano))
                                .where(column.in_(key_ids[i:i + 500]), r.c.ts >= start).group_by(column))
            out.update({str(k): int(v or 0) for k, v in rows})
    return out


def config_key_id(config_id: str) -> str:
    """The stored id of a key declared in the config (``auth.keys[].id``)."""
    return "cfg_" + config_id


def sync_config_keys(engine: Engine, keys: list[Any]) -> None:
    """Insert or update the keys declared in the config (``auth.keys``), by id ``cfg_<id>``."""
    k = tables.api_keys
    for kc in keys:
        body: dict[str, Any] = {"name": kc.name, "team_id": kc.team_id, "user_id": kc.user_id, "models": kc.models,
                                "rpm": kc.rpm, "tpm": kc.tpm, "max_parallel": kc.max_parallel,
                                "budget_usd": kc.budget_usd, "budget_period": kc.budget_period, "tags": kc.tags,
                                "metadata": kc.metadata}
        secret = kc.key.get_secret_value()
        now = time.time()
        values = {**parse_fields(body, partial=False), "hash": hash_secret(secret), "prefix": secret[:DECLARED_SHOWN],
                  "updated_at": now, "revoked_at": None, "expires_at": None}
        key_id = config_key_id(kc.id)
        for attempt in range(3):  # several instances may start at once: the loser of an insert race updates
            try:
                with engine.begin() as conn:
                    if conn.execute(k.update().where(k.c.id == key_id).values(**values)).rowcount == 0:
                        conn.execute(k.insert().values(id=key_id, created_at=now, **values))
                break
            except IntegrityError:
                if attempt == 2:
                    raise
                time.sleep(0.1)
