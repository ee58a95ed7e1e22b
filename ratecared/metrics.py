"""`GET /metrics`: the breakers, the jobs and the database in Prometheus's text format.

A collector reads the parts when scraped: the breaker registry's views, the
scheduler's figures from `job_runs`, a database probe. It keeps no counter of
its own, so nothing here can drift from what status, `jobs` and health show.
prometheus_client writes the exposition. Runs on a worker thread: the probe
and the job figures wait for the database.
"""

from __future__ import annotations

import platform
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ratecared import __version__
from ratecared.breaker.machine import BreakerView, State
from ratecared.db import DatabaseError, Probe
from ratecared.scheduler.runner import JobFigures

# The classic text format that generate_latest writes, whichever prometheus_client (0.16 called it
# CONTENT_TYPE_LATEST; newer ones keep that name for another version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Collector:
    """Yields every ratecared_* series from the parts as they stand at the scrape."""

    def __init__(self, breakers: Callable[[], list[BreakerView]], jobs: Callable[[], list[JobFigures]],
                 database: Callable[[], Probe]) -> None:
        self._breakers = breakers
        self._jobs = jobs
        self._database = database

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("ratecared_build", "The ratecared version running, and its Python.",
                               value={"version": __version__, "python": platform.python_version()})
        yield from self._breaker_series(self._breakers())
        probe = self._database()
        yield GaugeMetricFamily("ratecared_database_up", "1 if the database answers.", value=int(probe.reachable))
        yield GaugeMetricFamily("ratecared_database_writable", "1 if the database takes writes.",
                                value=int(probe.writable))
        if probe.reachable:
            try:
                figures = self._jobs()
            except DatabaseError:
                return  # went away since the probe: database_up says so at the next scrape
            yield from self._job_series(figures)

    @staticmethod
    def _breaker_series(views: list[BreakerView]) -> Iterator[Metric]:
        state = GaugeMetricFamily("ratecared_breaker_state", "1 for the state each breaker is in, 0 for the others.",
                                  labels=["platform", "state"])
        calls = CounterMetricFamily("ratecared_breaker_calls", "Calls reported, by what they counted as: timeouts, "
                                    "rate-limited answers and slow successes are failures counted apart from plain "
                                    "ones; ignored calls count as neither.", labels=["platform", "outcome"])
        backoff = GaugeMetricFamily("ratecared_breaker_backoff_level",
                                    "Trips in a row, decaying while closed: the next open time is the timeout "
                                    "times the multiplier to this power.", labels=["platform"])
        refused = CounterMetricFamily("ratecared_breaker_calls_not_permitted",
                                      "Calls the breaker refused (open, or half-open with every trial taken).",
                                      labels=["platform"])
        moves = CounterMetricFamily("ratecared_breaker_transitions",
                                    "Transitions since the daemon started, by the state entered.",
                                    labels=["platform", "state"])
        failures = GaugeMetricFamily("ratecared_breaker_consecutive_failures",
                                     "Failures in a row that count towards tripping.", labels=["platform"])
        retry = GaugeMetricFamily("ratecared_breaker_retry_after_seconds",
                                  "Seconds until a refused call may be tried again; 0 while calls are allowed.",
                                  labels=["platform"])
        held = GaugeMetricFamily("ratecared_breaker_held", "1 while an operator holds the breaker in that state.",
                                 labels=["platform", "state"])
        guarded = GaugeMetricFamily("ratecared_breaker_guarded",
                                    "1 if the platform has a breaker (circuit-breaker-platforms), 0 if every call "
                                    "goes through.", labels=["platform"])
        for view in views:
            name = view.platform
            guarded.add_metric([name], int(view.guarded))
            for each in (State.OPEN, State.CLOSED):
                held.add_metric([name, each.value], int(view.hold is not None and view.hold.state is each))
            for each in State:
                state.add_metric([name, each.value], int(view.state is each))
                moves.add_metric([name, each.value], view.transitions.get(each, 0))
            for outcome, n in view.outcomes.items():
                calls.add_metric([name, outcome], n)
            backoff.add_metric([name], view.backoff_level)
            refused.add_metric([name], view.total_rejected)
            failures.add_metric([name], view.failure_count)
            retry.add_metric([name], view.retry_after or 0.0)
        enabled = GaugeMetricFamily(
            "ratecared_breakers_enabled", "1 while breakers are on, 0 while circuit-breaker-enabled = 0 lets every "
            "call through.", value=int(all(view.enabled for view in views)))
        yield from (state, held, guarded, enabled, calls, refused, moves, failures, retry, backoff)

    @staticmethod
    def _job_series(figures: list[JobFigures]) -> Iterator[Metric]:
        # Labelled `name`, not `job`: Prometheus puts its own `job` label on every series it scrapes.
        runs = CounterMetricFamily("ratecared_job_runs", "Runs this host finished, by status.",
                                   labels=["name", "status"])
        running = GaugeMetricFamily("ratecared_job_running", "1 while a run of the job is under way here.",
                                    labels=["name"])
        started = GaugeMetricFamily("ratecared_job_last_run_start_timestamp_seconds",
                                    "When the job's last finished run started, on any host.", labels=["name"])
        duration = GaugeMetricFamily("ratecared_job_last_run_duration_seconds",
                                     "How long the job's last finished run took.", labels=["name"])
        rows = GaugeMetricFamily("ratecared_job_last_run_rows", "Rows the job's last finished run handled.",
                                 labels=["name"])
        succeeded = GaugeMetricFamily("ratecared_job_last_success_timestamp_seconds",
                                      "When the job's last successful run ended, on any host.", labels=["name"])
        for job in figures:
            for status, n in job.runs.items():
                runs.add_metric([job.job, status.value], n)
            running.add_metric([job.job], int(job.running))
            last = job.last
            if last is not None and last.started_at is not None:
                started.add_metric([job.job], last.started_at.timestamp())
                if last.finished_at is not None:
                    duration.add_metric([job.job], max(0.0, (last.finished_at - last.started_at).total_seconds()))
                rows.add_metric([job.job], last.rows)
            if job.last_success_at is not None:
                succeeded.add_metric([job.job], job.last_success_at.timestamp())
        yield from (runs, running, started, duration, rows, succeeded)


def exposition(collector: Collector) -> Callable[[], bytes]:
    """The scrape: ratecared's series beside prometheus_client's own for the process and its Python."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return lambda: generate_latest(registry)
