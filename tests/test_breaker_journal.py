"""The breaker journal on a real file system: replay, torn lines, folding, the size bound, a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import fill_disk
from ratecared import breaker_journal, breaker_state
from ratecared.breaker.machine import BreakerView, Policy, State, Transition
from ratecared.breaker.registry import Registry
from ratecared.breaker_journal import BreakerJournal
from ratecared.config import load
from test_breaker_daemon import rewrite

WALL = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
DB = "sqlite:////var/lib/ratecared/ratecare.db"
UID = 33


class Log:
    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.errors.append((event, kw))


class Wall:
    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> datetime:
        return self.now


def view(platform: str = "booking", state: State = State.OPEN, generation: int = 1, retry_after: float | None = 600.0,
         seconds_in_state: float = 0.0) -> BreakerView:
    return BreakerView(platform=platform, state=state, generation=generation, failure_count=5, trip_count=1,
                       total_successes=2, total_failures=5, total_rejected=0,
                       retry_after=retry_after if state is State.OPEN else None,
                       seconds_in_state=seconds_in_state, last_reason="5 consecutive failures")


def journal(directory: Path, log: Log | None = None, wall: Wall | None = None, host: str = "web1",
            database: str = DB) -> BreakerJournal:
    return BreakerJournal(directory, host, database, log or Log(), wall=wall or Wall())


def written(j: BreakerJournal, *views: BreakerView) -> int:
    seq = j.append(list(views))
    j.sync(seq)
    return seq


def lines(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / breaker_journal.FILE).read_text().splitlines()]


def test_a_synced_transition_is_replayed_by_the_next_process(tmp_path: Path) -> None:
    first = journal(tmp_path)
    assert first.open(WALL) == []
    written(first, view(), view("expedia", State.CLOSED, generation=3))
    # No close: the process was killed.
    later = WALL + timedelta(seconds=100)
    replayed = {v.platform: v for v in journal(tmp_path).open(later)}
    assert (replayed["booking"].state, replayed["booking"].generation, replayed["booking"].retry_after,
            replayed["booking"].seconds_in_state) == (State.OPEN, 1, 500.0, 100.0)
    assert replayed["booking"].total_failures == 5 and replayed["expedia"].state is State.CLOSED


def test_only_the_last_line_of_each_platform_counts(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    written(j, view(generation=1))
    written(j, view(state=State.HALF_OPEN, generation=2))
    written(j, view(generation=3))
    assert [(v.state, v.generation) for v in journal(tmp_path).open(WALL)] == [(State.OPEN, 3)]


def test_appends_not_yet_synced_wait_in_memory_and_a_newer_view_replaces_an_older(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    j.append([view(generation=1)])
    seq = j.append([view(state=State.HALF_OPEN, generation=2)])
    assert (tmp_path / breaker_journal.FILE).read_bytes() == b""
    j.sync(seq)
    assert [(row["state"], row["generation"]) for row in lines(tmp_path)] == [("half_open", 2)]
    # Synced already: nothing more is written.
    j.sync(seq)
    assert len(lines(tmp_path)) == 1


def test_a_sync_from_another_thread_writes_what_this_one_appended(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    seq = j.append([view()])
    other = threading.Thread(target=j.sync, args=(seq,))
    other.start()
    other.join()
    assert [row["platform"] for row in lines(tmp_path)] == ["booking"]


def test_a_line_torn_by_a_crash_is_skipped_and_cut_off(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    written(j, view(generation=1))
    with open(tmp_path / breaker_journal.FILE, "ab") as f:
        f.write(b'{"database":"sqlite:////var/lib/ratecared/rat')
    again = journal(tmp_path)
    assert [v.generation for v in again.open(WALL)] == [1]
    written(again, view("expedia"))
    assert [row["platform"] for row in lines(tmp_path)] == ["booking", "expedia"]


def test_lines_of_another_host_or_database_or_unreadable_ones_are_ignored(tmp_path: Path) -> None:
    j = journal(tmp_path, host="web2")
    j.open(WALL)
    written(j, view())
    k = journal(tmp_path, database="mysql://ratecare@db1/ratecare")
    k.open(WALL)
    written(k, view("expedia"))
    with open(tmp_path / breaker_journal.FILE, "ab") as f:
        f.write(b'{"host":"web1"}\n[1]\nnot json\n')
    assert journal(tmp_path).open(WALL) == []


def test_a_snapshot_folds_the_lines_it_holds_and_keeps_later_ones(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    covered = written(j, view(generation=1))
    written(j, view("expedia", generation=4))
    j.fold(covered)
    assert [(row["platform"], row["generation"]) for row in lines(tmp_path)] == [("expedia", 4)]
    j.fold(covered + 1)
    assert (tmp_path / breaker_journal.FILE).read_bytes() == b""
    # Still appending to the journal after both ways of folding it.
    written(j, view(generation=2))
    assert [row["generation"] for row in lines(tmp_path)] == [2]


def test_an_earlier_processs_lines_are_folded_by_the_first_snapshot(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    written(j, view())
    again = journal(tmp_path)
    again.open(WALL)
    again.fold(0)
    assert (tmp_path / breaker_journal.FILE).read_bytes() == b""


def test_a_fold_drops_views_still_waiting_that_the_snapshot_holds(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    seq = j.append([view()])
    j.fold(seq)
    j.sync(seq)
    assert (tmp_path / breaker_journal.FILE).read_bytes() == b""


def test_the_file_never_grows_past_its_bound(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.open(WALL)
    platforms = ("booking", "expedia", "agoda")
    sizes = []
    for generation in range(1, 600):
        written(j, view(platforms[generation % 3], generation=generation))
        sizes.append((tmp_path / breaker_journal.FILE).stat().st_size)
    assert max(sizes) <= breaker_journal.MAX_BYTES + 1024
    assert min(sizes[300:]) < 3 * 1024
    assert {v.platform: v.generation for v in journal(tmp_path).open(WALL)} == {
        "booking": 597, "expedia": 598, "agoda": 599}
    assert not (tmp_path / (breaker_journal.FILE + ".tmp")).exists()


def test_a_state_directory_that_cannot_be_made_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        journal(tmp_path / "file" / "state").open(WALL)


# -- a full disk, on a real tmpfs --------------------------------------------------




def test_a_full_disk_refuses_lines_whole_and_they_are_written_once_space_returns(tiny_disk: Path) -> None:
    log = Log()
    j = journal(tiny_disk, log)
    j.open(WALL)
    path = tiny_disk / breaker_journal.FILE
    generation = 0
    # Up to the end of the file's first page, so the next lines need a page the disk does not have.
    while path.stat().st_size < 4096 - 600:
        generation += 1
        written(j, view(generation=generation))
    before = path.read_bytes()
    filler = fill_disk(tiny_disk, 4096)
    written(j, view(generation=100), view("expedia", generation=7))
    assert log.errors and log.errors[0][0].startswith("cannot write the breaker journal")
    # Part of the lines fitted; it was cut off again.
    assert path.read_bytes() == before
    filler.unlink()
    written(j, view("agoda", generation=3))
    j.close()
    assert [(row["platform"], row["generation"]) for row in lines(tiny_disk)][generation:] == [
        ("booking", 100), ("expedia", 7), ("agoda", 3)]


# -- with the registry -----------------------------------------------------------------


class Recorder:
    """A journal that records what the registry hands it, and when."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events
        self.seq = 0

    def append(self, views: list[BreakerView]) -> int:
        self.seq += 1
        self.events.append(("append", [(v.platform, v.state) for v in views]))
        return self.seq

    def sync(self, seq: int) -> None:
        self.events.append(("sync", seq))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_call_that_answers_with_a_new_state_syncs_it_before_the_listeners_hear_of_it() -> None:
    events: list[tuple[str, Any]] = []
    clock = FakeClock()
    registry = Registry(("booking", "expedia"), Policy(failure_threshold=1, open_seconds=10), clock=clock,
                        on_transition=lambda changes: events.append(("heard", [c.new for c in changes])),
                        journal=Recorder(events))
    decision = registry.acquire("booking", UID)
    registry.report("booking", decision.permit, False, UID)
    assert events == [("sync", 0), ("append", [("booking", State.OPEN)]), ("sync", 1), ("heard", [State.OPEN])]
    events.clear()
    # Each path that can make a transition: the timeout seen by status, by a tick, by a batch acquire, ...
    clock.now += 10
    assert registry.status()[0].state is State.HALF_OPEN
    registry.reset("booking")
    registry.report_many([("expedia", registry.acquire_many(["expedia"], UID)[0].permit, False)], UID)
    clock.now += 10
    registry.tick()
    registry.apply_policy(Policy(failure_threshold=1, open_seconds=10, enabled=False))
    heard = [i for i, event in enumerate(events) if event[0] == "heard"]
    assert [events[i][1] for i in heard] == [[State.HALF_OPEN], [State.CLOSED], [State.OPEN], [State.HALF_OPEN]]
    for i in heard:
        assert events[i - 1][0] == "sync" and events[i - 2][0] == "append"


