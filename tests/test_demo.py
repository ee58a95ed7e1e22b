"""The demo data `make run` seeds: its size, its shape, and that it is seeded once."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import free_port
from ratecared import config as ratecared_config
from ratecared.config import DatabaseConfig
from ratecared.db import Database, migrations, timestamp
from ratecared.demo import seed

NOW = datetime(2024, 5, 14, 9, 30, tzinfo=timezone.utc)

CONFIG = """\
[daemon]
socket = "run/rc.sock"
socket_group = ""
admin_group = ""
[database]
url = "sqlite:///rc.db"
auto_migrate = true
[logging]
dir = "logs"
"""


def write_config(directory: Path) -> Path:
    path = directory / "ratecared.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def seeded_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, dict[str, int]]]:
    """Seeded once for the module: the tests below only read it."""
    database = Database(ratecared_config.load(write_config(tmp_path_factory.mktemp("demo"))).database)
    migrations.apply(database)
    yield database, seed(database, NOW)
    database.close()


@pytest.fixture
def database(seeded_database: tuple[Database, dict[str, int]]) -> Database:
    return seeded_database[0]


@pytest.fixture
def seeded(seeded_database: tuple[Database, dict[str, int]]) -> dict[str, int]:
    return seeded_database[1]


def count(database: Database, sql: str, params: tuple = ()) -> int:
    return database.query(sql, params)[0][0]


def test_seed_inserts_the_requested_rows(database: Database, seeded: dict[str, int]) -> None:
    assert seeded["widgets"] == count(database, "SELECT COUNT(*) FROM widgets") == 40
    assert seeded["api_requests"] == count(database, "SELECT COUNT(*) FROM api_requests") == 35 * 2000
    assert seeded["cache"] == count(database, "SELECT COUNT(*) FROM cache") == 40 * 7


def test_requests_span_the_days_before_now(database: Database, seeded: dict[str, int]) -> None:
    first, last = database.query("SELECT MIN(created_at), MAX(created_at) FROM api_requests")[0]
    assert timestamp(NOW - timedelta(days=35)) <= first < timestamp(NOW - timedelta(days=34))
    assert timestamp(NOW - timedelta(hours=1)) < last < timestamp(NOW)


def test_requests_look_like_traffic(database: Database, seeded: dict[str, int]) -> None:
    total = seeded["api_requests"]
    hit_rate = count(database, "SELECT COUNT(*) FROM api_requests WHERE cache_hit = 1") / total
    assert 0.65 < hit_rate < 0.75
    assert count(database, "SELECT MAX(response_time_ms) FROM api_requests WHERE cache_hit = 1") <= 30
    assert count(database, "SELECT MIN(response_time_ms) FROM api_requests WHERE cache_hit = 0") >= 200
    codes = {row[0] for row in database.query("SELECT DISTINCT status_code FROM api_requests")}
    assert codes == {200, 404, 500, 502, 503}
    assert count(database, "SELECT COUNT(*) FROM api_requests WHERE status_code = 200") / total > 0.9
    platforms = {row[0] for row in database.query("SELECT DISTINCT platform FROM api_requests")}
    assert platforms == {*ratecared_config.DEFAULT_PLATFORMS, None}


def test_top_widget_is_clearly_more_requested_than_the_median(database: Database, seeded: dict[str, int]) -> None:
    per_widget = [row[0] for row in database.query(
        "SELECT COUNT(*) FROM api_requests GROUP BY widget_id ORDER BY COUNT(*) DESC")]
    assert per_widget[0] > 5 * statistics.median(per_widget)


def test_some_cache_rows_are_expired_and_some_are_not(database: Database, seeded: dict[str, int]) -> None:
    now = timestamp(NOW)
    expired = count(database, "SELECT COUNT(*) FROM cache WHERE expires_at < ?", (now,))
    assert expired == seeded["expired_cache"]
    assert 0.25 < expired / seeded["cache"] < 0.4
    assert count(database, "SELECT COUNT(*) FROM cache WHERE expires_at >= ?", (now,)) == seeded["cache"] - expired
    assert count(database, "SELECT COUNT(*) FROM cache WHERE created_at > expires_at OR created_at > ?", (now,)) == 0


def test_a_second_seed_inserts_nothing(database: Database, seeded: dict[str, int]) -> None:
    assert seed(database, NOW + timedelta(days=1)) == {}
    assert count(database, "SELECT COUNT(*) FROM api_requests") == seeded["api_requests"]
    assert count(database, "SELECT COUNT(*) FROM widgets") == seeded["widgets"]


def test_the_same_seed_gives_the_same_data(tmp_path: Path, database: Database) -> None:
    other = Database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'other.db'}"))
    try:
        migrations.apply(other)
        seed(other, NOW)
        sql = "SELECT * FROM api_requests ORDER BY id LIMIT 50"
        assert other.query(sql) == database.query(sql)
    finally:
        other.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ratecared.demo", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_seeds_then_reports_the_data_present(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    first = run_cli("--config", str(config_path), "--days", "3")
    assert (first.returncode, first.stdout) == (
        0, "demo data: 40 widgets, 6000 requests over 3 days, 280 cache rows (93 expired)\n"), first.stderr
    again = run_cli("--config", str(config_path))
    assert (again.returncode, again.stdout) == (0, "demo data: already present\n"), again.stderr


def test_cli_exits_78_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[database]\nurl = "postgres://x/y"\n', encoding="utf-8")
    result = run_cli("--config", str(path))
    assert result.returncode == 78
    assert "database.url" in result.stderr


def standin_config(tmp_path: Path, port: int) -> Path:
    """A migrated SQLite database and a warming URL on `port`."""
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[jobs.warm_cache]\nurl = "http://127.0.0.1:{port}/api/v1/widgets/{{widget_id}}/rates"\n'
                      '[circuit_breaker]\nplatforms = ["booking", "agoda"]\n')
    database = Database(ratecared_config.load(config).database)
    migrations.apply(database)
    database.close()
    return config


# Run as the stand-in's command: two requests for widget 7, each line "X-Cache platforms".
TWO_REQUESTS = """
import json, sys, urllib.request
for _ in range(2):
    r = urllib.request.urlopen('http://127.0.0.1:{port}/api/v1/widgets/7/rates')
    body = json.load(r)
    print(r.headers['X-Cache'], body['data']['widget_id'], ','.join(x['platform'] for x in body['data']['rates']))
