"""The request log against bad rows and bad databases: no row sinks its batch or its spool file, no database
wait hangs the writer, no crash mid-append loses more than the line it tore."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from sqlalchemy import text

from relaygate.requestlog.redact import MASK
from relaygate.requestlog.spool import DEAD_LETTERS, Spool
from relaygate.requestlog.writer import RequestLogWriter, WriteTimeout, is_data_error
from relaygate.store import schema
from relaygate.store.bulk import BulkInsert
from relaygate.store.db import Database
from relaygate.store.rows import CUT, NUL_STANDIN, RowFitter, fit_text, size
from relaygate.testing.base import BackgroundServer, free_port
from relaygate.testing.tcpproxy import TcpProxy
from tests.conftest import StartGateway, openai_model
from tests.test_requestlog import gateway_rows, log_rows, wait_until

REPO = Path(__file__).resolve().parent.parent
INT_MAX = 2**31 - 1


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.db"
    return str(request.getfixturevalue("pg_url"))


def row(i: int, **values: Any) -> dict[str, Any]:
    return {"uid": f"{i:032x}", "request_id": f"req_{i}", "ts": time.time(), "day": "2026-01-01", "route": "chat",
            "stream": False, "status": 200, "latency_ms": 1.0, "cost_nano": i, "cache_hit": False, "attempts": 1,
            "model": "m", **values}


def proxied(url: str, proxy: TcpProxy) -> str:
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    return url.replace(host_port, f"127.0.0.1:{proxy.port}")


def pg_port(url: str) -> int:
    return int(url.split("@", 1)[1].split("/", 1)[0].split(":")[1])


def test_a_row_is_fitted_to_the_sizes_and_ranges_of_its_table() -> None:
    fit = RowFitter(schema.request_log)
    names = schema.request_log.names
    bulk = BulkInsert(schema.request_log)
    fitted = dict(zip(names, fit.row(bulk.values(row(1, model="m\0" * 150, deployment="d" * 301,
                                                     prompt_tokens=2**40, cost_nano=-2**64))), strict=True))
    assert fitted["model"] == ("m" + NUL_STANDIN) * 97 + CUT and len(fitted["model"]) == 200
    assert fitted["deployment"] == "d" * 294 + CUT
    assert (fitted["prompt_tokens"], fitted["cost_nano"]) == (INT_MAX, -2**63)
    assert fit_text("short", 10) == "short" and fit_text("x" * 11, 10) == "xxxx" + CUT and fit_text("xy", 3) == "xy"
    bad = bulk.values({"uid": None, "request_id": "r\ud800", "status": "200x", "latency_ms": float("nan")})
    salvaged = dict(zip(names, fit.salvage(bad), strict=True))
    assert len(salvaged["uid"]) == 32 and salvaged["request_id"] == "r?" and salvaged["status"] == 0
    assert salvaged["latency_ms"] == 0.0 and salvaged["route"] == "" and salvaged["stream"] == 0


def test_a_nul_an_overlong_model_and_a_lengthened_request_id_never_fail_their_batch(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, db_url: str) -> None:
    """Reachable with no key: each of these made PostgreSQL refuse the whole batch, forever (0 of 51 rows)."""
    gw = start_gateway({"models": [openai_model("m", openai_emulator)], "database": {"url": db_url}})
    url = gw.base_url + "/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(10):
        assert requests.post(url, json={"model": "m", "messages": msgs}, timeout=10).status_code == 200
    assert requests.post(url, json={"model": "x\u0000", "messages": msgs}, timeout=10).status_code == 404
    assert requests.post(url, json={"model": "y" * 300, "messages": msgs}, timeout=10).status_code == 404
    rid = "r" * 180 + " a@b.co " + "s" * 12  # 200 characters; redacted, 204: longer than its column
    assert requests.post(url, json={"model": "m", "messages": msgs}, headers={"x-request-id": rid},
                         timeout=10).status_code == 200
    rows = gateway_rows(gw, 13)
    assert len(rows) == 13
    by_model = {r["model"]: r for r in rows}
    assert "x" + NUL_STANDIN in by_model and "\0" not in (by_model["x" + NUL_STANDIN]["error_message"] or "")
    [cut] = [r for r in rows if r["model"].startswith("yyy")]
    model_size = size(schema.request_log.column("model"))
    assert len(cut["model"]) == model_size and cut["model"].endswith(CUT)
    [mine] = [r for r in rows if r["request_id"].startswith("rrr")]
    assert len(mine["request_id"]) == size(schema.request_log.column("request_id")) and mine["request_id"].endswith(CUT)
    assert "a@b.co" not in mine["request_id"] and MASK in mine["request_id"]
    writer = gw.gateway.writer
    assert writer.dead == 0 and writer.spooled == 0 and writer.db_ok


def test_a_row_the_database_refuses_is_dead_lettered_and_its_batch_lands(db_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(db_url)
    db.migrate()
    w = RequestLogWriter(db.log_target(5), str(tmp_path / "spool"), batch_size=100, flush_interval=0.05)
    w.start()
    rows = [row(i) for i in range(50)]
    rows[17]["status"] = None  # NOT NULL: refused by either database, whatever is fitted
    rows[31]["prompt_tokens"] = 2**70  # beyond 64 bits: refused by either driver; fitted, it lands clamped
    for r in rows:
        w.submit(r)
    assert w.flush(20)
    w.close()
    stored = {r["uid"]: r for r in log_rows(db_url)}
    assert len(stored) == 50  # 48 as they were, one fitted, one salvaged
    assert stored[rows[31]["uid"]]["prompt_tokens"] == INT_MAX
    salvaged = stored[rows[17]["uid"]]
    assert salvaged["status"] == 0 and salvaged["cost_nano"] == 17
    assert salvaged["error_message"].startswith("[request log: row salvaged, original in the dead-letter file")
    [letter] = [orjson.loads(line) for line in (tmp_path / "spool" / DEAD_LETTERS).read_bytes().splitlines()]
    assert letter["row"]["uid"] == rows[17]["uid"] and letter["row"]["status"] is None
    assert "null" in letter["reason"].lower()
    assert (w.dead, w.salvaged, w.spooled, w.db_ok) == (1, 1, 0, True)
    assert not list((tmp_path / "spool").glob("relaygate-spool-*.jsonl"))
    db.close()


def test_an_integer_beyond_its_column_is_clamped_on_postgres_not_wrapped(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """psycopg's binary COPY wrote 2**32 + 7 into an INTEGER column as 7."""
    db = Database(pg_url)
    db.migrate()
    w = RequestLogWriter(db.log_target(5), str(tmp_path), flush_interval=0.05)
    w.start()
    w.submit(row(1, prompt_tokens=2**32 + 7, completion_tokens=-2**31 - 5))
    w.submit(row(2, prompt_tokens=5))
    assert w.flush(20)
    w.close()
    stored = {r["uid"]: r for r in log_rows(pg_url)}
    assert stored[f"{1:032x}"]["prompt_tokens"] == INT_MAX
    assert stored[f"{1:032x}"]["completion_tokens"] == -2**31
    assert stored[f"{2:032x}"]["prompt_tokens"] == 5 and w.dead == 0
    db.close()


