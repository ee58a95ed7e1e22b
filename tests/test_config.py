"""The config file: defaults, validation naming file and key, exit 78, check-config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ratecared.config import ConfigError, load, mask_url


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ratecared.toml"
    path.write_text(text)
    return path


def test_defaults_fill_everything_but_the_url(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[database]\nurl = "mysql://ratecare@localhost:3306/ratecare"\n'))
    assert str(config.daemon.socket) == "/run/ratecared/ratecared.sock"
    assert config.daemon.socket_group == "ratecare" and config.daemon.admin_group == "ratecare-admin"
    assert config.daemon.snapshot_interval == 30 and config.daemon.settings_refresh == 60
    assert config.database.auto_migrate is False
    assert str(config.logging.dir) == "/var/log/ratecared"
    assert config.jobs["aggregate_statistics"].schedule == "0 2 * * *"
    assert config.jobs["cleanup_expired_cache"].schedule == "0 3 * * *"
    assert config.jobs["warm_cache"].schedule == "0 6 * * *"
    assert config.jobs["warm_cache"].concurrency == 4
    assert len(config.circuit_breaker.platforms) == 7


@pytest.mark.parametrize(
    "text,key,problem",
    [
        ("[daemon]\nsocket = '/x'\n", "database.url", "is required"),
        ("[database]\nurl = 'postgres://x/y'\n", "database.url", "must start with"),
        ("[database]\nurl = 'sqlite:////x.db'\nauto_migrate = 'yes'\n", "database.auto_migrate", "true or false"),
        ("[database]\nurl = 'sqlite:////x.db'\n[daemon]\nsnapshot_interval = -1\n", "daemon.snapshot_interval",
         "between"),
        ("[database]\nurl = 'sqlite:////x.db'\n[daemon]\ntimezone = 'Mars/Olympus'\n", "daemon.timezone",
         "unknown time zone"),
        ("[database]\nurl = 'sqlite:////x.db'\n[daemon]\nsockett = '/x'\n", "daemon.sockett", "unknown key"),
        ("[database]\nurl = 'sqlite:////x.db'\n[jobs.warm_cache]\nschedule = '0 25 * * *'\n",
         "jobs.warm_cache.schedule", "cron"),
        ("[database]\nurl = 'sqlite:////x.db'\n[jobs.aggregate_statistics]\nschedule = '0 2 30 2 *'\n",
         "jobs.aggregate_statistics.schedule", "never fires"),
        ("[database]\nurl = 'sqlite:////x.db'\n[jobs.warm_cache]\nurl = 'http://x/'\n", "jobs.warm_cache.url",
         "{widget_id}"),
        ("[database]\nurl = 'sqlite:////x.db'\n[jobs.warm_cache]\nurl = 'http://x/{widget_id}?h={hotel}'\n",
         "jobs.warm_cache.url", "only placeholder"),
        ("[database]\nurl = 'sqlite:////x.db'\n[circuit_breaker]\nplatforms = ['a', 'a']\n",
         "circuit_breaker.platforms", "twice"),
        ("[database]\nurl = 'sqlite:////x.db'\n[logging]\nlevel = 'loud'\n", "logging.level", "must be"),
        ("[database]\nurl = 'sqlite:////x.db'\n[jobs.nosuch]\nschedule = '* * * * *'\n", "jobs.nosuch",
         "unknown key"),
        ("[database]\nurl = 'sqlite:////x.db'\n[metrics]\nlisten = '9187'\n", "metrics.listen", "host:port"),
        ("[database]\nurl = 'sqlite:////x.db'\n[metrics]\nlisten = '127.0.0.1:99999'\n", "metrics.listen",
         "host:port"),
        ("[database]\nurl = 'sqlite:////x.db'\n[metrics]\nlisten = ':9187'\n", "metrics.listen", "host:port"),
        ("[database]\nurl = 'sqlite:////x.db'\n[metrics]\nport = 9187\n", "metrics.port", "unknown key"),
        ("[database]\nurl = 'sqlite:////x.db'\nreplicas = ['mysql://rc@r1/rc']\n", "database.replicas",
         "SQLite database, which has none"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nreplicas = ['postgres://r1/rc']\n", "database.replicas",
         "mysql:// URLs"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nreplicas = ['mysql://rc@r1']\n", "database.replicas",
         "must name a host and a database"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nreplicas = ['mysql://rc@r1:abc/rc']\n", "database.replicas",
         "Port could not be cast"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nreplicas = ['mysql://rc@r1:99999/rc']\n", "database.replicas",
         "Port out of range"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nreplicas = 'mysql://rc@r1/rc'\n", "database.replicas",
         "a list"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nmax_replica_lag = -1\n", "database.max_replica_lag", "between"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nmax_threads_running = 0\n", "database.max_threads_running",
         "between"),
        ("[database]\nurl = 'mysql://rc@db/rc'\nmax_history_length = 1.5\n", "database.max_history_length",
         "an integer"),
        ("[database]\nurl = 'sqlite:////x.db'\n[jobs.cleanup_expired_cache]\ndeadline = 0\n",
         "jobs.cleanup_expired_cache.deadline", "between"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(path) in str(info.value)


@pytest.mark.parametrize("listen,address", [("", None), ("127.0.0.1:9187", ("127.0.0.1", 9187)),
                                            ("[::1]:9187", ("::1", 9187)), ("localhost:80", ("localhost", 80))])
def test_the_metrics_listener_is_off_by_default_and_takes_ipv4_ipv6_and_names(
        tmp_path: Path, listen: str, address: tuple[str, int] | None) -> None:
    config = load(write(tmp_path, f"[database]\nurl = 'sqlite:////x.db'\n[metrics]\nlisten = '{listen}'\n"))
    assert config.metrics.address == address


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[database\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "missing.toml")


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = load(write(tmp_path / "etc", "[database]\nurl = 'sqlite:///../db/r.db'\n[logging]\ndir = '../logs'\n"))
    assert config.database.url == f"sqlite:///{tmp_path}/db/r.db"
    assert config.logging.dir == tmp_path / "logs"


def systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    """What LoadCredential=db-password gives the daemon: $CREDENTIALS_DIRECTORY/db-password."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db-password").write_text(password)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))


