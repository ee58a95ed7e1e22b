#!/usr/bin/env python3
"""What the seed promised, measured: the gains of one night's jobs and of the breaker.

The seed (../shared/seed) promised, without measuring: database 10 GB -> 2 GB,
queries 500 ms -> 50 ms, statistics "95% faster" from the summary, a failed
platform's 5 s -> 0 s, the morning's first request 2 s -> 5 ms. This bench
builds the database the seed describes and measures each, before and after.

It starts a private MariaDB (bench/jobs.py's: 1 GiB buffer pool) and the real
daemon under the widget stand-in (ratecared.demo_app, as `make run` runs them),
and loads:
  - 30 days of traffic: R requests a day (1,000,000 at --rows-scale 1) over
    500 widgets, none of it summarised yet;
  - a cache table of C rows (5,000,000 at --rows-scale 1, about 700 bytes a
    row: several GB), 80% of them expired, as the seed's 10 GB -> 2 GB implies.
Then one night's jobs run as scheduled ones would: aggregate_statistics
(retention 7 days, so 23 days of detail go: the seed's default of 30 would
keep all of this month) and cleanup_expired_cache, each with its default
optimize thresholds; then, in the morning, warm_cache.

Measured before and after, on the same data:
  size     the database's table files on disk (du of its directory) and their
           data + index bytes (information_schema), all tables
           and the two the jobs work on
  stats    the app's statistics query: requests, hits, errors and mean
           response per day for 30 days, from api_requests before and from
           api_statistics_summary after; the two answers must be equal
  key      a cache lookup by key (random keys of fresh rows, the same ones
           before and after), median and p99
  widget   a widget's fresh cache entries (widget_id and expires_at > now;
           the table has no index on widget_id), median
  breaker  a call to a platform that accepts and never answers, with the
           seed's 5 s timeout, against the daemon's answer for a platform
           whose breaker is open (acquire, refused), median and p99
  morning  the first request for each of the warmed widgets against the
           stand-in: cold (its cache rows gone overnight: the stand-in calls the
           platforms, modelled as answering in --platform-ms, by default the
           seed's 2,000 ms) and warmed (after warm_cache)

Usage:
    .venv/bin/python bench/gains.py                    # full size: 30 M requests, 5 M cache rows (about 20 min)
    .venv/bin/python bench/gains.py --rows-scale 0.02  # a quick run (about 2 minutes)
    .venv/bin/python bench/gains.py --json             # one JSON object on stdout

Progress goes to stderr; the table (or JSON) to stdout. Exit status 0 when
every figure was measured and the answers agree, 1 otherwise, 130 on Ctrl-C.
MariaDB, the daemon and the temporary directory are removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import requests

from jobs import (DB_USER, DB_PASSWORD, NEVER, UTC, WIDGETS, BenchError, BenchMariaDB, CpuMeter, Sql,
                  _term_with_parent, day_start, harness, load_requests, run_job, set_setting, ts)
from process_metrics import stop_process, wait_ready
from ratecared.client import Client

ROOT = Path(__file__).resolve().parent.parent

DAYS = 30
RETENTION_DAYS = 7
FULL_REQUESTS_PER_DAY = 1_000_000
FULL_CACHE_ROWS = 5_000_000
LIVE_EVERY = 5                 # every fifth cache row is fresh: 80% expired
PAYLOAD_BYTES = 600
CACHE_LOAD_BATCH = 500_000
PLATFORM_TIMEOUT = 5.0         # the seed's: a platform that does not answer costs this
OPEN_PLATFORM = "booking"
KEY_LOOKUPS = 2000
WIDGET_LOOKUPS = 20
WIDGET_LOOKUP_BUDGET_S = 60.0  # stop a lookup series early when each one is slow
BREAKER_CALLS = 2000
TABLES = ("api_requests", "cache")

# The seed's claims, as its table states them (../shared/seed, "Beklenen Performans Kazançları").
CLAIMS = {
    "size": "10 GB -> 2 GB (-80%)",
    "stats": "1,000,000 rows -> 30; 95% faster query",
    "cache": "10 GB -> 2 GB",
    "query": "500 ms -> 50 ms",
    "breaker": "5 s -> 0 s (skip)",
    "morning": "2,000 ms -> 5 ms",
}

STATS_DETAIL = (
    "SELECT DATE(created_at), COUNT(*), SUM(cache_hit), SUM(status_code >= 500), AVG(response_time_ms)"
    " FROM api_requests WHERE created_at >= %s AND created_at < %s GROUP BY DATE(created_at) ORDER BY 1")
STATS_SUMMARY = (
    "SELECT stat_date, total_requests, cache_hits, error_count, avg_response_ms"
    " FROM api_statistics_summary WHERE stat_date >= %s AND stat_date < %s ORDER BY 1")


def write_config(tmp: Path, url: str, warm_port: int) -> Path:
    """The daemon's config: jobs only when asked, their optimize thresholds left at the defaults."""
    config = tmp / "ratecared.toml"
    manual = f'schedule = "{NEVER}"\nstarting_deadline = 0\n'
    config.write_text(
        "[daemon]\n"
        f'socket = "{tmp / "rc.sock"}"\nstate_dir = "{tmp / "state"}"\n'
        'socket_group = ""\nadmin_group = ""\ntimezone = "UTC"\nhost = "gains"\n'
        f'[database]\nurl = "{url}"\nauto_migrate = true\n'
        f'[logging]\ndir = "{tmp / "logs"}"\n'
        "[jobs.aggregate_statistics]\n" + manual +
        "[jobs.cleanup_expired_cache]\n" + manual +
        "[jobs.warm_cache]\n" + manual +
        f'url = "http://127.0.0.1:{warm_port}/api/v1/widgets/{{widget_id}}/rates"\n')
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def timed_each(calls: list[Callable[[], Any]], budget_s: float = float("inf")) -> list[float]:
    """Seconds of each call, in order, stopping once `budget_s` is spent (at least three calls)."""
    out: list[float] = []
    started = time.monotonic()
    for call in calls:
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
        if len(out) >= 3 and time.monotonic() - started > budget_s:
            break
    return out


