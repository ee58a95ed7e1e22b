#!/usr/bin/env python3
"""How close ratecared's nightly jobs come to what the database itself can do.

Starts a private MariaDB (temporary directory, 1 GiB buffer pool, 256 MiB redo
log; tests/mariadb.py's server, subclassed) and the real daemon on it, then
measures each job against a floor taken in the same run, on the same data:

  1  aggregate_statistics on N requests of yesterday (UTC), retention 3650 days
     so nothing is purged; its time is the run's duration_seconds
     floor: hand-written INSERT ... SELECT ... GROUP BY into both summary tables,
            two variants (A: the job's two statements; B: widget rows first and
            unique_widgets counted from them), the faster counts; rounds
            alternate floor and job, best of each             pass: job <= 1.2 x floor
  2  aggregate_statistics purging 3 x N detail rows past retention (3 days; the
     rows are 12..10 days old and already summarised; 3 x N/10 recent rows stay)
  3  cleanup_expired_cache on N expired + N/5 live cache rows, expiry scattered
     peers for 2 and 3, each on an identical reload of the data:
       - ONE plain DELETE ... WHERE created_at < cutoff (expires_at < now): the
         physical floor, though no way to run it (one statement of many seconds);
       - pt-archiver (Debian's percona-toolkit) --purge --bulk-delete --commit-each
         --primary-key-only --no-safe-auto-increment, --where as the job's, at
         --limit 1000 and at --limit 10000, the better counting: the tool a DBA
         would reach for
     each is timed until its rows are gone AND InnoDB has purged them (the
     space can be used again then); rows / that time is the judged rate
            pass: job >= 0.8 x the DELETE's rate, >= 1.0 x pt-archiver's,
                  and no statement of the job over 250 ms (chunk_ms_max)
  4  warm_cache of 100 widgets, concurrency 4, against an in-process HTTP server
     whose every request takes 200 ms
     floor: 100 / 4 x 0.2 s = 5 s                         pass: job <= 1.3 x floor
  5  the daemon's VmRSS, sampled every 100 ms through all of it: peak < 80 MB
  6  day partitions: the rows of figure 2 (3 x N past retention, 3 x N/10 kept,
     summarised), converted by `ratecared partition` (the real command), then
     aggregate_statistics with retention = "partitions" (set by a reload)
     dropping the three old days, its first DDL behind a report the app holds
     open in a transaction until that DDL has been refused 20 times; beside
     both, the app's insert loop (one row every 2 ms on its own connection,
     each insert timed)
            pass: each day's DROP PARTITION < 1 s (goal 100 ms), and no
                  app insert over 1 s during the conversion or the drops

  7  growth (only when asked: --figures 7): the jobs alone, no peers, at each
     of --growth's sizes (1, 3 and 10 x 1,000,000 rows): aggregate_statistics of
     N requests, its purge of N detail rows past retention, cleanup_expired_cache
     of N expired cache rows; each time against the first size's, per row
            pass: every purge and cleanup statement < 250 ms at every size
            (goal: times linear in the rows)

N is 1,000,000 (scaled by --rows-scale). Before every timed purge, of a peer
or of the job, the data is loaded the same way, ANALYZEd, and InnoDB is let
settle (dirty pages flushed, purge caught up), so all start from the same state.
Figures 2 and 3 run --delete-rounds rounds (default 2), the order reversed each
round (DELETE, job, pt-archiver 1000, 10000; then backwards), and the best of
each counts: the machine's speed drifts over minutes even when nothing else
runs on it. The job's time is its purge phase (rows_deleted / rows_per_second
from the run's details) plus the wait, after the run returns, for InnoDB's
purge (the milliseconds between, its space check and the run's record, count
in neither); the DELETE's and pt-archiver's (its process, start-up included)
are timed here, client side, the same way. The DELETE runs on a connection with the daemon's session settings (UTC,
READ COMMITTED); pt-archiver gets the same through --set-vars.

A DELETE only marks rows; InnoDB's purge threads remove them after the commit.
One big DELETE leaves all of that for after its end, while the job and
pt-archiver, committing chunk by chunk, have it running beside them: timed to
their last statement alone, the DELETE looks faster than it frees the space.
The statement-only rates are still shown, for information, with the CPU
mariadbd spent on each, purge included, and pt-archiver's longest statement
(from the slow log, which logs only its session's statements over 50 ms).

The machine may be shared: before each timed section the bench waits (up to
--quiet-wait s) until other processes use under 10% of the CPUs, and every
figure shows the share they used while it was timed ("others").

Usage:
    .venv/bin/python bench/jobs.py                     # full size, about 20 minutes on a quiet machine
    .venv/bin/python bench/jobs.py --rows-scale 0.1    # a quick, smaller run (about 2 minutes)
    .venv/bin/python bench/jobs.py --json              # one JSON object on stdout
    .venv/bin/python bench/jobs.py --figures 1,4       # only some figures (RSS always; 1-4 and 6)
    .venv/bin/python bench/jobs.py --quiet-wait 0      # never wait for other processes
    .venv/bin/python bench/jobs.py --figures 7         # growth at 1, 3 and 10 M rows (about 25 minutes)

Progress goes to stderr; the table (or the JSON) to stdout. Exit status 0 when
every figure passes, 1 when one fails or the bench cannot run, 130 on Ctrl-C.
MariaDB, the daemon, the HTTP server and the temporary directory are removed
on exit, on Ctrl-C and on SIGTERM. Linux only (/proc); needs mariadb-server, and
for figures 2 and 3 percona-toolkit, which the bench installs when run as root.
At small --rows-scale the aggregation figure is dominated by timer noise.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform as platform_mod
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

from process_metrics import RssSampler, rss_kb, stop_process, wait_ready

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the MariaDB harness
sys.path.insert(1, str(ROOT))

import pymysql  # noqa: E402
import requests  # noqa: E402

import mariadb as harness  # noqa: E402  (tests/mariadb.py)
from ratecared.client import Client  # noqa: E402

UTC = timezone.utc
FULL_ROWS = 1_000_000
WIDGETS = 500                 # distinct widget ids in the generated requests
DAY_SPAN_US = 86_000_000_000  # rows of a day spread over its first 86,000 s

AGG_LIMIT = 1.2               # job duration <= 1.2 x floor
# Purge rates count the time until InnoDB has purged the rows as well.
VS_DELETE_LIMIT = 0.8         # job rows/s >= 0.8 x one plain DELETE's
VS_ARCHIVER_LIMIT = 1.0       # job rows/s >= 1.0 x pt-archiver's, the better of PT_LIMITS
CHUNK_MS_LIMIT = 250.0        # no single purge statement over 250 ms
WARM_LIMIT = 1.3              # warming <= 1.3 x floor
RSS_LIMIT_MB = 80.0
DROP_LIMIT_MS = 1000.0        # a day's DROP PARTITION, whatever its rows (goal 100 ms)
DROP_GOAL_MS = 100.0
INSERT_LIMIT_MS = 1000.0      # the app's longest insert while the table is converted or its days dropped

RETENTION_DAYS = 3
OLD_DAYS = (12, 11, 10)       # purged: days this many days before today (UTC)
RECENT_DAYS = (3, 2, 1)       # kept (today - 3 is the first day retention keeps)
WARM_WIDGETS = 100
WARM_CONCURRENCY = 4
WARM_DELAY = 0.2
QUIET_PCT = 10.0              # "quiet": other processes use under 10% of all CPUs
NEVER = "0 0 29 2 *"          # no scheduled run during the bench: jobs run only when asked

SERVER_OPTIONS = ("--innodb-buffer-pool-size=1G", "--innodb-log-file-size=256M")
DB_USER, DB_PASSWORD = "ratecare", "secret"   # the daemon's and pt-archiver's account

PT_PACKAGE = "percona-toolkit"
PT_LIMITS = (1000, 10000)
PT_OPTIONS = ("--purge", "--bulk-delete", "--commit-each", "--primary-key-only", "--no-safe-auto-increment")
PT_LOGGED_S = 0.05            # pt-archiver's statements over this go to the slow log: its longest is there


class BenchError(Exception):
    """The bench itself could not run or its data came out wrong."""


# -- MariaDB -------------------------------------------------------------------------


class BenchMariaDB(harness.MariaDB):
    """The tests' private server with a production-sized buffer pool and redo log."""

    server_options = (*harness._SERVER_OPTIONS, *SERVER_OPTIONS)

    def close_or_kill(self, log: Callable[[str], None]) -> None:
        """Shut down; killed if that fails, so no bench leaves a server behind."""
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001
            log(f"warning: MariaDB: {exc}")
            self.kill()


