"""The database schema, described plainly: one definition for SQLite and PostgreSQL, and for both ways of
reaching them.

``tables.py`` builds SQLAlchemy Core's ``Table`` objects from these descriptions (PostgreSQL, the key store,
the admin API's queries); ``TableDef.create_sql`` writes the same tables as SQLite DDL, which the migrations
of a SQLite file run through plain ``sqlite3`` (``migrations.py``), and the request log's writer fits and
inserts its rows by these columns: a gateway whose config needs no SQLAlchemy never imports it.

Money is stored as integer nano-dollars (``cost_nano``) so that budgets and sums over the log agree exactly.
Times are epoch seconds (float); ``day`` (UTC, YYYY-MM-DD) makes per-day grouping portable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# the SQL type of a column as SQLAlchemy's String(n), Text, Integer, BigInteger, Float, Boolean and JSON
# write it in DDL, on SQLite and PostgreSQL alike
ColumnType = Literal["VARCHAR", "TEXT", "INTEGER", "BIGINT", "FLOAT", "BOOLEAN", "JSON"]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    length: int | None = None  # a VARCHAR's size
    nullable: bool = True  # a primary key never is
    primary_key: bool = False
    unique: bool = False
    index: bool = False  # an index of this column alone, named ix_<table>_<column>
    default: Any = None  # the value of a column left out of an insert (by the inserting code)
    server_default: str | None = None  # ... and by the database: SQL text

    @property
    def required(self) -> bool:
        return self.primary_key or not self.nullable

    @property
    def sql_type(self) -> str:
        return f"VARCHAR({self.length})" if self.type == "VARCHAR" else self.type


@dataclass(frozen=True, slots=True)
class TableDef:
    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, columns) of the indexes besides ``index``

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def all_indexes(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(f"ix_{self.name}_{c.name}", (c.name,)) for c in self.columns if c.index] + list(self.indexes)

    def create_sql(self) -> list[str]:
        """The table and its indexes as SQLite DDL, written as SQLAlchemy's ``create`` writes them (so that
        ``sqlite_master`` holds the same text whichever made the table: tests/test_store.py compares them)."""
        lines = []
        for c in self.columns:
            default = f" DEFAULT {c.server_default}" if c.server_default is not None else ""
            lines.append(f"{c.name} {c.sql_type}{default}{' NOT NULL' if c.required else ''}")
        lines.append(f"PRIMARY KEY ({', '.join(c.name for c in self.columns if c.primary_key)})")
        lines += [f"UNIQUE ({c.name})" for c in self.columns if c.unique]
        table = f"CREATE TABLE {self.name} (\n\t" + ", \n\t".join(lines) + "\n)"
        return [table, *(f"CREATE INDEX {name} ON {self.name} ({', '.join(cols)})"
                         for name, cols in self.all_indexes())]


schema_migrations = TableDef("relaygate_migrations", (
    Column("version", "INTEGER", primary_key=True),
    Column("name", "VARCHAR", 200, nullable=False),
    Column("applied_at", "FLOAT", nullable=False),
))


def _limit_columns() -> tuple[Column, ...]:
    """Limits shared by keys, teams and users (NULL: no limit)."""
    return (
        Column("models", "JSON"),  # allowed model names; NULL: all
        Column("rpm", "INTEGER"),
        Column("tpm", "INTEGER"),
        Column("max_parallel", "INTEGER"),
        Column("budget_nano", "BIGINT"),
        Column("budget_period", "VARCHAR", 10),  # day | month | total
        Column("metadata", "JSON"),
        Column("tags", "JSON"),
    )


api_keys = TableDef("api_keys", (
    Column("id", "VARCHAR", 40, primary_key=True),
    Column("hash", "VARCHAR", 64, nullable=False, unique=True),  # sha256 hex of the secret
    Column("prefix", "VARCHAR", 16, nullable=False),  # the only part of the secret shown again
    Column("old_hash", "VARCHAR", 64, unique=True),  # the previous secret, during rotation grace
    Column("old_expires_at", "FLOAT"),
    Column("name", "VARCHAR", 200),
    Column("team_id", "VARCHAR", 100, index=True),
    Column("user_id", "VARCHAR", 100, index=True),
    *_limit_columns(),
    Column("created_at", "FLOAT", nullable=False),
    Column("updated_at", "FLOAT", nullable=False),
    Column("expires_at", "FLOAT"),
    Column("revoked_at", "FLOAT"),
))

owners = TableDef("owners", (  # teams and users: limits shared by all keys that belong to them
    Column("kind", "VARCHAR", 10, primary_key=True),  # team | user
    Column("id", "VARCHAR", 100, primary_key=True),
    Column("name", "VARCHAR", 200),
    *_limit_columns(),
    Column("created_at", "FLOAT", nullable=False),
    Column("updated_at", "FLOAT", nullable=False),
))

stored_objects = TableDef("stored_objects", (  # responses, conversations and their items, assistants, threads, …
    Column("id", "VARCHAR", 64, primary_key=True),
    Column("kind", "VARCHAR", 24, nullable=False),  # response | conversation | item | assistant | thread | …
    Column("owner", "VARCHAR", 120, nullable=False),  # "team:…" / "user:…" / "key:…"; "" on an open gateway
    Column("parent", "VARCHAR", 64),  # the conversation, thread or run an object belongs to
    Column("seq", "BIGINT", nullable=False),  # creation order (nanoseconds, unique per gateway): lists page on it
    Column("created_at", "FLOAT", nullable=False),
    Column("data", "TEXT", nullable=False),  # the object as the API returns it (JSON)
    Column("extra", "TEXT"),  # what the gateway keeps beside it (JSON): a response's context, …
), indexes=(("ix_stored_objects_parent", ("parent", "kind", "seq")),
            ("ix_stored_objects_owner", ("owner", "kind", "seq"))))


PARTIAL_INDEXED = ("key_id", "team_id", "user_id")  # request_log columns indexed with ts where set


def owner_index_name(column: str) -> str:
    return f"ix_request_log_{column.removesuffix('_id')}_ts"


request_log = TableDef("request_log", (
    Column("uid", "VARCHAR", 32, primary_key=True),  # unique per row: replays of the spool are idempotent
    # not indexed: random ids scatter index writes, which doubled the cost of logging a row in SQLite
    Column("request_id", "VARCHAR", 200, nullable=False),
    Column("ts", "FLOAT", nullable=False),
    Column("day", "VARCHAR", 10, nullable=False),
    Column("key_id", "VARCHAR", 40),
    Column("team_id", "VARCHAR", 100),
    Column("user_id", "VARCHAR", 100),
    Column("model", "VARCHAR", 200),  # the model the client asked for
    Column("deployment", "VARCHAR", 300),
    Column("provider", "VARCHAR", 40),
    Column("route", "VARCHAR", 40, nullable=False),
    Column("stream", "BOOLEAN", nullable=False, default=False),
    Column("status", "INTEGER", nullable=False),
    Column("error", "VARCHAR", 40),  # the error kind (GatewayError.kind), NULL on success
    Column("error_message", "TEXT"),
    Column("latency_ms", "FLOAT", nullable=False),
    Column("ttft_ms", "FLOAT"),
    Column("prompt_tokens", "INTEGER"),
    Column("completion_tokens", "INTEGER"),
    Column("cached_tokens", "INTEGER"),
    Column("cost_nano", "BIGINT", nullable=False, default=0),
    Column("cache_hit", "BOOLEAN", nullable=False, default=False),
    Column("attempts", "INTEGER", nullable=False, default=0),
    Column("client_ip", "VARCHAR", 64),
    Column("request_body", "TEXT"),
    Column("response_body", "TEXT"),
    # the tokens (and so the cost) were counted by the gateway from what a stream delivered: the upstream
    # never reported its usage (a stream cut by either side; api/common.py: bill_delivered)
    Column("usage_estimated", "BOOLEAN", nullable=False, default=False),
    # a cache hit: what its answer cost when it was made upstream, i.e. what the hit saved (0 otherwise)
    # (a server default too, as the migration that adds it: rows written by older code still insert)
    Column("saved_nano", "BIGINT", nullable=False, default=0, server_default="0"),
    # a call tried more than once (retries, fallbacks): each attempt as a compact JSON array (requestlog/audit.py
    # attempt_log); NULL for the usual call of one attempt, so the writer binds one more NULL and no second row
    Column("attempt_log", "TEXT"),
    # a call whose conversation was shortened to fit the model's context window: what was done, as a small JSON
    # object (strategy, messages and estimated tokens before and after, dropped, summarized; core/call.py
    # Condensed), NULL otherwise: the SQLite writer leaves a column NULL in a whole chunk out of its INSERT
    Column("condensed", "TEXT"),
    # the key, team and user indexes are partial (owner_index_ddl), made by migration 3; the one on ts is the
    # overview's (OVERVIEW_INDEX), made by migration 6
))

TABLES = (schema_migrations, api_keys, owners, stored_objects, request_log)

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
