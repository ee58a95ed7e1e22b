"""Durable transitions and fast decisions, through the real daemon: kill -9 after `open`, a locked or dead database."""

from __future__ import annotations

import contextlib
import random
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import DaemonProcess, ctl, sqlite_locked, wait_for, write_config
from ratecared import breaker_journal

# The kill -9 rounds: as many as fit in this much time, at least MIN_ROUNDS, at most ROUNDS.
ROUNDS, MIN_ROUNDS, ROUNDS_SECONDS = 100, 20, 30.0
# A generous bound for one decision while the database is locked or gone: the
# bench measures the real figure; this only catches a decision waiting on the database.
SLOW = 0.25


def open_booking(daemon: DaemonProcess) -> None:
    """Fail booking's calls until a report's reply says the breaker is open."""
    client = daemon.client()
    try:
        for _ in range(20):
            decision = client.acquire("booking")
            assert decision.allowed, decision
            if client.report(decision, False, 5003)["state"] == "open":
                return
        raise AssertionError("booking never opened")
    finally:
        client.close()


def test_a_daemon_killed_after_a_client_saw_open_comes_back_open(config_factory, daemon_factory) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    started = time.monotonic()
    rounds = 0
    rng = random.Random(10)
    while rounds < ROUNDS and (rounds < MIN_ROUNDS or time.monotonic() - started < ROUNDS_SECONDS):
        open_booking(daemon)
        # At once, or a moment later while the snapshot may be under way.
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.02))
        daemon.stop(signal.SIGKILL)
        daemon = daemon_factory(config)
        client = daemon.client()
        decision = client.acquire("booking")
        assert (decision.allowed, decision.state) == (False, "open"), f"round {rounds}: {decision}"
        client.request("POST", "/api/v1/circuit-breaker/reset", {"platform": "booking"})
        client.close()
        rounds += 1
    assert rounds >= MIN_ROUNDS


def test_the_journal_holds_a_transition_until_a_snapshot_does_and_a_clean_stop_leaves_it_empty(
        config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory(database={"connect_timeout": 1}))
    journal = tmp_path / breaker_journal.FILE
    with sqlite_locked(tmp_path / "rc.db"):
        open_booking(daemon)
        # No snapshot can be written: the journal is where `open` is.
        assert b'"state":"open"' in journal.read_bytes()
    wait_for(lambda: journal.read_bytes() == b"", what="the journal folded into a snapshot")
    client = daemon.client()
    client.request("POST", "/api/v1/circuit-breaker/reset", {"platform": "booking"})
    client.close()
    assert daemon.stop() == 0
    assert journal.read_bytes() == b""


def test_a_second_daemon_on_the_same_state_directory_exits_1_and_the_first_keeps_serving(
        config_factory, daemon_factory, tmp_path: Path) -> None:
    first = daemon_factory(config_factory(database={"connect_timeout": 1}))
    journal = tmp_path / breaker_journal.FILE
    with sqlite_locked(tmp_path / "rc.db"):
        # No snapshot can fold it: `open` stays in the journal while the second daemon starts.
        open_booking(first)
        before = journal.read_bytes()
        assert b'"state":"open"' in before
        other = tmp_path / "other"
        other.mkdir()
        # Its own socket and logs, the same database and state directory.
        second = daemon_factory(write_config(other, f"sqlite:///{tmp_path / 'rc.db'}",
                                             daemon={"state_dir": str(tmp_path)}), wait=False)
        assert second.proc.wait(60) == 1
        output = second.read_output()
        assert f"another ratecared holds the state directory {tmp_path}" in output, output
        assert not Path(second.socket).exists()
        assert journal.read_bytes() == before
        decision = first.client().acquire("booking")
        assert (decision.allowed, decision.state) == (False, "open")
    code, out, _ = ctl(first.socket, "health")
    assert code == 0, out
    assert first.stop() == 0


def decide_while(daemon: DaemonProcess, until: Callable[[], bool], what: str) -> tuple[float, int]:
    """acquire/report pairs, booking opened and reset over and over, until `until()` and 4 transitions.

    Return the slowest single decision (seconds) and how many transitions were made.
    """
    client = daemon.client()
    slowest, transitions = 0.0, 0
    deadline = time.monotonic() + 60
    try:
        while not until() or transitions < 4:
            assert time.monotonic() < deadline, f"not seen in time: {what}"
            for platform, success in (("expedia", True), ("booking", False)):
                t = time.perf_counter()
                decision = client.acquire(platform)
                slowest = max(slowest, time.perf_counter() - t)
                if not decision.allowed:
                    t = time.perf_counter()
                    client.request("POST", "/api/v1/circuit-breaker/reset", {"platform": platform})
                    slowest = max(slowest, time.perf_counter() - t)
                    transitions += 1
                    continue
                t = time.perf_counter()
                state = client.report(decision, success, 10)["state"]
                slowest = max(slowest, time.perf_counter() - t)
                transitions += state == "open"
    finally:
        client.close()
    return slowest, transitions