class Sql:
    """The bench's own connection, with the daemon's session settings."""

    def __init__(self, server: BenchMariaDB, database: str) -> None:
        self.conn = server.root_connect(database=database, charset="utf8mb4",
                                        init_command="SET time_zone = '+00:00'")
        self.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

    def execute(self, sql: str, params: tuple = ()) -> int:
        with self.conn.cursor() as cur:
            return cur.execute(sql, params or None)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall())

    def timed(self, statements: list[tuple[str, tuple]], transaction: bool = False) -> tuple[float, int]:
        """Run statements back to back; (wall seconds, rows affected by the last)."""
        rows = 0
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            if transaction:
                cur.execute("BEGIN")
            for sql, params in statements:
                rows = cur.execute(sql, params or None)
            if transaction:
                cur.execute("COMMIT")
        return time.perf_counter() - started, rows

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table}")[0][0])

    @contextmanager
    def slow_log(self) -> Iterator[None]:
        """The slow log on, into mysql.slow_log, emptied first.

        The global long_query_time stays at its 10 s, so only a session that
        lowers its own writes to it.
        """
        self.execute("TRUNCATE TABLE mysql.slow_log")
        self.execute("SET GLOBAL log_output = 'TABLE'")
        self.execute("SET GLOBAL slow_query_log = 1")
        try:
            yield
        finally:
            self.execute("SET GLOBAL slow_query_log = 0")

    def status(self, *names: str) -> dict[str, int]:
        marks = ", ".join(["%s"] * len(names))
        return {k: int(v) for k, v in self.query(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({marks})", names)}

    def settle(self, log: Callable[[str], None], timeout: float = 180.0) -> float:
        """Flush dirty pages and let purge catch up, so every timed run starts alike."""
        started = time.monotonic()
        saved = self.query("SELECT @@innodb_max_dirty_pages_pct, @@innodb_io_capacity, @@innodb_io_capacity_max")[0]
        # Flush as fast as the disk goes, only while settling: the timed runs keep the defaults.
        self.execute("SET GLOBAL innodb_io_capacity_max = 100000")
        self.execute("SET GLOBAL innodb_io_capacity = 50000")
        self.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        target = self.purge_target()
        try:
            while True:
                dirty = self.status("Innodb_buffer_pool_pages_dirty")["Innodb_buffer_pool_pages_dirty"]
                if dirty <= 200 and self.purged(target):
                    break
                if time.monotonic() - started > timeout:
                    log(f"warning: InnoDB not settled after {timeout:g} s: {dirty} dirty pages")
                    break
                time.sleep(0.2)
        finally:
            self.execute("SET GLOBAL innodb_max_dirty_pages_pct = %s", (saved[0],))
            self.execute("SET GLOBAL innodb_io_capacity = %s", (saved[1],))
            self.execute("SET GLOBAL innodb_io_capacity_max = %s", (saved[2],))
        return time.monotonic() - started

    def _purge_state(self) -> tuple[int, int, int]:
        """(Trx id counter, purge done below this number, history list length): SHOW ENGINE INNODB STATUS."""
        text = self.query("SHOW ENGINE INNODB STATUS")[0][2]
        numbers = [int(re.search(pattern, text).group(1))  # type: ignore[union-attr]
                   for pattern in (r"Trx id counter (\d+)", r"Purge done for trx's n:o < (\d+)",
                                   r"History list length (\d+)")]
        return numbers[0], numbers[1], numbers[2]

    def purge_target(self) -> int:
        return self._purge_state()[0]

    def purged(self, target: int) -> bool:
        """Whether InnoDB has purged what every transaction before `target` deleted.

        Either the purge has passed the transaction counter read at `target`, or
        nothing is left in the history list (the last transactions may have
        written no undo, and then the purge position never gets past them).
        """
        _, done, history = self._purge_state()
        return done >= target or history == 0

    def wait_purged(self, timeout: float = 600.0) -> float:
        """Seconds until InnoDB's purge has removed what every transaction so far deleted.

        A DELETE only marks rows; the purge threads remove them after the commit.
        One big DELETE leaves all of that for after its own end.
        """
        started = time.monotonic()
        target = self.purge_target()
        while not self.purged(target):
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.1)
        return time.monotonic() - started

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def utc_text(shown: str | None) -> str | None:
    """A run's local, offset-carrying time (its details) as ts() writes it, to compare with the bench's own."""
    return ts(datetime.fromisoformat(shown)) if shown else None


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def load_requests(sql: Sql, day: date, rows: int) -> None:
    """`rows` requests spread over a UTC day, in time order (ids grow with created_at)."""
    step = DAY_SPAN_US // rows
    sql.execute(
        "INSERT INTO api_requests (widget_id, platform, status_code, response_time_ms, cache_hit, created_at)"
        f" SELECT 1 + MOD(seq, {WIDGETS}), 'booking', IF(MOD(seq, 20) = 0, 503, 200), MOD(seq, 900), MOD(seq, 2),"
        f" TIMESTAMPADD(MICROSECOND, seq * {step}, %s) FROM seq_0_to_{rows - 1}",
        (ts(day_start(day)),))


# The floor of aggregation: what the job has to produce, written by hand.
SUMMARY_SQL = (
    "INSERT INTO api_statistics_summary (stat_date, total_requests, cache_hits, cache_misses, error_count,"
    " avg_response_ms, max_response_ms, unique_widgets, updated_at)"
    " SELECT %s, COUNT(*), SUM(cache_hit), COUNT(*) - SUM(cache_hit), SUM(status_code >= 500),"
    " AVG(response_time_ms), MAX(response_time_ms), COUNT(DISTINCT widget_id), UTC_TIMESTAMP()"
    " FROM api_requests WHERE created_at >= %s AND created_at < %s"
)
WIDGET_SQL = (
    "INSERT INTO api_statistics_widget_daily (stat_date, widget_id, requests)"
    " SELECT %s, widget_id, COUNT(*) FROM api_requests WHERE created_at >= %s AND created_at < %s"
    " GROUP BY widget_id"
)
# Variant B: the widget rows first, then unique_widgets counted from them, not by COUNT(DISTINCT).
SUMMARY_FROM_WIDGETS_SQL = (
    "INSERT INTO api_statistics_summary (stat_date, total_requests, cache_hits, cache_misses, error_count,"
    " avg_response_ms, max_response_ms, unique_widgets, updated_at)"
    " SELECT %s, COUNT(*), SUM(cache_hit), COUNT(*) - SUM(cache_hit), SUM(status_code >= 500),"
    " AVG(response_time_ms), MAX(response_time_ms),"
    " (SELECT COUNT(*) FROM api_statistics_widget_daily WHERE stat_date = %s), UTC_TIMESTAMP()"
    " FROM api_requests WHERE created_at >= %s AND created_at < %s"
)


def floor_statements(variant: str, day: date) -> list[tuple[str, tuple]]:
    d, start, end = day.isoformat(), ts(day_start(day)), ts(day_start(day + timedelta(days=1)))
    if variant == "A":
        return [(SUMMARY_SQL, (d, start, end)), (WIDGET_SQL, (d, start, end))]
    return [(WIDGET_SQL, (d, start, end)), (SUMMARY_FROM_WIDGETS_SQL, (d, d, start, end))]


def summarise(sql: Sql, day: date) -> None:
    sql.timed(floor_statements("A", day), transaction=True)


def clear_summary(sql: Sql, day: date) -> None:
    sql.execute("DELETE FROM api_statistics_summary WHERE stat_date = %s", (day.isoformat(),))
    sql.execute("DELETE FROM api_statistics_widget_daily WHERE stat_date = %s", (day.isoformat(),))


def summary_of(sql: Sql, day: date) -> tuple:
    """A day's summary row (without updated_at) and a digest of its widget rows."""
    row = sql.query("SELECT total_requests, cache_hits, cache_misses, error_count, ROUND(avg_response_ms, 3),"
                    " max_response_ms, unique_widgets FROM api_statistics_summary WHERE stat_date = %s",
                    (day.isoformat(),))
    widgets = sql.query("SELECT COUNT(*), SUM(requests), SUM(widget_id * requests) FROM api_statistics_widget_daily"
                        " WHERE stat_date = %s", (day.isoformat(),))
    return tuple(int(x) if x is not None and float(x).is_integer() else float(x) if x is not None else None
                 for x in (row[0] if row else ()) + widgets[0])


def plan_lines(explain: list[tuple]) -> list[str]:
    """EXPLAIN rows, one short line each: access type, key, estimated rows, extra."""
    return [f"type={r[3]} key={r[5]} rows={r[8]} {r[9] or ''}".strip() for r in explain]


def set_setting(sql: Sql, key: str, value: Any) -> None:
    if sql.execute("UPDATE settings SET `value` = %s, updated_at = UTC_TIMESTAMP() WHERE `key` = %s",
                   (str(value), key)) == 0 and not sql.query("SELECT 1 FROM settings WHERE `key` = %s", (key,)):
        raise BenchError(f"no setting {key!r} in the settings table")


# -- the daemon ------------------------------------------------------------------------


def _daemon_argv(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "ratecared"
    if script.exists():
        return [str(script), "--config", str(config)]
    return [sys.executable, "-c", "import sys; from ratecared.cli import main; sys.exit(main())",
            "--config", str(config)]


def _term_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG: no orphaned daemon


def write_config(tmp: Path, url: str, warm_port: int, retention: str = "rows") -> Path:
    config = tmp / "ratecared.toml"
    purge_job = f'schedule = "{NEVER}"\nstarting_deadline = 0\noptimize_min_free_mb = 1000000\n'
    config.write_text(
        "[daemon]\n"
        f'socket = "{tmp / "rc.sock"}"\nstate_dir = "{tmp / "state"}"\n'
        'socket_group = ""\nadmin_group = ""\ntimezone = "UTC"\nhost = "bench"\n'
        "[database]\n"
        f'url = "{url}"\n'
        "auto_migrate = true\n"
        "[logging]\n"
        f'dir = "{tmp / "logs"}"\n'
        "[jobs.aggregate_statistics]\n" + purge_job + f'retention = "{retention}"\n' +
        "[jobs.cleanup_expired_cache]\n" + purge_job +
        "[jobs.warm_cache]\n"
        f'schedule = "{NEVER}"\nstarting_deadline = 0\n'
        f'url = "http://127.0.0.1:{warm_port}/api/v1/widgets/{{widget_id}}/rates"\n'
        f"concurrency = {WARM_CONCURRENCY}\n"
    )
    return config


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4] - v[7], v[7], sum(v)


def _process_jiffies(pid: int) -> int:
    """utime + stime of a process, all its threads, and of the children it waited for.

    The children are the bench's pt-archiver runs: their CPU is the bench's
    work, not other processes'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(b")") + 2:].split()
    return sum(int(x) for x in fields[11:15])


class CpuMeter:
    """Who used the CPUs over an interval: MariaDB, the daemon, this bench, and everyone else.

    The machine may be shared: a floor and a job timed while other work ran are
    not comparable, so every timed section reports the others' share (percent
    of all CPUs) next to its figure.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._read()
        self._t0 = time.monotonic()

    def _read(self) -> tuple[tuple[int, int, int], dict[str, int]]:
        return _machine_jiffies(), {name: _process_jiffies(pid) for name, pid in self.pids.items()}

    def read(self) -> dict[str, float]:
        (busy1, steal1, total1), ours1 = self._read()
        (busy0, steal0, total0), ours0 = self._start
        total = max(1, total1 - total0)
        ours = {name: ours1[name] - ours0[name] for name in ours1}
        seconds = max(1e-3, time.monotonic() - self._t0)
        out = {f"{name}_cpu_pct": round(100 * j / CLK_TCK / seconds, 1) for name, j in ours.items()}
        out["others_pct"] = round(max(0.0, 100 * (busy1 - busy0 - sum(ours.values())) / total), 1)
        # A virtual machine's CPUs can be taken by the host as well: "steal".
        out["steal_pct"] = round(100 * (steal1 - steal0) / total, 1)
        return out


