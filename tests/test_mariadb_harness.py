"""The private MariaDB server behaves the way the database tests rely on."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pytest

from mariadb import MariaDB

pytestmark = pytest.mark.mariadb

_seen_databases: list[str] = []


def connect(url: str) -> pymysql.connections.Connection:
    """Connect from the URL alone, so that the URL itself is under test."""
    parts = urlsplit(url)
    return pymysql.connect(
        unix_socket=parse_qs(parts.query)["unix_socket"][0],
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
        autocommit=True,
    )


def test_server_is_mariadb(mariadb: MariaDB) -> None:
    mariadb.ensure_running()
    with mariadb.root_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        (version,) = cur.fetchone()
    assert "MariaDB" in version


def test_data_survives_stop_and_start(mariadb: MariaDB, mysql_url: str) -> None:
    with connect(mysql_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (id INT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB")
        cur.execute("INSERT INTO kept VALUES (1, 'café')")

    mariadb.stop()
    assert not mariadb.running
    mariadb.start()

    with connect(mysql_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT note FROM kept WHERE id = 1")
        assert cur.fetchone() == ("café",)


def test_killed_server_refuses_then_recovers(mariadb: MariaDB, mysql_url: str) -> None:
    with connect(mysql_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE committed (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO committed VALUES (7)")

    mariadb.kill()
    with pytest.raises(pymysql.err.OperationalError):
        connect(mysql_url)

    mariadb.start()
    with connect(mysql_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM committed")
        assert cur.fetchall() == ((7,),)


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_its_own_empty_database(mariadb: MariaDB, mysql_url: str, run: int) -> None:
    name = urlsplit(mysql_url).path.lstrip("/")
    assert name not in _seen_databases
    with connect(mysql_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert cur.fetchall() == ()
        cur.execute("CREATE TABLE mine (id INT)")
    with mariadb.root_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 't\\_%'"
        )
        existing = {row[0] for row in cur.fetchall()}
    assert name in existing
    assert not existing & set(_seen_databases), "an earlier test's database was not dropped"
    _seen_databases.append(name)
