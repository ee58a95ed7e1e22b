"""The TOML config file as frozen dataclasses.

The file holds only what the daemon needs before it can reach the database;
operational knobs live in the `settings` table (see `settings.py`). Every
error names the file, the key and the problem, and the command line turns it
into exit status 78 (EX_CONFIG) so that systemd does not restart in a loop.
"""

from __future__ import annotations

import grp
import os
import socket
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ratecared import event_loop

DEFAULT_PATH = Path("/etc/ratecared/ratecared.toml")
EX_CONFIG = 78

DEFAULT_PLATFORMS = ("booking", "expedia", "agoda", "hotels", "trivago", "tripadvisor", "google")


class ConfigError(Exception):
    """A config file that cannot be used; `str()` is the message for the operator."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class DaemonConfig:
    socket: Path = Path("/run/ratecared/ratecared.sock")
    socket_group: str = "ratecare"
    admin_group: str = "ratecare-admin"
    timezone: str = ""
    snapshot_interval: float = 30.0
    settings_refresh: float = 60.0
    max_connections: int = 256
    # One peer uid may not take every slot; root and the admin group are not held to it.
    max_connections_per_uid: int = 64
    # Slots only root and the admin group may take, so an operator always gets in.
    reserved_admin_connections: int = 8
    # A request head must arrive whole within this many seconds of its first byte.
    header_timeout: float = 5.0
    idle_timeout: float = 10.0
    max_body_bytes: int = 65536
    # Names this daemon in job_runs and circuit_breaker_state; the system's host name by default.
    host: str = ""
    # Where the breaker journal lives (breaker_journal.py); see default_state_dir().
    state_dir: Path = Path("/var/lib/ratecared")
    # "auto" (uvloop when installed), "uvloop" or "asyncio" (ratecared.event_loop).
    event_loop: str = "auto"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone) if self.timezone else _system_zone()


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    password_file: Path | None = None
    auto_migrate: bool = False
    connect_timeout: float = 5.0
    # How long a starting daemon waits for the database before exiting 69.
    startup_wait: float = 30.0
    # Purges pause while the database is over these (ratecared.throttle); MySQL/MariaDB only.
    replicas: tuple[str, ...] = ()
    max_replica_lag: float = 1.0
    max_history_length: int = 1_000_000
    max_threads_running: int = 25
    # Not a config key: the throttle's replica connections set it (ratecared.db.dialect.MySQL.io_timeout).
    io_timeout: float | None = None

    def password(self) -> str | None:
        """The password from `password_file` or systemd's credential directory.

        Read at connect time, not at load time, so a rotated password file is
        picked up by the next reconnect.
        """
        candidates = []
        if self.password_file is not None:
            candidates.append(self.password_file)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidates.append(Path(creds) / "db-password")
        for path in candidates:
            try:
                text = path.read_text(encoding="utf-8").strip()
            except OSError:
                # Root-only on disk: the daemon's own user gets it as a credential.
                continue
            # An empty file (the package creates one) means "no password".
            if text:
                return text
        return None


@dataclass(frozen=True)
class LoggingConfig:
    dir: Path = Path("/var/log/ratecared")
    level: str = "info"


@dataclass(frozen=True)
class JobConfig:
    schedule: str
    starting_deadline: float
    # Purges: chunk statements aim at this many seconds, then pause a share of it.
    chunk_seconds: float = 0.1
    pause_ratio: float = 0.1
    optimize_min_free_mb: float = 256.0
    # Warming: the widget endpoint, parallel requests, per-request and per-run limits.
    url: str | None = None
    concurrency: int = 4
    timeout: float = 10.0
    deadline: float = 600.0
    max_consecutive_failures: int = 5
    # The aggregation's: "rows" (chunked deletes) or "partitions" (api_requests by day, a day dropped whole).
    retention: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The keys this job reads: warming's when it has a URL, the purges' otherwise."""
        keys = ("schedule", "starting_deadline") + (_WARMING_KEYS if self.url is not None else _PURGE_KEYS)
        return {key: getattr(self, key) for key in keys + (("retention",) if self.retention else ())}


