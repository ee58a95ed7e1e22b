"""`api_requests` partitioned by local day (MySQL/MariaDB): days made ahead, past days dropped whole, and the
conversion of a live table both ways (`ratecared partition [--revert]`).

A day's rows live in partition p20261201, whose range ends where that local day ends (stored in UTC: 23
or 25 hours on DST days). The last partition, pfuture, takes every row past the days made so far, so an
insert never fails for want of a partition, even after the daemon has been down for a week; making days
splits it (REORGANIZE PARTITION), which costs nothing while it is empty. When pfuture holds more than
FUTURE_ROWS_MOVED rows (the daemon did not run for over a week), splitting it would copy them with the
app's inserts held: the run makes no days then and says how to re-split the table without blocking.

MySQL wants the partitioning column in every unique key: the primary key becomes (id, created_at).

A DDL statement waits for the table's metadata lock, and while it waits the app's inserts queue behind it.
Every DDL here gives up at once (MariaDB's NOWAIT) or after LOCK_WAIT (1 s, MySQL) and tries again a
moment later, as pt-online-schema-change does, so no insert waits on it for longer than that.

The conversion makes the new table empty beside the old one, swaps the two in one RENAME TABLE, and then
moves the old rows over in committed chunks, each chunk inserted and deleted in one transaction: a kill at
any point loses no row and copies none twice, and running it again finishes the move. It holds the jobs'
lock until the swap is made, so no job runs across it, and the aggregation refuses to summarise while rows
are still in the old table (`DRAINING`), so no summary counts a half-moved day; the other jobs go on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo

from ratecared.db import Database, DatabaseError, parse_timestamp
from ratecared.job_contract import ChunkPolicy, unthrottled
from ratecared.jobs.purge import PurgeStats, in_id_windows
from ratecared.localtime import day_span

TABLE = "api_requests"
# The old table while its rows move to the new one, and the new one before the swap.
DRAINING = "api_requests_draining"
BUILDING = "api_requests_building"
FUTURE = "pfuture"
DAYS_AHEAD = 7
# pfuture is split only while it holds at most this many rows: copying them holds the app's inserts.
FUTURE_ROWS_MOVED = 10_000
# The conversion makes at most this many day partitions behind today; older rows share the first one.
# The swap's RENAME takes longer with every partition: 1,009 took 768 ms on the test machine.
MOST_DAYS_BEHIND = 400
LOCK_WAIT = 1
RETRY_EVERY = 0.1
DDL_PATIENCE = 120.0
# New ids start this far past the old table's largest, for the rows the app inserts while the swap is made.
ID_GAP = 1_000_000
JOBS_LOCK = "ratecared:jobs"
# One conversion at a time, for its whole length.
CONVERSION_LOCK = "ratecared:partition"
HALF_CONVERTED = (f"{TABLE} is being converted: rows are still in {DRAINING}; `ratecared partition` is moving "
                  "them, or was stopped: run it again to finish")


class PartitionError(Exception):
    """The conversion cannot go on; the message says why and what to do."""


class StoppedWaiting(PartitionError):
    """`stop` was set while a DDL waited for a query that holds the table; nothing was changed."""


@dataclass(frozen=True)
class Partition:
    name: str
    # The local day it holds (and, for the first, every row before it); None for pfuture.
    day: date | None
    # Its rows' created_at are below this instant; None for pfuture.
    end: datetime | None


def name_of(day: date) -> str:
    return f"p{day:%Y%m%d}"


def _bound(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _days(first: date, last: date) -> list[date]:
    """Every day from `first` to `last`, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _definitions(days: list[date], tz: ZoneInfo) -> str:
    parts = [f"PARTITION {name_of(day)} VALUES LESS THAN ('{_bound(day_span(day, tz)[1])}')" for day in days]
    return ", ".join([*parts, f"PARTITION {FUTURE} VALUES LESS THAN (MAXVALUE)"])


def partitions(db: Database, table: str = TABLE) -> list[Partition]:
    """The table's day partitions and pfuture, in order; [] when it is not partitioned."""
    rows = db.query("SELECT PARTITION_NAME, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND PARTITION_NAME IS NOT NULL"
                    " ORDER BY PARTITION_ORDINAL_POSITION", (table,))
    out = []
    for name, description in rows:
        if name == FUTURE:
            out.append(Partition(name, None, None))
            continue
        try:
            day = datetime.strptime(name, "p%Y%m%d").date()
        except ValueError:
            raise PartitionError(f"{table} has a partition ratecared did not make ({name}): retention by "
                                 "partitions keeps to its own; use retention = \"rows\"") from None
        out.append(Partition(name, day, parse_timestamp(str(description).strip("'"))))
    return out


