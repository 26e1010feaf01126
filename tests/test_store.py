"""The store: one schema and migration path for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from relaygate.store import schema, tables
from relaygate.store.db import Database, engine_url
from relaygate.store.migrations import STEPS


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path}/store.db")
    else:
        db = Database(request.getfixturevalue("pg_url"))
    yield db
    db.close()


def test_migrations_create_every_table_and_record_the_version(database: Database) -> None:
    assert database.migrate() == STEPS[-1][0]
    names = set(inspect(database.engine).get_table_names())
    assert {"api_keys", "owners", "request_log", "relaygate_migrations"} <= names
    with database.engine.connect() as conn:
        versions = list(conn.execute(select(tables.schema_migrations.c.version)).scalars())
    assert versions == [n for n, _, _ in STEPS]


def test_migrating_twice_applies_nothing_again(database: Database) -> None:
    database.migrate()
    with database.engine.begin() as conn:
        conn.execute(tables.owners.insert().values(kind="team", id="t1", created_at=1.0, updated_at=1.0))
    assert database.migrate() == STEPS[-1][0]
    with database.engine.connect() as conn:
        assert conn.execute(select(tables.owners.c.id)).scalars().all() == ["t1"]


def test_concurrent_starts_migrate_once(database: Database) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            database.migrate()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    with database.engine.connect() as conn:
        assert conn.execute(select(tables.schema_migrations.c.version)).scalars().all() == [n for n, _, _ in STEPS]


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/wal.db")
    try:
        db.migrate()
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        db.close()


def test_postgres_urls_use_psycopg3() -> None:
    assert engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_blocking_work_runs_off_the_event_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/t.db")
    try:
        async def main() -> tuple[int, int]:
            return threading.get_ident(), await db.run(threading.get_ident)

        loop_thread, ran_in = asyncio.run(main())
        assert ran_in != loop_thread
    finally:
        db.close()


def test_a_version_1_database_is_upgraded_in_place(database: Database) -> None:
    from relaygate.store import migrations

    with database.engine.begin() as conn:  # a database as version 1 left it, request_id index included
        migrations._v1_initial(migrations.EngineSchema(conn))
        conn.exec_driver_sql("CREATE INDEX ix_request_log_request_id ON request_log (request_id)")
        tables.schema_migrations.create(conn)
        conn.execute(tables.schema_migrations.insert().values(version=1, name="v1", applied_at=0.0))
    assert database.migrate() == STEPS[-1][0]
    indexes = {i["name"] for i in inspect(database.engine).get_indexes("request_log")}
    assert "ix_request_log_request_id" not in indexes and "ix_request_log_key_ts" in indexes


def test_owner_indexes_become_partial_and_equality_queries_still_use_them(database: Database) -> None:
    """Migration 3: the key/team/user indexes of the request log cover only rows that have one (a row
    without a team costs no team-index insert); a query by team still finds its index."""
    from relaygate.store import migrations

    with database.engine.begin() as conn:  # a database as version 2 left it: full owner indexes
        migrations._v1_initial(migrations.EngineSchema(conn))
        for c in schema.PARTIAL_INDEXED:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {schema.owner_index_name(c)}")
            conn.exec_driver_sql(f"CREATE INDEX {schema.owner_index_name(c)} ON request_log ({c}, ts)")
        tables.schema_migrations.create(conn)
        for n, name, _ in STEPS[:2]:
            conn.execute(tables.schema_migrations.insert().values(version=n, name=name, applied_at=0.0))
    assert database.migrate() == STEPS[-1][0]
    with database.engine.connect() as conn:
        if database.engine.dialect.name == "sqlite":
            defs: dict[str, str] = dict(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'").all())
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT sum(cost_nano) FROM request_log WHERE team_id = 't' AND ts >= 0"))
            assert "ix_request_log_team_ts" in plan, plan
        else:
            defs = dict(conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'request_log'").all())
    for c in schema.PARTIAL_INDEXED:
        assert f"{c} IS NOT NULL" in defs[schema.owner_index_name(c)], defs


def test_bulk_insert_fills_missing_columns_with_defaults_and_skips_known_uids(database: Database) -> None:
    from relaygate.store.bulk import BulkInsert

    database.migrate()
    full = {"uid": "a" * 32, "request_id": "r1", "ts": 1.0, "day": "1970-01-01", "key_id": "k", "team_id": None,
            "user_id": None, "model": "m", "deployment": "d", "provider": "openai", "route": "chat",
            "stream": True, "status": 200, "error": None, "error_message": None, "latency_ms": 1.5,
            "ttft_ms": None, "prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0, "cost_nano": 7,
            "cache_hit": True, "attempts": 2, "client_ip": None, "request_body": None, "response_body": None}
    # an older spool line: only the columns that were always there
    short = {"uid": "b" * 32, "request_id": "r2", "ts": 2.0, "day": "1970-01-01", "route": "chat", "status": 500,
             "latency_ms": 2.5}
    bulk = BulkInsert(schema.request_log)
    with database.engine.begin() as conn:
        bulk(conn, [full, short])
    with database.engine.begin() as conn:
        bulk(conn, [full])  # a replay after an uncertain commit: no duplicate
    rl = tables.request_log.c
    with database.engine.connect() as conn:
        got = conn.execute(select(rl.uid, rl.stream, rl.cost_nano, rl.cache_hit, rl.attempts, rl.model)
                           .order_by(rl.uid)).all()
    assert [tuple(r) for r in got] == [("a" * 32, True, 7, True, 2, "m"), ("b" * 32, False, 0, False, 0, None)]


def test_bulk_insert_rows_with_nulls_in_some_columns_of_a_chunk_read_back_exactly(database: Database) -> None:
    """SQLite leaves a column out of a chunk's INSERT when it is NULL in every row of it; columns NULL in only
    some rows are bound as they are. Chunks of 100, 25, 5 and 1 rows each get their own shape."""
    from relaygate.store.bulk import BulkInsert

    database.migrate()
    names = schema.request_log.names
    rows = []
    for i in range(131):  # 100 + 25 + 5 + 1
        row = dict.fromkeys(names)
        row.update(uid=f"{i:032x}", request_id=f"r{i}", ts=float(i), day="1970-01-01", route="chat", status=200,
                   latency_ms=1.0, stream=0, cost_nano=i, cache_hit=0, attempts=1, usage_estimated=0, saved_nano=0,
                   team_id="t" if i % 7 == 0 else None, error="timeout" if i >= 125 else None)
        rows.append(tuple(row[n] for n in names))
    with database.engine.begin() as conn:
        BulkInsert(schema.request_log)(conn, rows)
    rl = tables.request_log.c
    with database.engine.connect() as conn:
        got = conn.execute(select(rl.uid, rl.team_id, rl.error, rl.user_id, rl.cost_nano).order_by(rl.uid)).all()
    assert [tuple(r) for r in got] == [(f"{i:032x}", "t" if i % 7 == 0 else None, "timeout" if i >= 125 else None,
                                        None, i) for i in range(131)]


def test_bulk_insert_binds_a_column_of_one_value_once_and_reads_every_row_back(database: Database) -> None:
    """SQLite binds a column that holds one value in every row of a chunk once; chunks whose columns of one
    value differ get statements of their own, up to ``MAX_SHARED`` per chunk size, then the known statement
    sharing the most of them. Every row reads back exactly whatever the shape its chunk was written with."""
    from relaygate.store.bulk import BulkInsert

    database.migrate()
    names = schema.request_log.names
    bulk = BulkInsert(schema.request_log)
    expected = []
    for batch in range(8):  # each batch's shared columns differ: more shapes than MAX_SHARED
        rows = []
        for i in range(131):  # 100 + 25 + 5 + 1
            n = batch * 1000 + i
            row = dict.fromkeys(names)
            row.update(uid=f"{n:032x}", request_id=f"r{n}", ts=float(n), day="1970-01-01", route="chat",
                       status=500 if batch & 1 and i == 60 else 200, latency_ms=1.5 if batch & 2 else n / 8,
                       stream=0, cost_nano=7 if batch & 4 else n, cache_hit=0, attempts=1, usage_estimated=0,
                       saved_nano=0, model="m" if batch < 4 or i % 3 else "other", key_id="k")
            rows.append(tuple(row[c] for c in names))
            expected.append((row["uid"], row["status"], row["latency_ms"], row["cost_nano"], row["model"], "k",
                             "1970-01-01"))
        with database.engine.begin() as conn:
            bulk(conn, rows)
    if database.dialect == "sqlite":  # (PostgreSQL copies the rows: no statement per shape)
        assert all(len(shapes) <= BulkInsert.MAX_SHARED for shapes in bulk._shapes.values())
        assert any(len(shapes) == BulkInsert.MAX_SHARED for shapes in bulk._shapes.values())
    rl = tables.request_log.c
    with database.engine.connect() as conn:
        got = conn.execute(select(rl.uid, rl.status, rl.latency_ms, rl.cost_nano, rl.model, rl.key_id, rl.day)
                           .order_by(rl.uid)).all()
    assert [tuple(r) for r in got] == expected


@pytest.mark.parametrize(("column", "before"), [("usage_estimated", False), ("saved_nano", 0), ("attempt_log", None),
                                             ("condensed", None)])
def test_an_older_request_log_gains_a_column_its_rows_at_the_default(database: Database, column: str,
                                                                    before: object) -> None:
    """The migrations that add a column: usage_estimated (a usage the gateway estimated), saved_nano (what
    a cache hit saved), attempt_log (a retried call's attempts) and condensed (how a conversation was
    shortened); the rows already there were not estimated, saved nothing, kept no attempts and were not
    condensed."""
    from relaygate.store import migrations

    with database.engine.begin() as conn:  # a database from before the column
        migrations._v1_initial(migrations.EngineSchema(conn))
        conn.exec_driver_sql(f"ALTER TABLE request_log DROP COLUMN {column}")
        # the other columns without a server default, as the code of that time wrote them
        others = [("usage_estimated", "false")] if column != "usage_estimated" else []
        names, values = "".join(", " + c for c, _ in others), "".join(", " + v for _, v in others)
        conn.exec_driver_sql("INSERT INTO request_log (uid, request_id, ts, day, route, stream, status, latency_ms, "
                             f"cost_nano, cache_hit, attempts{names}) VALUES ('u1', 'r1', 0, '1970-01-01', 'chat', "
                             f"false, 200, 1, 5, false, 1{values})")
        tables.schema_migrations.create(conn)
        for n, name, _ in STEPS:
            if column not in name:  # every other step applied already
                conn.execute(tables.schema_migrations.insert().values(version=n, name=name, applied_at=0.0))
    assert database.migrate() == STEPS[-1][0]
    rl = tables.request_log.c
    with database.engine.connect() as conn:
        assert conn.execute(select(rl.uid, rl[column])).all() == [("u1", before)]


@pytest.mark.parametrize("url", ["sqlite:///a.db", "sqlite:////tmp/x%20y.db", "sqlite:///./rel/a.db",
                                 "sqlite+pysqlite:///b.db", "sqlite:///a@b.db", "sqlite:///a#b.db"])
def test_the_plain_sqlite_file_is_the_one_sqlalchemy_opens(url: str) -> None:
    from sqlalchemy.engine import make_url

    from relaygate.store.sqlite import sqlite_file

    assert sqlite_file(url) == make_url(url).database


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///a.db?mode=ro",
                                 "sqlite+aiosqlite:///a.db", "postgresql://u@h/db"])
def test_urls_the_plain_path_cannot_read_stay_with_sqlalchemy(url: str) -> None:
    from relaygate.store.sqlite import sqlite_file

    assert sqlite_file(url) is None


def test_the_request_log_writes_sqlite_through_a_plain_connection_in_one_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3
    import time

    from relaygate.requestlog.writer import RequestLogWriter
    from relaygate.store.sqlite import SQLiteFile

    db = Database(f"sqlite:///{tmp_path}/store.db")
    db.migrate()
    target = db.log_target(2.0)
    assert isinstance(target, SQLiteFile) and target.path == f"{tmp_path}/store.db"
    w = RequestLogWriter(target, str(tmp_path), batch_size=500, flush_interval=60)
    assert w.engine is None
    statements: list[str] = []
    real_connect = target.connect

    def traced() -> sqlite3.Connection:
        conn = real_connect()
        conn.set_trace_callback(statements.append)
        return conn

    target.connect = traced  # type: ignore[method-assign]
    w.start()
    for i in range(131):  # 100 + 25 + 5 + 1: every chunk size, in one transaction
        w.submit({"uid": f"u{i}", "request_id": f"r{i}", "ts": time.time(), "day": "2026-01-01", "route": "chat",
                  "stream": False, "status": 200, "latency_ms": 1.0, "cost_nano": i, "cache_hit": False,
                  "attempts": 1, "model": "m"})
    assert w.flush(10)
    w.close()
    work = [s for s in statements if not s.startswith("PRAGMA")]
    assert work[0] == "BEGIN" and work[-1] == "COMMIT" and len(work) == 6
    with db.engine.connect() as conn:
        assert tuple(conn.execute(text("SELECT count(*), sum(cost_nano) FROM request_log")).one()) == \
            (131, sum(range(131)))
    db.close()


def test_an_older_database_gets_the_overview_index_with_its_filters(database: Database) -> None:
    """The attempt_log step replaces step 6's covering index by one that also holds model, key_id and team_id."""
    from relaygate.store import migrations

    widened = next(n for n, name, _ in STEPS if "attempt_log" in name)
    with database.engine.begin() as conn:
        tables.schema_migrations.create(conn)
        for n, name, step in [s for s in STEPS if s[0] < widened]:
            step(migrations.EngineSchema(conn))
            conn.execute(tables.schema_migrations.insert().values(version=n, name=name, applied_at=0.0))

    def overview_columns() -> list[str | None]:
        found = [i for i in inspect(database.engine).get_indexes("request_log") if i["name"] == "ix_request_log_overview"]
        assert len(found) == 1
        return list(found[0]["column_names"])

    assert overview_columns()[-1] == "cache_hit"
    assert migrations.migrate(database.engine) == STEPS[-1][0]
    assert overview_columns()[-4:] == ["cache_hit", "model", "key_id", "team_id"]


