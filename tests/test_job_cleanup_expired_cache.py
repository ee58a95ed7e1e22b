"""cleanup_expired_cache on real SQLite and MariaDB."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from jobhelpers import insert_rows, local, make_context
from ratecared.db import Database, timestamp
from ratecared.jobs import cleanup_expired_cache
from ratecared.job_contract import ChunkPolicy, Interrupted
from ratecared.settings import Settings

NOW = local("Europe/Istanbul", 2026, 11, 28, 3, 0)
COLUMNS = ("cache_key", "widget_id", "payload", "created_at", "expires_at")


def cache_rows(count: int, expires: list, prefix: str = "k") -> list[tuple]:
    return [(f"{prefix}{i}", i % 9, '{"rate": 1}', timestamp(NOW - timedelta(days=1)), timestamp(expires[i % len(expires)]))
            for i in range(count)]


def test_expired_rows_go_and_the_rest_stay(database: Database) -> None:
    insert_rows(database, "cache", COLUMNS,
                cache_rows(300, [NOW - timedelta(hours=h) for h in (1, 5, 30)], "old")
                + cache_rows(200, [NOW + timedelta(minutes=m) for m in (1, 60)], "fresh")
                + cache_rows(1, [NOW], "edge"))
    ctx = make_context(database, "cleanup_expired_cache", NOW,
                       chunks=ChunkPolicy(initial=64, smallest=50, largest=100, pause_ratio=0))
    result = cleanup_expired_cache.run(ctx)
    assert (result.status, result.rows, result.details["rows_deleted"]) == ("success", 300, 300)
    assert result.details["walk"] == "primary_key"
    assert result.details["chunks"] > 2
    left = {k[:3] for (k,) in database.query("SELECT cache_key FROM cache")}
    assert left == {"fre", "edg"}
    assert database.query("SELECT COUNT(*) FROM cache")[0][0] == 201


def test_few_expired_rows_sharing_one_expiry_are_found_through_the_index(database: Database) -> None:
    # One row in ten expired, all at the same instant (a bulk load): the index
    # walk is chosen, and its keyset must not stall on the shared expires_at.
    expiries = [NOW - timedelta(hours=2)] + [NOW + timedelta(hours=1)] * 9
    insert_rows(database, "cache", COLUMNS, cache_rows(25000, expiries))
    ctx = make_context(database, "cleanup_expired_cache", NOW,
                       chunks=ChunkPolicy(initial=100, smallest=100, largest=100, pause_ratio=0))
    result = cleanup_expired_cache.run(ctx)
    assert result.details["walk"] == "expires_at_index"
    assert result.details["rows_deleted"] == 2500 and result.details["chunks"] == 26
    assert database.query("SELECT COUNT(*) FROM cache")[0][0] == 22500


def test_rows_expiring_during_the_run_are_kept(database: Database) -> None:
    insert_rows(database, "cache", COLUMNS, cache_rows(10, [NOW + timedelta(seconds=1)]))
    result = cleanup_expired_cache.run(make_context(database, "cleanup_expired_cache", NOW))
    assert result.rows == 0 and result.details["expired_before"] == "2026-11-28T03:00:00.000+03:00"


def test_disabled_by_setting(database: Database) -> None:
    insert_rows(database, "cache", COLUMNS, cache_rows(10, [NOW - timedelta(days=1)]))
    result = cleanup_expired_cache.run(make_context(database, "cleanup_expired_cache", NOW,
                                                    settings=Settings(cleanup_enabled=False)))
    assert (result.status, result.details["reason"]) == ("skipped", "cache-cleanup-enabled is 0")
    assert database.query("SELECT COUNT(*) FROM cache")[0][0] == 10


def test_stop_between_chunks_keeps_what_was_done(database: Database) -> None:
    insert_rows(database, "cache", COLUMNS, cache_rows(1000, [NOW - timedelta(days=1)]))
    stop = threading.Event()
    ctx = make_context(database, "cleanup_expired_cache", NOW, stop=stop,
                       chunks=ChunkPolicy(initial=100, smallest=100, largest=100, pause_ratio=0))
    original = database.execute

    def execute_then_stop(sql, params=()):
        count = original(sql, params)
        if sql.startswith("DELETE"):
            stop.set()
        return count

    database.execute = execute_then_stop  # type: ignore[method-assign]
    with pytest.raises(Interrupted) as info:
        cleanup_expired_cache.run(ctx)
    assert info.value.rows == 100
    assert info.value.details["rows_deleted"] == 100 and info.value.details["walk"] == "primary_key"
    assert database.query("SELECT COUNT(*) FROM cache")[0][0] == 900


@pytest.mark.mariadb
def test_expired_rows_scattered_among_live_ones_are_given_back_by_a_rebuild(mysql_url: str) -> None:
    from ratecared.config import DatabaseConfig
    from ratecared.db import migrations

    db = Database(DatabaseConfig(url=mysql_url))
    migrations.apply(db)
    # Four of every five rows expired, side by side with the live one: no page empties, no extent is freed.
    expired, live = NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    rows = [(f"k{i}", i % 9, '{"rates": "' + "r" * 500 + '"}', timestamp(NOW - timedelta(days=1)),
             timestamp(live if i % 5 == 4 else expired)) for i in range(20_000)]
    for start in range(0, len(rows), 2000):
        insert_rows(db, "cache", COLUMNS, rows[start:start + 2000])
    db.execute("ANALYZE TABLE cache")

    def used() -> int:
        db.execute("ANALYZE TABLE cache")
        return int(db.query("SELECT DATA_LENGTH FROM information_schema.TABLES"
                            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'cache'")[0][0])

    before = used()
    result = cleanup_expired_cache.run(make_context(db, "cleanup_expired_cache", NOW, optimize_min_free_mb=0))
    assert result.details["rows_deleted"] == 16_000
    assert result.details["optimized"] is True, result.details
    assert result.details["free_bytes"] >= 0.7 * result.details["size_bytes"]
    assert used() < before / 2
    assert db.query("SELECT COUNT(*) FROM cache")[0][0] == 4000
    db.close()
