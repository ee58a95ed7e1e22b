"""Demo data, so that `make run` shows a system with history instead of empty tables.

`python -m ratecared.demo --config PATH` migrates and seeds the database the
config names: widgets, weeks of `api_requests` and a `cache` with some rows
expired, all drawn from a seeded `random.Random`, so every run looks the same.
It seeds only a database without requests, so restarting `make run` neither
duplicates the data nor touches a database that already has real traffic.
"""

from __future__ import annotations

import json
import math
import random
import sys
from datetime import datetime, timedelta, timezone
from itertools import product
from typing import Any, Sequence

import click

from ratecared.config import DEFAULT_PLATFORMS, EX_CONFIG, ConfigError, load
from ratecared.db import Database, DatabaseError, migrations, timestamp
from ratecared.db.database import Transaction

EX_UNAVAILABLE = 69

# One statement per this many rows: few round trips, and at six columns well
# under SQLite's 32766 bound variables.
ROWS_PER_INSERT = 500

HOTEL_KINDS = ("Hotel", "Grand Hotel", "Boutique Hotel", "Suites", "Residence", "Resort")
HOTEL_NAMES = ("Aurora", "Marina", "Belvedere", "Olive Grove", "Lighthouse", "Palazzo",
               "Cedar", "Harbour", "Sapphire", "Vista", "Mistral", "Azure")
CITIES = ("Istanbul", "Lisbon", "Barcelona", "Antalya", "Vienna", "Prague",
          "Athens", "Dubrovnik", "Nice", "Porto", "Bodrum", "Naples")
ROOM_TYPES = ("single", "double", "twin", "suite", "family")
CURRENCIES = ("EUR", "USD", "TRY", "GBP")

# Relative traffic per UTC hour: quiet nights, a late-morning and an evening peak.
HOURLY_TRAFFIC = (2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 10, 9, 9, 8, 8, 8, 9, 10, 11, 10, 8, 5, 3)
# None is the app's call without a platform (the widget's own rates).
PLATFORM_TRAFFIC: dict[str | None, int] = dict(
    zip((*DEFAULT_PLATFORMS, None), (30, 18, 12, 8, 8, 7, 9, 8), strict=True)
)
ZIPF_EXPONENT = 1.0
INACTIVE_SHARE = 0.1
CACHE_HIT_RATE = 0.7
# Status codes of cache misses (hits are always 200): the upstream fetch is what fails.
MISS_STATUS_CODES = {200: 900, 404: 40, 500: 20, 502: 25, 503: 15}
MISS_MEDIAN_MS = 600
EXPIRED_CACHE_SHARE = 1 / 3


def seed(database: Database, now: datetime, days: int = 35, widgets: int = 40,
         requests_per_day: int = 2000, seed: int = 7) -> dict[str, int]:
    """Fill an empty database with demo data ending at `now`; return what was inserted.

    Returns {} when `api_requests` already has rows. Everything goes in one
    transaction, so an interrupted seed leaves nothing that would later pass
    for "already present".
    """
    if now.tzinfo is None:
        raise ValueError("naive datetime: now must carry its zone")
    if days < 1 or widgets < 1 or requests_per_day < 1:
        raise ValueError("days, widgets and requests_per_day must be at least 1")
    if database.query("SELECT 1 FROM api_requests LIMIT 1"):
        return {}
    rng = random.Random(seed)
    widget_rows = _widgets(rng, widgets)
    request_rows = _requests(rng, now, days, requests_per_day, widget_rows)
    cache_rows = _cache(rng, now, [row[0] for row in widget_rows])
    with database.transaction() as tx:
        # The demo has a widget stand-in to warm against, so warming is on.
        tx.execute("UPDATE settings SET `value` = '1' WHERE `key` = 'cache-warming-enabled'")
        _insert(tx, "widgets", ("id", "name", "active"), widget_rows)
        _insert(tx, "api_requests",
                ("widget_id", "platform", "status_code", "response_time_ms", "cache_hit", "created_at"),
                request_rows)
        _insert(tx, "cache", CACHE_COLUMNS, cache_rows)
    now_stamp = timestamp(now)
    return {
        "widgets": len(widget_rows),
        "api_requests": len(request_rows),
        "cache": len(cache_rows),
        "expired_cache": sum(1 for row in cache_rows if row[4] < now_stamp),  # stored stamps sort as instants
    }


def _widgets(rng: random.Random, count: int) -> list[tuple[int, str, int]]:
    """Rows (id, name, active) with distinct names while the word lists last."""
    names = [" ".join(words) for words in product(HOTEL_KINDS, HOTEL_NAMES, CITIES)]
    rng.shuffle(names)
    inactive = set(rng.sample(range(1, count + 1), round(count * INACTIVE_SHARE)))
    return [(wid, names[(wid - 1) % len(names)], int(wid not in inactive)) for wid in range(1, count + 1)]


