"""Everything that differs between SQLite and MySQL/MariaDB, in one place.

Queries elsewhere are written once, with `?` placeholders and backquoted
reserved words (`key`, `trigger`), which both engines accept; the few
statements that cannot be shared (upserts, named locks, table options,
space reclaim) are built here.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql

Query = Callable[..., list[tuple]]

@dataclass(frozen=True)
class SQLite:
    path: str
    timeout: float

    name = "sqlite"
    # Free pages belong to the file, not to one table: that is what incremental_vacuum returns.
    space_of = "the database file"

    def connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Must precede the first table: lets purges hand pages back with
            # incremental_vacuum instead of an exclusive full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return conn

    def sql(self, text: str) -> str:
        return text

    def upsert(self, table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
        cols = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join("?" for _ in columns)
        updates = ", ".join(f"`{c}` = excluded.`{c}`" for c in columns if c not in keys)
        conflict = ", ".join(f"`{k}`" for k in keys)
        return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {updates}"

    def migration(self, text: str) -> str:
        return text.replace("{{AUTO_ID}}", "INTEGER PRIMARY KEY").replace("{{TABLE_OPTIONS}}", "")

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def space(self, query: Query, table: str) -> tuple[int, int]:
        """(free bytes, total bytes); SQLite's free pages belong to the whole file."""
        page = query("PRAGMA page_size")[0][0]
        return query("PRAGMA freelist_count")[0][0] * page, query("PRAGMA page_count")[0][0] * page

    def reclaim(self, table: str) -> list[str]:
        # Incremental vacuum hands free pages back without the exclusive,
        # twice-the-space rewrite of a full VACUUM.
        return ["PRAGMA incremental_vacuum"]

    def run_to_completion(self, conn: sqlite3.Connection, statement: str) -> None:
        # sqlite3's execute() steps a statement without result columns once,
        # and incremental_vacuum frees one page per step.
        conn.executescript(statement)


@dataclass(frozen=True)
class MySQL:
    host: str
    port: int
    user: str
    url_password: str | None
    database: str
    unix_socket: str | None
    timeout: float
    password_source: Any = None

    name = "mysql"
    space_of = "the table"

    def connect(self) -> pymysql.connections.Connection:
        password = self.url_password
        if password is None and self.password_source is not None:
            password = self.password_source()
        conn = pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=password or "",
            database=self.database,
            unix_socket=self.unix_socket,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=self.timeout,
            # Timestamps are UTC in the tables whatever the server's zone is.
            init_command="SET time_zone = '+00:00'",
        )
        with conn.cursor() as cursor:
            # Long INSERT … SELECT rollups must not lock the app's new rows.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn

    def sql(self, text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def upsert(self, table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
        cols = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join("?" for _ in columns)
        updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in columns if c not in keys)
        return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {updates}"

    def migration(self, text: str) -> str:
        return text.replace("{{AUTO_ID}}", "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY").replace(
            "{{TABLE_OPTIONS}}", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )

    def describe(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"mysql://{self.user}@{where}/{self.database}"

    def space(self, query: Query, table: str) -> tuple[int, int]:
        """(DATA_FREE, data + index bytes) of one InnoDB table."""
        rows = query(
            "SELECT DATA_FREE, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        return (int(rows[0][0] or 0), int(rows[0][1] or 0)) if rows else (0, 0)

    def reclaim(self, table: str) -> list[str]:
        # What OPTIMIZE does for InnoDB, but online or not at all: it fails
        # rather than fall back to a table copy that blocks the app's writes.
        return ["SET SESSION lock_wait_timeout = 5", f"ALTER TABLE {table} ENGINE=InnoDB, ALGORITHM=INPLACE, LOCK=NONE"]

    def run_to_completion(self, conn: pymysql.connections.Connection, statement: str) -> None:
        with conn.cursor() as cursor:
            cursor.execute(statement)


Dialect = SQLite | MySQL


def from_url(url: str, timeout: float, password_source: Any = None) -> Dialect:
    """Pick the engine from the URL; `?unix_socket=` selects a local socket for MySQL."""
    if url.startswith("sqlite:///"):
        return SQLite(path=url[len("sqlite:///"):], timeout=timeout)
    parts = urlsplit(url)
    if parts.scheme != "mysql":
        raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")
    query = parse_qs(parts.query)
    database = parts.path.lstrip("/")
    if not database:
        raise ValueError("the MySQL URL names no database")
    return MySQL(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username or "ratecare"),
        url_password=unquote(parts.password) if parts.password is not None else None,
        database=database,
        unix_socket=query.get("unix_socket", [None])[0],
        timeout=timeout,
        password_source=password_source,
    )
