"""Shared fixtures: config files in a temp dir and the real daemon as a child process."""

from __future__ import annotations

import contextlib
import json
import os
import signal as signals
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mariadb import mariadb, mysql_url  # noqa: F401 - fixtures

from ratecared.client import Client
from ratecared.db import Database


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(directory: Path, url: str | None = None, **sections: dict[str, Any]) -> Path:
    """A config for a daemon living entirely in `directory`; sections override keys."""
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    run_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    base: dict[str, dict[str, Any]] = {
        # The state directory too: a daemon on MariaDB would use the machine's /var/lib/ratecared.
        "daemon": {"socket": str(run_dir / "rc.sock"), "socket_group": "", "admin_group": "",
                   "snapshot_interval": 0.5, "settings_refresh": 0.2, "timezone": "Europe/Istanbul",
                   "state_dir": str(directory)},
        "database": {"url": url or f"sqlite:///{directory / 'rc.db'}", "auto_migrate": True},
        "logging": {"dir": str(directory / "logs"), "level": "info"},
    }
    # The Makefile runs one suite on each loop (ratecared.event_loop): Debian 12's versions on asyncio's own.
    if os.environ.get("RATECARED_TEST_EVENT_LOOP"):
        base["daemon"]["event_loop"] = os.environ["RATECARED_TEST_EVENT_LOOP"]
    for name, values in sections.items():
        _table(base, name.replace("__", ".")).update(values)
    path = directory / "ratecared.toml"
    path.write_text(toml_tables(base))
    return path


def _table(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    for name in dotted.split("."):
        data = data.setdefault(name, {})
    return data


def rewrite(config: Path, section: str, **values: Any) -> None:
    """Change keys of one section of a daemon's config file in place, as an operator edits it."""
    import tomllib

    data = tomllib.loads(config.read_text())
    _table(data, section).update(values)
    config.write_text(toml_tables(data))


def toml_tables(data: dict[str, Any], prefix: str = "") -> str:
    """Tables of plain values as TOML, a nested table under its dotted name (`[jobs.warm_cache]`)."""
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    text = f"[{prefix[:-1]}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in plain.items()) if plain else ""
    return text + "".join(toml_tables(v, f"{prefix}{k}.") for k, v in data.items() if isinstance(v, dict))


def socket_of(config: Path) -> str:
    import tomllib

    return tomllib.loads(config.read_text())["daemon"]["socket"]


class DaemonProcess:
    """`ratecared --config PATH` as a child process, as systemd would run it."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.socket = socket_of(config)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""
        # Its stdout is read as it comes: a pipe nobody reads fills at 64 KiB, and then the daemon's
        # next log line blocks it, in the middle of answering a client.
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, wait: bool = True) -> "DaemonProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ratecared", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.read_output()}")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(self.socket)
                return
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        raise AssertionError("daemon did not open its socket in time")

    def client(self, **kw: Any) -> Client:
        return Client(self.socket, **kw)

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signals.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.read_output()
        return code

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self._lines.append(line)

    def read_output(self) -> str:
        """Everything the daemon has written so far; all of it once it has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None and self._reader is not None:
            self._reader.join(timeout=30)
            self._reader = None
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        # One writer (the reader thread) appends; taking the lines it has added so far is safe.
        taken = len(self._lines)
        self.output += "".join(self._lines[:taken])
        del self._lines[:taken]
        return self.output


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.05,
             what: str = "condition") -> Any:
    """Poll `predicate` until it is true; return its value.

    The timeout is only a limit for a hung daemon: a slow machine never
    comes near it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(every)


def ctl(sock: str, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """`ratecarectl --socket SOCK ARGS…` as a user runs it: exit code, stdout, stderr."""
    result = subprocess.run([sys.executable, "-m", "ratecarectl", "--socket", sock, *args], capture_output=True,
                            text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def fail(daemon: "DaemonProcess", platform: str = "booking", times: int = 5) -> None:
    """`times` failed calls to `platform`, as the app reports them: by default enough to open it."""
    client = daemon.client()
    for _ in range(times):
        client.report(client.acquire(platform), False, 5003)
    client.close()


def entry(daemon: "DaemonProcess", platform: str = "booking") -> dict[str, Any]:
    """One platform's entry in the daemon's status, as a client reads it."""
    return next(p for p in daemon.client().status()["platforms"] if p["platform"] == platform)


def set_setting(db_path: Path, key: str, value: str) -> None:
    """`UPDATE settings …` in a daemon's SQLite file, as an operator does; see setting_in_effect."""
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE settings SET value = ? WHERE key = ?", (value, key))
    conn.commit()
    conn.close()


def setting_in_effect(daemon: "DaemonProcess", key: str, value: Any) -> None:
    """Wait until the daemon has re-read the settings table and applies `value` for `key`."""
    wait_for(lambda: daemon.client().health()["settings"][key] == value, what=f"setting {key}={value!r} in effect")


def require(variable: str, missing: str | None) -> None:
    """Skip a test that lacks what it needs (`missing` says what), or fail it where `make test` sets `variable`=1."""
    if missing is None:
        return
    if os.environ.get(variable) == "1":
        pytest.fail(f"{missing} (make test installs it)", pytrace=False)
    pytest.skip(missing)


def debian_tool(command: str, package: str, variable: str) -> str:
    """The path of a Debian package's command a test runs; see `require` for when it is missing."""
    import shutil

    path = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    require(variable, None if path else f"{command} is missing: apt-get install {package}")
    assert path is not None
    return path


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that records messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)

    def messages(self, until: Callable[[list[str]], bool], timeout: float = 60.0,
                 on_each: Callable[[str], None] = lambda m: None) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(got):
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            on_each(message)
            got.append(message)
        return got


def pytest_configure(config: pytest.Config) -> None:
    # Here rather than in pyproject.toml: the system test runs this suite
    # from a copy of tests/ alone, against the installed package.
    config.addinivalue_line("markers", "mariadb: needs a MariaDB server started by the tests")


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Path]:
    return lambda url=None, **sections: write_config(tmp_path, url, **sections)


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str] | None = None, wait: bool = True) -> DaemonProcess:
        process = DaemonProcess(config, env).start(wait=wait)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc and process.proc.poll() is None:
            process.stop(signals.SIGKILL)


@pytest.fixture
def daemon(config_factory: Callable[..., Path], daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon on SQLite with fast settings refresh and snapshots."""
    return daemon_factory(config_factory())


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against SQLite and against a real MariaDB server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rc.db'}"
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def database(db_url: str) -> Iterator["Database"]:
    from ratecared.config import DatabaseConfig
    from ratecared.db import Database, migrations

    db = Database(DatabaseConfig(url=db_url, connect_timeout=2))
    migrations.apply(db)
    yield db
    db.close()


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 64 KiB tmpfs; ask for it before daemon_factory, so that the daemon is gone before it is unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="rc-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Another process's write transaction on the SQLite file `path`: the daemon can read it but not write it."""
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def fill_disk(disk: Path, block: int) -> Path:
    """Take every byte left on `disk`, down to less than `block`."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * block)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
