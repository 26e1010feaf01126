"""The database schema (SQLAlchemy Core): one definition for SQLite and PostgreSQL.

Money is stored as integer nano-dollars (``cost_nano``) so that budgets and sums over the log agree exactly.
Times are epoch seconds (float); ``day`` (UTC, YYYY-MM-DD) makes per-day grouping portable.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

schema_migrations = Table(
    "relaygate_migrations", metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)


def _limit_columns() -> list[Column[Any]]:
    """Limits shared by keys, teams and users (NULL: no limit)."""
    return [
        Column("models", JSON, nullable=True),  # allowed model names; NULL: all
        Column("rpm", Integer, nullable=True),
        Column("tpm", Integer, nullable=True),
        Column("max_parallel", Integer, nullable=True),
        Column("budget_nano", BigInteger, nullable=True),
        Column("budget_period", String(10), nullable=True),  # day | month | total
        Column("metadata", JSON, nullable=True),
        Column("tags", JSON, nullable=True),
    ]


api_keys = Table(
    "api_keys", metadata,
    Column("id", String(40), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),  # sha256 hex of the secret
    Column("prefix", String(16), nullable=False),  # the only part of the secret shown again
    Column("old_hash", String(64), nullable=True, unique=True),  # the previous secret, during rotation grace
    Column("old_expires_at", Float, nullable=True),
    Column("name", String(200), nullable=True),
    Column("team_id", String(100), nullable=True, index=True),
    Column("user_id", String(100), nullable=True, index=True),
    *_limit_columns(),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

owners = Table(
    "owners", metadata,  # teams and users: limits shared by all keys that belong to them
    Column("kind", String(10), primary_key=True),  # team | user
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=True),
    *_limit_columns(),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

stored_objects = Table(
    "stored_objects", metadata,  # responses, conversations and their items, assistants, threads, messages, runs
    Column("id", String(64), primary_key=True),
    Column("kind", String(24), nullable=False),  # response | conversation | item | assistant | thread | …
    Column("owner", String(120), nullable=False),  # "team:…" / "user:…" / "key:…"; "" on an open gateway
    Column("parent", String(64), nullable=True),  # the conversation, thread or run an object belongs to
    Column("seq", BigInteger, nullable=False),  # creation order (nanoseconds, unique per gateway): lists page on it
    Column("created_at", Float, nullable=False),
    Column("data", Text, nullable=False),  # the object as the API returns it (JSON)
    Column("extra", Text, nullable=True),  # what the gateway keeps beside it (JSON): a response's context, …
    Index("ix_stored_objects_parent", "parent", "kind", "seq"),
    Index("ix_stored_objects_owner", "owner", "kind", "seq"),
)


PARTIAL_INDEXED = ("key_id", "team_id", "user_id")  # request_log columns indexed with ts where set


def owner_index_name(column: str) -> str:
    return f"ix_request_log_{column.removesuffix('_id')}_ts"


request_log = Table(
    "request_log", metadata,
    Column("uid", String(32), primary_key=True),  # unique per row: replays of the spool are idempotent
    # not indexed: random ids scatter index writes, which doubled the cost of logging a row in SQLite
    Column("request_id", String(200), nullable=False),
    Column("ts", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("key_id", String(40), nullable=True),
    Column("team_id", String(100), nullable=True),
    Column("user_id", String(100), nullable=True),
    Column("model", String(200), nullable=True),  # the model the client asked for
    Column("deployment", String(300), nullable=True),
    Column("provider", String(40), nullable=True),
    Column("route", String(40), nullable=False),
    Column("stream", Boolean, nullable=False, default=False),
    Column("status", Integer, nullable=False),
    Column("error", String(40), nullable=True),  # the error kind (GatewayError.kind), NULL on success
    Column("error_message", Text, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("cached_tokens", Integer, nullable=True),
    Column("cost_nano", BigInteger, nullable=False, default=0),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("client_ip", String(64), nullable=True),
    Column("request_body", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    # the tokens (and so the cost) were counted by the gateway from what a stream delivered: the upstream
    # never reported its usage (a stream cut by either side; api/common.py: bill_delivered)
    Column("usage_estimated", Boolean, nullable=False, default=False),
    # a cache hit: what its answer cost when it was made upstream, i.e. what the hit saved (0 otherwise)
    # (a server default too, as the migration that adds it: rows written by older code still insert)
    Column("saved_nano", BigInteger, nullable=False, default=0, server_default=text("0")),
    # a call tried more than once (retries, fallbacks): each attempt as a compact JSON array (requestlog/audit.py
    # attempt_log); NULL for the usual call of one attempt, so the writer binds one more NULL and no second row
    Column("attempt_log", Text, nullable=True),
    # a call whose conversation was shortened to fit the model's context window: what was done, as a small JSON
    # object (strategy, messages and estimated tokens before and after, dropped, summarized; core/call.py
    # Condensed), NULL otherwise: the SQLite writer leaves a column NULL in a whole chunk out of its INSERT
    Column("condensed", Text, nullable=True),
    # the key, team and user indexes are partial (owner_index_ddl), made by migration 3; the one on ts is the
    # overview's (OVERVIEW_INDEX), made by migration 6
)

# ts first (every time-range read of the log uses it, as it used the index on ts alone that this one replaced),
# then every column the dashboard's overview aggregates: the overview reads the index, never the rows, which
# are wide when the log stores bodies (a day of 100,000 rows: ~0.7 s through the rows, ~0.5 s from the index on
# a loaded 2-core machine; bench/dashboard.py). Appended in ts order like the rows, it costs the writer what the
# index on ts alone did, within 0.4 % (a 25-row chunk into SQLite: 5,402k instructions against 5,384k;
# bench/microinstr.py log-chunk-overview-index, log-chunk-ts-index).
# The overview's filters (model, key, team: migration 8) are its last columns: a filtered overview is still read
# from the index alone, the filter applied to each index entry of the window.
OVERVIEW_INDEX = ("CREATE INDEX IF NOT EXISTS ix_request_log_overview ON request_log (ts, latency_ms, ttft_ms, "
                  "status, error, cost_nano, prompt_tokens, completion_tokens, cache_hit, model, key_id, team_id)")


def owner_index_ddl(column: str) -> str:
    """The index of ``column`` (and ts) over the rows that have one. Partial: rows without a key, team or user
    (most rows have no team or user) stay out of it, which saves the log writer two or three index inserts per
    row; queries filter by equality, which implies NOT NULL, so they still use it. The same statement on
    SQLite and PostgreSQL: written out rather than declared on the table with a ``postgresql_where``, whose
    mere declaration makes SQLAlchemy import its PostgreSQL dialect into every gateway."""
    return f"CREATE INDEX {owner_index_name(column)} ON request_log ({column}, ts) WHERE {column} IS NOT NULL"