def test_a_call_after_a_transition_of_another_waits_for_it_on_disk_when_it_shows_that_breaker() -> None:
    events: list[tuple[str, Any]] = []
    registry = Registry(("booking", "expedia"), Policy(failure_threshold=1), clock=FakeClock(),
                        journal=Recorder(events))
    decision = registry.acquire("booking", UID)
    registry.report("booking", decision.permit, False, UID)
    events.clear()
    # No transition of its own, but it shows booking open: it must not run ahead of booking's line. An
    # answer about expedia shows nothing of booking, so it waits for no line of booking's.
    registry.acquire("booking", UID)
    registry.status()
    registry.acquire("expedia", UID)
    assert events == [("sync", 1), ("sync", 1), ("sync", 0)]


def test_a_snapshot_folds_the_journal_and_a_restart_replays_what_is_newer(tmp_path: Path, database) -> None:
    wall = Wall()
    j = journal(tmp_path, wall=wall)
    j.open(WALL)
    clock = FakeClock()
    registry = Registry(("booking", "expedia"), Policy(), clock=clock, journal=j)
    breaker_state.save(database, registry, "web1", WALL, j)
    for _ in range(5):
        registry.report("booking", registry.acquire("booking", UID).permit, False, UID)
    assert [row["state"] for row in lines(tmp_path)] == ["open"]
    # Killed before the next snapshot: the database still says closed.
    later = WALL + timedelta(seconds=60)
    again = journal(tmp_path)
    fresh = Registry(("booking", "expedia"), Policy(), clock=FakeClock())
    assert breaker_state.restore(database, fresh, "web1", later, again.open(later)) == ["booking open for 540 s more"]
    breaker_state.save(database, fresh, "web1", later, again)
    assert (tmp_path / breaker_journal.FILE).read_bytes() == b""