def test_a_poisoned_spool_file_is_replayed_once_and_deleted(db_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After fuzzing, 22,057 rows sat in 78 spool files that failed on every replay."""
    db = Database(db_url)
    db.migrate()
    rows = [row(i) for i in range(40)]
    rows[3]["model"] = "x\0"
    rows[9]["model"] = "y" * 300
    rows[12]["request_id"] = "r" * 250
    rows[20]["status"] = None
    del rows[25]["latency_ms"]  # an older line without a column that has no default
    lines = [orjson.dumps(r) for r in rows]
    lines.insert(30, b"[1, 2]")  # valid JSON, not a row
    lines.insert(10, b'{"uid": "torn-in-the-midd')  # an append that failed part-way, then one that did not
    (tmp_path / "relaygate-spool-99999-deadbeef.jsonl").write_bytes(b"\n".join(lines) + b'\n{"uid": "torn-at-the-e')
    w = RequestLogWriter(db.log_target(5), str(tmp_path), batch_size=8, flush_interval=0.05)
    w.start()
    assert wait_until(lambda: not list(tmp_path.glob("relaygate-spool-*.jsonl")), 20)
    w.close()
    stored = {r["uid"]: r for r in log_rows(db_url)}
    assert set(stored) == {r["uid"] for r in rows}
    assert stored[rows[3]["uid"]]["model"] == "x" + NUL_STANDIN
    assert stored[rows[9]["uid"]]["model"].endswith(CUT) and len(stored[rows[12]["uid"]]["request_id"]) == 200
    assert stored[rows[20]["uid"]]["status"] == 0 and stored[rows[25]["uid"]]["latency_ms"] == 0.0
    assert (w.spool.torn_lines, w.dead, w.salvaged) == (2, 3, 2)
    letters = [orjson.loads(line) for line in (tmp_path / DEAD_LETTERS).read_bytes().splitlines()]
    assert sorted(str(lt["row"].get("uid", lt["row"])) for lt in letters) == sorted(
        [rows[20]["uid"], rows[25]["uid"], "{'line': [1, 2]}"])
    db.close()


_TORN_APPEND = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from relaygate.requestlog.spool import Spool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead of killing us
spool = Spool(sys.argv[2])
row = lambda i: {"uid": "%032x" % i, "request_id": "r", "ts": 1.0, "day": "2026-01-01", "route": "chat",
                 "stream": False, "status": 200, "latency_ms": 1.0, "cost_nano": 0, "cache_hit": False, "attempts": 1}
spool.append([row(i) for i in range(10)])
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (len(open(spool.path, "rb").read()) + 100, hard))
try:
    spool.append([row(i) for i in range(10, 20)])  # the file is full part-way through the first row
    raise SystemExit("the append did not fail")
except OSError:
    pass
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
spool.append([row(i) for i in range(20, 30)])
"""


def test_an_append_torn_by_a_full_disk_costs_only_its_own_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real short write (the file-size limit reached mid-line), then a later append: the torn line is
    skipped and counted; the rows appended after it are not glued to it."""
    subprocess.run([sys.executable, "-c", _TORN_APPEND, str(REPO), str(tmp_path)], check=True, timeout=30)
    [path] = tmp_path.glob("relaygate-spool-*.jsonl")
    torn = path.read_bytes().split(b"\n")[10]
    assert torn.startswith(b'{"uid":"') and not torn.endswith(b"}")  # the write stopped mid-line
    got: list[Any] = []
    spool = Spool(str(tmp_path))
    assert spool.replay(got.extend, 100) == 20
    assert [int(r["uid"], 16) for r in got] == [*range(10), *range(20, 30)]
    assert spool.torn_lines == 1 and not path.exists()


def test_data_errors_are_told_from_connection_errors(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only a data error isolates rows; a connection refused, a lock or a timeout spools them as they are."""
    import sqlite3

    import psycopg

    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    with pytest.raises(psycopg.Error) as refused:
        psycopg.connect(pg_url.replace(host_port, f"127.0.0.1:{free_port()}"), connect_timeout=2)
    with psycopg.connect(pg_url) as conn, pytest.raises(psycopg.Error) as null:
        conn.execute("CREATE TEMP TABLE t (a int NOT NULL)")
        conn.execute("INSERT INTO t VALUES (NULL)")
    lite = sqlite3.connect(str(tmp_path / "x.db"), timeout=0.05)
    lite.execute("CREATE TABLE t (a int NOT NULL)")
    with pytest.raises(sqlite3.Error) as lite_null:
        lite.execute("INSERT INTO t VALUES (NULL)")
    lite.commit()
    other = sqlite3.connect(str(tmp_path / "x.db"), timeout=0.05)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.Error) as locked:
        lite.execute("INSERT INTO t VALUES (1)")
    assert is_data_error(null.value) and is_data_error(lite_null.value) and is_data_error(OverflowError())
    assert not is_data_error(refused.value) and not is_data_error(locked.value)
    assert not is_data_error(WriteTimeout()) and not is_data_error(ConnectionResetError())