def _requests(rng: random.Random, now: datetime, days: int, per_day: int,
              widget_rows: Sequence[tuple[int, str, int]]) -> list[tuple[Any, ...]]:
    """`per_day` requests in each of the `days` 24-hour windows before `now`, oldest first.

    Popularity is Zipf-like over a shuffled ranking, so a few widgets carry
    most of the traffic; an inactive widget gets none after the day it was
    switched off, as if it had been deactivated during the period.
    """
    widget_ids = [row[0] for row in widget_rows]
    ranking = rng.sample(widget_ids, len(widget_ids))
    popularity = {wid: 1 / (rank + 1) ** ZIPF_EXPONENT for rank, wid in enumerate(ranking)}
    switched_off_on_day = {row[0]: rng.randrange(days) for row in widget_rows if not row[2]}
    platforms, platform_weights = list(PLATFORM_TRAFFIC), list(PLATFORM_TRAFFIC.values())
    miss_codes, miss_code_weights = list(MISS_STATUS_CODES), list(MISS_STATUS_CODES.values())

    rows = []
    for day in range(days):
        window_start = now - timedelta(days=days - day)
        # Every UTC time of day occurs exactly once in a 24-hour window: a drawn
        # time of day maps to the instant this many seconds after window_start.
        window_start_second_of_day = window_start.timestamp() % 86400
        day_weights = [0.0 if switched_off_on_day.get(wid, days) <= day else popularity[wid] for wid in widget_ids]
        for hour, widget_id, platform in zip(
            rng.choices(range(24), weights=HOURLY_TRAFFIC, k=per_day),
            rng.choices(widget_ids, weights=day_weights, k=per_day),
            rng.choices(platforms, weights=platform_weights, k=per_day),
        ):
            second_of_day = (hour + rng.random()) * 3600
            created_at = window_start + timedelta(seconds=(second_of_day - window_start_second_of_day) % 86400)
            cache_hit = rng.random() < CACHE_HIT_RATE
            if cache_hit:
                status_code, response_ms = 200, round(rng.triangular(5, 30, 9))
            else:
                status_code = rng.choices(miss_codes, weights=miss_code_weights)[0]
                response_ms = round(min(2500, max(200, rng.lognormvariate(math.log(MISS_MEDIAN_MS), 0.6))))
            rows.append((widget_id, platform, status_code, response_ms, int(cache_hit), timestamp(created_at)))
    rows.sort(key=lambda row: row[5])  # ids ascend with time, as when the app writes them
    return rows


def _cache(rng: random.Random, now: datetime, widget_ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """One row per (widget, platform), written within the last day; a third already expired."""
    pairs = list(product(widget_ids, DEFAULT_PLATFORMS))
    expired = set(rng.sample(range(len(pairs)), round(len(pairs) * EXPIRED_CACHE_SHARE)))
    rows = []
    for index, (widget_id, platform) in enumerate(pairs):
        created_at = now - timedelta(minutes=rng.uniform(2, 24 * 60))
        if index in expired:
            expires_at = created_at + (now - created_at) * rng.uniform(0.1, 0.95)
        else:
            expires_at = now + timedelta(minutes=rng.uniform(1, 6 * 60))
        rows.append((cache_key(widget_id, platform), widget_id, json.dumps(rates(rng, widget_id, platform)),
                     timestamp(created_at), timestamp(expires_at)))
    return rows


CACHE_COLUMNS = ("cache_key", "widget_id", "payload", "created_at", "expires_at")


def cache_key(widget_id: int, platform: str) -> str:
    """The app's cache key for one platform's rates of one widget."""
    return f"rates:{widget_id}:{platform}"


def rates(rng: random.Random, widget_id: int, platform: str) -> dict[str, Any]:
    """One platform's answer for a widget, as the app caches it."""
    return {
        "widget_id": widget_id,
        "platform": platform,
        "currency": rng.choice(CURRENCIES),
        "rates": [{"room": room, "price": round(rng.uniform(45, 420), 2)}
                  for room in rng.sample(ROOM_TYPES, rng.randint(1, 3))],
    }


def _insert(tx: Transaction, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Multi-row INSERTs: one statement per row would take minutes for weeks of requests."""
    row_marks = "(" + ", ".join("?" for _ in columns) + ")"
    head = f"INSERT INTO {table} ({', '.join(f'`{c}`' for c in columns)}) VALUES "
    for start in range(0, len(rows), ROWS_PER_INSERT):
        batch = rows[start:start + ROWS_PER_INSERT]
        tx.execute(head + ", ".join([row_marks] * len(batch)), [value for row in batch for value in row])


@click.command()
@click.option("--config", "config_path", envvar="RATECARED_CONFIG", type=click.Path(dir_okay=False),
              help="Config file [default: /etc/ratecared/ratecared.toml; env RATECARED_CONFIG].")
@click.option("--days", type=click.IntRange(min=1), default=35, show_default=True,
              help="Days of request history ending now.")
def main(config_path: str | None, days: int) -> None:
    """Migrate the configured database and seed it with demo data unless it has requests."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        click.echo(f"ratecared.demo: config error: {exc}", err=True)
        sys.exit(EX_CONFIG)
    database = Database(config.database)
    try:
        migrations.apply(database)
        counts = seed(database, datetime.now(timezone.utc), days=days)
    except DatabaseError as exc:
        click.echo(f"ratecared.demo: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE if "connect" in str(exc) else 1)
    finally:
        database.close()
    if not counts:
        click.echo("demo data: already present")
        return
    click.echo(
        f"demo data: {counts['widgets']} widgets, {counts['api_requests']} requests over {days} days, "
        f"{counts['cache']} cache rows ({counts['expired_cache']} expired)"
    )


if __name__ == "__main__":
    main()
