"""GET /metrics as Prometheus sees it: on the socket, on the TCP listener, through promtool and a real Prometheus."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DaemonProcess, ctl, debian_tool, fail, free_port, sqlite_locked, wait_for
from mariadb import MariaDB

from ratecared import __version__


def scrape(daemon: DaemonProcess) -> tuple[str, str]:
    """GET /metrics on the control socket with curl, as a node's scraper through a socket would: content type, body."""
    result = subprocess.run(["curl", "-sS", "--fail", "--unix-socket", daemon.socket, "-o", "-",
                             "-w", "\n%{content_type}", "http://localhost/metrics"],
                            capture_output=True, text=True, timeout=60, check=True)
    body, _, content_type = result.stdout.rpartition("\n")
    return content_type, body


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, parsed by prometheus_client's own parser, keyed by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str) -> float | None:
    return parsed.get((metric, frozenset(labels.items())))


def test_the_socket_serves_every_breakers_state_and_counts(daemon: DaemonProcess) -> None:
    fail(daemon, "booking")
    client = daemon.client()
    assert client.acquire("booking").allowed is False
    client.report(client.acquire("agoda"), True, 120)

    content_type, text = scrape(daemon)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    parsed = samples(text)
    assert [value(parsed, "ratecared_breaker_state", platform="booking", state=s) for s in
            ("closed", "open", "half_open")] == [0, 1, 0]
    assert value(parsed, "ratecared_breaker_state", platform="agoda", state="closed") == 1
    assert value(parsed, "ratecared_breaker_calls_total", platform="booking", outcome="failure") == 5
    assert value(parsed, "ratecared_breaker_calls_total", platform="agoda", outcome="success") == 1
    assert value(parsed, "ratecared_breaker_calls_not_permitted_total", platform="booking") == 1
    assert value(parsed, "ratecared_breaker_transitions_total", platform="booking", state="open") == 1
    assert value(parsed, "ratecared_breaker_transitions_total", platform="booking", state="closed") == 0
    assert value(parsed, "ratecared_breaker_consecutive_failures", platform="booking") == 5
    assert (value(parsed, "ratecared_breaker_guarded", platform="booking"), value(parsed, "ratecared_breakers_enabled")
            ) == (1, 1)
    assert 0 < value(parsed, "ratecared_breaker_retry_after_seconds", platform="booking") <= 600
    assert value(parsed, "ratecared_build_info", version=__version__, python=_python()) == 1
    assert (value(parsed, "ratecared_database_up"), value(parsed, "ratecared_database_writable")) == (1, 1)
    # prometheus_client's own process series come along.
    assert value(parsed, "process_resident_memory_bytes") > 0


def _python() -> str:
    import platform

    return platform.python_version()


def test_promtool_passes_the_output(daemon: DaemonProcess) -> None:
    promtool = debian_tool("promtool", "prometheus", "RATECARED_REQUIRE_PROMETHEUS")
    fail(daemon, "booking")
    assert ctl(daemon.socket, "run", "aggregate_statistics", "--wait")[0] == 0
    _, text = scrape(daemon)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_job_series_show_runs_by_status_and_the_last_run(daemon: DaemonProcess) -> None:
    before = samples(scrape(daemon)[1])
    assert value(before, "ratecared_job_runs_total", name="aggregate_statistics", status="success") == 0
    assert value(before, "ratecared_job_last_success_timestamp_seconds", name="aggregate_statistics") is None

    code, out, err = ctl(daemon.socket, "run", "aggregate_statistics", "--wait", "--json")
    assert code == 0, err
    run = json.loads(out)
    parsed = samples(scrape(daemon)[1])
    assert value(parsed, "ratecared_job_runs_total", name="aggregate_statistics", status="success") == 1
    assert value(parsed, "ratecared_job_runs_total", name="aggregate_statistics", status="failed") == 0
    assert value(parsed, "ratecared_job_runs_total", name="warm_cache", status="success") == 0
    assert value(parsed, "ratecared_job_running", name="aggregate_statistics") == 0
    started = datetime.fromisoformat(run["started_at"]).timestamp()
    finished = datetime.fromisoformat(run["finished_at"]).timestamp()
    assert value(parsed, "ratecared_job_last_run_start_timestamp_seconds", name="aggregate_statistics") == \
        pytest.approx(started, abs=0.001)
    assert value(parsed, "ratecared_job_last_success_timestamp_seconds", name="aggregate_statistics") == \
        pytest.approx(finished, abs=0.001)
    assert value(parsed, "ratecared_job_last_run_duration_seconds", name="aggregate_statistics") == \
        pytest.approx(finished - started, abs=0.002)
    assert value(parsed, "ratecared_job_last_run_rows", name="aggregate_statistics") == run["rows"]