def test_the_snapshot_wins_over_the_journal_in_the_same_generation_and_loses_to_a_later_one() -> None:
    saved = [view(generation=3), view("expedia", generation=3)]
    journaled = [view(generation=3, state=State.HALF_OPEN), view("expedia", State.CLOSED, generation=4),
                 view("agoda", generation=1)]
    assert [(v.platform, v.state) for v in breaker_state.newest(saved, journaled)] == [
        ("booking", State.OPEN), ("expedia", State.CLOSED), ("agoda", State.OPEN)]


def test_transitions_reach_the_listeners_in_the_order_they_were_made(tmp_path: Path) -> None:
    heard: list[Transition] = []
    j = journal(tmp_path)
    j.open(WALL)
    registry = Registry(("booking",), Policy(failure_threshold=1, open_seconds=1), clock=FakeClock(),
                        on_transition=heard.extend, journal=j)
    registry.report("booking", registry.acquire("booking", UID).permit, False, UID)
    registry.reset("booking")
    assert [t.new for t in heard] == [State.OPEN, State.CLOSED]
    assert [row["state"] for row in lines(tmp_path)] == ["open", "closed"]


# -- where the journal lives: daemon.state_dir ---------------------------------------------


def test_the_state_directory_is_systemds_else_the_sqlite_files_else_var_lib(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ratecared.toml"
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/data/rc.db"\n')
    assert load(path).daemon.state_dir == tmp_path / "data"
    path.write_text('[database]\nurl = "mysql://ratecare@localhost/ratecare"\n')
    assert load(path).daemon.state_dir == Path("/var/lib/ratecared")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/ratecared:/var/lib/other")
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/data/rc.db"\n')
    assert load(path).daemon.state_dir == Path("/var/lib/ratecared")
    path.write_text('[daemon]\nstate_dir = "state"\n[database]\nurl = "mysql://ratecare@localhost/ratecare"\n')
    config = load(path)
    assert config.daemon.state_dir == tmp_path / "state"
    assert config.masked()["daemon"]["state_dir"] == str(tmp_path / "state")


def test_check_config_shows_the_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "ratecared.toml"
    path.write_text(f'[daemon]\nsocket_group = ""\nadmin_group = ""\n[database]\nurl = "sqlite:///{tmp_path}/rc.db"\n')
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    result = subprocess.run([sys.executable, "-m", "ratecared", "--config", str(path), "check-config"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    # A comment line naming the file, then the config as JSON.
    assert json.loads(result.stdout.split("\n", 1)[1])["daemon"]["state_dir"] == str(tmp_path)


def test_a_new_state_directory_needs_a_restart(config_factory, daemon_factory, tmp_path: Path) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    rewrite(config, "daemon", state_dir=str(tmp_path / "elsewhere"))
    answer = daemon.client().reload()
    assert (answer["applied"], answer["restart_needed_for"]) == ([], ["daemon.state_dir"])
    for _ in range(5):
        daemon.client().report(daemon.client().acquire("booking"), False, 5003)
    # Still journaling where it started.
    assert not (tmp_path / "elsewhere").exists()


def test_a_state_directory_the_daemon_cannot_write_stops_it_with_78(config_factory, daemon_factory,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    daemon = daemon_factory(config_factory(daemon={"state_dir": str(tmp_path / "not-a-directory")}), wait=False)
    assert daemon.proc.wait(60) == 78
    daemon.read_output()
    assert "cannot use the state directory" in daemon.output and "key=daemon.state_dir" in daemon.output