"""


def test_widget_standin_answers_a_miss_from_the_platforms_then_from_the_cache(tmp_path: Path) -> None:
    port = free_port()
    config = standin_config(tmp_path, port)
    result = subprocess.run([sys.executable, "-m", "ratecared.demo_app", "--config", str(config), "--platform-ms", "1",
                             "--", sys.executable, "-c", TWO_REQUESTS.format(port=port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"widget stand-in: http://127.0.0.1:{port}" in result.stderr
    assert result.stdout.splitlines() == ["MISS 7 booking,agoda", "HIT 7 booking,agoda"]
    database = Database(ratecared_config.load(config).database)
    stored = database.query("SELECT cache_key, widget_id, payload, created_at, expires_at FROM cache ORDER BY cache_key")
    database.close()
    assert [row[:2] for row in stored] == [("rates:7:agoda", 7), ("rates:7:booking", 7)]
    for _, _, payload, created_at, expires_at in stored:
        assert json.loads(payload)["widget_id"] == 7
        lived = datetime.fromisoformat(expires_at) - datetime.fromisoformat(created_at)
        assert lived == timedelta(hours=6)
    failing = subprocess.run([sys.executable, "-m", "ratecared.demo_app", "--config", str(config), "--",
                              sys.executable, "-c", "raise SystemExit(3)"], capture_output=True, timeout=60)
    assert failing.returncode == 3


def test_widget_standin_calls_the_platforms_again_for_an_expired_row(tmp_path: Path) -> None:
    port = free_port()
    config = standin_config(tmp_path, port)
    database = Database(ratecared_config.load(config).database)
    now = datetime.now(timezone.utc)
    old = json.dumps({"widget_id": 7, "platform": "booking", "rates": [], "currency": "EUR"})
    database.executemany("INSERT INTO cache (cache_key, widget_id, payload, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                         [("rates:7:booking", 7, old, timestamp(now - timedelta(hours=7)),
                           timestamp(now - timedelta(hours=1))),
                          ("rates:7:agoda", 7, old.replace("booking", "agoda"), timestamp(now),
                           timestamp(now + timedelta(hours=1)))])
    result = subprocess.run([sys.executable, "-m", "ratecared.demo_app", "--config", str(config), "--platform-ms", "1",
                             "--", sys.executable, "-c", TWO_REQUESTS.format(port=port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["MISS 7 booking,agoda", "HIT 7 booking,agoda"]
    fresh = database.query("SELECT cache_key, payload FROM cache WHERE expires_at > ? ORDER BY cache_key",
                           (timestamp(now),))
    database.close()
    assert [key for key, _ in fresh] == ["rates:7:agoda", "rates:7:booking"]
    assert json.loads(fresh[0][1])["rates"] == [], "the fresh agoda row was answered, not fetched again"
    assert json.loads(fresh[1][1])["rates"] != [], "the expired booking row was fetched again"


def test_a_taken_standin_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import socket as socketlib

    taken = socketlib.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[jobs.warm_cache]\nurl = "http://127.0.0.1:{port}/w/{{widget_id}}"\n')
    try:
        result = subprocess.run([sys.executable, "-m", "ratecared.demo_app", "--config", str(config), "--",
                                 sys.executable, "-c", "raise SystemExit(0)"], capture_output=True, text=True,
                                timeout=60)
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"ratecared.demo_app: cannot serve the widget stand-in on 127.0.0.1:{port}: Address already in use "
        f"(is another `make run` going? change jobs.warm_cache.url in {config})"]
