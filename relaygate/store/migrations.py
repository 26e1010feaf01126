"""Versioned schema migrations: a small table of applied versions and an ordered list of steps.

A step is a function of a connection (``Schema``), applied once, in order, inside the same transaction that
records it. New schema changes append a step; a step already released is never edited.

The steps run through SQLAlchemy on PostgreSQL (``migrate``) and through plain ``sqlite3`` on a SQLite file
(``migrate_file``), so that a gateway on SQLite need not import SQLAlchemy to start: the same SQL text either
way, the tables written from their one description (``schema.py``: SQLAlchemy's ``create`` on the one path,
the DDL it would emit on the other; tests/test_store.py checks that both make the same schema), recorded in
the same version table.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from relaygate.store import schema
from relaygate.store.sqlite import make_dirs, pragmas

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger("relaygate.store")

BUSY_MS = 30000  # how long a start waits for another one migrating the same SQLite file


class Schema(Protocol):
    """What a step changes the schema through."""

    dialect: str  # sqlite | postgresql

    def execute(self, sql: str) -> None: ...

    def columns(self, table: str) -> set[str]:
        """The names of the columns ``table`` has."""
        ...

    def create(self, table: schema.TableDef) -> None:
        """The table and its indexes, unless the table exists."""
        ...

    def versions(self) -> set[int]:
        """The versions applied (the version table made first if it is missing)."""
        ...

    def record(self, version: int, name: str) -> None: ...


Step = Callable[[Schema], None]


def _v1_initial(conn: Schema) -> None:
    for t in (schema.api_keys, schema.owners, schema.request_log):
        conn.create(t)


def _v2_drop_request_id_index(conn: Schema) -> None:
    conn.execute("DROP INDEX IF EXISTS ix_request_log_request_id")


def _v3_partial_owner_indexes(conn: Schema) -> None:
    for column in schema.PARTIAL_INDEXED:
        conn.execute(f"DROP INDEX IF EXISTS {schema.owner_index_name(column)}")
        conn.execute(schema.owner_index_ddl(column))


def _v4_stored_objects(conn: Schema) -> None:
    conn.create(schema.stored_objects)


def _v5_usage_estimated(conn: Schema) -> None:
    if "usage_estimated" in conn.columns("request_log"):
        return  # created by step 1 from today's table
    false = "false" if conn.dialect == "postgresql" else "0"
    conn.execute(f"ALTER TABLE request_log ADD COLUMN usage_estimated BOOLEAN NOT NULL DEFAULT {false}")


def _v6_overview_index(conn: Schema) -> None:
    conn.execute("DROP INDEX IF EXISTS ix_request_log_ts")  # a prefix of the new one
    # as released (step 8 widens it): today's OVERVIEW_INDEX would do, but a released step is never edited
    conn.execute("CREATE INDEX IF NOT EXISTS ix_request_log_overview ON request_log (ts, latency_ms, "
                 "ttft_ms, status, error, cost_nano, prompt_tokens, completion_tokens, cache_hit)")


def _v7_saved_nano(conn: Schema) -> None:
    if "saved_nano" in conn.columns("request_log"):
        return  # created by step 1 from today's table
    conn.execute("ALTER TABLE request_log ADD COLUMN saved_nano BIGINT NOT NULL DEFAULT 0")


def _v8_attempts_and_overview_filters(conn: Schema) -> None:
    if "attempt_log" not in conn.columns("request_log"):  # else step 1 made it
        conn.execute("ALTER TABLE request_log ADD COLUMN attempt_log TEXT")
    conn.execute("DROP INDEX IF EXISTS ix_request_log_overview")  # step 6's, without the filters
    conn.execute(schema.OVERVIEW_INDEX)


def _v9_condensed(conn: Schema) -> None:
    if "condensed" in conn.columns("request_log"):
        return  # created by step 1 from today's table
    conn.execute("ALTER TABLE request_log ADD COLUMN condensed TEXT")


STEPS: list[tuple[int, str, Step]] = [
    (1, "keys, owners, request log", _v1_initial),
    (2, "request log: no index on request_id (random ids made every insert costly)", _v2_drop_request_id_index),
    (3, "request log: key, team and user indexes only over rows that have one", _v3_partial_owner_indexes),
    (4, "stored objects: responses, conversations, assistants, threads, runs", _v4_stored_objects),
    (5, "request log: usage_estimated (a stream's usage counted by the gateway)", _v5_usage_estimated),
    (6, "request log: the dashboard overview's covering index, in place of the one on ts", _v6_overview_index),
    (7, "request log: saved_nano (what a cache hit saved)", _v7_saved_nano),
    (8, "request log: attempt_log (each attempt of a retried call); the overview's index covers its filters",
     _v8_attempts_and_overview_filters),
    (9, "request log: condensed (how a call's conversation was shortened)", _v9_condensed),
]


class EngineSchema:
    """``Schema`` on a SQLAlchemy connection: the tables made by SQLAlchemy's ``create``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    def execute(self, sql: str) -> None:
        self.conn.exec_driver_sql(sql)

    def columns(self, table: str) -> set[str]:
        from sqlalchemy import inspect

        return {c["name"] for c in inspect(self.conn).get_columns(table)}

    def create(self, table: schema.TableDef) -> None:
        from relaygate.store import tables

        tables.table(table).create(self.conn, checkfirst=True)

    def versions(self) -> set[int]:
        from sqlalchemy import select

        from relaygate.store import tables

        tables.schema_migrations.create(self.conn, checkfirst=True)
        return set(self.conn.execute(select(tables.schema_migrations.c.version)).scalars())

    def record(self, version: int, name: str) -> None:
        from relaygate.store import tables

        self.conn.execute(tables.schema_migrations.insert().values(version=version, name=name,
                                                                     applied_at=time.time()))


