"""aggregate_statistics on real SQLite and MariaDB: the rows it leaves behind."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from jobhelpers import REQUEST_COLUMNS, days_of_requests, insert_rows, local, make_context, request_row
from ratecared.db import Database
from ratecared.jobs import aggregate_statistics
from ratecared.job_contract import ChunkPolicy, Interrupted
from ratecared.settings import Settings

TZ = "Europe/Istanbul"
NOW = local(TZ, 2026, 11, 28, 2, 0)


def summaries(db: Database) -> list[tuple]:
    rows = db.query("SELECT stat_date, total_requests, cache_hits, cache_misses, error_count, avg_response_ms,"
                    " max_response_ms, unique_widgets FROM api_statistics_summary ORDER BY stat_date")
    return [(str(r[0])[:10], *map(int, r[1:5]), round(float(r[5]), 2), *map(int, r[6:])) for r in rows]


def widget_daily(db: Database) -> list[tuple]:
    return [(str(d)[:10], int(w), int(n)) for d, w, n in db.query(
        "SELECT stat_date, widget_id, requests FROM api_statistics_widget_daily ORDER BY stat_date, widget_id")]


def test_first_run_backfills_every_complete_day_with_exact_figures(database: Database) -> None:
    rows = [
        request_row(1, local(TZ, 2026, 11, 26, 0, 0), status=200, ms=10, hit=1),
        request_row(1, local(TZ, 2026, 11, 26, 12, 0), status=500, ms=300, hit=0),
        request_row(2, local(TZ, 2026, 11, 26, 23, 59), status=502, ms=50, hit=0),
        request_row(2, local(TZ, 2026, 11, 27, 9, 0), status=200, ms=20, hit=1),
        # Today is not complete: not summarised.
        request_row(3, local(TZ, 2026, 11, 28, 0, 30), status=200, ms=5, hit=1),
        # 23:30 UTC on the 25th is 02:30 on the 26th in Istanbul.
        request_row(4, datetime.fromisoformat("2026-11-25T23:30:00+00:00"), status=404, ms=40, hit=1),
    ]
    insert_rows(database, "api_requests", REQUEST_COLUMNS, rows)
    result = aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW))
    assert result.status == "success"
    assert result.details["days_summarised"] == ["2026-11-26", "2026-11-27"]
    assert summaries(database) == [
        ("2026-11-26", 4, 2, 2, 2, 100.0, 300, 3),
        ("2026-11-27", 1, 1, 0, 0, 20.0, 20, 1),
    ]
    assert widget_daily(database) == [("2026-11-26", 1, 2), ("2026-11-26", 2, 1), ("2026-11-26", 4, 1),
                                      ("2026-11-27", 2, 1)]


def test_a_rerun_gives_the_same_rows_and_picks_up_late_rows(database: Database) -> None:
    days_of_requests(database, TZ, NOW, days=5, per_day=40)
    aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW))
    first = summaries(database), widget_daily(database)
    aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW))
    assert (summaries(database), widget_daily(database)) == first
    insert_rows(database, "api_requests", REQUEST_COLUMNS, [request_row(9, local(TZ, 2026, 11, 27, 23, 0))])
    result = aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW))
    assert result.details["days_summarised"] == ["2026-11-26", "2026-11-27"]
    assert summaries(database)[-1][1] == first[0][-1][1] + 1
    assert widget_daily(database)[-1] == ("2026-11-27", 9, 1)


def test_retention_deletes_summarised_days_past_the_limit_in_chunks(database: Database) -> None:
    days_of_requests(database, TZ, NOW, days=40, per_day=50)
    ctx = make_context(database, "aggregate_statistics", NOW, settings=Settings(retention_days=30),
                       chunks=ChunkPolicy(initial=120, smallest=100, largest=200, pause_ratio=0))
    result = aggregate_statistics.run(ctx)
    assert result.details["rows_deleted"] == 10 * 50
    assert result.details["chunks"] > 1
    assert len(summaries(database)) == 40
    oldest = database.query("SELECT MIN(created_at) FROM api_requests")[0][0]
    assert str(oldest).startswith("2026-10-28 21:00")  # local midnight of 2026-10-29, 30 days back
    assert result.details["cutoff"] == "2026-10-29T00:00:00.000+03:00"
    assert database.query("SELECT COUNT(*) FROM api_requests")[0][0] == 30 * 50


def test_retention_never_deletes_a_day_without_summary(database: Database) -> None:
    days_of_requests(database, TZ, NOW, days=40, per_day=10)
    ctx = make_context(database, "aggregate_statistics", NOW, settings=Settings(retention_days=5))
    aggregate_statistics.run(ctx)
    # A late batch for a long-gone day appears with no summary yet: a purge
    # that skipped the rollup must keep it.
    insert_rows(database, "api_requests", REQUEST_COLUMNS,
                [request_row(5, local(TZ, 2026, 10, 1, 12, 0)) for _ in range(3)])
    cutoff = aggregate_statistics.retention_cutoff(ctx)
    assert cutoff == "2026-09-30 21:00:00.000"
    aggregate_statistics.purge_details(ctx, cutoff)
    assert database.query("SELECT COUNT(*) FROM api_requests WHERE created_at < '2026-10-02'")[0][0] == 3
    # The next full run summarises that day first, then may delete it.
    result = aggregate_statistics.run(ctx)
    assert "2026-10-01" in result.details["days_summarised"]
    assert database.query("SELECT COUNT(*) FROM api_requests WHERE created_at < '2026-10-02'")[0][0] == 0
    assert ("2026-10-01", 3, 3, 0, 0, 100.0, 100, 1) in summaries(database)


def test_days_follow_the_local_zone_across_dst(database: Database) -> None:
    tz = "Europe/Berlin"
    rows = [
        # 2026-03-29 is 23 hours long in Berlin; 2026-10-25 is 25 hours long.
        request_row(1, local(tz, 2026, 3, 29, 0, 30)),
        request_row(1, local(tz, 2026, 3, 29, 23, 30)),
        request_row(1, local(tz, 2026, 10, 25, 0, 10)),
        request_row(1, datetime.fromisoformat("2026-10-25T02:30:00+01:00")),
        request_row(1, local(tz, 2026, 10, 25, 23, 50)),
        request_row(1, local(tz, 2026, 10, 26, 0, 0)),
    ]
    insert_rows(database, "api_requests", REQUEST_COLUMNS, rows)
    aggregate_statistics.run(make_context(database, "aggregate_statistics", local(tz, 2026, 10, 27, 2, 0), tz=tz,
                                          settings=Settings(retention_days=365)))
    assert [(d, n) for d, n, *_ in summaries(database)] == [("2026-03-29", 2), ("2026-10-25", 3), ("2026-10-26", 1)]


def test_stop_ends_the_run_between_chunks(database: Database) -> None:
    days_of_requests(database, TZ, NOW, days=35, per_day=20)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW, stop=stop))
    assert summaries(database) == []


def test_optimize_only_when_it_pays(tmp_path) -> None:
    from ratecared.config import DatabaseConfig
    from ratecared.db import migrations

    db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'space.db'}"))
    migrations.apply(db)
    days_of_requests(db, TZ, NOW, days=60, per_day=300)
    big = make_context(db, "aggregate_statistics", NOW, settings=Settings(retention_days=30), optimize_min_free_mb=0)
    result = aggregate_statistics.run(big)
    assert result.details["optimized"] is True
    assert result.details["free_bytes_after"] < result.details["free_bytes"] * 0.1
    again = aggregate_statistics.run(big)
    assert again.details["optimized"] is False and "below 20%" in again.details["optimize_skipped"]
    assert again.details["space_of"] == "the database file" and " MB free of " in again.details["optimize_skipped"]
    db.close()


@pytest.mark.mariadb
def test_mariadb_reports_data_free(mysql_url: str) -> None:
    from ratecared.config import DatabaseConfig
    from ratecared.db import migrations

    db = Database(DatabaseConfig(url=mysql_url))
    migrations.apply(db)
    days_of_requests(db, TZ, NOW, days=31, per_day=100)
    result = aggregate_statistics.run(make_context(db, "aggregate_statistics", NOW, optimize_min_free_mb=0))
    assert result.details["size_bytes"] > 0
    assert isinstance(result.details["free_bytes"], int)
    assert result.details["optimized"] == (result.details["free_bytes"] >= 0.2 * result.details["size_bytes"])
    db.close()


def test_empty_database_is_a_quiet_success(database: Database) -> None:
    result = aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW))
    assert (result.status, result.details["days_summarised"], result.details["rows_deleted"]) == ("success", [], 0)


def test_yesterday_is_in_the_configured_zone(database: Database) -> None:
    # 22:30 UTC on the 27th is already the 28th in Istanbul: today there, not summarised.
    insert_rows(database, "api_requests", REQUEST_COLUMNS,
                [request_row(1, datetime.fromisoformat("2026-11-27T22:30:00+00:00"))])
    result = aggregate_statistics.run(make_context(database, "aggregate_statistics", NOW + timedelta(hours=1)))
    assert result.details["days_summarised"] == []
