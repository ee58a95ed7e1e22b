"""Everything that differs between SQLite and MySQL/MariaDB, in one place.

Queries elsewhere are written once, with `?` placeholders and backquoted
reserved words (`key`, `trigger`), which both engines accept; the few
statements that cannot be shared (upserts, named locks, table options,
space reclaim, read-only checks) are built here.
"""

from __future__ import annotations

import os
import select
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pymysql

Query = Callable[..., list[tuple]]

@dataclass(frozen=True)
class SQLite:
    path: str
    timeout: float

    name = "sqlite"
    # Its connections hold no named lock or setting that a new one would lack.
    sessions_hold_state = False
    # Free pages belong to the file, not to one table: that is what incremental_vacuum returns.
    space_of = "the database file"

    def connect(self, create: bool = False) -> sqlite3.Connection:
        """Open the file; only with `create` (migrating) make it, and its directory, if missing.

        A daemon that refuses to start must leave no empty database behind.
        """
        if self.path == ":memory:":
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        else:
            if create:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            elif not os.path.exists(self.path):
                raise FileNotFoundError(f"the SQLite database {self.path} does not exist;"
                                        " `ratecared migrate` (or database.auto_migrate = true) creates it")
            conn = sqlite3.connect(f"file:{quote(self.path)}?mode={'rwc' if create else 'rw'}", uri=True,
                                   timeout=self.timeout, isolation_level=None)
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Must precede the first table: lets purges hand pages back with
            # incremental_vacuum instead of an exclusive full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return conn

    def identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the file at the path now; FileNotFoundError when there is none.

        A connection keeps the file it opened: compared with this, it shows a
        database file deleted or replaced under the daemon.
        """
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def closed_by_server(self, conn: sqlite3.Connection) -> bool:
        return False

    def sql(self, text: str) -> str:
        return text

    def has_table(self, query: Query, table: str) -> bool:
        return bool(query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))

    # Named locks: one file is one daemon's, and its jobs run one at a time on
    # one thread, so the claim row is enough.
    def get_lock(self, query: Query, name: str, seconds: int) -> bool:
        return True

    def lock_holder(self, query: Query, name: str) -> Any:
        return None

    def release_lock(self, query: Query, name: str) -> None:
        pass

    def read_only(self, query: Query) -> str | None:
        """Why the server refuses writes whatever the session does; SQLite tells at the write."""
        return None

    def upsert(self, table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
        cols = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join("?" for _ in columns)
        updates = ", ".join(f"`{c}` = excluded.`{c}`" for c in columns if c not in keys)
        conflict = ", ".join(f"`{k}`" for k in keys)
        return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {updates}"

    def migration(self, text: str) -> str:
        return text.replace("{{AUTO_ID}}", "INTEGER PRIMARY KEY").replace("{{TABLE_OPTIONS}}", "")

    # The id the connection's last INSERT gave its row.
    last_insert_id = "SELECT last_insert_rowid()"

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def space(self, query: Query, table: str, rows_deleted: int = 0) -> tuple[int, int]:
        """(free bytes, total bytes); SQLite's free pages belong to the whole file.

        Only whole free pages count: they are all that incremental_vacuum gives back.
        """
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
    # Each read and write of the connection, in seconds; None waits as long as a statement takes (the
    # purges' and rollups' own). A replica watched for its lag is given one, so a hung one cannot hang a purge.
    io_timeout: float | None = None

    name = "mysql"
    sessions_hold_state = True
    space_of = "the table"

    def connect(self, create: bool = False) -> pymysql.connections.Connection:
        """Connect; the database itself is the administrator's to create, so `create` changes nothing."""
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
            read_timeout=self.io_timeout,
            write_timeout=self.io_timeout,
            # Timestamps are UTC in the tables whatever the server's zone is.
            init_command="SET time_zone = '+00:00'",
        )
        with conn.cursor() as cursor:
            # Long INSERT … SELECT rollups must not lock the app's new rows.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn

    def identity(self) -> tuple[int, int] | None:
        return None

    def closed_by_server(self, conn: pymysql.connections.Connection) -> bool:
        """Whether the server has closed this idle connection: `wait_timeout`, a restart, a KILL.

        go-sql-driver/mysql's connCheck: nothing is sent to an idle session,
        so anything to read, its end included, means the server has let it
        go. A poll of the socket, with no round trip and no wait: not a recv,
        which waits out the socket's own timeout first, and not select(),
        which fails on descriptors past 1024, which a busy daemon has.
        """
        sock = conn._sock   # PyMySQL's own socket: None once closed
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def sql(self, text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def has_table(self, query: Query, table: str) -> bool:
        return bool(query("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
                          " AND TABLE_NAME = ?", (table,)))

    # Named locks belong to the session (this thread's connection): taken and
    # released on one thread, and gone if the connection drops.
    def get_lock(self, query: Query, name: str, seconds: int) -> bool:
        return query("SELECT GET_LOCK(?, ?)", (name, seconds))[0][0] == 1

    def lock_holder(self, query: Query, name: str) -> Any:
        """The connection id holding the lock, or None."""
        return query("SELECT IS_USED_LOCK(?)", (name,))[0][0]

    def release_lock(self, query: Query, name: str) -> None:
        query("SELECT RELEASE_LOCK(?)", (name,))

    def read_only(self, query: Query) -> str | None:
        """Why the server refuses writes: read_only, super_read_only (MySQL) or innodb_read_only on."""
        rows = query("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('read_only', 'super_read_only',"
                     " 'innodb_read_only')")
        on = sorted(name for name, value in rows if str(value).upper() in ("ON", "1"))
        return f"the server is read-only ({', '.join(f'{name}=ON' for name in on)})" if on else None

    def upsert(self, table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
        cols = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join("?" for _ in columns)
        updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in columns if c not in keys)
        return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {updates}"

    def migration(self, text: str) -> str:
        return text.replace("{{AUTO_ID}}", "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY").replace(
            "{{TABLE_OPTIONS}}", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )

    last_insert_id = "SELECT LAST_INSERT_ID()"

    def describe(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"mysql://{self.user}@{where}/{self.database}"

    def at(self, host: str, port: int) -> str:
        """The URL of this user and database on another server (a replica the primary lists)."""
        password = "" if self.url_password is None else ":" + quote(self.url_password, safe="")
        where = f"[{host}]" if ":" in host else host
        return f"mysql://{quote(self.user, safe='')}{password}@{where}:{port}/{self.database}"

    def space(self, query: Query, table: str, rows_deleted: int = 0) -> tuple[int, int]:
        """(free bytes, data + index bytes) of one InnoDB table: what a rebuild would give back.

        DATA_FREE counts whole free extents only. Rows deleted here and there,
        as expired cache rows among live ones, leave pages part-empty instead,
        which only a rebuild compacts: with 4 of every 5 rows gone from 3.8 GB
        of cache, DATA_FREE stayed under the 20% that makes one pay (bench/gains.py). Their share is
        estimated from the rows just deleted against those left (TABLE_ROWS,
        which InnoDB lowers on every delete), and the larger of the two counts.
        """
        rows = query(
            "SELECT DATA_FREE, DATA_LENGTH + INDEX_LENGTH, TABLE_ROWS FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        if not rows:
            return 0, 0
        free, size, left = (int(value or 0) for value in rows[0])
        if rows_deleted > 0:
            free = max(free, size * rows_deleted // (rows_deleted + left))
        return free, size

    def reclaim(self, table: str) -> list[str]:
        # What OPTIMIZE does for InnoDB, but online or not at all: it fails
        # rather than fall back to a table copy that blocks the app's writes.
        return ["SET SESSION lock_wait_timeout = 5", f"ALTER TABLE {table} ENGINE=InnoDB, ALGORITHM=INPLACE, LOCK=NONE"]

    def run_to_completion(self, conn: pymysql.connections.Connection, statement: str) -> None:
        with conn.cursor() as cursor:
            cursor.execute(statement)


Dialect = SQLite | MySQL


def from_url(url: str, timeout: float, password_source: Any = None, io_timeout: float | None = None) -> Dialect:
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
        io_timeout=io_timeout,
    )
