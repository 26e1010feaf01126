"""Versioned schema migrations: a small table of applied versions and an ordered list of steps.

A step is a function of a connection, applied once, in order, inside the same transaction that records it.
New schema changes append a step; a step already released is never edited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select
from sqlalchemy.exc import DBAPIError

from relaygate.store import tables

log = logging.getLogger("relaygate.store")

Step = Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    for t in (tables.api_keys, tables.owners, tables.request_log):
        t.create(conn, checkfirst=True)


def _v2_drop_request_id_index(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_request_log_request_id")


def _v3_partial_owner_indexes(conn: Connection) -> None:
    for column in tables.PARTIAL_INDEXED:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {tables.owner_index_name(column)}")
        conn.exec_driver_sql(tables.owner_index_ddl(column))


def _v4_stored_objects(conn: Connection) -> None:
    tables.stored_objects.create(conn, checkfirst=True)


def _v5_usage_estimated(conn: Connection) -> None:
    if "usage_estimated" in {c["name"] for c in inspect(conn).get_columns("request_log")}:
        return  # created by step 1 from today's table
    false = "false" if conn.dialect.name == "postgresql" else "0"
    conn.exec_driver_sql(f"ALTER TABLE request_log ADD COLUMN usage_estimated BOOLEAN NOT NULL DEFAULT {false}")


def _v6_overview_index(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_request_log_ts")  # a prefix of the new one
    # as released (step 8 widens it): today's OVERVIEW_INDEX would do, but a released step is never edited
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_request_log_overview ON request_log (ts, latency_ms, "
                         "ttft_ms, status, error, cost_nano, prompt_tokens, completion_tokens, cache_hit)")


def _v7_saved_nano(conn: Connection) -> None:
    if "saved_nano" in {c["name"] for c in inspect(conn).get_columns("request_log")}:
        return  # created by step 1 from today's table
    conn.exec_driver_sql("ALTER TABLE request_log ADD COLUMN saved_nano BIGINT NOT NULL DEFAULT 0")


def _v8_attempts_and_overview_filters(conn: Connection) -> None:
    if "attempt_log" not in {c["name"] for c in inspect(conn).get_columns("request_log")}:  # else step 1 made it
        conn.exec_driver_sql("ALTER TABLE request_log ADD COLUMN attempt_log TEXT")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_request_log_overview")  # step 6's, without the filters
    conn.exec_driver_sql(tables.OVERVIEW_INDEX)


def _v9_condensed(conn: Connection) -> None:
    if "condensed" in {c["name"] for c in inspect(conn).get_columns("request_log")}:
        return  # created by step 1 from today's table
    conn.exec_driver_sql("ALTER TABLE request_log ADD COLUMN condensed TEXT")


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


def migrate(engine: Engine) -> int:
    """Apply every pending step; safe when several processes start at once. Returns the schema version."""
    for attempt in range(5):
        try:
            return _migrate_once(engine)
        except DBAPIError as e:  # another process created the same table/row at the same moment
            if attempt == 4:
                raise
            log.info("migration raced with another process (%s); retrying", type(e.orig).__name__)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _migrate_once(engine: Engine) -> int:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7461726)")  # serialise concurrent starts
        tables.schema_migrations.create(conn, checkfirst=True)
        done = set(conn.execute(select(tables.schema_migrations.c.version)).scalars())
        version = max(done, default=0)
        for number, name, step in STEPS:
            if number in done:
                continue
            log.info("applying database migration %d: %s", number, name)
            step(conn)
            conn.execute(tables.schema_migrations.insert().values(version=number, name=name,
                                                                    applied_at=time.time()))
            version = max(version, number)  # a step applied late (a test's gap) leaves the version at the newest
        return version
