"""Many rows per INSERT: how the request log's writer writes its batches to SQLite and PostgreSQL.

It needs no SQLAlchemy: the statements are built from the table's description (``schema.py``); on SQLite it
inserts through a plain ``sqlite3`` connection, on PostgreSQL through the engine's connection it is given.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

from relaygate.store.schema import TableDef


class BulkInsert:
    """``INSERT … VALUES (…), (…), … ON CONFLICT DO NOTHING``: many rows per statement, the statement text
    built once per row count from the table's columns (same SQL on SQLite and PostgreSQL, placeholders aside).

    The request log writes thousands of rows a second from a thread of the gateway's process. One statement
    per chunk matters: a driver's executemany releases and retakes the GIL for every row, and each retake
    waits for the busy event loop — the hand-offs cost more CPU than the inserts. Chunks come in a few fixed
    sizes so that the driver's cache of prepared statements always hits: parsing a statement of 100 rows
    costs SQLite more than inserting them.

    A row is a tuple of values in column order (the request path builds them so) or a dict by column name
    (spool lines; a missing column, as in an older spool line, takes its default).
    """

    SIZES = (100, 25, 5, 1)  # rows per statement: a chunk of n rows is cut into these, largest first
    # shapes of shared columns (one value in every row of a chunk, bound once) per chunk size and columns; the
    # sqlite3 connection keeps 64 prepared statements
    MAX_SHARED = 3

    def __init__(self, table: TableDef, statement_timeout: float | None = None) -> None:
        self.table = table
        # PostgreSQL: each transaction's statement and lock timeout, set with the staging table (no round trip)
        self._timeouts = "" if statement_timeout is None else (
            f"SET LOCAL statement_timeout = {max(int(statement_timeout * 1000), 1)}; "
            f"SET LOCAL lock_timeout = {max(int(statement_timeout * 1000), 1)}; ")
        self.names = table.names
        self._defaults = {c.name: c.default for c in table.columns if c.default is not None}
        # a dict row's values in column order, in C (a table has several columns: itemgetter gives a tuple)
        self._values: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*self.names)
        self._sql: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}  # (rows, columns, shared) -> INSERT
        self._shapes: dict[tuple[int, tuple[int, ...]], list[tuple[int, ...]]] = {}  # (rows, columns) -> shared sets
        self._all = tuple(range(len(self.names)))
        self._oids: list[int] | None = None  # PostgreSQL type oids of the columns, for binary COPY
        self._staging: str | None = None  # PostgreSQL: the CREATE of the per-connection staging table

    def _statement(self, rows: int, columns: tuple[int, ...], same: tuple[int, ...] = ()) -> str:
        """SQLite's INSERT of ``rows`` rows of the given columns (indexes into ``names``), built once. Its
        parameters are numbered column after column (``?1`` to ``?rows`` the first column's values, then the
        next column's): ``sqlite`` binds the chunk as it transposed it, without gathering each row's values.
        The columns of ``same`` (positions in ``columns``) hold one value in every row: each is one parameter,
        numbered after the others and named in every row."""
        sql = self._sql.get((rows, columns, same))
        if sql is None:
            def q(name: str) -> str:
                return '"' + name.replace('"', '""') + '"'

            first: list[int] = []  # each column's first parameter, less one; a shared one's own
            varying = 0
            for c in range(len(columns)):
                if c not in same:
                    first.append(varying * rows)
                    varying += 1
                else:
                    first.append(-1)
            for k, c in enumerate(same):
                first[c] = varying * rows + k
            cols = ", ".join(q(self.names[j]) for j in columns)
            values = ", ".join("(" + ", ".join(f"?{first[c] + (0 if c in same else r) + 1}"
                                               for c in range(len(columns))) + ")" for r in range(rows))
            sql = f"INSERT INTO {q(self.table.name)} ({cols}) VALUES {values} ON CONFLICT DO NOTHING"
            if len(self._sql) < 256:  # a few shapes of NULL and shared columns in practice
                self._sql[(rows, columns, same)] = sql
        return sql

    def _shared(self, rows: int, columns: tuple[int, ...], same: tuple[int, ...]) -> tuple[int, ...]:
        """Which of the columns holding one value in every row of a chunk (``same``) its statement binds once:
        all of them when that shape is known or there is room for it (``MAX_SHARED`` shapes per chunk size and
        columns), else the most of them a known shape shares (a new statement is parsed again for every new
        shape: parsing a 100-row INSERT costs SQLite more than binding it)."""
        known = self._shapes.get((rows, columns))
        if known is None:
            known = self._shapes[(rows, columns)] = []
        if same in known:
            return same
        if len(known) < self.MAX_SHARED:
            known.append(same)
            return same
        best: tuple[int, ...] = ()
        for shape in known:
            if len(shape) > len(best) and set(shape) <= set(same):
                best = shape
        return best

    def values(self, row: tuple[Any, ...] | dict[str, Any]) -> tuple[Any, ...]:
        """One row's values in column order."""
        if isinstance(row, tuple):
            return row
        try:
            return self._values(row)
        except KeyError:
            d = self._defaults
            return tuple(row.get(n, d.get(n)) for n in self.names)

    def as_dict(self, row: tuple[Any, ...] | dict[str, Any]) -> dict[str, Any]:
        """A row by column name (for the spool file, whose lines must outlive column order)."""
        return row if isinstance(row, dict) else dict(zip(self.names, row, strict=True))

    def __call__(self, conn: Any, rows: list[Any]) -> None:
        """Insert ``rows`` through a SQLAlchemy connection, skipping those whose primary key exists (replays
        after a failed commit are safe)."""
        if conn.dialect.name == "postgresql":
            self._copy(conn, [r if type(r) is tuple else self.values(r) for r in rows])
            return
        # the DB-API connection: SQLAlchemy's per-statement bookkeeping cost more than binding 100 rows; the
        # transaction is still the SQLAlchemy connection's (sqlite() makes the rows' values itself)
        self.sqlite(conn.connection.driver_connection, rows)

    def sqlite(self, dbapi: Any, rows: list[Any]) -> None:
        """Insert ``rows`` into SQLite on a ``sqlite3`` connection, in the caller's transaction, skipping those
        whose primary key exists."""
        values = [r if type(r) is tuple else self.values(r) for r in rows]
        chain = itertools.chain.from_iterable
        i, n = 0, len(values)
        cursor = dbapi.cursor()
        try:
            for size in self.SIZES:
                while n - i >= size:
                    # the chunk by column, in C: a column NULL in every row is left out of the INSERT (NULL by
                    # default; sqlite3 binds each None through its adapter lookup, ~1k instructions), the others
                    # are bound as they are (the statement numbers its parameters column by column): ~3.7k
                    # instructions a row fewer than gathering each row's values with an itemgetter and checking
                    # the first row's NULL columns with another
                    cols = list(zip(*values[i:i + size], strict=True))
                    nulls = (None,) * size  # compared, a column with a value differs at its first one
                    keep = tuple([j for j, col in enumerate(cols) if col != nulls])
                    if len(keep) == len(cols) or not keep:
                        keep = self._all
                    else:
                        cols = list(map(cols.__getitem__, keep))
                    # a column with one value in every row (the day, the route, the key, the model, a status:
                    # most of a row, in a chunk of the usual calls) is bound once, not once a row: sqlite3 binds
                    # each value by a Python call, and SQLite copies each text (~0.5k instructions a value).
                    # Equal by ==, so 1 and 1.0 or 0.0 and -0.0 count as one: the column's type stores either
                    # the same way (as it does 1 and True), and -0.0 is no figure the log holds apart from 0.
                    same = tuple([c for c, col in enumerate(cols) if col[0] == col[-1] and col.count(col[0]) == size]
                                 ) if size > 1 else ()
                    if same:
                        same = self._shared(size, keep, same)
                    if same:
                        params = tuple(chain([col for c, col in enumerate(cols) if c not in same])) + tuple(
                            [cols[c][0] for c in same])
                    else:
                        params = tuple(chain(cols))
                    cursor.execute(self._statement(size, keep, same), params)
                    i += size
        finally:
            cursor.close()

    def _copy(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: COPY into a per-connection temporary table, then one INSERT … SELECT … ON CONFLICT DO
        NOTHING (psycopg adapts COPY rows in C; bound parameters cost ~50 µs of Python per row). The COPY is
        binary: in text, formatting each row's three floats (repr) was a third of the writer's CPU."""
        names = self.names
        q = conn.dialect.identifier_preparer.quote
        table, staging = q(self.table.name), q(self.table.name + "_incoming")
        cols = ", ".join(q(n) for n in names)
        if self._staging is None:
            # the table's columns without their constraints, integers widened to BIGINT: binary COPY writes an
            # int beyond an INTEGER column's range wrapped around (2**32 + 7 as 7); from BIGINT, the INSERT …
            # SELECT checks the range and fails the batch for a data reason instead
            types = ["BIGINT" if c.type == "INTEGER" else c.sql_type for c in self.table.columns]
            self._staging = (f"{self._timeouts}CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ("
                             + ", ".join(f"{q(n)} {t}" for n, t in zip(names, types, strict=True))
                             + ") ON COMMIT DELETE ROWS")
        conn.exec_driver_sql(self._staging)
        cursor = conn.connection.driver_connection.cursor()
        try:
            if self._oids is None:  # the columns' type oids, which binary COPY needs to encode each value
                cursor.execute(f"SELECT {cols} FROM {staging} LIMIT 0")
                self._oids = [d.type_code for d in cursor.description]
            with cursor.copy(f"COPY {staging} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(self._oids)
                for r in rows:
                    copy.write_row(r)
        finally:
            cursor.close()
        conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} ON CONFLICT DO NOTHING")