def ddl(db: Database, statement: str, stop: threading.Event, patience: float = DDL_PATIENCE,
        on_retry: Callable[[int], None] = lambda attempt: None) -> float:
    """Run a DDL statement, `{wait}` in it marking where MariaDB takes NOWAIT, without queueing the app's
    writes behind it for long: again and again while a long query holds the table, for up to `patience`
    seconds, or until `stop` is set (StoppedWaiting); return the seconds of the attempt that ran.

    MariaDB: NOWAIT, tried every RETRY_EVERY (its partition ALTERs wait twice for the lock, so a 1 s
    lock_wait_timeout held writes for 2 s). MySQL: lock_wait_timeout = LOCK_WAIT, tried again after
    half of it; the session's wait is restored after."""
    nowait = "mariadb" in str(db.query("SELECT VERSION()")[0][0]).lower()
    text = statement.format(wait=" NOWAIT" if nowait else "")
    pause = RETRY_EVERY if nowait else LOCK_WAIT / 2
    give_up = time.monotonic() + patience
    attempt = 0
    # MySQL's wait is a setting of the session: the DDL must run in the one it was set in.
    with db.session():
        while True:
            attempt += 1
            if not nowait:
                db.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT}")
            try:
                begun = time.monotonic()
                db.execute(text)
                return time.monotonic() - begun
            except DatabaseError as exc:
                if not str(exc).startswith("(1205)") or time.monotonic() >= give_up:
                    raise
                if stop.wait(pause):
                    raise StoppedWaiting("stopped while waiting for a query that holds the table") from None
                on_retry(attempt)
            finally:
                if not nowait:
                    try:
                        db.execute("SET SESSION lock_wait_timeout = DEFAULT")
                    except DatabaseError:
                        pass    # a lost session took its setting with it


def add_ahead(db: Database, today: date, tz: ZoneInfo,
              stop: threading.Event) -> tuple[list[str], float, str | None]:
    """Make the day partitions through today + DAYS_AHEAD that are missing, out of pfuture; return their
    names, the statement's seconds, and why none were made when pfuture holds too many rows to split."""
    days = [p.day for p in partitions(db) if p.day is not None]
    if not days:
        return [], 0.0, None
    first = max(days[-1] + timedelta(days=1), today - timedelta(days=1))
    wanted = _days(first, today + timedelta(days=DAYS_AHEAD))
    if not wanted:
        return [], 0.0, None
    held = len(db.query(f"SELECT 1 FROM {TABLE} PARTITION ({FUTURE}) LIMIT {FUTURE_ROWS_MOVED + 1}"))
    if held > FUTURE_ROWS_MOVED:
        return [], 0.0, (f"{FUTURE} holds over {FUTURE_ROWS_MOVED:,} rows (no run made days for over "
                         f"{DAYS_AHEAD} days): splitting it would hold the app's inserts while they are copied, "
                         "so no days were made and its rows are kept until `ratecared partition --revert` then "
                         "`ratecared partition` re-split the table without blocking")
    seconds = ddl(db, f"ALTER TABLE {TABLE}{{wait}} REORGANIZE PARTITION {FUTURE} INTO ({_definitions(wanted, tz)})",
                  stop)
    return [name_of(day) for day in wanted], seconds, None


def drop(db: Database, partition: Partition, stop: threading.Event) -> float:
    return ddl(db, f"ALTER TABLE {TABLE}{{wait}} DROP PARTITION {partition.name}", stop)


def rows_in(db: Database, partition: Partition) -> int:
    return int(db.query(f"SELECT COUNT(*) FROM {TABLE} PARTITION ({partition.name})")[0][0])


# -- the conversion --------------------------------------------------------------------------------------


@dataclass
class Converted:
    """What `convert` did, for the command to print."""

    partitioned: bool
    swapped: bool = False
    partitions: int = 0
    swap_seconds: float = 0.0
    moved: PurgeStats | None = None


def _columns(db: Database, table: str) -> str:
    names = db.query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                     " AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION", (table,))
    return ", ".join(f"`{name}`" for (name,) in names)


def _build(db: Database, partitioned: bool, today: date, tz: ZoneInfo) -> int:
    """The empty new table beside the old, partitioned or not; returns its partitions' count."""
    db.execute(f"DROP TABLE IF EXISTS {BUILDING}")      # an earlier run's, stopped before its swap: empty
    db.execute(f"CREATE TABLE {BUILDING} LIKE {TABLE}")
    if not partitioned:
        db.execute(f"ALTER TABLE {BUILDING} REMOVE PARTITIONING")
        db.execute(f"ALTER TABLE {BUILDING} DROP PRIMARY KEY, ADD PRIMARY KEY (id)")
        return 0
    oldest = parse_timestamp(db.query(f"SELECT MIN(created_at) FROM {TABLE}")[0][0])
    first = today if oldest is None else min(today, oldest.astimezone(tz).date())
    first = max(first, today - timedelta(days=MOST_DAYS_BEHIND))
    days = _days(first, today + timedelta(days=DAYS_AHEAD))
    db.execute(f"ALTER TABLE {BUILDING} DROP PRIMARY KEY, ADD PRIMARY KEY (id, created_at)"
               f" PARTITION BY RANGE COLUMNS (created_at) ({_definitions(days, tz)})")
    return len(days) + 1


