"""Logs that cannot flood the disk: repeated causes counted, a full log disk one line on stderr, never half a line."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import pytest

from conftest import fill_disk, write_config
from ratecared import logs
from ratecared.client import DaemonError
from ratecared.config import LoggingConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[logs.Logs, io.StringIO, Clock]]:
    stream = io.StringIO()
    clock = Clock()
    setup = logs.Logs(LoggingConfig(dir=tmp_path, level="info"), stream=stream)
    setup.repeats._clock = clock
    try:
        yield setup, stream, clock
    finally:
        setup.close()


def fail_the_same_way(times: int) -> None:
    for _ in range(times):
        try:
            [][1]
        except IndexError:
            logs.get("ratecared").exception("request failed", path="/api/v1/x")


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_repeated_error_is_written_once_per_interval_with_a_count(installed, tmp_path: Path) -> None:
    setup, stream, clock = installed
    fail_the_same_way(1000)
    assert [e["event"] for e in json_lines(tmp_path / "ratecared.log")] == ["request failed"]
    clock.now += logs.REPEAT_INTERVAL
    fail_the_same_way(1)
    events = json_lines(tmp_path / "ratecared.log")
    assert [(e["event"], e.get("repeated")) for e in events] == [("request failed", None), ("request failed", 999)]
    assert "IndexError" in events[1]["exception"]
    journal = stream.getvalue().splitlines()
    assert len(journal) == 2 and "repeated=999" in journal[1]


def test_the_count_of_a_cause_that_did_not_come_again_is_written_at_the_end_of_its_interval(
        installed, tmp_path: Path) -> None:
    setup, _, clock = installed
    fail_the_same_way(3)
    setup.repeats.flush()
    assert len(json_lines(tmp_path / "ratecared.log")) == 1
    clock.now += logs.REPEAT_INTERVAL
    setup.repeats.flush()
    events = json_lines(tmp_path / "ratecared.log")
    assert [(e["event"], e.get("repeated"), e["level"]) for e in events] == [
        ("request failed", None, "error"), ("request failed", 2, "error")]
    # Nothing left to count: an interval with no more of it writes nothing.
    clock.now += logs.REPEAT_INTERVAL
    setup.repeats.flush()
    assert len(json_lines(tmp_path / "ratecared.log")) == 2


def test_causes_are_counted_apart_and_info_and_transitions_always_written(installed, tmp_path: Path) -> None:
    setup, _, _ = installed
    log = logs.get("ratecared")
    for _ in range(5):
        log.warning("snapshot failed; breakers keep working from memory", error="database is locked")
        log.error("reload refused: invalid config; keeping the running one", error="bad key")
        log.info("reloaded")
        logs.get("ratecared.breaker").warning("breaker transition", platform="booking", new="open")
        logging.getLogger("asyncio").error("Exception in callback %s", "x")
    events = [e["event"] for e in json_lines(tmp_path / "ratecared.log")]
    assert events.count("snapshot failed; breakers keep working from memory") == 1
    assert events.count("reload refused: invalid config; keeping the running one") == 1
    assert events.count("Exception in callback x") == 1
    assert events.count("reloaded") == 5
    assert events.count("breaker transition") == 5
    setup.close()
    counted = {e["event"]: e.get("repeated") for e in json_lines(tmp_path / "ratecared.log")[-3:]}
    assert counted == {"snapshot failed; breakers keep working from memory": 4,
                       "reload refused: invalid config; keeping the running one": 4,
                       "Exception in callback %s": 4}


def test_the_same_event_raised_at_another_line_is_another_cause(installed, tmp_path: Path) -> None:
    fail_the_same_way(2)
    try:
        {}["missing"]
    except KeyError:
        logs.get("ratecared").exception("request failed", path="/api/v1/y")
    assert len(json_lines(tmp_path / "ratecared.log")) == 2


def test_each_cause_of_a_kind_is_written_up_to_a_budget(installed, tmp_path: Path) -> None:
    setup, _, _ = installed
    log = logs.get("ratecared.settings")
    for _ in range(3):
        for key in ("cache-cleanup-enabled", "cache-statistics-retention-days"):
            log.warning("bad setting", key=key, value="thirty")
    assert [e["key"] for e in json_lines(tmp_path / "ratecared.log")] == [
        "cache-cleanup-enabled", "cache-statistics-retention-days"]
    for i in range(logs.KIND_BUDGET + 5):
        log.warning("bad setting", key=f"key-{i}", value="x")
    assert len(json_lines(tmp_path / "ratecared.log")) == logs.KIND_BUDGET
    setup.close()
    last = json_lines(tmp_path / "ratecared.log")[-1]
    assert (last["event"], last["repeated"]) == ("bad setting", 4 + 7)


def test_past_so_many_kinds_the_new_ones_share_one_count(installed, tmp_path: Path) -> None:
    setup, _, _ = installed
    for i in range(logs.MAX_KINDS + 50):
        logs.get("ratecared").warning(f"kind {i}")
    events = [e["event"] for e in json_lines(tmp_path / "ratecared.log")]
    assert len(events) == logs.MAX_KINDS + 1
    setup.close()
    last = json_lines(tmp_path / "ratecared.log")[-1]
    assert (last["event"], last["repeated"]) == ("log lines of other kinds not written", 49)


class FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_stream_that_cannot_be_written_costs_one_line_on_stderr_per_interval(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = logs.Logs(LoggingConfig(dir=tmp_path, level="info"), stream=FullDisk(), files=False)
    clock = Clock()
    setup._trouble._clock = clock
    try:
        for i in range(100):
            logs.get("ratecared").info("reloaded", n=i)
        clock.now += logs.REPEAT_INTERVAL
        logs.get("ratecared").info("reloaded")
    finally:
        setup.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("ratecared: cannot write the log") for line in err)
    assert "No space left on device" in err[0] and "100 log line(s) lost" in err[1]
    assert "Logging error" not in "".join(err)


# -- a real daemon ---------------------------------------------------------------------


def test_a_daemon_asked_a_thousand_times_to_reload_a_broken_config_logs_it_once_with_the_count(
        config_factory, daemon_factory, tmp_path: Path) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    config.write_text(config.read_text().replace("snapshot_interval = 0.5", 'snapshot_interval = "often"'))
    client = daemon.client()
    for _ in range(1000):
        with pytest.raises(DaemonError) as refused:
            client.request("POST", "/api/v1/reload")
        assert refused.value.status == 422
    assert daemon.stop() == 0
    events = [e for e in json_lines(tmp_path / "logs" / "ratecared.log") if e["event"].startswith("reload refused")]
    assert [e.get("repeated") for e in events] == [None, 999]
    assert daemon.output.count("reload refused") == 2
    assert (tmp_path / "logs" / "ratecared.log").stat().st_size < 20_000




def test_a_full_log_disk_costs_one_line_on_stderr_and_no_line_is_torn(
        tiny_disk: Path, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(write_config(tmp_path, logging={"dir": str(tiny_disk)}))
    client = daemon.client()
    filler = fill_disk(tiny_disk, 512)
    for _ in range(30):
        for _ in range(5):
            client.report(client.acquire("booking"), False, 5003)
        client.request("POST", "/api/v1/circuit-breaker/reset", {"platform": "booking"})
    assert client.acquire("booking").allowed
    filler.unlink()
    for _ in range(5):
        client.report(client.acquire("booking"), False, 5003)
    assert daemon.stop() == 0
    assert daemon.output.count("ratecared: cannot write the log") == 1, daemon.output
    assert "Logging error" not in daemon.output and "Traceback" not in daemon.output
    # Every line whole, the ones from before the disk filled and from after.
    transitions = [e for e in json_lines(tiny_disk / "circuit-breaker.log") if e["event"] == "breaker transition"]
    assert transitions[-1]["new"] == "open"
    assert json_lines(tiny_disk / "ratecared.log")[-1]["event"] == "stopped"