class SQLiteSchema:
    """``Schema`` on a plain ``sqlite3`` connection: the tables made from their DDL (``TableDef.create_sql``)."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def create(self, table: schema.TableDef) -> None:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                             (table.name,)).fetchone() is None:  # as SQLAlchemy's checkfirst: indexes too
            for sql in table.create_sql():
                self.conn.execute(sql)

    def versions(self) -> set[int]:
        self.create(schema.schema_migrations)
        return {int(r[0]) for r in self.conn.execute(f"SELECT version FROM {schema.schema_migrations.name}")}

    def record(self, version: int, name: str) -> None:
        self.conn.execute(f"INSERT INTO {schema.schema_migrations.name} (version, name, applied_at) VALUES (?, ?, ?)",
                          (version, name, time.time()))


def apply(conn: Schema) -> int:
    """Apply every pending step on ``conn``, in the caller's transaction. Returns the schema version."""
    done = conn.versions()
    version = max(done, default=0)
    for number, name, step in STEPS:
        if number in done:
            continue
        log.info("applying database migration %d: %s", number, name)
        step(conn)
        conn.record(number, name)
        version = max(version, number)  # a step applied late (a test's gap) leaves the version at the newest
    return version


def _retrying(once: Callable[[], int], races: type[BaseException] | tuple[type[BaseException], ...]) -> int:
    """``once()``, again (up to 5 times in all) when it raced with another process starting."""
    for attempt in range(5):
        try:
            return once()
        except races as e:  # another process created the same table/row at the same moment
            if attempt == 4:
                raise
            log.info("migration raced with another process (%s); retrying", type(getattr(e, "orig", e)).__name__)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def migrate(engine: Engine) -> int:
    """Apply every pending step through SQLAlchemy; safe when several processes start at once. Returns the
    schema version."""
    from sqlalchemy.exc import DBAPIError

    def once() -> int:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7461726)")  # serialise concurrent starts
            return apply(EngineSchema(conn))

    return _retrying(once, DBAPIError)


def migrate_file(path: str) -> int:
    """Apply every pending step to the SQLite file ``path`` (made if missing) through plain ``sqlite3``; safe
    when several processes start at once (each waits for the write lock before it reads the versions).
    Returns the schema version."""
    make_dirs(path)

    def once() -> int:
        conn = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None)
        try:
            pragmas(conn, BUSY_MS)
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = apply(SQLiteSchema(conn))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return version
        finally:
            conn.close()

    return _retrying(once, sqlite3.OperationalError)
