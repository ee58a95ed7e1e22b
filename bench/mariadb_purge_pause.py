#!/usr/bin/env python3
"""How long MariaDB holds the app's inserts while it removes a partition, and why it is sometimes 1 s.

On MariaDB 10.11, DROP PARTITION and REORGANIZE PARTITION (which removes the partition it splits) end in
InnoDB's purge_sys_t::stop_FTS(): when a purge batch is running at that instant, it sleeps a whole second
before it looks again, holding the table's exclusive metadata lock, so every insert of the app waits
behind it. Purge runs after any commit that leaves history, the app's own inserts included, so this
happens at random, more often on a loaded machine. EXCHANGE PARTITION renames instead, and does not stop
purge. This bench shows both on the tests' private server, with the app's insert loop beside them:
--partitions day partitions of --rows rows, each removed by DROP PARTITION, and as many moved out by
EXCHANGE PARTITION (the table they go to is dropped after, when it no longer holds the app up), each
through the daemon's own DDL path (day_partitions.ddl: NOWAIT, tried again while a query holds the table).

Floor (issue 13): no insert of the app waits 1 s or more, for each statement. DROP PARTITION fails it
whenever a purge batch coincides; this is the server's, and the figure that says how often.

Usage:
    .venv/bin/python bench/mariadb_purge_pause.py [--partitions 60] [--rows 1000] [--json]

Exit status: 0 when both statements met the floor, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from floors import run_and_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the MariaDB harness
sys.path.insert(1, str(ROOT))

import mariadb as harness  # noqa: E402  (tests/mariadb.py)
from ratecared.config import DatabaseConfig  # noqa: E402
from ratecared.db import Database  # noqa: E402
from ratecared.jobs.day_partitions import ddl  # noqa: E402

LIMIT_MS = 1000.0


COLUMNS = ("id BIGINT NOT NULL AUTO_INCREMENT, widget_id INT, platform VARCHAR(32), status_code INT,"
           " response_time_ms INT, cache_hit TINYINT, created_at DATETIME, PRIMARY KEY (id)")


def _table(db: Database, partitions: int, rows: int) -> None:
    bounds = ", ".join(f"PARTITION p{n} VALUES LESS THAN ({(n + 1) * rows})" for n in range(2 * partitions))
    db.execute(f"CREATE TABLE api_requests ({COLUMNS}) ENGINE=InnoDB PARTITION BY RANGE (id) ({bounds},"
               " PARTITION pfuture VALUES LESS THAN MAXVALUE)")
    db.execute("INSERT INTO api_requests (id, widget_id, platform, status_code, response_time_ms, cache_hit,"
               f" created_at) SELECT seq, 1, 'booking', 200, 100, 1, NOW() FROM seq_1_to_{2 * partitions * rows - 1}")


def _removals(app: harness.AppInserts, partitions: range, remove: Callable[[int], float]) -> dict[str, Any]:
    statement_ms, insert_ms = [], []
    for n in partitions:
        since = app.inserted
        statement_ms.append(remove(n) * 1000)
        insert_ms.append(app.longest_ms(since))
    return {"statements": len(statement_ms), "statement_ms_max": round(max(statement_ms), 1),
            "statements_over_limit": sum(ms >= LIMIT_MS for ms in statement_ms),
            "insert_ms_max": max(insert_ms), "inserts_over_limit": sum(ms >= LIMIT_MS for ms in insert_ms)}


def bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    if not harness.available():
        raise RuntimeError(harness.MISSING_MESSAGE)
    server = harness.MariaDB(Path(tempfile.mkdtemp(prefix="rcb-purge-", dir="/tmp")))
    server.start()
    try:
        # The daemon's own connection and DDL path: NOWAIT, tried again while a query holds the table.
        db = Database(DatabaseConfig(url=server.create_database("bench")))
        never = threading.Event()
        version = db.query("SELECT VERSION()")[0][0]
        _table(db, args.partitions, args.rows)
        log(f"MariaDB {version}: {2 * args.partitions} partitions of {args.rows:,} rows")

        def exchanged(n: int) -> float:
            db.execute(f"CREATE TABLE moved_out ({COLUMNS}) ENGINE=InnoDB")
            seconds = ddl(db, f"ALTER TABLE api_requests{{wait}} EXCHANGE PARTITION p{n} WITH TABLE moved_out",
                          never)
            db.execute("DROP TABLE moved_out")
            return seconds

        with harness.AppInserts(server, "bench") as app:
            dropped = _removals(app, range(args.partitions),
                                lambda n: ddl(db, f"ALTER TABLE api_requests{{wait}} DROP PARTITION p{n}", never))
            log(f"  DROP PARTITION: {dropped['statements_over_limit']} of {dropped['statements']} took 1 s or"
                f" more (longest {dropped['statement_ms_max']:,.0f} ms); the app's longest insert"
                f" {dropped['insert_ms_max']:,.0f} ms")
            moved = _removals(app, range(args.partitions, 2 * args.partitions), exchanged)
            log(f"  EXCHANGE PARTITION: {moved['statements_over_limit']} of {moved['statements']} took 1 s or"
                f" more (longest {moved['statement_ms_max']:,.0f} ms); the app's longest insert"
                f" {moved['insert_ms_max']:,.0f} ms")
        if app.errors:
            raise RuntimeError(f"the app's inserts failed: {app.errors[:3]}")
        db.close()
        return {"server": version, "rows": args.rows, "drop_partition": dropped, "exchange_partition": moved}
    finally:
        server.close()


def floors(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(f"{name}: app's longest insert, ms", f"{r[key]['insert_ms_max']:,.0f}", r[key]["insert_ms_max"] < LIMIT_MS)
            for name, key in (("DROP PARTITION", "drop_partition"), ("EXCHANGE PARTITION", "exchange_partition"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=60, help="partitions removed by each statement [60]")
    parser.add_argument("--rows", type=int, default=1000, help="rows in each partition [1000]")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.partitions < 1 or args.rows < 1:
        parser.error("--partitions and --rows must be at least 1")

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def summary(r: dict[str, Any]) -> str:
        d, x = r["drop_partition"], r["exchange_partition"]
        return (f"MariaDB {r['server']}: {d['inserts_over_limit']} of {d['statements']} DROP PARTITIONs held an insert"
                f" 1 s or more, {x['inserts_over_limit']} of {x['statements']} EXCHANGE PARTITIONs did")

    return run_and_report(lambda: bench(args, log), floors, summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