def test_decisions_and_transitions_stay_fast_while_another_process_holds_the_database_locked(
        config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory(database={"connect_timeout": 1}))
    log = tmp_path / "logs" / "ratecared.log"
    with sqlite_locked(tmp_path / "rc.db"):
        slowest, transitions = decide_while(daemon, lambda: "snapshot failed" in log.read_text(), "snapshot failed")
        status = daemon.client().status()
    assert slowest < SLOW, f"a decision took {slowest * 1000:.0f} ms with the database locked"
    assert status["total_platforms"] == 7
    wait_for(lambda: "snapshots resumed" in log.read_text(), what="snapshots resumed")
    # What was made while the database was locked is in the snapshot now.
    assert (tmp_path / breaker_journal.FILE).read_bytes().count(b"\n") <= 2


@pytest.mark.mariadb
def test_decisions_and_transitions_stay_fast_with_mariadb_killed(
        mariadb, mysql_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url, database={"connect_timeout": 1},
                                           daemon={"state_dir": str(tmp_path / "state")}))
    log = tmp_path / "logs" / "ratecared.log"
    mariadb.kill()
    try:
        slowest, transitions = decide_while(daemon, lambda: "snapshot failed" in log.read_text(), "snapshot failed")
    finally:
        mariadb.ensure_running()
    assert slowest < SLOW, f"a decision took {slowest * 1000:.0f} ms with MariaDB killed"
    assert transitions >= 4
    wait_for(lambda: "snapshots resumed" in log.read_text(), what="snapshots resumed")


@pytest.mark.mariadb
def test_decisions_and_transitions_stay_fast_with_mariadb_hung(
        mariadb, mysql_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    """A server that takes connections and never answers (SIGSTOP): the slowest database there is."""
    state = tmp_path / "state"
    daemon = daemon_factory(config_factory(url=mysql_url, database={"connect_timeout": 1},
                                           daemon={"state_dir": str(state)}))
    journal = state / breaker_journal.FILE
    with mariadb.hung():
        # Lines pile up in the journal: no snapshot has folded them, so the daemon is waiting on the server.
        slowest, transitions = decide_while(daemon, lambda: journal.read_bytes().count(b"\n") >= 8,
                                            "8 journal lines not folded into a snapshot")
        status = daemon.client().status()
    assert slowest < SLOW, f"a decision took {slowest * 1000:.0f} ms with MariaDB hung"
    assert status["total_platforms"] == 7
    wait_for(lambda: journal.read_bytes().count(b"\n") <= 2, what="a snapshot folding the journal once MariaDB answers")


@contextlib.contextmanager
def restore_held(mariadb, mysql_url: str, config: Path, daemon_factory) -> Iterator[DaemonProcess]:
    """A daemon started while the test holds the snapshot table locked: it waits in its restore."""
    assert daemon_factory(config).stop() == 0   # the tables exist now
    name = mysql_url.split("?")[0].rsplit("/", 1)[1]
    lock = mariadb.root_connect()
    try:
        lock.cursor().execute(f"LOCK TABLES `{name}`.circuit_breaker_state WRITE")
        daemon = daemon_factory(config, wait=False)

        def restore_waiting() -> bool:
            with mariadb.root_connect() as root, root.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM information_schema.processlist"
                               " WHERE db = %s AND state LIKE 'Waiting for table%%'", (name,))
                return cursor.fetchone()[0] > 0

        wait_for(restore_waiting, what="the daemon's restore waiting for the locked snapshot table")
        yield daemon
    finally:
        lock.cursor().execute("UNLOCK TABLES")
        lock.close()


@pytest.mark.mariadb
def test_the_socket_opens_only_once_the_breakers_are_restored(mariadb, mysql_url: str, config_factory,
                                                              daemon_factory) -> None:
    with restore_held(mariadb, mysql_url, config_factory(url=mysql_url), daemon_factory) as daemon:
        # A client could connect now and be held, or be dropped if the start then fails: there is no socket yet.
        assert not Path(daemon.socket).exists()
    daemon.wait_ready()
    assert len(daemon.client().status()["platforms"]) == 7


@pytest.mark.mariadb
def test_a_stop_asked_for_while_starting_is_a_clean_stop_once_started(mariadb, mysql_url: str, config_factory,
                                                                      daemon_factory) -> None:
    with restore_held(mariadb, mysql_url, config_factory(url=mysql_url), daemon_factory) as daemon:
        daemon.send(signal.SIGTERM)
    assert daemon.stop() == 0
    assert "stopped" in daemon.output and "Traceback" not in daemon.output, daemon.output