def test_a_locked_database_shows_as_not_writable(daemon: DaemonProcess, tmp_path: Path) -> None:
    with sqlite_locked(tmp_path / "rc.db"):
        parsed = samples(scrape(daemon)[1])
    assert (value(parsed, "ratecared_database_up"), value(parsed, "ratecared_database_writable")) == (1, 0)


@pytest.mark.mariadb
def test_a_dead_database_shows_as_down_and_the_breakers_are_still_there(mariadb: MariaDB, mysql_url: str,
                                                                        config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url, database={"connect_timeout": 2}))
    mariadb.kill()
    try:
        fail(daemon, "booking")
        parsed = samples(scrape(daemon)[1])
    finally:
        mariadb.start()
    assert (value(parsed, "ratecared_database_up"), value(parsed, "ratecared_database_writable")) == (0, 0)
    assert value(parsed, "ratecared_breaker_state", platform="booking", state="open") == 1
    assert not any(name.startswith("ratecared_job_") for name, _ in parsed)


def test_other_methods_on_metrics_get_405_with_allow(daemon: DaemonProcess) -> None:
    result = subprocess.run(["curl", "-sS", "-i", "-X", "POST", "--unix-socket", daemon.socket,
                             "http://localhost/metrics"], capture_output=True, text=True, timeout=60)
    head = result.stdout.split("\r\n\r\n")[0]
    assert head.startswith("HTTP/1.1 405") and "Allow: GET, HEAD, OPTIONS" in head, result.stdout


