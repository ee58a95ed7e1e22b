"""A private, throwaway MariaDB server for tests, plus the pytest fixtures that use it.

The server lives entirely in a temporary directory and listens only on a unix
socket there, so it never touches the system's MariaDB service, data or ports,
and several test runs can go on side by side.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from socket import AF_UNIX
from socket import socket as plain_socket
from typing import Any
from urllib.parse import quote

import pymysql
import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
MISSING_MESSAGE = "MariaDB is required: run `make test`, which installs mariadb-server"

# Small and fast rather than durable; the character set is the one Debian's
# packaged server is configured with, which --no-defaults would otherwise lose.
_SERVER_OPTIONS = (
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--skip-log-bin",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
)
_MAX_SOCKET_PATH = 100
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,64}")


def _find(program: str) -> str | None:
    """Locate a MariaDB binary; /usr/sbin is often missing from a non-root PATH."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin"])
    return shutil.which(program, path=search)


def available() -> bool:
    """Whether this machine can run a private MariaDB server."""
    return _find("mariadbd") is not None and _find("mariadb-install-db") is not None


def _die_with_parent() -> None:
    """Have the kernel kill the server if the test process dies without cleaning up."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def schema_of(url: str) -> str:
    """The database a URL made by `MariaDB.create_database` names."""
    return url.split("/")[3].split("?")[0]


class MariaDB:
    """One mariadbd whose datadir, socket, pid file and error log all live in basedir."""

    # A subclass may add options; the ones given last win.
    server_options: tuple[str, ...] = _SERVER_OPTIONS

    def __init__(self, basedir: Path) -> None:
        self.basedir = Path(basedir)
        self.datadir = self.basedir / "data"
        # Its own temporary directory: servers sharing /tmp (the suites run side by side) have seen
        # mariadb-install-db abort on a temporary table another process's cleanup removed.
        self.tmpdir = self.basedir / "tmp"
        self.error_log = self.basedir / "error.log"
        self._socket = self.basedir / "mysqld.sock"
        self._pid_file = self.basedir / "mysqld.pid"
        self._process: subprocess.Popen[bytes] | None = None
        if len(os.fsencode(self._socket)) > _MAX_SOCKET_PATH:
            raise ValueError(f"unix socket path too long for the kernel: {self._socket}")

    @property
    def socket(self) -> str:
        """Path of the server's unix socket, for clients to connect to."""
        return str(self._socket)

    @property
    def running(self) -> bool:
        """Whether the server process started by this object is still alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server, creating the datadir first if needed, and wait until it answers."""
        if self.running:
            raise RuntimeError("MariaDB is already running")
        mariadbd = _find("mariadbd")
        if mariadbd is None:
            raise RuntimeError(MISSING_MESSAGE)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        if not self.datadir.exists():
            self._install()
        self._process = subprocess.Popen(
            [
                mariadbd,
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                f"--tmpdir={self.tmpdir}",
                f"--socket={self._socket}",
                "--skip-networking",
                f"--pid-file={self._pid_file}",
                f"--log-error={self.error_log}",
                *self.server_options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._wait_until_ready(self._process)

    def ensure_running(self) -> None:
        """Bring the server back if an earlier test stopped or killed it."""
        if not self.running:
            self.start()

    def stop(self) -> None:
        """Shut the server down cleanly and wait for it to exit."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"MariaDB did not shut down within {STOP_TIMEOUT:.0f} s\n{self._log_tail()}"
            ) from None
        self._process = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, for tests of losing the database."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """SIGSTOP the server for the block: it takes connections and answers nothing, as a hung host does."""
        assert self._process is not None, "MariaDB is not running"
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and delete everything it wrote."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def root_connect(self, **kwargs: Any) -> pymysql.connections.Connection:
        """Connect as root over the socket; keyword arguments go to pymysql.connect."""
        params: dict[str, Any] = {"unix_socket": self.socket, "user": "root", "autocommit": True}
        params.update(kwargs)
        return pymysql.connect(**params)

    def create_database(self, name: str, user: str = "ratecare", password: str = "secret") -> str:
        """Create a database that user@localhost may do anything in, and return its URL.

        The user is created on first use only, so a later call keeps its first password.
        """
        for identifier in (name, user):
            if not _IDENTIFIER.fullmatch(identifier):
                raise ValueError(f"not a plain identifier: {identifier!r}")
        with self.root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(
                "CREATE USER IF NOT EXISTS %s@'localhost' IDENTIFIED BY %s", (user, password)
            )
            cur.execute(f"GRANT ALL ON `{name}`.* TO %s@'localhost'", (user,))
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"mysql://{credentials}@localhost/{name}?unix_socket={quote(self.socket)}"

    def sessions(self, schema: str) -> set[int]:
        """The ids of the sessions on `schema` now."""
        with self.root_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (schema,))
            return {row[0] for row in cur.fetchall()}

    def end_sessions(self, schema: str, timeout: float = 60.0) -> int:
        """Close every session on `schema` from the server's side, as `wait_timeout` does; return how many.

        Returns once they are gone from the process list, which the server
        leaves only after it has closed the session's socket.
        """
        ids = self.sessions(schema)
        with self.root_connect() as conn, conn.cursor() as cur:
            for session in ids:
                with suppress(pymysql.MySQLError):   # it may have ended on its own meanwhile
                    cur.execute(f"KILL CONNECTION {int(session)}")
        deadline = time.monotonic() + timeout
        while ids & self.sessions(schema):
            if time.monotonic() > deadline:
                raise AssertionError(f"sessions {sorted(ids)} on {schema} still open after {timeout} s")
            time.sleep(0.05)
        return len(ids)

    def drop_database(self, name: str) -> None:
        """Drop a database made by create_database, if it is still there."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain identifier: {name!r}")
        with self.root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def _install(self) -> None:
        install_db = _find("mariadb-install-db")
        if install_db is None:
            raise RuntimeError(MISSING_MESSAGE)
        result = subprocess.run(
            [
                install_db,
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                f"--datadir={self.datadir}",
                f"--tmpdir={self.tmpdir}",
                *self.server_options,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            output = (result.stdout + result.stderr).strip().splitlines()[-40:]
            raise RuntimeError("mariadb-install-db failed:\n" + "\n".join(output))

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Poll until root can log in; probe with a plain socket, as PyMySQL leaks refused ones."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                self._process = None
                raise RuntimeError(f"mariadbd exited during startup\n{self._log_tail()}")
            try:
                with plain_socket(AF_UNIX) as probe:
                    probe.connect(self.socket)
                self.root_connect(connect_timeout=1).close()
                return
            except (OSError, pymysql.err.OperationalError):
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"MariaDB did not accept connections within {START_TIMEOUT:.0f} s\n"
                        f"{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except OSError:
            return f"(no error log at {self.error_log})"
        return f"last lines of {self.error_log}:\n" + "\n".join(text.splitlines()[-lines:])


class Networked(MariaDB):
    """A server that also listens on 127.0.0.1, with its binary log: a replication primary or replica."""

    def __init__(self, basedir: Path, port: int, server_id: int) -> None:
        super().__init__(basedir)
        self.port = port
        # The options given last win: these turn networking and the binary log back on.
        self.server_options = _SERVER_OPTIONS + (
            "--skip-networking=0", "--bind-address=127.0.0.1", f"--port={port}", f"--server-id={server_id}",
            "--log-bin=binlog", "--report-host=127.0.0.1", f"--report-port={port}")


class Replicated:
    """A primary and a replica of it, with GTID replication over loopback, each in its own directory."""

    USER, PASSWORD = "repl", "repl-secret"

    def __init__(self, basedir: Path, primary_port: int, replica_port: int) -> None:
        self.primary = Networked(basedir / "primary", primary_port, 1)
        self.replica = Networked(basedir / "replica", replica_port, 2)

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        with self.primary.root_connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s", (self.USER, self.PASSWORD))
            cur.execute("GRANT REPLICATION SLAVE ON *.* TO %s@'127.0.0.1'", (self.USER,))
        with self.replica.root_connect() as conn, conn.cursor() as cur:
            cur.execute("CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = %s, MASTER_USER = %s, "
                        "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos",
                        (self.primary.port, self.USER, self.PASSWORD))
            cur.execute("START SLAVE")

    def replica_status(self) -> dict[str, Any]:
        with self.replica.root_connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            return cur.fetchone() or {}

    def caught_up(self) -> bool:
        """Whether the replica has applied everything the primary has written."""
        with self.primary.root_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            (position,) = cur.fetchone()
        with self.replica.root_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_slave_pos")
            (applied,) = cur.fetchone()
        return position == applied

    def sql_thread(self, running: bool) -> None:
        """Stop or start the replica's SQL thread: it keeps receiving, and applies nothing while stopped."""
        with self.replica.root_connect() as conn, conn.cursor() as cur:
            cur.execute("START SLAVE SQL_THREAD" if running else "STOP SLAVE SQL_THREAD")

    def delay(self, seconds: int) -> None:
        """Have the replica apply each change `seconds` after the primary made it (MASTER_DELAY): a lag the
        test sets, which grows second by second while changes wait."""
        with self.replica.root_connect() as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute("CHANGE MASTER TO MASTER_DELAY = %s", (int(seconds),))
            cur.execute("START SLAVE")

    def close(self) -> None:
        try:
            self.replica.close()
        finally:
            self.primary.close()


# -- the app beside the daemon's DDL: its inserts, its reports --------------------------------------------


class AppInserts:
    """The app's insert loop on its own connection: a row every 2 ms, as PHP writes them (no id), each
    insert timed. `with` starts it and returns once its first rows are in."""

    def __init__(self, server: MariaDB, schema: str) -> None:
        self.connection = server.root_connect(database=schema)
        self.stopping = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="app-inserts", daemon=True)

    def _run(self) -> None:
        with self.connection.cursor() as cursor:
            while not self.stopping.is_set():
                begun = time.perf_counter()
                try:
                    cursor.execute("INSERT INTO api_requests (widget_id, platform, status_code, response_time_ms,"
                                   " cache_hit, created_at) VALUES (5, 'booking', 200, 100, 1, UTC_TIMESTAMP())")
                    self.latencies.append(time.perf_counter() - begun)
                except pymysql.MySQLError as exc:
                    self.errors.append(str(exc))
                time.sleep(0.002)

    @property
    def inserted(self) -> int:
        return len(self.latencies)

    def longest_ms(self, since: int = 0) -> float:
        """The longest insert, in ms, of those after the first `since`."""
        return round(max(self.latencies[since:], default=0.0) * 1000, 1)

    def __enter__(self) -> "AppInserts":
        self.thread.start()
        give_up = time.monotonic() + START_TIMEOUT
        while self.inserted < 5 and not self.errors and time.monotonic() < give_up:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(STOP_TIMEOUT)
        self.connection.close()


class HeldTable:
    """A report the app runs in a transaction: it holds api_requests' metadata lock until `release`."""

    def __init__(self, server: MariaDB, schema: str) -> None:
        self.connection = server.root_connect(database=schema)
        self.connection.begin()
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM api_requests")

    def release(self) -> None:
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()


def alter_attempts(query: Callable[[str], list[tuple]]) -> int:
    """How many ALTER TABLE statements the server has begun, refused ones too: a DDL's attempts."""
    return int(query("SHOW GLOBAL STATUS LIKE 'Com_alter_table'")[0][1])


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One private server for the whole session: starting it is the slow part."""
    if not available():
        if os.environ.get("RATECARED_REQUIRE_MARIADB") == "1":
            pytest.fail(MISSING_MESSAGE, pytrace=False)
        pytest.skip(MISSING_MESSAGE)
    server = MariaDB(Path(tempfile.mkdtemp(prefix="rc-mdb-", dir="/tmp")))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def mysql_url(mariadb: MariaDB) -> Iterator[str]:
    """A fresh, empty database per test, so tests cannot see each other's rows."""
    mariadb.ensure_running()
    name = f"t_{secrets.token_hex(6)}"
    url = mariadb.create_database(name)
    yield url
    with suppress(pymysql.MySQLError):
        mariadb.drop_database(name)