def _swap(db: Database, stop: threading.Event, say: Callable[[str], None]) -> float:
    def past_the_old_ids() -> None:
        # Again before every attempt: the app goes on inserting into the old table while the swap waits.
        top = db.query(f"SELECT MAX(id) FROM {TABLE}")[0][0]
        db.execute(f"ALTER TABLE {BUILDING} AUTO_INCREMENT = {int(top or 0) + ID_GAP}")

    def retried(attempt: int) -> None:
        if attempt % 50 == 1:
            say(f"a query holds {TABLE}: the swap waits for it, without holding up the app's writes ...")
        past_the_old_ids()

    past_the_old_ids()
    return ddl(db, f"RENAME TABLE {TABLE}{{wait}} TO {DRAINING}, {BUILDING} TO {TABLE}", stop, on_retry=retried)


def drain(db: Database, stop: threading.Event, policy: ChunkPolicy,
          on_chunk: Callable[[PurgeStats], None] = lambda stats: None,
          throttle: Callable[[], str | None] = unthrottled) -> PurgeStats:
    """Move every row of DRAINING into the table, in id windows, each moved in one transaction; then drop
    DRAINING. Raises PurgeInterrupted when `stop` is set between two chunks."""
    columns = _columns(db, DRAINING)
    low, high = db.query(f"SELECT MIN(id), MAX(id) FROM {DRAINING}")[0]

    def move(first: int, upper: int) -> int:
        with db.transaction() as tx:
            moved = tx.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {DRAINING}"
                               " WHERE id >= ? AND id < ?", (first, upper))
            tx.execute(f"DELETE FROM {DRAINING} WHERE id >= ? AND id < ?", (first, upper))
        return moved

    stats = (in_id_windows(db, DRAINING, int(low), int(high) + 1, move, stop, policy, on_chunk, throttle)
             if low is not None else PurgeStats())
    left = db.query(f"SELECT COUNT(*) FROM {DRAINING}")[0][0]
    if left:
        raise PartitionError(f"{left} rows are still in {DRAINING} after the move; nothing was dropped")
    db.execute(f"DROP TABLE {DRAINING}")
    return stats


def convert(db: Database, partitioned: bool, today: date, tz: ZoneInfo, stop: threading.Event,
            policy: ChunkPolicy, say: Callable[[str], None],
            throttle: Callable[[], str | None] = unthrottled) -> Converted:
    """Make the live table partitioned by day (or, `partitioned` False, not), finishing first any move an
    earlier run left. One conversion runs at a time; no job runs across its swap."""
    with db.named_lock(CONVERSION_LOCK, wait=0) as alone:
        if not alone:
            raise PartitionError("another `ratecared partition` is converting the table")
        done = Converted(partitioned)
        if db.has_table(DRAINING):
            say(f"{DRAINING} holds rows of an earlier conversion: moving them first ...")
            done.moved = _drain_saying(db, stop, policy, say, throttle)
        if bool(partitions(db)) == partitioned:
            return done
        if not partitioned:
            twice = db.query(f"SELECT id FROM {TABLE} GROUP BY id HAVING COUNT(*) > 1 LIMIT 1")
            if twice:
                raise PartitionError(f"id {twice[0][0]} is on more than one row, and an unpartitioned table's "
                                     "primary key is the id alone; nothing was changed")
        with db.named_lock(JOBS_LOCK, stop=stop, waiting=lambda holder: say(
                f"waiting for the job that holds the jobs' lock (connection {holder}) to finish ...")) as got:
            if not got:
                raise PartitionError("stopped while waiting for the jobs' lock; nothing was changed")
            done.partitions = _build(db, partitioned, today, tz)
            done.swap_seconds = _swap(db, stop, say)
        done.swapped = True
        say(f"{TABLE} swapped for a new{' day-partitioned' if partitioned else ''} table in "
            f"{done.swap_seconds * 1000:.0f} ms; moving the old rows into it ...")
        moved = _drain_saying(db, stop, policy, say, throttle)
        done.moved = moved if done.moved is None else done.moved.add(moved)
        return done


def _drain_saying(db: Database, stop: threading.Event, policy: ChunkPolicy, say: Callable[[str], None],
                  throttle: Callable[[], str | None]) -> PurgeStats:
    total = int(db.query(f"SELECT COUNT(*) FROM {DRAINING}")[0][0])
    told = [time.monotonic()]

    def progress(stats: PurgeStats) -> None:
        if time.monotonic() - told[0] >= 5:
            told[0] = time.monotonic()
            say(f"moved {stats.rows:,} of {total:,} rows")

    return drain(db, stop, policy, on_chunk=progress, throttle=throttle)


def is_half_converted(db: Database) -> bool:
    return db.name == "mysql" and db.has_table(DRAINING)