def spread(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "median_ms": ms(statistics.median(ordered)),
            "p99_ms": ms(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]), "max_ms": ms(ordered[-1])}


class Gains:
    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        self.args = args
        self.log = log
        self.per_day = max(1000, int(FULL_REQUESTS_PER_DAY * args.rows_scale))
        self.cache_rows = max(5000, int(FULL_CACHE_ROWS * args.rows_scale)) // LIVE_EVERY * LIVE_EVERY
        self.sql: Sql
        self.server: BenchMariaDB
        self.sock = ""
        self.stand_in = ""
        self.today = datetime.now(UTC).date()
        self.rng = random.Random(20261202)

    # -- the data ------------------------------------------------------------------------

    def days(self) -> list[date]:
        return [self.today - timedelta(days=back) for back in range(DAYS, 0, -1)]

    def load(self) -> None:
        started = time.monotonic()
        for day in self.days():
            load_requests(self.sql, day, self.per_day)
        self.log(f"  {DAYS} days of {self.per_day:,} requests in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        now = ts(datetime.now(UTC))
        pad = PAYLOAD_BYTES - 60
        for first in range(0, self.cache_rows, CACHE_LOAD_BATCH):
            last = min(self.cache_rows, first + CACHE_LOAD_BATCH) - 1
            # Fresh rows expire 2-26 hours ahead; the rest expired within the last week.
            self.sql.execute(
                "INSERT INTO cache (cache_key, widget_id, payload, created_at, expires_at)"
                " SELECT CONCAT('k', seq), 1 + MOD(seq, %s),"
                " CONCAT('{\"widget_id\":', 1 + MOD(seq, %s), ',\"rates\":\"', REPEAT('r', %s), '\"}'),"
                " expires - INTERVAL 6 HOUR, expires FROM ("
                f" SELECT seq, IF(MOD(seq, {LIVE_EVERY}) = {LIVE_EVERY - 1},"
                " %s + INTERVAL (7200 + MOD(seq, 86400)) SECOND,"
                f" %s - INTERVAL (60 + MOD(seq * 7919, 604800)) SECOND) AS expires FROM seq_{first}_to_{last}) s",
                (WIDGETS, WIDGETS, pad, now, now))
        self.sql.execute("ANALYZE TABLE api_requests, cache")
        self.log(f"  {self.cache_rows:,} cache rows in {time.monotonic() - started:.0f} s")
        self.log(f"  InnoDB settled in {self.sql.settle(self.log, timeout=600):.0f} s")

    # -- the figures ---------------------------------------------------------------------

    def size(self) -> dict[str, Any]:
        """Bytes on disk (the files of the database's directory) and in use, for all and per table."""
        self.sql.execute("ANALYZE TABLE " + ", ".join((*TABLES, "api_statistics_summary")))
        directory = self.server.datadir / "bench"
        files = {p.name: p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file()}
        in_use = {name: int(used) for name, used in self.sql.query(
            "SELECT table_name, data_length + index_length FROM information_schema.tables"
            " WHERE table_schema = 'bench'")}
        free = {name: int(f) for name, f in self.sql.query(
            "SELECT table_name, data_free FROM information_schema.tables WHERE table_schema = 'bench'")}
        rows = {table: self.sql.count(table) for table in (*TABLES, "api_statistics_summary")}
        return {
            "disk_bytes": sum(files.values()),
            "in_use_bytes": sum(in_use.values()),
            "tables": {t: {"disk_bytes": files.get(f"{t}.ibd", 0), "in_use_bytes": in_use.get(t, 0),
                           "free_bytes": free.get(t, 0), "rows": rows[t]} for t in TABLES},
            "summary_rows": rows["api_statistics_summary"],
        }

    def stats_query(self, detail: bool) -> dict[str, Any]:
        first, end = self.days()[0], self.today
        if detail:
            sql, params, runs = STATS_DETAIL, (ts(day_start(first)), ts(day_start(end))), 3
        else:
            sql, params, runs = STATS_SUMMARY, (first.isoformat(), end.isoformat()), 100
        answer: list[tuple] = []

        def query() -> None:
            answer[:] = self.sql.query(sql, params)

        seconds = timed_each([query] * runs)
        # The same answer either way: the day, three counts, the mean to 2 decimals.
        rounded = [(str(d), int(n), int(h), int(e), round(float(a), 2)) for d, n, h, e, a in answer]
        return {**spread(seconds), "answer": rounded}

    def lookups(self, keys: list[str], widgets: list[int]) -> dict[str, Any]:
        now = ts(datetime.now(UTC))
        by_key = timed_each([lambda k=k: self.sql.query(
            "SELECT payload FROM cache WHERE cache_key = %s AND expires_at > %s", (k, now)) for k in keys])
        by_widget = timed_each([lambda w=w: self.sql.query(
            "SELECT cache_key, payload FROM cache WHERE widget_id = %s AND expires_at > %s", (w, now))
            for w in widgets], WIDGET_LOOKUP_BUDGET_S)
        return {"key": spread(by_key), "widget": spread(by_widget)}

    def breaker(self) -> dict[str, Any]:
        """A platform that never answers, with and without the breaker before it."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)   # the kernel accepts the connection; nothing ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/rates"
        try:
            waited = []
            for _ in range(2):
                t0 = time.perf_counter()
                try:
                    requests.get(url, timeout=PLATFORM_TIMEOUT)
                except requests.Timeout:
                    pass
                else:
                    raise BenchError("the silent platform answered")
                waited.append(time.perf_counter() - t0)
        finally:
            listener.close()
        with Client(self.sock, timeout=10) as client:
            for _ in range(1000):
                decision = client.acquire(OPEN_PLATFORM)
                if not decision.allowed:
                    break
                client.report(decision, False, duration_ms=PLATFORM_TIMEOUT * 1000)
            else:
                raise BenchError(f"{OPEN_PLATFORM}'s breaker did not open after 1,000 failures")
            def skipped() -> None:
                if client.acquire(OPEN_PLATFORM).allowed:
                    raise BenchError(f"{OPEN_PLATFORM}'s open breaker let a call through")

            refused = timed_each([skipped] * BREAKER_CALLS)
        return {"without": spread(waited), "open": spread(refused), "state": decision.state}

    def morning(self, widgets: list[int]) -> dict[str, Any]:
        def first_request(widget: int, expected: str) -> float:
            t0 = time.perf_counter()
            reply = requests.get(self.stand_in.format(widget_id=widget), timeout=60)
            took = time.perf_counter() - t0
            if reply.status_code != 200 or reply.headers.get("X-Cache") != expected:
                raise BenchError(f"widget {widget}: {reply.status_code} X-Cache {reply.headers.get('X-Cache')},"
                                 f" expected 200 {expected}: {reply.text[:200]}")
            return took

        # Yesterday's answers are gone by the morning: the stand-in must ask the platforms.
        self.sql.execute("DELETE FROM cache WHERE cache_key LIKE 'rates:%'")
        cold = [first_request(w, "MISS") for w in widgets]
        self.sql.execute("DELETE FROM cache WHERE cache_key LIKE 'rates:%'")
        run = run_job(self.sock, "warm_cache")
        warmed = [first_request(w, "HIT") for w in widgets]
        return {"cold": spread(cold), "warmed": spread(warmed), "widgets": len(widgets),
                "warm_job_s": run["details"].get("duration_seconds"), "platform_ms": self.args.platform_ms}

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="rcg-", dir="/tmp"))
        server: BenchMariaDB | None = None
        app: subprocess.Popen | None = None
        app_out = None
        try:
            if not harness.available():
                raise BenchError(harness.MISSING_MESSAGE)
            server = BenchMariaDB(tmp / "mdb")
            server.start()
            self.server = server
            url = server.create_database("bench", DB_USER, DB_PASSWORD)
            port = free_port()
            self.stand_in = f"http://127.0.0.1:{port}/api/v1/widgets/{{widget_id}}/rates"
            config = write_config(tmp, url, port)
            self.sock = str(tmp / "rc.sock")
            app_out = open(tmp / "app.out", "wb")
            daemon = [sys.executable, "-c", "import sys; from ratecared.cli import main; sys.exit(main())",
                      "--config", str(config)]
            app = subprocess.Popen([sys.executable, "-m", "ratecared.demo_app", "--config", str(config),
                                    "--platform-ms", str(self.args.platform_ms), "--", *daemon],
                                   stdin=subprocess.DEVNULL, stdout=app_out, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_term_with_parent, cwd=ROOT)
            wait_ready(app, self.sock)
            self.sql = Sql(server, "bench")
            assert server._process is not None
            meter = CpuMeter({"mariadbd": server._process.pid, "bench": os.getpid(), "daemon": app.pid})
            with server.root_connect() as conn:
                version = conn.get_server_info()
            self.log(f"MariaDB {version}; loading {DAYS} days x {self.per_day:,} requests and"
                     f" {self.cache_rows:,} cache rows")
            self.load()
            set_setting(self.sql, "cache-statistics-retention-days", RETENTION_DAYS)
            set_setting(self.sql, "cache-warming-enabled", 1)

            live = [f"k{seq}" for seq in self.rng.sample(range(LIVE_EVERY - 1, self.cache_rows, LIVE_EVERY),
                                                          min(KEY_LOOKUPS, self.cache_rows // LIVE_EVERY))]
            widgets = self.rng.sample(range(1, WIDGETS + 1), WIDGET_LOOKUPS)
            self.log("before the night's jobs: size, statistics from the detail rows, cache lookups")
            before = {"size": self.size(), "stats": self.stats_query(detail=True),
                      "lookups": self.lookups(live, widgets)}
            self.log("the night's jobs: aggregate_statistics, cleanup_expired_cache")
            jobs = {}
            for job in ("aggregate_statistics", "cleanup_expired_cache"):
                t0 = time.monotonic()
                jobs[job] = run_job(self.sock, job)["details"]
                jobs[job]["wall_s"] = round(time.monotonic() - t0, 1)
                self.log(f"  {job}: {jobs[job]['wall_s']} s")
            self.sql.settle(self.log, timeout=600)
            self.log("after: size, statistics from the summary, cache lookups")
            after = {"size": self.size(), "stats": self.stats_query(detail=False),
                     "lookups": self.lookups(live, widgets)}
            if before["stats"]["answer"] != after["stats"]["answer"]:
                raise BenchError("the summary's answer differs from the detail rows':"
                                 f" {before['stats']['answer'][:2]} ... against {after['stats']['answer'][:2]} ...")
            self.log("the breaker: a silent platform, then the same platform with its breaker open")
            breaker = self.breaker()
            with Client(self.sock, timeout=10) as client:
                warm_count = int(next(s["value"] for s in client.settings() if s["key"] == "cache-warming-widget-count"))
            top = [int(w) for w, in self.sql.query(
                "SELECT widget_id FROM api_statistics_widget_daily WHERE stat_date >= %s GROUP BY widget_id"
                " ORDER BY SUM(requests) DESC, widget_id LIMIT %s",
                ((self.today - timedelta(days=7)).isoformat(), warm_count))]
            self.log(f"the morning: the first request for each of the {len(top)} widgets warming chooses")
            morning = self.morning(top)
            if app.poll() is not None:
                raise BenchError(f"the stand-in or the daemon exited with status {app.returncode}")
            return {"before": before, "after": after, "jobs": jobs, "breaker": breaker, "morning": morning,
                    "meta": {"rows_scale": self.args.rows_scale, "requests_per_day": self.per_day, "days": DAYS,
                             "retention_days": RETENTION_DAYS, "cache_rows": self.cache_rows,
                             "mariadb": version, "cpus": os.cpu_count(), "others_pct": meter.read()["others_pct"],
                             "bench_seconds": round(time.monotonic() - started, 1)}}
        except Exception:
            if app_out is not None:
                app_out.flush()
                tail = (tmp / "app.out").read_bytes()[-3000:].decode(errors="replace")
                if tail.strip():
                    self.log("stand-in and daemon output (tail):\n" + tail)
            raise
        finally:
            stop_process(app)
            if app_out is not None:
                app_out.close()
            if getattr(self, "sql", None) is not None:
                self.sql.close()
            if server is not None:
                server.close_or_kill(self.log)
            shutil.rmtree(tmp, ignore_errors=True)


# -- the report ------------------------------------------------------------------------------


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def less(before: float, after: float) -> str:
    """The change in size, signed: -79% when it shrank, +17% when it grew."""
    return f"{(after / before - 1) * 100:+.0f}%" if before else "n/a"


def faster(before_ms: float, after_ms: float) -> str:
    """As the seed says it ("95% faster": the time saved), and as a ratio."""
    if not after_ms:
        return "n/a"
    saved = (1 - after_ms / before_ms) * 100
    return f"{saved:.{3 if saved > 99.9 else 1}f}% faster, {before_ms / after_ms:,.1f}x"


def table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    b, a = r["before"], r["after"]
    bs, as_ = b["size"], a["size"]
    bc, ac = bs["tables"]["cache"], as_["tables"]["cache"]
    bd, ad = bs["tables"]["api_requests"], as_["tables"]["api_requests"]
    sb, sa = b["stats"]["median_ms"], a["stats"]["median_ms"]
    kb, ka = b["lookups"]["key"], a["lookups"]["key"]
    wb, wa = b["lookups"]["widget"], a["lookups"]["widget"]
    br, m = r["breaker"], r["morning"]
    return [
        ("database on disk", CLAIMS["size"],
         f"{gb(bs['disk_bytes'])} -> {gb(as_['disk_bytes'])} ({less(bs['disk_bytes'], as_['disk_bytes'])});"
         f" data + index {gb(bs['in_use_bytes'])} -> {gb(as_['in_use_bytes'])}"),
        ("detail rows -> summary rows", CLAIMS["stats"].split(";")[0],
         f"{bd['rows']:,} -> {ad['rows']:,} detail (last {r['meta']['retention_days']} days kept),"
         f" {bs['summary_rows']} -> {as_['summary_rows']} summary rows"),
        ("30-day statistics query", CLAIMS["stats"].split("; ")[1],
         f"{sb:,.1f} ms (detail) -> {sa:.3f} ms (summary): {faster(sb, sa)}, the same answer"),
        ("cache table on disk", CLAIMS["cache"],
         f"{gb(bc['disk_bytes'])} -> {gb(ac['disk_bytes'])} ({less(bc['disk_bytes'], ac['disk_bytes'])});"
         f" {bc['rows']:,} -> {ac['rows']:,} rows"),
        ("cache lookup by key", CLAIMS["query"],
         f"median {kb['median_ms']:.3f} -> {ka['median_ms']:.3f} ms, p99 {kb['p99_ms']:.3f} -> {ka['p99_ms']:.3f} ms:"
         f" {faster(kb['median_ms'], ka['median_ms'])}"),
        ("a widget's fresh cache entries", CLAIMS["query"],
         f"median {wb['median_ms']:,.1f} -> {wa['median_ms']:,.1f} ms: {faster(wb['median_ms'], wa['median_ms'])}"),
        ("a call to a failed platform", CLAIMS["breaker"],
         f"{br['without']['median_ms'] / 1000:.2f} s (the seed's {PLATFORM_TIMEOUT:g} s timeout)"
         f" -> {br['open']['median_ms']:.3f} ms"
         f" (breaker open; p99 {br['open']['p99_ms']:.3f} ms)"),
        ("the morning's first widget request", CLAIMS["morning"],
         f"{m['cold']['median_ms']:,.0f} ms cold (platforms modelled at {m['platform_ms']:g} ms)"
         f" -> {m['warmed']['median_ms']:.1f} ms warmed (max {m['warmed']['max_ms']:.1f}), {m['widgets']} widgets"),
    ]


def report_text(r: dict[str, Any]) -> str:
    meta = r["meta"]
    out = [f"ratecared gains bench: {meta['days']} days x {meta['requests_per_day']:,} requests,"
           f" {meta['cache_rows']:,} cache rows (--rows-scale {meta['rows_scale']:g}), MariaDB {meta['mariadb']},"
           f" {meta['cpus']} CPUs, others {meta['others_pct']:.0f}% of the CPUs, {meta['bench_seconds']:.0f} s",
           "", "| what | the seed promised | what we measured |", "|---|---|---|"]
    out += [f"| {what} | {claim} | {measured} |" for what, claim, measured in table(r)]
    jobs = r["jobs"]
    agg, cln = jobs["aggregate_statistics"], jobs["cleanup_expired_cache"]
    out += ["", f"the night's jobs: aggregate_statistics {agg['wall_s']} s (optimized: {agg.get('optimized')}),"
                f" cleanup_expired_cache {cln['wall_s']} s (optimized: {cln.get('optimized')})"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-scale", type=float, default=1.0,
                        help="requests a day and cache rows as a share of 1,000,000 and 5,000,000")
    parser.add_argument("--platform-ms", type=float, default=2000.0,
                        help="how long the platforms take to answer the stand-in's cache miss (the seed's 2 s)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if not 0 < args.rows_scale <= 3:
        parser.error("--rows-scale must be in (0, 3]")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        result = Gains(args, log).run()
    except KeyboardInterrupt:
        return 130
    except (BenchError, RuntimeError, OSError) as exc:
        log(f"gains bench: {exc}")
        return 1
    print(json.dumps(result, indent=1, default=str) if args.json else report_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