def test_password_file_and_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    config = load(write(tmp_path, "[database]\nurl = 'mysql://rc@localhost/rc'\npassword_file = 'pw'\n"))
    assert config.database.password() == "s3cret"
    systemd_credential(tmp_path, monkeypatch, "fromsystemd")
    config = load(write(tmp_path, "[database]\nurl = 'mysql://rc@localhost/rc'\n"))
    assert config.database.password() == "fromsystemd"


def test_mask_url() -> None:
    assert mask_url("mysql://rc:hunter2@db:3306/rc") == "mysql://rc:***@db:3306/rc"
    assert mask_url("mysql://rc@db/rc") == "mysql://rc@db/rc"


def ratecared(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ratecared", *args], capture_output=True, text=True, timeout=60)


def test_cli_exits_78_on_a_bad_config_and_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nurl = 'sqlite:////x.db'\n[daemon]\nsnapshot_interval = 'often'\n")
    for args in (["--config", str(path)], ["--config", str(path), "migrate"], ["--config", str(path), "check-config"]):
        result = ratecared(*args)
        assert result.returncode == 78, result.stderr
        assert f"{path}: daemon.snapshot_interval: must be a number" in result.stderr


NO_GROUPS = "[daemon]\nsocket_group = ''\nadmin_group = ''\n"


def test_check_config_prints_the_effective_config_with_the_password_masked(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nurl = 'mysql://rc:hunter2@localhost/rc'\n"
                           "replicas = ['mysql://rc:hunter3@replica1:3307/rc']\n" + NO_GROUPS)
    result = ratecared("--config", str(path), "check-config")
    assert result.returncode == 0
    assert "hunter2" not in result.stdout and "hunter3" not in result.stdout
    assert '"url": "mysql://rc:***@localhost/rc"' in result.stdout
    assert '"schedule": "0 2 * * *"' in result.stdout
    shown = json.loads(result.stdout[result.stdout.index("{"):])
    assert shown["database"]["replicas"] == ["mysql://rc:***@replica1:3307/rc"]
    assert (shown["database"]["max_replica_lag"], shown["database"]["max_history_length"],
            shown["database"]["max_threads_running"]) == (1.0, 1_000_000, 25)
    jobs = shown["jobs"]
    # Each job shows only the keys it reads.
    assert set(jobs["cleanup_expired_cache"]) == {"schedule", "starting_deadline", "chunk_seconds", "pause_ratio",
                                                  "optimize_min_free_mb", "deadline"}
    assert jobs["cleanup_expired_cache"]["deadline"] == 3600
    assert "optimize_min_free_mb" not in jobs["warm_cache"] and jobs["warm_cache"]["concurrency"] == 4


def test_an_unreadable_password_file_falls_through_to_the_credential(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon's user cannot read the root-only file; a directory in its
    # place fails the same way (OSError) even for root, who runs the tests.
    (tmp_path / "pw").mkdir()
    systemd_credential(tmp_path, monkeypatch, "via-systemd")
    config = load(write(tmp_path, "[database]\nurl = 'mysql://rc@localhost/rc'\npassword_file = 'pw'\n"))
    assert config.database.password() == "via-systemd"


@pytest.mark.parametrize("key", ["socket_group", "admin_group"])
def test_check_config_refuses_a_group_the_daemon_would_refuse(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, "[database]\nurl = 'sqlite:////x.db'\n" + NO_GROUPS.replace(f"{key} = ''",
                                                                                       f"{key} = 'nosuchgroup'"))
    for args in (["check-config"], []):
        result = ratecared("--config", str(path), *args)
        assert result.returncode == 78, result.stderr
        assert f"{path}: daemon.{key}: group 'nosuchgroup' does not exist on this machine" in result.stderr
    # The daemon refused before it touched anything: no database file, no socket, no log directory.
    assert not Path("/x.db").exists()


def test_an_empty_platform_list_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nurl = 'sqlite:////x.db'\n[circuit_breaker]\nplatforms = []\n")
    with pytest.raises(ConfigError, match="circuit_breaker.platforms: names no platform"):
        load(path)


def test_reserved_admin_slots_must_leave_room_for_others(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nurl = 'sqlite:////x.db'\n[daemon]\nmax_connections = 8\n")
    with pytest.raises(ConfigError, match="daemon.reserved_admin_connections: must be less than "
                                          r"daemon.max_connections \(8\)"):
        load(path)