# ---- a SQLite file migrated through plain sqlite3 (the gateway's way) and through SQLAlchemy -----------------

def _file_schema(path: str) -> tuple[set[tuple[str, str, str, str | None]], list[tuple[int, str]]]:
    """Everything the file's schema holds (every table and index with its SQL, as sqlite_master keeps it) and
    the versions recorded, with their names."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        objects = set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())
        versions = conn.execute("SELECT version, name FROM relaygate_migrations ORDER BY version").fetchall()
    finally:
        conn.close()
    return objects, versions


def _migrate_through_sqlalchemy(path: str) -> int:
    from relaygate.store import migrations
    from relaygate.store.db import create

    engine = create(f"sqlite:///{path}")
    try:
        return migrations.migrate(engine)
    finally:
        engine.dispose()


# the column each step added to the request log (step 1 makes today's table, so an older file lacked them)
_ADDED_BY = {5: "usage_estimated", 7: "saved_nano", 8: "attempt_log", 9: "condensed"}


def _file_at_version(path: str, version: int) -> None:
    """A SQLite file as the gateway of schema ``version`` left it (0: an empty file)."""
    import sqlite3

    from relaygate.store import migrations

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        target = migrations.SQLiteSchema(conn)
        if version == 0:
            return
        target.versions()
        for n, name, step in STEPS[:version]:
            step(target)
            target.record(n, name)
        for n, column in _ADDED_BY.items():
            if n > version:
                conn.execute(f"ALTER TABLE request_log DROP COLUMN {column}")
        if version == 1:  # step 2 dropped it
            conn.execute("CREATE INDEX ix_request_log_request_id ON request_log (request_id)")
    finally:
        conn.close()


def test_the_sqlite_ddl_makes_the_schema_sqlalchemy_makes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A new file: the tables written from schema.py's DDL by plain sqlite3 are the ones SQLAlchemy's create
    writes from the same description, to the text sqlite_master keeps of each table and index."""
    from relaygate.store.migrations import migrate_file

    assert migrate_file(f"{tmp_path}/plain.db") == STEPS[-1][0]
    assert _migrate_through_sqlalchemy(f"{tmp_path}/engine.db") == STEPS[-1][0]
    plain, engine = _file_schema(f"{tmp_path}/plain.db"), _file_schema(f"{tmp_path}/engine.db")
    assert plain == engine
    assert {name for kind, name, _, _ in plain[0] if kind == "table"} == {t.name for t in schema.TABLES}
    assert plain[1] == [(n, name) for n, name, _ in STEPS]