# -- the TCP listener --------------------------------------------------------------


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_the_tcp_listener_serves_metrics_and_nothing_else(config_factory, daemon_factory) -> None:
    port = free_port()
    daemon = daemon_factory(config_factory(metrics={"listen": f"127.0.0.1:{port}"}))
    fail(daemon, "booking")
    base = f"http://127.0.0.1:{port}"
    status, content_type, text = _get(f"{base}/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert value(samples(text), "ratecared_breaker_state", platform="booking", state="open") == 1
    for path, method in (("/api/v1/circuit-breaker/status", "GET"), ("/api/v1/circuit-breaker/reset", "POST"),
                         ("/api/v1/reload", "POST"), ("/", "GET")):
        status, _, body = _get(base + path, method)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found"), path
    assert _get(f"{base}/metrics", "POST")[0] == 405
    # The reset above never reached the breakers.
    assert daemon.client().acquire("booking").allowed is False


def test_a_taken_metrics_port_is_a_clear_error_at_start(config_factory, daemon_factory) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = daemon_factory(config_factory(metrics={"listen": f"127.0.0.1:{port}"}), wait=False)
        assert daemon.proc.wait(60) == 1
    assert "cannot open the metrics listener" in daemon.read_output()
    assert "key=metrics.listen" in daemon.output and "Address already in use" in daemon.output


def test_a_changed_listener_needs_a_restart_and_says_so(config_factory, daemon_factory) -> None:
    from conftest import rewrite

    config = config_factory()
    daemon = daemon_factory(config)
    rewrite(config, "metrics", listen=f"127.0.0.1:{free_port()}")
    assert daemon.client().reload()["restart_needed_for"] == ["metrics.listen"]


# -- a real Prometheus ---------------------------------------------------------------


def test_prometheus_scrapes_the_listener_and_queries_the_breaker_state(config_factory, daemon_factory) -> None:
    prometheus = debian_tool("prometheus", "prometheus", "RATECARED_REQUIRE_PROMETHEUS")
    port = free_port()
    daemon = daemon_factory(config_factory(metrics={"listen": f"127.0.0.1:{port}"}))
    fail(daemon, "booking")
    work = Path(tempfile.mkdtemp(prefix="rc-prom-"))
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: ratecared\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
    web = free_port()
    server = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}",
                               f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
                              stdout=subprocess.DEVNULL, stderr=(work / "prometheus.log").open("w"))
    try:
        query = urllib.parse.urlencode({"query": 'ratecared_breaker_state{state="open"} == 1'})

        def open_breakers() -> list[str]:
            try:
                status, _, body = _get(f"http://127.0.0.1:{web}/api/v1/query?{query}")
            except OSError:
                return []  # not listening yet
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return sorted(r["metric"]["platform"] for r in result)

        assert wait_for(open_breakers, timeout=120, every=0.5, what="Prometheus to have scraped an open breaker") \
            == ["booking"], (work / "prometheus.log").read_text()
        targets = json.loads(_get(f"http://127.0.0.1:{web}/api/v1/targets")[2])["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- the alerts the README gives -------------------------------------------------------

ALERTS = Path(__file__).resolve().parents[1] / "examples" / "prometheus" / "ratecared-alerts.yml"

ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Closed, then open for good.
      - series: 'ratecared_breaker_state{{platform="booking",state="closed",instance="web1"}}'
        values: '1 1 0x30'
      # Open ten minutes, closed at one scrape, open again: it closed within the window.
      - series: 'ratecared_breaker_state{{platform="agoda",state="closed",instance="web1"}}'
        values: '1 0x10 1 0x20'
      # Held open by an operator for maintenance: planned, no alert.
      - series: 'ratecared_breaker_state{{platform="expedia",state="closed",instance="web1"}}'
        values: '0x30'
      - series: 'ratecared_breaker_held{{platform="expedia",state="open",instance="web1"}}'
        values: '1x30'
      # Open, but the platform has no breaker any more: its calls go through.
      - series: 'ratecared_breaker_state{{platform="hotels",state="closed",instance="web1"}}'
        values: '0x30'
      - series: 'ratecared_breaker_guarded{{platform="hotels",instance="web1"}}'
        values: '0x30'
      # Open on a host whose breakers are off (circuit-breaker-enabled = 0).
      - series: 'ratecared_breaker_state{{platform="trivago",state="closed",instance="web2"}}'
        values: '0x30'
      - series: 'ratecared_breakers_enabled{{instance="web2"}}'
        values: '0x30'
      - series: 'ratecared_breakers_enabled{{instance="web1"}}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: RatecaredBreakerNotClosed
        exp_alerts: []
      - eval_time: 18m
        alertname: RatecaredBreakerNotClosed
        exp_alerts:
          - exp_labels: {{severity: warning, platform: booking, state: closed, instance: web1}}
            exp_annotations:
              summary: "booking breaker on web1 has not closed for 15 minutes"
  - interval: 10m
    input_series:
      # Two hosts report the same last success, at 01:00 on day one.
      - series: 'ratecared_job_last_success_timestamp_seconds{{name="aggregate_statistics",instance="web1"}}'
        values: '3600x200'
      - series: 'ratecared_job_last_success_timestamp_seconds{{name="aggregate_statistics",instance="web2"}}'
        values: '3600x200'
    alert_rule_test:
      - eval_time: 26h
        alertname: RatecaredAggregationNotSucceeded
        exp_alerts: []
      - eval_time: 27h10m
        alertname: RatecaredAggregationNotSucceeded
        exp_alerts:
          - exp_labels: {{severity: warning, name: aggregate_statistics}}
            exp_annotations:
              summary: "aggregate_statistics has not succeeded for 26 hours"
"""


@pytest.mark.skipif(not ALERTS.exists(), reason="runs from the source tree (examples/ is not beside tests/ here)")
def test_the_example_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    promtool = debian_tool("promtool", "prometheus", "RATECARED_REQUIRE_PROMETHEUS")
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(ALERTS))))
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(tests)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_run_under_way_shows_as_running(config_factory, daemon_factory) -> None:
    from test_ratecarectl_cancel import held_warming

    widgets, daemon = held_warming(config_factory, daemon_factory)
    try:
        assert ctl(daemon.socket, "run", "warm_cache")[0] == 0
        assert widgets.reached.wait(60)
        parsed = samples(scrape(daemon)[1])
        assert value(parsed, "ratecared_job_running", name="warm_cache") == 1
        assert value(parsed, "ratecared_job_running", name="aggregate_statistics") == 0
    finally:
        widgets.release.set()
        widgets.close()
    wait_for(lambda: value(samples(scrape(daemon)[1]), "ratecared_job_runs_total", name="warm_cache",
                           status="success") == 1, what="the run's end in the metrics")
    assert value(samples(scrape(daemon)[1]), "ratecared_job_running", name="warm_cache") == 0
