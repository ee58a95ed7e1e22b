"""One adapter over sqlite3 and PyMySQL: thread-local connections that heal.

Every thread gets its own connection (neither driver may be shared between
threads). A connection that fails is dropped, and the next call reconnects;
one the server closed while idle (`wait_timeout`, a restart) is replaced
before it is used, so a database restart costs only the calls in flight.
An SQLite connection is also dropped when the file at the path is no longer
the one it opened (deleted, or replaced by a restore), so the daemon follows
the file that is there instead of writing to a deleted one.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

import pymysql

from ratecared.config import DatabaseConfig
from ratecared.db.dialect import Dialect, from_url

_DRIVER_ERRORS = (sqlite3.Error, pymysql.err.Error)
_INTEGRITY_ERRORS = (sqlite3.IntegrityError, pymysql.err.IntegrityError)


class DatabaseError(Exception):
    """The database refused or could not be reached; the message says why."""


class IntegrityError(DatabaseError):
    """A unique or primary key was violated: the row is already there."""


class DatabaseMissing(DatabaseError):
    """The SQLite database file does not exist (never made, or deleted under the daemon)."""


@dataclass(frozen=True)
class Probe:
    """What `health` reports of the database."""

    reachable: bool
    writable: bool
    error: str | None
    # What happened to the SQLite file while the daemon ran (deleted, replaced), if anything.
    notice: str | None


# A write that changes nothing, rolled back: it is refused by a read-only
# server or file like any other write, and touches only ratecared's own row.
_WRITE_PROBE = "UPDATE ratecared_database SET id = id"


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
        self.dialect: Dialect = from_url(config.url, config.connect_timeout, config.password, config.io_timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: set[Any] = set()
        # Raised by close(): a thread's connection from before it is closed, whichever thread holds it.
        self._generation = 0
        self._notice: str | None = None

    @property
    def name(self) -> str:
        return self.dialect.name

    def describe(self) -> str:
        return self.dialect.describe()

    def _current(self) -> Any:
        """This thread's connection; None before its first, and once close() has closed it."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation != self._generation:
            self._drop(conn)
            return None
        return conn

    def _connection(self) -> Any:
        conn = self._current()
        if conn is not None:
            try:
                moved = self.dialect.identity() != self._local.identity
            except FileNotFoundError:
                self._drop(conn)
                self._note(f"{self.describe()} was deleted while ratecared ran")
                raise DatabaseMissing(f"the database file of {self.describe()} is gone: deleted while ratecared"
                                      " ran") from None
            if moved:
                self._drop(conn)
                self._note(f"{self.describe()} was replaced by another file while ratecared ran; reconnected to it")
                conn = None
            elif self.dialect.closed_by_server(conn):
                self._drop(conn)
                conn = None
        if getattr(self._local, "lost", False):
            raise DatabaseError(f"the connection to {self.describe()} was lost mid-session, and with it the"
                                " session's named locks and settings: its statements fail until it ends")
        conn = conn if conn is not None else self._open(create=False)
        if getattr(self._local, "sessions", 0) and self._local.session_conn is None:
            self._local.session_conn = conn
        return conn

    @contextmanager
    def session(self) -> Iterator[None]:
        """Statements in this block share one session: its named locks and SET SESSION values.

        Outside such a block, a connection the server has closed while idle
        is replaced before the next statement, unseen. Inside, once the
        connection is lost, every statement fails until the outermost block
        ends: a new session would not hold what the block relies on (a job
        run going on without the jobs' lock could overlap another daemon's).
        """
        local = self._local
        if not getattr(local, "sessions", 0):
            # The session is the thread's connection now (the one a named lock was just taken on), or else
            # the one its first statement opens.
            local.session_conn = getattr(local, "conn", None)
        local.sessions = getattr(local, "sessions", 0) + 1
        try:
            yield
        finally:
            local.sessions -= 1
            if not local.sessions:
                local.lost, local.session_conn = False, None

    # Any thread may notice what happened to the file; health reads it from another.
    def _note(self, notice: str) -> None:
        with self._lock:
            self._notice = notice

    def _noticed(self) -> str | None:
        with self._lock:
            return self._notice

    def _open(self, create: bool) -> Any:
        try:
            conn = self.dialect.connect(create)
            identity = self.dialect.identity()
        except FileNotFoundError as exc:
            raise DatabaseMissing(str(exc)) from None
        except _DRIVER_ERRORS as exc:
            raise DatabaseError(f"cannot connect to {self.describe()}: {_reason(exc)}") from exc
        with self._lock:
            self._all.add(conn)
            self._local.conn, self._local.identity, self._local.generation = conn, identity, self._generation
        return conn

    def create(self) -> None:
        """Make the database if it is missing: the SQLite file and its directory. Only migrating does."""
        if self._current() is None:
            self._open(create=True)

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        # Only the connection the session's statements ran on held anything: one found closed before them did not.
        if conn is getattr(self._local, "session_conn", None) and self.dialect.sessions_hold_state:
            self._local.lost = True
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

    def _run(self, conn: Any, sql: str, params: Sequence[Any], fetch: bool, named: bool = False) -> Any:
        with self._translated(conn):
            cursor = conn.cursor()
            try:
                cursor.execute(self.dialect.sql(sql), tuple(params))
                if not fetch:
                    return cursor.rowcount
                rows = list(cursor.fetchall())
                if named:
                    names = [column[0] for column in cursor.description or ()]
                    return [dict(zip(names, row)) for row in rows]
                return rows
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

    def query_named(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """query, each row by column name: for SHOW statements whose columns differ between servers."""
        return self._run(self._connection(), sql, params, fetch=True, named=True)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.transaction() as tx:
            for row in rows:
                tx.execute(sql, row)

    def has_table(self, table: str) -> bool:
        return self.dialect.has_table(self.query, table)

    @contextmanager
    def named_lock(self, name: str, wait: float = math.inf, stop: threading.Event | None = None,
                   waiting: Callable[[Any], None] = lambda holder: None) -> Iterator[bool]:
        """Hold a lock named `name` across daemons (MySQL GET_LOCK; SQLite needs none).

        Tries once a second for up to `wait` seconds, giving up early once
        `stop` is set; yields whether it got the lock. `waiting(holder)` hears
        once that another session holds it. The lock belongs to this thread's
        connection: it is taken and released on the thread that holds it.
        """
        deadline = time.monotonic() + wait
        told = False
        while True:
            got = self.dialect.get_lock(self.query, name, 1)
            if got:
                break
            if not told:
                waiting(self.dialect.lock_holder(self.query, name))
                told = True
            if (stop is not None and stop.is_set()) or time.monotonic() >= deadline:
                break
        try:
            with self.session() if got else nullcontext():
                yield got
        finally:
            if got:
                try:
                    self.dialect.release_lock(self.query, name)
                except DatabaseError:
                    pass  # a dropped connection has released it already

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

    def probe(self) -> Probe:
        """Whether the database answers and takes writes now, and what happened to its file.

        `SELECT 1` alone says OK for a read-only database on which every write
        fails, so a write that changes nothing is tried too, and rolled back.
        """
        try:
            self.ping()
        except DatabaseError as exc:
            return Probe(False, False, str(exc), self._noticed())
        try:
            refusal = self.dialect.read_only(self.query)
            if refusal is None:
                self._rolled_back(_WRITE_PROBE)
        except DatabaseError as exc:
            refusal = f"writes are refused: {exc}"
        return Probe(True, refusal is None, refusal, self._noticed())

    def _rolled_back(self, sql: str) -> None:
        conn = self._connection()
        self._run(conn, "BEGIN", (), fetch=False)
        try:
            self._run(conn, sql, (), fetch=False)
        finally:
            try:
                self._run(conn, "ROLLBACK", (), fetch=False)
            except DatabaseError:
                pass  # the write failed and took the transaction with it

    def close(self) -> None:
        """Close every thread's connection (at shutdown); a thread inside a session then fails, as on any loss."""
        with self._lock:
            conns, self._all = list(self._all), set()
            self._generation += 1
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.Error) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc) or type(exc).__name__


# Server errors after which the server closes the session: its shutdown, a KILL (MariaDB's 1927), and the
# network errors 1153 and 1158-1161. MySQL 8's idle-timeout packet arrives out of sequence, which PyMySQL
# reports as 2013. (4031 is that error on MySQL but a trigger's on MariaDB, so it is not listed.)
_SESSION_ENDED = (1053, 1153, 1158, 1159, 1160, 1161, 1927)


def _is_connection_error(exc: BaseException) -> bool:
    """Whether the session is gone, not just the statement.

    PyMySQL raises every server error it has no class for as
    OperationalError, a refused `SHOW REPLICA HOSTS` (1227) or a lock wait
    (1205) among them; dropping the connection for those would drop the
    named locks it holds in the middle of a job. The client's own codes
    (2000–2999: gone away, lost, out of sync) and a closed connection are.
    """
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.Error):
        code = exc.args[0] if exc.args else None
        return isinstance(code, int) and (2000 <= code < 3000 or code in _SESSION_ENDED)
    return isinstance(exc, sqlite3.OperationalError) and "locked" not in str(exc)
