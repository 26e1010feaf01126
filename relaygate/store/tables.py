"""The schema as SQLAlchemy Core tables, built from its plain description (``schema.py``): what the key store,
the stored objects, the admin API's queries and PostgreSQL go through. Importing this imports SQLAlchemy: the
request log's writer and the migrations of a SQLite file read ``schema.py`` instead.
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

from relaygate.store import schema

metadata = MetaData()

_TYPES: dict[str, Any] = {"TEXT": Text, "INTEGER": Integer, "BIGINT": BigInteger, "FLOAT": Float,
                          "BOOLEAN": Boolean, "JSON": JSON}


def _column(c: schema.Column) -> Column[Any]:
    return Column(c.name, String(c.length) if c.type == "VARCHAR" else _TYPES[c.type], primary_key=c.primary_key,
                  nullable=not c.required, unique=c.unique or None, index=c.index or None, default=c.default,
                  server_default=text(c.server_default) if c.server_default is not None else None)


def table(d: schema.TableDef) -> Table:
    """The SQLAlchemy table of a described one (made once: ``metadata`` holds it by name)."""
    found = metadata.tables.get(d.name)
    if found is not None:
        return found
    return Table(d.name, metadata, *[_column(c) for c in d.columns],
                 *[Index(name, *cols) for name, cols in d.indexes])


schema_migrations = table(schema.schema_migrations)
api_keys = table(schema.api_keys)
owners = table(schema.owners)
stored_objects = table(schema.stored_objects)
request_log = table(schema.request_log)