_PURGE_KEYS = ("chunk_seconds", "pause_ratio", "optimize_min_free_mb", "deadline")
# A purge run ends here, paused or not (ratecared.throttle); the next run goes on from where it stopped.
PURGE_DEADLINE = 3600.0
_WARMING_KEYS = ("url", "concurrency", "timeout", "deadline", "max_consecutive_failures")


@dataclass(frozen=True)
class BreakerConfig:
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    permit_lease: float = 30.0


@dataclass(frozen=True)
class MetricsConfig:
    # "host:port" of a TCP listener serving GET /metrics only; "" for none.
    listen: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, the brackets of an IPv6 host taken off; None when off."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    path: Path
    database: DatabaseConfig
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    jobs: dict[str, JobConfig] = field(default_factory=dict)
    circuit_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, with the database password hidden."""
        return {
            "daemon": {
                "socket": str(self.daemon.socket),
                "socket_group": self.daemon.socket_group,
                "admin_group": self.daemon.admin_group,
                "timezone": str(self.daemon.tz.key),
                "snapshot_interval": self.daemon.snapshot_interval,
                "settings_refresh": self.daemon.settings_refresh,
                "max_connections": self.daemon.max_connections,
                "max_connections_per_uid": self.daemon.max_connections_per_uid,
                "reserved_admin_connections": self.daemon.reserved_admin_connections,
                "header_timeout": self.daemon.header_timeout,
                "idle_timeout": self.daemon.idle_timeout,
                "max_body_bytes": self.daemon.max_body_bytes,
                "host": self.daemon.host,
                "state_dir": str(self.daemon.state_dir),
                "event_loop": self.daemon.event_loop,
            },
            "database": {
                "url": mask_url(self.database.url),
                "password_file": str(self.database.password_file or ""),
                "auto_migrate": self.database.auto_migrate,
                "connect_timeout": self.database.connect_timeout,
                "startup_wait": self.database.startup_wait,
                "replicas": [mask_url(url) for url in self.database.replicas],
                "max_replica_lag": self.database.max_replica_lag,
                "max_history_length": self.database.max_history_length,
                "max_threads_running": self.database.max_threads_running,
            },
            "logging": {"dir": str(self.logging.dir), "level": self.logging.level},
            "jobs": {name: job.as_dict() for name, job in self.jobs.items()},
            "circuit_breaker": {
                "platforms": list(self.circuit_breaker.platforms),
                "permit_lease": self.circuit_breaker.permit_lease,
            },
            "metrics": {"listen": self.metrics.listen},
        }


class CurrentConfig:
    """The config in effect: one immutable Config, read through this one reference.

    Components are handed this object (it is a `Callable[[], Config]`) and
    call it when they need a value, so a reload that replaces the config
    reaches all of them at once, or none of them.
    """

    def __init__(self, config: Config) -> None:
        self._config = config

    def __call__(self) -> Config:
        return self._config

    def replace(self, config: Config) -> None:
        self._config = config


def check_host(config: Config) -> None:
    """What a config needs of this machine: its groups must exist. Raises ConfigError naming the key.

    Apart from parsing, so that `migrate` and the tests of the file format do
    not depend on the machine's groups; the daemon, check-config and reload
    call it, so check-config passes only what the daemon accepts.
    """
    for key, group in (("daemon.socket_group", config.daemon.socket_group),
                       ("daemon.admin_group", config.daemon.admin_group)):
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise ConfigError(config.path, key, f"group {group!r} does not exist on this machine") from None


def default_state_dir(database_url: str) -> Path:
    """`daemon.state_dir` when the file does not set it.

    systemd's StateDirectory= (it sets $STATE_DIRECTORY), else the SQLite
    file's directory, else /var/lib/ratecared.
    """
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    if database_url.startswith("sqlite:///") and database_url != "sqlite:///:memory:":
        return Path(database_url[len("sqlite:///"):].partition("?")[0]).parent
    return DaemonConfig.state_dir


def mask_url(url: str) -> str:
    """Hide the password part of `scheme://user:password@host`."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def _system_zone() -> ZoneInfo:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        link = os.readlink("/etc/localtime")
        return ZoneInfo(link.split("zoneinfo/", 1)[1])
    except (OSError, IndexError, ZoneInfoNotFoundError, ValueError):
        pass
    try:
        return ZoneInfo(Path("/etc/timezone").read_text().strip())
    except (OSError, ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


JOB_DEFAULTS: dict[str, dict[str, Any]] = {
    "aggregate_statistics": {"schedule": "0 2 * * *", "starting_deadline": 20 * 3600, "retention": "rows"},
    "cleanup_expired_cache": {"schedule": "0 3 * * *", "starting_deadline": 20 * 3600},
    "warm_cache": {
        "schedule": "0 6 * * *",
        "starting_deadline": 2 * 3600,
        "url": "http://127.0.0.1/api/v1/widgets/{widget_id}/rates",
        "concurrency": 4,
        "timeout": 10.0,
    },
}


class _Section:
    """Typed reads from one table of the file, each failure naming its key."""

    def __init__(self, path: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, name, "must be a table")
        self.path, self.name, self.data = path, name, dict(data)

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def _take(self, key: str, default: Any, types: tuple[type, ...], kind: str) -> Any:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(self.path, self._key(key), f"must be {kind}, not {value!r}")
        return value

    def string(self, key: str, default: str | None) -> str:
        value = self._take(key, default, (str,), "a string")
        if value is None:
            raise ConfigError(self.path, self._key(key), "is required")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = float(self._take(key, default, (int, float), "a number"))
        if not low <= value <= high:
            raise ConfigError(self.path, self._key(key), f"must be between {low:g} and {high:g}, not {value:g}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._take(key, default, (int,), "an integer")
        if not low <= value <= high:
            raise ConfigError(self.path, self._key(key), f"must be between {low} and {high}, not {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._take(key, default, (bool,), "true or false")

    def path_(self, key: str, default: Path | None) -> Path | None:
        value = self._take(key, None, (str,), "a path")
        if value is None:
            return default
        if not value:
            raise ConfigError(self.path, self._key(key), "must not be empty")
        return Path(os.path.normpath(self.path.parent / value))

    def done(self) -> None:
        if self.data:
            unknown = sorted(self.data)[0]
            raise ConfigError(self.path, self._key(unknown), "unknown key")


def _replicas(path: Path, urls: list[Any]) -> tuple[str, ...]:
    for url in urls:
        if not isinstance(url, str) or not url.startswith("mysql://"):
            raise ConfigError(path, "database.replicas", f"must list mysql:// URLs, not {url!r}")
        parts = urlsplit(url)
        try:
            parts.port
        except ValueError as exc:
            raise ConfigError(path, "database.replicas", f"{mask_url(url)}: {exc}") from None
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError(path, "database.replicas",
                              f"{mask_url(url)} must name a host and a database: mysql://user@host:port/database")
    return tuple(urls)


def load(path: Path | str | None = None) -> Config:
    """Read and validate the config file; raise ConfigError naming the culprit.

    Relative paths in the file are taken relative to the file itself, so that
    `examples/dev.toml` works from any working directory.
    """
    path = Path(path or os.environ.get("RATECARED_CONFIG") or DEFAULT_PATH)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    return _parse(path.resolve(), raw)


def _parse(path: Path, raw: dict[str, Any]) -> Config:
    top = _Section(path, "", raw)
    sections = {name: top.data.pop(name, {}) for name in ("daemon", "database", "logging", "jobs", "circuit_breaker",
                                                         "metrics")}
    top.done()

    d = _Section(path, "daemon", sections["daemon"])
    timezone = d.string("timezone", "")
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(path, "daemon.timezone", f"unknown time zone {timezone!r}") from None
    daemon = DaemonConfig(
        socket=d.path_("socket", DaemonConfig.socket),
        socket_group=d.string("socket_group", DaemonConfig.socket_group),
        admin_group=d.string("admin_group", DaemonConfig.admin_group),
        timezone=timezone,
        snapshot_interval=d.number("snapshot_interval", DaemonConfig.snapshot_interval, 0.05, 86400),
        settings_refresh=d.number("settings_refresh", DaemonConfig.settings_refresh, 0.05, 86400),
        max_connections=d.integer("max_connections", DaemonConfig.max_connections, 1, 100000),
        max_connections_per_uid=d.integer("max_connections_per_uid", DaemonConfig.max_connections_per_uid, 1, 100000),
        reserved_admin_connections=d.integer("reserved_admin_connections", DaemonConfig.reserved_admin_connections,
                                             0, 100000),
        header_timeout=d.number("header_timeout", DaemonConfig.header_timeout, 0.05, 3600),
        idle_timeout=d.number("idle_timeout", DaemonConfig.idle_timeout, 0.05, 3600),
        max_body_bytes=d.integer("max_body_bytes", DaemonConfig.max_body_bytes, 1024, 64 << 20),
        host=d.string("host", "") or socket.gethostname(),
        event_loop=d.string("event_loop", DaemonConfig.event_loop).lower(),
    )
    if daemon.event_loop not in event_loop.CHOICES:
        raise ConfigError(path, "daemon.event_loop", f"must be auto, uvloop or asyncio, not {daemon.event_loop!r}")
    if daemon.event_loop == "uvloop" and not event_loop.available():
        raise ConfigError(path, "daemon.event_loop", "is uvloop, which is not installed (apt install python3-uvloop, "
                                                     "or use auto)")
    state_dir = d.path_("state_dir", None)
    if daemon.reserved_admin_connections >= daemon.max_connections:
        raise ConfigError(path, "daemon.reserved_admin_connections",
                          f"must be less than daemon.max_connections ({daemon.max_connections}), or only root "
                          "and the admin group could connect")
    if len(os.fsencode(daemon.socket)) > 107:
        raise ConfigError(path, "daemon.socket", "path longer than the 107 bytes a Unix socket allows")
    d.done()

    db = _Section(path, "database", sections["database"])
    url = db.string("url", None)
    if not (url.startswith("sqlite:///") or url.startswith("mysql://")):
        raise ConfigError(path, "database.url", f"must start with sqlite:/// or mysql://, not {mask_url(url)!r}")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + os.path.normpath(path.parent / url[len("sqlite:///"):])
    database = DatabaseConfig(
        url=url,
        password_file=db.path_("password_file", None),
        auto_migrate=db.boolean("auto_migrate", False),
        connect_timeout=db.number("connect_timeout", DatabaseConfig.connect_timeout, 0.1, 300),
        startup_wait=db.number("startup_wait", DatabaseConfig.startup_wait, 0, 3600),
        replicas=_replicas(path, db._take("replicas", [], (list,), "a list of mysql:// URLs")),
        max_replica_lag=db.number("max_replica_lag", DatabaseConfig.max_replica_lag, 0, 86400),
        max_history_length=db.integer("max_history_length", DatabaseConfig.max_history_length, 1, 1 << 40),
        max_threads_running=db.integer("max_threads_running", DatabaseConfig.max_threads_running, 1, 100_000),
    )
    db.done()
    if database.replicas and not url.startswith("mysql://"):
        raise ConfigError(path, "database.replicas", "names replicas of a SQLite database, which has none")
    daemon = replace(daemon, state_dir=state_dir or default_state_dir(url))

    lg = _Section(path, "logging", sections["logging"])
    level = lg.string("level", "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(path, "logging.level", f"must be debug, info, warning or error, not {level!r}")
    logging_ = LoggingConfig(dir=lg.path_("dir", LoggingConfig.dir), level=level)
    lg.done()

    jobs_section = _Section(path, "jobs", sections["jobs"])
    jobs = {}
    for name, defaults in JOB_DEFAULTS.items():
        js = _Section(path, f"jobs.{name}", jobs_section.data.pop(name, {}))
        schedule = js.string("schedule", defaults["schedule"])
        if not croniter.is_valid(schedule) or len(schedule.split()) != 5:
            raise ConfigError(path, f"jobs.{name}.schedule", f"not a valid five-field cron expression: {schedule!r}")
        try:
            croniter(schedule, datetime(2000, 1, 1)).get_next(datetime)
        except ValueError:
            raise ConfigError(path, f"jobs.{name}.schedule",
                              f"never fires: {schedule!r} names a date that does not exist") from None
        values: dict[str, Any] = {
            "schedule": schedule,
            "starting_deadline": js.number("starting_deadline", defaults["starting_deadline"], 0, 7 * 86400),
        }
        if "url" in defaults:
            template = js.string("url", defaults["url"])
            if "{widget_id}" not in template or not template.startswith(("http://", "https://")):
                raise ConfigError(path, f"jobs.{name}.url", "must be an http(s) URL containing {widget_id}")
            try:
                template.format(widget_id=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(path, f"jobs.{name}.url",
                                  f"{{widget_id}} is the only placeholder it may hold, not {exc}") from None
            values.update(
                url=template,
                concurrency=js.integer("concurrency", defaults["concurrency"], 1, 64),
                timeout=js.number("timeout", defaults["timeout"], 0.1, 600),
                deadline=js.number("deadline", JobConfig.deadline, 1, 86400),
                max_consecutive_failures=js.integer("max_consecutive_failures", JobConfig.max_consecutive_failures,
                                                    1, 10000),
            )
        else:
            values.update(
                chunk_seconds=js.number("chunk_seconds", JobConfig.chunk_seconds, 0.001, 10),
                pause_ratio=js.number("pause_ratio", JobConfig.pause_ratio, 0, 10),
                optimize_min_free_mb=js.number("optimize_min_free_mb", JobConfig.optimize_min_free_mb, 0, 1 << 30),
                deadline=js.number("deadline", PURGE_DEADLINE, 1, 86400),
            )
        if "retention" in defaults:
            retention = js.string("retention", defaults["retention"])
            if retention not in ("rows", "partitions"):
                raise ConfigError(path, f"jobs.{name}.retention", f'must be "rows" or "partitions", not {retention!r}')
            if retention == "partitions" and not url.startswith("mysql://"):
                raise ConfigError(path, f"jobs.{name}.retention",
                                  '"partitions" needs MySQL or MariaDB: SQLite has no table partitions; use "rows"')
            values["retention"] = retention
        job = JobConfig(**values)
        js.done()
        jobs[name] = job
    jobs_section.done()

    cb = _Section(path, "circuit_breaker", sections["circuit_breaker"])
    platforms = cb._take("platforms", list(DEFAULT_PLATFORMS), (list,), "a list of platform names")
    for name in platforms:
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(path, "circuit_breaker.platforms", f"not a platform name: {name!r}")
    if len(set(platforms)) != len(platforms):
        raise ConfigError(path, "circuit_breaker.platforms", "lists a platform twice")
    if not platforms:
        raise ConfigError(path, "circuit_breaker.platforms", "names no platform: the daemon would guard nothing")
    breaker = BreakerConfig(
        platforms=tuple(platforms),
        permit_lease=cb.number("permit_lease", BreakerConfig.permit_lease, 0.01, 3600),
    )
    cb.done()

    ms = _Section(path, "metrics", sections["metrics"])
    metrics = MetricsConfig(listen=ms.string("listen", MetricsConfig.listen).strip())
    ms.done()
    if metrics.listen:
        host, _, port = metrics.listen.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(path, "metrics.listen",
                              f'must be "host:port" (e.g. "127.0.0.1:9187", "[::1]:9187"), not {metrics.listen!r}')

    return Config(path=path, daemon=daemon, database=database, logging=logging_, jobs=jobs, circuit_breaker=breaker,
                  metrics=metrics)