def test_a_black_holed_postgres_times_writes_out_to_the_spool_and_they_land_after(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A database that accepts connections and never answers: the writer hung on its connection before."""
    Database(pg_url).migrate()
    with TcpProxy("127.0.0.1", pg_port(pg_url)) as proxy:
        db = Database(proxied(pg_url, proxy))
        w = RequestLogWriter(db.log_target(0.5), str(tmp_path), batch_size=20, flush_interval=0.05,
                             write_timeout=0.5)
        w.start()
        for i in range(20):
            w.submit(row(i))
        assert w.flush(10) and w.written == 20
        proxy.black_hole()
        time.sleep(0.1)  # the proxy's own thread holds the bytes from now on
        started = time.monotonic()
        for i in range(20, 120):
            w.submit(row(i))
        assert w.flush(10)  # every row spooled: none waits on the silent connection
        assert time.monotonic() - started < 5
        assert w.spooled == 100 and w.timeouts >= 1 and not w.db_ok
        time.sleep(3)  # retries during the outage time out too, and are broken off
        proxy.restore()
        assert wait_until(lambda: w.db_ok and not w.spool.pending(), 30)
        w.close()
        db.close()
    stored = log_rows(pg_url)
    assert sorted(r["uid"] for r in stored) == [f"{i:032x}" for i in range(120)]  # none lost, none twice


def test_a_locked_sqlite_database_spools_within_the_write_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A busy timeout of 30 s held the writer for as long; it is bounded by the write timeout now."""
    url = f"sqlite:///{tmp_path}/log.db"
    db = Database(url)
    db.migrate()
    w = RequestLogWriter(db.log_target(0.3), str(tmp_path), flush_interval=0.05, write_timeout=0.3)
    w.start()
    holder = db.engine.connect()
    holder.execute(text("BEGIN IMMEDIATE"))  # another writer holds the database
    started = time.monotonic()
    for i in range(30):
        w.submit(row(i))
    assert w.flush(10) and time.monotonic() - started < 3
    assert w.spooled == 30
    holder.rollback()
    holder.close()
    assert wait_until(lambda: w.written >= 30 and not w.spool.pending(), 20)
    w.close()
    assert len(log_rows(url)) == 30
    db.close()
