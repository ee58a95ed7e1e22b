"""One adapter over sqlite3 and PyMySQL: thread-local connections that heal.

Every thread gets its own connection (neither driver may be shared between
threads). A connection that fails is dropped, and the next call reconnects,
so a database restart costs the failed calls and nothing else.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import pymysql

from ratecared.config import DatabaseConfig
from ratecared.db.dialect import Dialect, from_url

_DRIVER_ERRORS = (sqlite3.Error, pymysql.err.Error)
_INTEGRITY_ERRORS = (sqlite3.IntegrityError, pymysql.err.IntegrityError)


class DatabaseError(Exception):
    """The database refused or could not be reached; the message says why."""


class IntegrityError(DatabaseError):
    """A unique or primary key was violated: the row is already there."""


def timestamp(moment: datetime) -> str:
    """A UTC instant as stored in every timestamp column of both engines."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps must carry their zone")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_timestamp(value: Any) -> datetime | None:
    """Read a stored UTC timestamp back, whichever engine returned it."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)


class Transaction:
    """Statements inside one BEGIN … COMMIT on one connection."""

    def __init__(self, database: "Database", conn: Any) -> None:
        self._db, self._conn = database, conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db._run(self._conn, sql, params, fetch=False)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._db._run(self._conn, sql, params, fetch=True)


class Database:
    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.dialect: Dialect = from_url(config.url, config.connect_timeout, config.password)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: set[Any] = set()

    @property
    def name(self) -> str:
        return self.dialect.name

    def describe(self) -> str:
        return self.dialect.describe()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self.dialect.connect()
            except _DRIVER_ERRORS as exc:
                raise DatabaseError(f"cannot connect to {self.describe()}: {_reason(exc)}") from exc
            self._local.conn = conn
            with self._lock:
                self._all.add(conn)
        return conn

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            self._all.discard(conn)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the connection is already broken
            pass

    @contextmanager
    def _translated(self, conn: Any) -> Iterator[None]:
        """Driver errors become ours; a broken connection is dropped for the next call to replace."""
        try:
            yield
        except _INTEGRITY_ERRORS as exc:
            raise IntegrityError(_reason(exc)) from exc
        except _DRIVER_ERRORS as exc:
            if _is_connection_error(exc):
                self._drop(conn)
            raise DatabaseError(_reason(exc)) from exc

    def _run(self, conn: Any, sql: str, params: Sequence[Any], fetch: bool) -> Any:
        with self._translated(conn):
            cursor = conn.cursor()
            try:
                cursor.execute(self.dialect.sql(sql), tuple(params))
                return list(cursor.fetchall()) if fetch else cursor.rowcount
            finally:
                cursor.close()

    def run_to_completion(self, statement: str) -> None:
        """Run a parameterless maintenance statement to its end (see the dialects)."""
        conn = self._connection()
        with self._translated(conn):
            self.dialect.run_to_completion(conn, statement)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in autocommit; return the affected row count."""
        return self._run(self._connection(), sql, params, fetch=False)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._run(self._connection(), sql, params, fetch=True)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.transaction() as tx:
            for row in rows:
                tx.execute(sql, row)

    def upsert(self, table: str, row: dict[str, Any], keys: Sequence[str]) -> None:
        self.execute(self.dialect.upsert(table, list(row), keys), list(row.values()))

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """BEGIN … COMMIT, rolled back on any exception."""
        conn = self._connection()
        self._run(conn, "BEGIN", (), fetch=False)
        try:
            yield Transaction(self, conn)
        except BaseException:
            try:
                self._run(conn, "ROLLBACK", (), fetch=False)
            except DatabaseError:
                pass
            raise
        self._run(conn, "COMMIT", (), fetch=False)

    def ping(self) -> None:
        """Raise DatabaseError unless a trivial query succeeds right now."""
        self.query("SELECT 1")

    def close(self) -> None:
        """Close every thread's connection (at shutdown)."""
        with self._lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._local = threading.local()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.Error) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc) or type(exc).__name__


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "locked" not in str(exc)