@pytest.mark.parametrize("version", range(1, len(STEPS)))
def test_an_older_file_migrates_the_same_way_through_sqlite3_and_sqlalchemy(tmp_path, version: int) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from relaygate.store.migrations import migrate_file

    _file_at_version(f"{tmp_path}/old.db", version)
    shutil.copy(f"{tmp_path}/old.db", f"{tmp_path}/engine.db")
    assert migrate_file(f"{tmp_path}/old.db") == STEPS[-1][0]
    assert _migrate_through_sqlalchemy(f"{tmp_path}/engine.db") == STEPS[-1][0]
    assert _file_schema(f"{tmp_path}/old.db") == _file_schema(f"{tmp_path}/engine.db")


def test_a_file_either_way_migrated_is_current_for_the_other(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The version table is the same one: a file SQLAlchemy migrated gets nothing more from plain sqlite3,
    and the other way round."""
    from relaygate.store.migrations import migrate_file

    for first, second in ((migrate_file, _migrate_through_sqlalchemy), (_migrate_through_sqlalchemy, migrate_file)):
        path = f"{tmp_path}/{first.__name__}.db"
        first(path)
        before = _file_schema(path)
        assert second(path) == STEPS[-1][0]
        assert _file_schema(path) == before


def test_a_gateway_database_on_a_sqlite_file_migrates_without_sqlalchemy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """In a fresh interpreter: a Database on a SQLite file, migrated and given its log target, has not
    imported SQLAlchemy (the engine is made on first use only)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from relaygate.store.db import Database\n"
            f"db = Database('sqlite:///{tmp_path}/g.db')\n"
            "assert db.migrate() > 0 and db.dialect == 'sqlite'\n"
            "db.log_target(2.0)\n"
            "db.close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))\n")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=repo)
    assert out.stdout.strip() == "[]"