def run_job(sock: str, job: str) -> dict[str, Any]:
    with Client(sock, timeout=600) as client:
        result = client.run_job(job, wait=True)
    if result.get("status") != "success":
        raise BenchError(f"{job} ended {result.get('status')}: {result.get('error')} {result.get('details')}")
    return result


# -- pt-archiver ---------------------------------------------------------------------------


def find_pt_archiver(log: Callable[[str], None]) -> str:
    """pt-archiver's path, installing Debian's percona-toolkit first when it is missing and we are root."""
    found = shutil.which("pt-archiver")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError(f"pt-archiver is missing: apt-get install {PT_PACKAGE} (or run the bench as root)")
    log(f"installing {PT_PACKAGE} for pt-archiver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)

    install = ("install", "-y", "-qq", "--no-install-recommends", PT_PACKAGE)
    result = apt(*install)
    if result.returncode != 0:
        # A fresh machine's package lists may be missing or stale.
        apt("update", "-qq")
        result = apt(*install)
    found = shutil.which("pt-archiver")
    if result.returncode != 0 or not found:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise BenchError(f"apt-get install {PT_PACKAGE} failed{': ' + said[-1] if said else ''}")
    return found


def run_pt_archiver(argv: list[str]) -> tuple[float, float]:
    """pt-archiver run to its end: (wall seconds, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            preexec_fn=_term_with_parent)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # It only warns when a --set-vars setting fails, and then the run is not the one asked for.
    if result.returncode != 0 or result.stderr.strip():
        said = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise BenchError(f"pt-archiver exited with status {result.returncode}: {' / '.join(said)}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


# -- the widget endpoint -----------------------------------------------------------------


class WidgetServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), WidgetHandler)
        self.delay = delay
        self.lock = threading.Lock()
        self.requests = 0
        self.active = 0
        self.peak_active = 0

    def reset(self) -> None:
        with self.lock:
            self.requests = self.active = self.peak_active = 0


class WidgetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY the second
    # waits for the client's delayed ACK, 40 ms a request.
    disable_nagle_algorithm = True
    server: WidgetServer

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests += 1
            srv.active += 1
            srv.peak_active = max(srv.peak_active, srv.active)
        try:
            time.sleep(srv.delay)
        finally:
            with srv.lock:
                srv.active -= 1
        body = b'{"rates":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


# -- the figures ------------------------------------------------------------------------------


def deletion(rows: int, seconds: float, purge_after: float, cpu: dict[str, float], work: dict[str, float],
             **extra: Any) -> dict[str, Any]:
    """One timed deletion: its statements took `seconds`, and InnoDB's purge of the rows `purge_after` more."""
    total = seconds + purge_after
    return {"rows": rows, "s": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "purge_after_s": round(purge_after, 1), "total_s": round(total, 3),
            "total_rows_per_s": round(rows / total), "cpu": cpu, "work": work, **extra}


def described(d: dict[str, Any]) -> str:
    return (f"{d['rows']:,} rows in {d['s']:.2f} s ({d['rows_per_s']:,} rows/s), InnoDB purge"
            f" {d['purge_after_s']:.1f} s more: {d['total_rows_per_s']:,} rows/s until purged; mariadbd CPU"
            f" {d['work']['statement_cpu_s']} s + {d['work']['purge_after_cpu_s']} s; others"
            f" {d['cpu']['others_pct']:.0f}% CPU")



class HeldByAReport:
    """A report the app runs in a transaction, holding api_requests' metadata lock from the start until
    the DDL behind it has been refused ATTEMPTS times (Com_alter_table), or HELD_AT_MOST seconds."""

    ATTEMPTS = 20
    HELD_AT_MOST = 60.0

    def __init__(self, server: BenchMariaDB) -> None:
        self.server = server
        self.watch = Sql(server, "bench")
        self.refused = 0
        self.thread = threading.Thread(target=self._run, name="report", daemon=True)

    def _run(self) -> None:
        first = harness.alter_attempts(self.watch.query)
        give_up = time.monotonic() + self.HELD_AT_MOST
        while harness.alter_attempts(self.watch.query) < first + self.ATTEMPTS and time.monotonic() < give_up:
            time.sleep(0.05)
        self.refused = harness.alter_attempts(self.watch.query) - first
        self.report.release()

    def __enter__(self) -> "HeldByAReport":
        self.report = harness.HeldTable(self.server, "bench")
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(self.HELD_AT_MOST + 30)
        self.report.close()
        self.watch.conn.close()


class Bench:
    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        self.args = args
        self.log = log
        self.n = max(1000, int(FULL_ROWS * args.rows_scale))
        self.sql: Sql
        self.mariadb: BenchMariaDB
        self.sock = ""
        self.daemon: subprocess.Popen | None = None
        self.sampler: RssSampler | None = None
        self.http: WidgetServer | None = None
        self.pids: dict[str, int] = {}
        self.quiet_waited = 0.0
        self.pt_archiver = ""
        self.config = Path()
        self.url = ""

    def today(self) -> date:
        return datetime.now(UTC).date()

    def check_same_day(self, today: date) -> None:
        if self.today() != today:
            raise BenchError("midnight UTC passed during a figure: its days moved; run the bench again")

    def truncate(self, *tables: str) -> None:
        for table in tables:
            self.sql.execute(f"TRUNCATE TABLE {table}")

    def prepare(self, what: str, load: Callable[[], None], table: str) -> None:
        started = time.monotonic()
        load()
        self.sql.execute(f"ANALYZE TABLE {table}")
        loaded = time.monotonic() - started
        settled = self.sql.settle(self.log)
        self.log(f"  {what}: loaded in {loaded:.1f} s, InnoDB settled in {settled:.1f} s")

    def wait_quiet(self) -> float:
        """Wait (up to --quiet-wait s) until other processes leave the CPUs alone; return their last share."""
        if self.args.quiet_wait <= 0:
            return -1.0
        started = time.monotonic()
        told = False
        while True:
            meter = CpuMeter(self.pids)
            time.sleep(1.0)
            others = meter.read()["others_pct"]
            if others < QUIET_PCT:
                break
            if time.monotonic() - started >= self.args.quiet_wait:
                self.log(f"  warning: other processes still use {others:.0f}% of the CPUs; measuring anyway")
                break
            if not told:
                self.log(f"  waiting for a quiet machine: other processes use {others:.0f}% of the CPUs")
                told = True
        waited = time.monotonic() - started - 1.0
        self.quiet_waited += waited
        if told:
            self.log(f"  ... waited {waited:.0f} s; others now at {others:.0f}%")
        return others

    def measured(self, fn: Callable[[], Any], wait: bool = True) -> tuple[Any, dict[str, float]]:
        """fn() after waiting for a quiet machine, with the CPU use of everyone during it."""
        if wait:
            self.wait_quiet()
        meter = CpuMeter(self.pids)
        result = fn()
        return result, meter.read()

    # 1 ------------------------------------------------------------------------------------

    def aggregated(self, today: date, day: date, n: int) -> float:
        """One aggregation run of `n` requests on `day`, checked; its duration in seconds."""
        det = run_job(self.sock, "aggregate_statistics")["details"]
        self.check_same_day(today)
        if det.get("days_summarised") != [day.isoformat()] or det.get("requests_summarised") != n:
            raise BenchError(f"aggregation summarised {det.get('days_summarised')}"
                             f" / {det.get('requests_summarised')} rows, expected [{day}] / {n}")
        if det.get("rows_deleted"):
            raise BenchError(f"aggregation deleted {det['rows_deleted']} rows with 3650 days' retention")
        return float(det["duration_seconds"])

    def aggregation(self) -> dict[str, Any]:
        n, sql = self.n, self.sql
        today = self.today()
        day = today - timedelta(days=1)
        d = day.isoformat()
        self.log(f"1. aggregation: {n:,} requests on {day} (UTC), {self.args.rounds} rounds")
        self.truncate("api_requests", "api_statistics_summary", "api_statistics_widget_daily")
        set_setting(sql, "cache-statistics-retention-days", 3650)
        # The job's fixed cost: a run with no rows at all (lock, settings, queries, bookkeeping).
        overhead = min(float(run_job(self.sock, "aggregate_statistics")["details"]["duration_seconds"])
                       for _ in range(3))
        self.prepare("requests", lambda: load_requests(sql, day, n), "api_requests")
        plans = {}
        start, end = ts(day_start(day)), ts(day_start(day + timedelta(days=1)))
        for name, text in (("summary", SUMMARY_SQL), ("widgets", WIDGET_SQL)):
            rows = sql.query("EXPLAIN " + text[text.index("SELECT"):], (d, start, end))
            plans[name] = plan_lines(rows)
        # One unmeasured pass of each, so no round pays for a cold first scan.
        for variant in ("A", "B"):
            clear_summary(sql, day)
            sql.timed(floor_statements(variant, day), transaction=True)
        reference = summary_of(sql, day)

        def job() -> float:
            return self.aggregated(today, day, n)

        rounds: list[dict[str, Any]] = []
        for i in range(self.args.rounds):
            r: dict[str, Any] = {}
            self.wait_quiet()
            meter = CpuMeter(self.pids)
            for what in ("A", "B", "job") if i % 2 == 0 else ("job", "B", "A"):
                clear_summary(sql, day)
                if what == "job":
                    r["job_s"] = job()
                else:
                    r[f"floor_{what}_s"] = round(sql.timed(floor_statements(what, day), transaction=True)[0], 3)
                got = summary_of(sql, day)
                if got != reference:
                    raise BenchError(f"{'the job' if what == 'job' else 'floor ' + what} summarised {got},"
                                     f" the first floor {reference}")
            r["others_pct"] = meter.read()["others_pct"]
            r["floor_s"] = min(r["floor_A_s"], r["floor_B_s"])
            rounds.append(r)
            self.log(f"  round {i + 1}: floor A {r['floor_A_s']:.3f} s, floor B {r['floor_B_s']:.3f} s,"
                     f" job {r['job_s']:.3f} s (others {r['others_pct']:.0f}% CPU)")
        clear_summary(sql, day)
        job_s = min(r["job_s"] for r in rounds)
        floor = min(r["floor_s"] for r in rounds)
        return {"rows": n, "day": d, "rounds": rounds, "job_s": job_s, "floor_s": floor,
                "floor_A_s": min(r["floor_A_s"] for r in rounds), "floor_B_s": min(r["floor_B_s"] for r in rounds),
                "ratio": round(job_s / floor, 3), "plans": plans, "job_empty_run_s": overhead,
                "others_pct": max(r["others_pct"] for r in rounds)}

    # 2 and 3 ------------------------------------------------------------------------------

    def mariadbd_cpu_s(self) -> float:
        """CPU seconds mariadbd has used so far, all its threads (the purge threads too)."""
        return _process_jiffies(self.pids["mariadbd"]) / CLK_TCK

    def measured_then_purged(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, float], float, dict[str, float]]:
        """measured(fn), then the wait for InnoDB's purge, with mariadbd's CPU seconds for each part."""
        cpu0 = self.mariadbd_cpu_s()
        result, cpu = self.measured(fn)
        cpu1 = self.mariadbd_cpu_s()
        purge_after = self.sql.wait_purged()
        work = {"statement_cpu_s": round(cpu1 - cpu0, 1), "purge_after_cpu_s": round(self.mariadbd_cpu_s() - cpu1, 1)}
        return result, cpu, purge_after, work

    def timed_floor(self, table: str, column: str, cutoff_of: Callable[[], str], expected: int,
                    load: Callable[[], None]) -> dict[str, Any]:
        """One plain DELETE on a fresh load, then the InnoDB purge it left behind."""
        sql = self.sql
        self.prepare("DELETE data", load, table)
        # After the load: the cache's expiry times are relative to when it ran.
        cutoff = cutoff_of()
        statement = f"DELETE FROM {table} WHERE {column} < %s"
        plan = sql.query("EXPLAIN " + statement, (cutoff,))
        (seconds, deleted), cpu, purge_after, work = self.measured_then_purged(
            lambda: sql.timed([(statement, (cutoff,))]))
        if deleted != expected:
            raise BenchError(f"the plain DELETE removed {deleted} rows, expected {expected}")
        out = deletion(deleted, seconds, purge_after, cpu, work, cutoff=cutoff, plan=plan_lines(plan))
        self.log(f"  one DELETE: {described(out)}")
        return out

    def timed_job(self, job: str, table: str, load: Callable[[], None],
                  check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """The job on a fresh load, then the InnoDB purge still behind it."""
        self.prepare("job data", load, table)
        result, cpu, purge_after, work = self.measured_then_purged(lambda: run_job(self.sock, job))
        det = result["details"]
        check(det)
        out = deletion(det["rows_deleted"], det["rows_deleted"] / det["rows_per_second"], purge_after, cpu, work,
                       details=det)
        self.log(f"  job: {described(out)}; {det['chunks']} chunks (p50 {det['chunk_ms_p50']} ms,"
                 f" max {det['chunk_ms_max']} ms), whole job {det['duration_seconds']:.2f} s;"
                 f" mariadbd {cpu['mariadbd_cpu_pct']:.0f}%, daemon {cpu['daemon_cpu_pct']:.0f}% CPU")
        return out

    def timed_archiver(self, table: str, column: str, cutoff_of: Callable[[], str], expected: int,
                       load: Callable[[], None], limit: int) -> dict[str, Any]:
        """pt-archiver at --limit `limit` on a fresh load, then the InnoDB purge still behind it."""
        sql = self.sql
        self.prepare(f"pt-archiver --limit {limit} data", load, table)
        cutoff = cutoff_of()
        before = sql.count(table)
        # The daemon's character set and session settings; this session's statements over PT_LOGGED_S go
        # to the slow log.
        session = f"time_zone='+00:00',tx_isolation='READ-COMMITTED',long_query_time={PT_LOGGED_S}"
        argv = [self.pt_archiver,
                "--source", f"h=localhost,S={self.mariadb.socket},D=bench,t={table},A=utf8mb4,u={DB_USER},p={DB_PASSWORD}",
                "--where", f"{column} < '{cutoff}'", "--limit", str(limit), *PT_OPTIONS, "--set-vars", session]
        with sql.slow_log():
            (seconds, pt_cpu_s), cpu, purge_after, work = self.measured_then_purged(lambda: run_pt_archiver(argv))
        longest, logged = sql.query("SELECT MAX(TIME_TO_SEC(query_time)), COUNT(*) FROM mysql.slow_log")[0]
        deleted = before - sql.count(table)
        if deleted != expected:
            raise BenchError(f"pt-archiver --limit {limit} removed {deleted} rows, expected {expected}")
        out = deletion(deleted, seconds, purge_after, cpu, work, limit=limit,
                       statement_ms_max=round(float(longest) * 1000, 1) if longest is not None else None,
                       statements_over_logged=int(logged), pt_archiver_cpu_pct=round(100 * pt_cpu_s / seconds, 1))
        self.log(f"  pt-archiver --limit {limit}: {described(out)}; longest statement "
                 + (f"{out['statement_ms_max']} ms ({logged} over {PT_LOGGED_S * 1000:g} ms)" if logged else
                    f"under {PT_LOGGED_S * 1000:g} ms")
                 + f"; mariadbd {cpu['mariadbd_cpu_pct']:.0f}%, pt-archiver {out['pt_archiver_cpu_pct']:.0f}% CPU")
        return out

    def delete_figure(self, job: str, table: str, column: str, cutoff: Callable[[], str], expected: int,
                      load: Callable[[], None], check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """The job and its peers (one DELETE; pt-archiver at each of PT_LIMITS) in rounds on fresh loads.

        The machine's speed drifts over minutes even with no other process on
        it, so each round runs them in the reverse order of the one before, and
        the best of each counts. Judged: the rate until InnoDB has purged the
        rows; the statement-only rates are for information.
        """
        peers: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("delete", partial(self.timed_floor, table, column, cutoff, expected, load)),
            ("job", partial(self.timed_job, job, table, load, check)),
            *((f"pt_archiver_{limit}", partial(self.timed_archiver, table, column, cutoff, expected, load, limit))
              for limit in PT_LIMITS),
        ]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in peers}
        for i in range(self.args.delete_rounds):
            for name, timed in peers if i % 2 == 0 else peers[::-1]:
                runs[name].append(timed())
        archivers = [r for name in runs if name.startswith("pt_archiver") for r in runs[name]]

        def best(candidates: list[dict[str, Any]], key: str) -> dict[str, Any]:
            return max(candidates, key=lambda r: r[key])

        judged = {"job": best(runs["job"], "total_rows_per_s"), "delete": best(runs["delete"], "total_rows_per_s"),
                  "pt_archiver": best(archivers, "total_rows_per_s")}
        statements = {"job": best(runs["job"], "rows_per_s")["rows_per_s"],
                      "delete": best(runs["delete"], "rows_per_s")["rows_per_s"],
                      "pt_archiver": best(archivers, "rows_per_s")["rows_per_s"]}
        job_rate = judged["job"]["total_rows_per_s"]
        det = judged["job"]["details"]
        return {"rows": expected, "job_cutoff": det.get("cutoff", det.get("expired_before")), **judged,
                "vs_delete": round(job_rate / judged["delete"]["total_rows_per_s"], 3),
                "vs_pt_archiver": round(job_rate / judged["pt_archiver"]["total_rows_per_s"], 3),
                "chunk_ms_max": max(r["details"]["chunk_ms_max"] for r in runs["job"]),
                "pt_archiver_statement_ms_max": max((r["statement_ms_max"] for r in archivers
                                                     if r["statement_ms_max"] is not None), default=None),
                "statements_only_rows_per_s": statements,
                "rounds": [{name: {"rows_per_s": runs[name][i]["rows_per_s"],
                                   "total_rows_per_s": runs[name][i]["total_rows_per_s"]} for name in runs}
                           for i in range(self.args.delete_rounds)],
                "job_others_pct": max(r["cpu"]["others_pct"] for r in runs["job"])}

    def purge(self, job_only: bool = False) -> dict[str, Any]:
        n, sql = self.n, self.sql
        recent_n = max(100, n // 10)
        today = self.today()
        cutoff = ts(day_start(today - timedelta(days=RETENTION_DAYS)))
        old = len(OLD_DAYS) * n
        kept = len(RECENT_DAYS) * recent_n
        self.log(f"2. retention purge: {old:,} rows before {cutoff} (UTC), {kept:,} recent rows kept")

        def load() -> None:
            self.truncate("api_requests", "api_statistics_summary", "api_statistics_widget_daily")
            for back in OLD_DAYS:
                load_requests(sql, today - timedelta(days=back), n)
            for back in RECENT_DAYS:
                load_requests(sql, today - timedelta(days=back), recent_n)
            # Retention never deletes an unsummarised day: summarise them all first.
            for back in OLD_DAYS + RECENT_DAYS:
                summarise(sql, today - timedelta(days=back))

        def check(det: dict[str, Any]) -> None:
            self.check_same_day(today)
            left = sql.query("SELECT COUNT(*) FROM api_requests")[0][0]
            if det.get("rows_deleted") != old or left != kept or utc_text(det.get("cutoff")) != cutoff:
                raise BenchError(f"the purge deleted {det.get('rows_deleted')} rows before {det.get('cutoff')},"
                                 f" left {left}; expected {old} before {cutoff}, {kept} left")

        set_setting(sql, "cache-statistics-retention-days", RETENTION_DAYS)
        if job_only:
            return self.timed_job("aggregate_statistics", "api_requests", load, check)
        out = self.delete_figure("aggregate_statistics", "api_requests", "created_at", lambda: cutoff, old, load, check)
        out.update(kept=kept, days_summarised=out["job"]["details"].get("days_summarised"))
        return out

    def cache(self, job_only: bool = False) -> dict[str, Any]:
        sql = self.sql
        expired = self.n
        live = max(100, self.n // 5)
        total = expired + live
        # Every sixth row is live when expired:live is 5:1; otherwise the last ones are.
        every = (total // live) if total % live == 0 else 0
        self.log(f"3. cache cleanup: {expired:,} expired rows, {live:,} live, expiry scattered over a week")

        def load() -> None:
            self.truncate("cache")
            now = ts(datetime.now(UTC))
            is_live = f"MOD(seq, {every}) = {every - 1}" if every else f"seq >= {expired}"
            sql.execute(
                "INSERT INTO cache (cache_key, widget_id, payload, created_at, expires_at)"
                " SELECT CONCAT('k', seq), 1 + MOD(seq, 500),"
                " CONCAT('{\"widget\":', MOD(seq, 500), ',\"rates\":\"', REPEAT('r', 200), '\"}'),"
                " expires - INTERVAL 1 HOUR, expires FROM ("
                f" SELECT seq, IF({is_live}, %s + INTERVAL (7200 + MOD(seq, 86400)) SECOND,"
                f" %s - INTERVAL (60 + MOD(seq * 7919, 604800)) SECOND) AS expires FROM seq_0_to_{total - 1}) s",
                (now, now))

        def check(det: dict[str, Any]) -> None:
            left = sql.query("SELECT COUNT(*) FROM cache")[0][0]
            if det.get("rows_deleted") != expired or left != live:
                raise BenchError(f"cleanup deleted {det.get('rows_deleted')} rows and left {left};"
                                 f" expected {expired} and {live}")

        if job_only:
            out = self.timed_job("cleanup_expired_cache", "cache", load, check)
            self.truncate("cache")
            return out
        out = self.delete_figure("cleanup_expired_cache", "cache", "expires_at", lambda: ts(datetime.now(UTC)),
                                 expired, load, check)
        self.truncate("cache")
        out.update(kept=live)
        return out

    # 7 ------------------------------------------------------------------------------------

    def growth(self) -> dict[str, Any]:
        """The jobs alone at each of --growth's sizes: N requests aggregated, N detail rows purged, N cache rows cleaned."""
        sizes = []
        for scale in self.args.growth:
            n = int(FULL_ROWS * scale)
            self.log(f"7. growth x{scale:g}: the jobs alone on {n:,} rows each")
            today = self.today()
            day = today - timedelta(days=1)
            self.truncate("api_requests", "api_statistics_summary", "api_statistics_widget_daily")
            set_setting(self.sql, "cache-statistics-retention-days", 3650)
            self.prepare("requests", lambda: load_requests(self.sql, day, n), "api_requests")
            self.wait_quiet()
            aggregate_s = self.aggregated(today, day, n)
            self.log(f"  aggregation: {aggregate_s:.2f} s")
            # purge() loads len(OLD_DAYS) days of self.n rows past retention; cache() self.n expired rows.
            self.n = n // len(OLD_DAYS)
            try:
                purge = self.purge(job_only=True)
            finally:
                self.n = n
            cleanup = self.cache(job_only=True)
            sizes.append({"scale": scale, "rows": n, "aggregate_s": round(aggregate_s, 3),
                          "purge": {"rows": purge["rows"], "s": purge["total_s"],
                                    "rows_per_s": purge["total_rows_per_s"],
                                    "chunk_ms_max": purge["details"]["chunk_ms_max"]},
                          "cleanup": {"rows": cleanup["rows"], "s": cleanup["total_s"],
                                      "rows_per_s": cleanup["total_rows_per_s"],
                                      "chunk_ms_max": cleanup["details"]["chunk_ms_max"]},
                          "others_pct": max(purge["cpu"]["others_pct"], cleanup["cpu"]["others_pct"])})
        self.truncate("api_requests", "api_statistics_summary", "api_statistics_widget_daily")
        self.n = max(1000, int(FULL_ROWS * self.args.rows_scale))
        first = sizes[0]
        for size in sizes:
            # 1.0: the time grew as the rows did; over 1, faster than linear.
            size["vs_linear"] = {
                "aggregate": round(size["aggregate_s"] / first["aggregate_s"] / (size["rows"] / first["rows"]), 2),
                **{key: round(size[key]["s"] / first[key]["s"] / (size[key]["rows"] / first[key]["rows"]), 2)
                   for key in ("purge", "cleanup")}}
        return {"sizes": sizes}

    # 4 ------------------------------------------------------------------------------------

    def warming(self) -> dict[str, Any]:
        sql, http = self.sql, self.http
        assert http is not None
        today = self.today()
        self.log(f"4. cache warming: {WARM_WIDGETS} widgets, concurrency {WARM_CONCURRENCY},"
                 f" {WARM_DELAY * 1000:.0f} ms per request")
        self.truncate("api_requests", "api_statistics_summary", "api_statistics_widget_daily", "widgets")
        extra = 20   # more candidates than the count, so the top-N query has something to rank
        sql.execute("INSERT INTO widgets (id, name, active) SELECT seq, CONCAT('widget ', seq), 1"
                    f" FROM seq_1_to_{WARM_WIDGETS + extra}")
        for back in (1, 2, 3):
            sql.execute("INSERT INTO api_statistics_widget_daily (stat_date, widget_id, requests)"
                        f" SELECT %s, seq, 10000 - seq * 10 FROM seq_1_to_{WARM_WIDGETS + extra}",
                        ((today - timedelta(days=back)).isoformat(),))
        set_setting(sql, "cache-warming-enabled", 1)
        set_setting(sql, "cache-warming-widget-count", WARM_WIDGETS)
        url = f"http://127.0.0.1:{http.server_address[1]}/api/v1/widgets/{{}}/rates"

        # What a plain client gets from this server: the same pool size, one session.
        def plain() -> float:
            with requests.Session() as session, ThreadPoolExecutor(WARM_CONCURRENCY) as pool:
                started = time.perf_counter()
                statuses = list(pool.map(lambda w: session.get(url.format(w), timeout=10).status_code,
                                         range(1, WARM_WIDGETS + 1)))
                if any(s != 200 for s in statuses):
                    raise BenchError("the widget server answered the plain client with an error")
                return time.perf_counter() - started

        http.reset()
        client_s, _ = self.measured(plain)
        http.reset()
        result, cpu = self.measured(lambda: run_job(self.sock, "warm_cache"))
        self.check_same_day(today)
        det = result["details"]
        if det.get("warmed") != WARM_WIDGETS or det.get("failed") or http.requests != WARM_WIDGETS:
            raise BenchError(f"warming: {det}; the server saw {http.requests} requests")
        floor = WARM_WIDGETS / WARM_CONCURRENCY * WARM_DELAY
        set_setting(sql, "cache-warming-enabled", 0)
        self.log(f"  job {det['duration_seconds']:.3f} s (floor {floor:.1f} s, plain client {client_s:.3f} s,"
                 f" peak concurrency {http.peak_active}; others {cpu['others_pct']:.0f}% CPU)")
        return {"widgets": WARM_WIDGETS, "concurrency": WARM_CONCURRENCY, "delay_s": WARM_DELAY,
                "job_s": det["duration_seconds"], "floor_s": floor, "plain_client_s": round(client_s, 3),
                "server_peak_concurrency": http.peak_active, "ratio": round(det["duration_seconds"] / floor, 3),
                "others_pct": cpu["others_pct"]}

    # 6 ------------------------------------------------------------------------------------

    def partitions(self) -> dict[str, Any]:
        n, sql = self.n, self.sql
        today = self.today()
        old_days = [today - timedelta(days=back) for back in OLD_DAYS]
        self.log(f"6. day partitions: {3 * n:,} requests on {old_days[0]}..{old_days[-1]} and {3 * (n // 10):,}"
                 " recent, converted, then the old days dropped")
        self.truncate("api_requests", "api_statistics_summary", "api_statistics_widget_daily")
        set_setting(sql, "cache-statistics-retention-days", RETENTION_DAYS)

        def load() -> None:
            for day in old_days:
                load_requests(sql, day, n)
                summarise(sql, day)
            for back in RECENT_DAYS:
                load_requests(sql, today - timedelta(days=back), n // 10)
                summarise(sql, today - timedelta(days=back))

        self.prepare("requests", load, "api_requests")
        total = sql.count("api_requests")
        with harness.AppInserts(self.mariadb, "bench") as app:
            started = time.monotonic()
            done = subprocess.run([*_daemon_argv(self.config), "partition"], capture_output=True, text=True,
                                  timeout=3600)
            convert_s = time.monotonic() - started
            if done.returncode != 0:
                raise BenchError(f"ratecared partition exited {done.returncode}: {done.stderr.strip()}")
            convert_insert_ms = app.longest_ms()
            self.log(f"  converted {total:,} rows in {convert_s:.1f} s; the app's longest insert"
                     f" {convert_insert_ms:.1f} ms of {len(app.latencies):,}")
            self.check_same_day(today)
            write_config(self.config.parent, self.url, self.http.server_address[1], retention="partitions")
            with Client(self.sock, timeout=60) as client:
                client.reload()
            since = app.inserted
            # The run's first DDL waits behind an open report, as the 1 s holds for that too.
            with HeldByAReport(self.mariadb) as report:
                result, cpu = self.measured(lambda: run_job(self.sock, "aggregate_statistics"))
            drop_insert_ms = app.longest_ms(since)
            if report.refused < HeldByAReport.ATTEMPTS:
                raise BenchError(f"the run's DDL was refused {report.refused} times behind the report, expected"
                                 f" {HeldByAReport.ATTEMPTS}: did it queue behind it?")
        write_config(self.config.parent, self.url, self.http.server_address[1])
        with Client(self.sock, timeout=60) as client:
            client.reload()
        det = result["details"]
        self.check_same_day(today)
        wanted = [f"p{day:%Y%m%d}" for day in old_days]
        # The empty days between the old ones and retention go too.
        if det.get("partitions_dropped", [])[:3] != wanted or det.get("rows_dropped") != 3 * n:
            raise BenchError(f"partition retention dropped {det.get('partitions_dropped')} /"
                             f" {det.get('rows_dropped')} rows, expected {wanted} / {3 * n}")
        left = sql.count("api_requests")
        if left != total - 3 * n + app.inserted:
            raise BenchError(f"{left} rows left after the drops, expected {total - 3 * n + app.inserted}")
        if app.errors:
            raise BenchError(f"the app's inserts failed: {app.errors[:3]}")
        self.log(f"  dropped {len(det['partitions_dropped'])} days ({3 * n:,} rows) after {report.refused} refused"
                 f" attempts behind a report: longest DROP {det['drop_ms_max']:.1f} ms, run"
                 f" {det['duration_seconds']:.2f} s; the app's longest insert {drop_insert_ms:.1f} ms;"
                 f" others {cpu['others_pct']:.0f}% CPU")
        return {"rows_per_day": n, "converted_rows": total, "convert_s": round(convert_s, 1),
                "convert_rows_per_s": round(total / convert_s), "convert_insert_ms_max": convert_insert_ms,
                "drop_ms_max": det["drop_ms_max"], "job_s": det["duration_seconds"],
                "drop_insert_ms_max": drop_insert_ms, "app_inserts": app.inserted, "others_pct": cpu["others_pct"]}

    # the whole run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="rcb-", dir="/tmp"))
        server: BenchMariaDB | None = None
        daemon_out = None
        self.sql = None  # type: ignore[assignment]
        http_thread = None
        try:
            if not harness.available():
                raise BenchError(harness.MISSING_MESSAGE)
            if self.args.figures & {"2", "3"}:
                self.pt_archiver = find_pt_archiver(self.log)
            server = BenchMariaDB(tmp / "mdb")
            server.start()
            self.mariadb = server
            url = server.create_database("bench", DB_USER, DB_PASSWORD)
            with server.root_connect() as conn:
                version = conn.get_server_info()
            self.log(f"MariaDB {version} on {server.socket}"
                     f" ({time.monotonic() - started:.1f} s)")
            self.http = WidgetServer(WARM_DELAY)
            http_thread = threading.Thread(target=self.http.serve_forever, name="widget-http", daemon=True)
            http_thread.start()
            config = write_config(tmp, url, self.http.server_address[1])
            self.config, self.url = config, url
            self.sock = str(tmp / "rc.sock")
            daemon_out = open(tmp / "daemon.out", "wb")
            self.daemon = subprocess.Popen(_daemon_argv(config), stdin=subprocess.DEVNULL, stdout=daemon_out,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           preexec_fn=_term_with_parent)
            self.sampler = RssSampler(self.daemon.pid)
            self.sampler.start()
            wait_ready(self.daemon, self.sock)
            assert server._process is not None
            self.pids = {"mariadbd": server._process.pid, "daemon": self.daemon.pid, "bench": os.getpid()}
            self.sql = Sql(server, "bench")
            self.log(f"daemon pid {self.daemon.pid} ready; RSS {(rss_kb(self.daemon.pid) or 0) / 1024:.1f} MB")

            results: dict[str, Any] = {}
            phase_rss: dict[str, float] = {}
            for key, fn in (("1", self.aggregation), ("2", self.purge), ("3", self.cache), ("4", self.warming),
                            ("6", self.partitions), ("7", self.growth)):
                if key not in self.args.figures:
                    continue
                t0 = time.monotonic()
                results[fn.__name__] = fn()
                results[fn.__name__]["phase_s"] = round(time.monotonic() - t0, 1)
                phase_rss[fn.__name__] = self.sampler.peak_mb(t0)
                results[fn.__name__]["daemon_peak_rss_mb"] = phase_rss[fn.__name__]
            hwm = rss_kb(self.daemon.pid, "VmHWM:")
            self.sampler.stopping.set()
            self.sampler.join()
            if self.daemon.poll() is not None:
                raise BenchError(f"the daemon exited with status {self.daemon.returncode} during the bench")
            results["rss"] = {"peak_mb": self.sampler.peak_mb(), "vmhwm_mb": round((hwm or 0) / 1024, 1),
                              "samples": len(self.sampler.samples), "per_figure_mb": phase_rss}
            results["meta"] = {
                "rows_scale": self.args.rows_scale, "n": self.n, "rounds": self.args.rounds,
                "delete_rounds": self.args.delete_rounds,
                "mariadb": version, "server_options": list(SERVER_OPTIONS),
                "python": platform_mod.python_version(), "cpus": os.cpu_count(),
                "bench_seconds": round(time.monotonic() - started, 1),
                "quiet_waited_s": round(self.quiet_waited, 1), "quiet_wait": self.args.quiet_wait,
            }
            return results
        except Exception:
            if daemon_out is not None and (tmp / "daemon.out").exists():
                daemon_out.flush()
                tail = (tmp / "daemon.out").read_bytes()[-3000:].decode(errors="replace")
                if tail.strip():
                    self.log("daemon output (tail):\n" + tail)
            raise
        finally:
            if self.sampler is not None:
                self.sampler.stopping.set()
            stop_process(self.daemon)
            if daemon_out is not None:
                daemon_out.close()
            if self.http is not None:
                if http_thread is not None:
                    self.http.shutdown()
                self.http.server_close()
            if self.sql is not None:
                self.sql.close()
            if server is not None:
                server.close_or_kill(self.log)
            shutil.rmtree(tmp, ignore_errors=True)


# -- the report ---------------------------------------------------------------------------------


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the table: figure, value, against (a floor or a peer), ratio, limit, ok (None: for information)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: str, against: str, ratio: float | None, limit: str, ok: bool | None,
            others: float | None = None) -> None:
        rows.append({"figure": name, "value": value, "against": against, "ratio": ratio, "limit": limit, "pass": ok,
                     "others_cpu_pct": others})

    if "aggregation" in result:
        a = result["aggregation"]
        add(f"1 aggregate {a['rows']:,} rows: job s (best of {len(a['rounds'])})", f"{a['job_s']:.3f}",
            f"{a['floor_s']:.3f}", a["ratio"], f"<= {AGG_LIMIT:g} x", a["ratio"] <= AGG_LIMIT, a["others_pct"])
    for key, label in (("purge", "2 purge"), ("cache", "3 cleanup")):
        if key not in result:
            continue
        p = result[key]
        job, delete, pt = p["job"], p["delete"], p["pt_archiver"]

        def others(*compared: dict[str, Any]) -> float:
            return max(r["cpu"]["others_pct"] for r in compared)

        add(f"{label} {p['rows']:,} rows/s until purged, vs DELETE", f"{job['total_rows_per_s']:,}",
            f"{delete['total_rows_per_s']:,}", p["vs_delete"], f">= {VS_DELETE_LIMIT:g} x",
            p["vs_delete"] >= VS_DELETE_LIMIT, others(job, delete))
        add(f"{label}: rows/s until purged, vs pt-archiver {pt['limit']}", f"{job['total_rows_per_s']:,}",
            f"{pt['total_rows_per_s']:,}", p["vs_pt_archiver"], f">= {VS_ARCHIVER_LIMIT:g} x",
            p["vs_pt_archiver"] >= VS_ARCHIVER_LIMIT, others(job, pt))
        pt_longest = p["pt_archiver_statement_ms_max"]
        add(f"{label}: longest statement ms, vs pt-archiver's", f"{p['chunk_ms_max']:.1f}",
            f"{pt_longest:.1f}" if pt_longest is not None else f"< {PT_LOGGED_S * 1000:g}", None,
            f"< {CHUNK_MS_LIMIT:g} ms", p["chunk_ms_max"] < CHUNK_MS_LIMIT, p["job_others_pct"])
        statements = p["statements_only_rows_per_s"]
        for peer, name in (("delete", "DELETE"), ("pt_archiver", "pt-archiver")):
            add(f"{label}: rows/s statements only, vs {name} (info)", f"{statements['job']:,}",
                f"{statements[peer]:,}", round(statements["job"] / statements[peer], 3), "-", None)
        job_cpu_s = job["work"]["statement_cpu_s"] + job["work"]["purge_after_cpu_s"]
        delete_cpu_s = delete["work"]["statement_cpu_s"] + delete["work"]["purge_after_cpu_s"]
        if delete_cpu_s > 0:
            add(f"{label}: mariadbd CPU s incl. purge, vs DELETE (info)", f"{job_cpu_s:.1f}", f"{delete_cpu_s:.1f}",
                round(job_cpu_s / delete_cpu_s, 3), "-", None)
    if "warming" in result:
        w = result["warming"]
        add(f"4 warm {w['widgets']} widgets x {w['delay_s'] * 1000:.0f} ms / {w['concurrency']}: job s",
            f"{w['job_s']:.3f}", f"{w['floor_s']:.3f}", w["ratio"], f"<= {WARM_LIMIT:g} x", w["ratio"] <= WARM_LIMIT,
            w["others_pct"])
    if "partitions" in result:
        d = result["partitions"]
        add(f"6 partitions: longest DROP of a day of {d['rows_per_day']:,} rows, ms", f"{d['drop_ms_max']:.1f}",
            "-", None, f"< {DROP_LIMIT_MS:g} ms", d["drop_ms_max"] < DROP_LIMIT_MS, d["others_pct"])
        add(f"6 partitions: DROP under the goal of {DROP_GOAL_MS:g} ms (info)", f"{d['drop_ms_max']:.1f}", "-",
            None, "-", None)
        add("6 partitions: app's longest insert while dropped, ms", f"{d['drop_insert_ms_max']:.1f}", "-", None,
            f"< {INSERT_LIMIT_MS:g} ms", d["drop_insert_ms_max"] < INSERT_LIMIT_MS)
        add("6 partitions: app's longest insert while converted, ms",
            f"{d['convert_insert_ms_max']:.1f}", "-", None, f"< {INSERT_LIMIT_MS:g} ms",
            d["convert_insert_ms_max"] < INSERT_LIMIT_MS)
        add(f"6 partitions: conversion of {d['converted_rows']:,} rows, rows/s (info)", f"{d['convert_rows_per_s']:,}",
            "-", None, "-", None)
    for size in result.get("growth", {}).get("sizes", ()):
        x, lin = f"x{size['scale']:g}", size["vs_linear"]
        add(f"7 growth {x}: aggregate {size['rows']:,} rows, s (info)", f"{size['aggregate_s']:.2f}", "-",
            lin["aggregate"], "-", None, None)
        for key, label in (("purge", "purge"), ("cleanup", "cleanup")):
            run = size[key]
            add(f"7 growth {x}: {label} {run['rows']:,} rows, s until purged (info)", f"{run['s']:.2f}", "-",
                lin[key], "-", None, size["others_pct"])
            add(f"7 growth {x}: {label} longest statement ms", f"{run['chunk_ms_max']:.1f}", "-", None,
                f"< {CHUNK_MS_LIMIT:g} ms", run["chunk_ms_max"] < CHUNK_MS_LIMIT, size["others_pct"])
    r = result["rss"]
    add("5 daemon peak VmRSS MB", f"{r['peak_mb']:.1f}", "-", None, f"< {RSS_LIMIT_MB:g} MB",
        r["peak_mb"] < RSS_LIMIT_MB)
    return rows


def report_text(result: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = result["meta"]
    out = [f"ratecared jobs bench: N = {m['n']:,} (--rows-scale {m['rows_scale']:g}), MariaDB {m['mariadb']}"
           f" ({' '.join(m['server_options'])}), Python {m['python']}, {m['cpus']} CPUs;"
           f" {m['bench_seconds']:.0f} s in all ({m['quiet_waited_s']:.0f} s of it waiting for a quiet machine)", ""]
    head = (f"{'figure':<56} {'value':>11} {'against':>11} {'ratio':>7} {'limit':>10}  {'result':<6}"
            f" {'others':>6}")
    out += [head, "-" * len(head)]
    for row in rows:
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "-"
        verdict = {True: "PASS", False: "FAIL", None: "info"}[row["pass"]]
        others = f"{row['others_cpu_pct']:.0f}%" if row["others_cpu_pct"] is not None else ""
        out.append(f"{row['figure']:<56} {row['value']:>11} {row['against']:>11} {ratio:>7} {row['limit']:>10}"
                   f"  {verdict:<6} {others:>6}")
    out.append("against: the floor, or the peer measured in the same run; others: the share of all CPUs that other"
               " processes on the machine used during the timed runs that count (the worst of them)")
    out.append("")
    if "aggregation" in result:
        a = result["aggregation"]
        out.append("aggregation rounds (s): " + "; ".join(
            f"A {r['floor_A_s']:.3f} B {r['floor_B_s']:.3f} job {r['job_s']:.3f}" for r in a["rounds"]))
        out.append(f"  floor A = the job's two statements by hand ({a['floor_A_s']:.3f} s), B = widgets first,"
                   f" unique_widgets counted from them ({a['floor_B_s']:.3f} s)")
        out.append(f"  plans: summary {a['plans']['summary']}; widgets {a['plans']['widgets']}")
        out.append(f"  the job's fixed cost (a run with no rows): {a['job_empty_run_s']:.3f} s")
    for key in ("purge", "cache"):
        if key not in result:
            continue
        p = result[key]
        job, delete, pt = p["job"], p["delete"], p["pt_archiver"]
        out.append(f"{key}: rows/s until purged (statements only) by round: " + "; ".join(
            ", ".join(f"{name.replace('_', ' ')} {r['total_rows_per_s']:,} ({r['rows_per_s']:,})"
                      for name, r in each.items()) for each in p["rounds"]))
        out.append(f"  best until purged: one DELETE {delete['s']:.2f} s + InnoDB purge {delete['purge_after_s']:.1f} s"
                   f" ({delete['plan'][0]}); job {job['s']:.2f} s in {job['details']['chunks']} chunks"
                   f" (p50 {job['details']['chunk_ms_p50']} ms; whole job {job['details']['duration_seconds']:.2f} s)"
                   f" + {job['purge_after_s']:.1f} s; pt-archiver --limit {pt['limit']} {pt['s']:.2f} s"
                   f" + {pt['purge_after_s']:.1f} s")
        out.append(f"  CPU during the job: mariadbd {job['cpu']['mariadbd_cpu_pct']:.0f}%,"
                   f" daemon {job['cpu']['daemon_cpu_pct']:.0f}%; during pt-archiver: mariadbd"
                   f" {pt['cpu']['mariadbd_cpu_pct']:.0f}%, pt-archiver {pt['pt_archiver_cpu_pct']:.0f}%")
    if "warming" in result:
        w = result["warming"]
        out.append(f"warming: a plain {w['concurrency']}-thread client takes {w['plain_client_s']:.3f} s;"
                   f" server peak concurrency under the job {w['server_peak_concurrency']}")
    if "growth" in result:
        out.append("growth: ratio = (time at this size / time at the first) / (rows at this size / rows at the"
                   " first); 1.00 is linear")
    r = result["rss"]
    out.append(f"daemon RSS: peak {r['peak_mb']:.1f} MB over {r['samples']} samples (VmHWM {r['vmhwm_mb']} MB);"
               f" per figure {r['per_figure_mb']}")
    busy = [row for row in rows if (row["others_cpu_pct"] or 0) > 2 * QUIET_PCT]
    if busy:
        out.append(f"warning: {len(busy)} figure(s) measured while other processes used over {2 * QUIET_PCT:g}% of"
                   " the CPUs: compare them with care")
    ok = all(row["pass"] is not False for row in rows)
    out.append(f"result: {'PASS' if ok else 'FAIL'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows-scale", type=float, default=1.0,
                        help="scale every row count (N = 1,000,000 x this) [1]")
    parser.add_argument("--rounds", type=int, default=5,
                        help="aggregation rounds, floor and job alternating; best of each counts [5]")
    parser.add_argument("--delete-rounds", type=int, default=2,
                        help="purge and cleanup rounds of the job and its peers, the order reversed each round;"
                             " best of each counts [2]")
    parser.add_argument("--figures", default="1,2,3,4,6", help="comma-separated subset of 1,2,3,4,6,7"
                        " [1,2,3,4,6]; the RSS figure is always reported")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each timed section, wait up to this many seconds for other processes to"
                             f" leave the CPUs under {QUIET_PCT:g}%% busy; 0: never wait [120]")
    parser.add_argument("--growth", default="1,3,10",
                        help="figure 7's sizes, comma-separated multiples of 1,000,000 rows [1,3,10]")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    args.figures = {f.strip() for f in args.figures.split(",") if f.strip()}
    if not args.figures or not args.figures <= {"1", "2", "3", "4", "6", "7"}:
        parser.error("--figures takes a comma-separated subset of 1,2,3,4,6,7")
    try:
        args.growth = [float(x) for x in args.growth.split(",") if x.strip()]
    except ValueError:
        parser.error("--growth takes comma-separated numbers")
    if not args.growth or not all(0 < x <= 10 for x in args.growth):
        parser.error("--growth takes one or more sizes in (0, 10]")
    if not 0 < args.rows_scale <= 10 or args.rounds < 1 or args.delete_rounds < 1:
        parser.error("--rows-scale must be in (0, 10], --rounds and --delete-rounds >= 1")

    t0 = time.monotonic()

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench {time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # SIGTERM and Ctrl-C (even when started in the background, where SIGINT
    # comes ignored) must still run the cleanup in Bench.run()'s finally.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = Bench(args, log).run()
    except KeyboardInterrupt:
        print("[bench] interrupted; daemon, MariaDB and temp dir cleaned up", file=sys.stderr)
        return 130
    except (BenchError, RuntimeError, OSError, pymysql.MySQLError) as exc:
        print(f"[bench] error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    rows = figures(result)
    passed = all(row["pass"] is not False for row in rows)
    if args.json:
        result["figures"] = rows
        result["pass"] = passed
        print(json.dumps(result, separators=(",", ":"), default=str))
    else:
        print(report_text(result, rows))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
