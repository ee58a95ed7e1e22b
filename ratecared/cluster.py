"""Every host at once: operator commands for all the daemons on one database, and the view of their breakers.

RateCare runs a ratecared on each app server, all on one database. An
operator's `hold`, `release` or `reset` with `--cluster` is a row in
`circuit_breaker_commands`; each daemon applies the rows it has not yet
acknowledged, in order, at every settings refresh (and once at start), and
acknowledges each in `circuit_breaker_command_acks`. A hold keeps its end as
a wall time, so a host that applies it late, or starts days later, holds
only for what is left, and one whose time is up is acknowledged as expired.
Applying a command twice (a kill between the apply and its acknowledgement)
does what applying it once does.

The view reads every host's snapshot rows: a host whose newest row is older
than three snapshot intervals is stale (stopped, or cut off from the
database) and is shown as such, not counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from ratecared.breaker.machine import MAX_HOLD_SECONDS, BreakerView, State
from ratecared.breaker.registry import Unguarded, UnknownPlatform
from ratecared.breaker_state import SAVED, view_of
from ratecared.db import Database, parse_timestamp, timestamp

ACTIONS = ("hold", "release", "reset")
TRIM_EVERY = 3600.0
# Commands older than the longest hold have nothing left to apply.
HORIZON = timedelta(seconds=MAX_HOLD_SECONDS)
STALE_INTERVALS = 3
_COMMAND = ("id", "at", "host", "action", "platform", "hold_state", "hold_until", "reason", "who")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Command:
    id: int
    at: datetime
    # Where it was asked.
    host: str
    action: str
    # None: every platform (a reset of all).
    platform: str | None
    hold_state: State | None
    hold_until: datetime | None
    reason: str
    who: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(timespec="seconds"), "host": self.host, "action": self.action,
                "platform": self.platform, "state": self.hold_state.value if self.hold_state else None,
                "until": self.hold_until.isoformat(timespec="seconds") if self.hold_until else None,
                "reason": self.reason, "by": self.who}


class Breakers(Protocol):
    """What a command does to this host's breakers (breaker.registry.Registry)."""

    def hold(self, platform: str, state: State, seconds: float, reason: str, who: str) -> BreakerView: ...

    def release(self, platform: str, who: str) -> BreakerView | None: ...

    def reset(self, platform: str | None = None, reason: str = ..., who: str = ...) -> list[str]: ...


class ClusterCommands:
    """This host's side of the cluster commands: issue them, apply the ones not yet acknowledged here."""

    def __init__(self, database: Database, breakers: Breakers, host: str, log: Any,
                 snapshot_interval: Callable[[], float], wall: Callable[[], datetime] = _utc_now) -> None:
        self._db = database
        self._snapshot_interval = snapshot_interval
        self._breakers = breakers
        self._host = host
        self._log = log
        self._wall = wall
        # One apply at a time (the store thread's refresh, the API's issue): no command applied twice at once.
        self._applying = threading.Lock()
        # Under _applying: when the table was last trimmed (monotonic).
        self._trimmed_at = float("-inf")

    def issue(self, action: str, platform: str | None, who: str, reason: str,
              state: State | None = None, seconds: float | None = None) -> tuple[Command, str]:
        """Record a command for every host and apply it here at once; return it and what it did here.

        Raises DatabaseError when the database does not take it: then no host, this one included, has it.
        """
        if action not in ACTIONS:
            raise ValueError(f"a cluster command is one of {', '.join(ACTIONS)}, not {action!r}")
        now = self._wall()
        until = now + timedelta(seconds=seconds) if seconds is not None else None
        with self._db.transaction() as tx:
            tx.execute(f"INSERT INTO circuit_breaker_commands ({', '.join(_COMMAND[1:])}) VALUES "
                       f"({', '.join('?' for _ in _COMMAND[1:])})",
                       (timestamp(now), self._host, action, platform, state.value if state else None,
                        timestamp(until) if until else None, reason[:255], who[:255]))
            command_id = int(tx.query(self._db.dialect.last_insert_id)[0][0])
        command = Command(command_id, now, self._host, action, platform, state, until, reason[:255], who[:255])
        results = dict(self.apply_pending())
        if command_id not in results:
            # The store thread's refresh came between the insert and this apply, and applied it.
            results[command_id] = self._db.query(
                "SELECT result FROM circuit_breaker_command_acks WHERE command_id = ? AND host = ?",
                (command_id, self._host))[0][0]
        return command, results[command_id]

    def view(self, local: list[BreakerView]) -> dict[str, Any]:
        """Every host's breakers, this host's being `local`; raises DatabaseError."""
        return view(self._db, self._host, local, STALE_INTERVALS * self._snapshot_interval(), self._wall())

    def apply_pending(self) -> list[tuple[int, str]]:
        """Apply, in order, every recent command this host has not acknowledged; return (id, what it did).

        Raises DatabaseError when the database cannot be read; a command
        applied and not acknowledged is applied again next time, to the same effect.
        """
        with self._applying:
            now = self._wall()
            rows = self._db.query(
                f"SELECT {', '.join('c.' + column for column in _COMMAND)} FROM circuit_breaker_commands c "
                "LEFT JOIN circuit_breaker_command_acks a ON a.command_id = c.id AND a.host = ? "
                "WHERE a.command_id IS NULL AND c.at > ? ORDER BY c.id", (self._host, timestamp(now - HORIZON)))
            done = []
            for row in rows:
                command = _command_of(row)
                result = self._apply(command, self._wall())
                self._db.execute(
                    self._db.dialect.upsert("circuit_breaker_command_acks",
                                            ("command_id", "host", "applied_at", "result"), ("command_id", "host")),
                    (command.id, self._host, timestamp(self._wall()), result[:255]))
                self._log.info("cluster command applied", command=command.id, action=command.action,
                               platform=command.platform, asked_on=command.host, by=command.who, result=result)
                done.append((command.id, result))
            if time.monotonic() - self._trimmed_at >= TRIM_EVERY:
                self._trim(now - HORIZON)
            return done

    def _trim(self, before: datetime) -> None:
        """Commands past the horizon have nothing left to apply on any host: they and their acknowledgements go."""
        cutoff = timestamp(before)
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM circuit_breaker_command_acks WHERE command_id IN "
                       "(SELECT id FROM circuit_breaker_commands WHERE at <= ?)", (cutoff,))
            tx.execute("DELETE FROM circuit_breaker_commands WHERE at <= ?", (cutoff,))
        self._trimmed_at = time.monotonic()

    def _apply(self, command: Command, now: datetime) -> str:
        by = f"{command.who} (cluster command {command.id} from {command.host})"
        try:
            if command.action == "hold":
                assert command.platform is not None and command.hold_state is not None
                left = ((command.hold_until or now) - now).total_seconds()
                if left <= 0:
                    return "expired before this host applied it"
                self._breakers.hold(command.platform, command.hold_state, min(left, MAX_HOLD_SECONDS),
                                    f"{command.reason} (cluster command {command.id} from {command.host})",
                                    command.who)
                return f"held {command.hold_state.value}"
            if command.action == "release":
                assert command.platform is not None
                released = self._breakers.release(command.platform, by)
                return "released" if released is not None else "had no hold"
            reset = self._breakers.reset(command.platform, reason=f"reset by {by}", who=command.who)
            return f"reset {', '.join(reset)}"
        except UnknownPlatform as exc:
            return str(exc)
        except Unguarded:
            return f"{command.platform} has no breaker here"


def _command_of(row: tuple) -> Command:
    values = dict(zip(_COMMAND, row))
    at = parse_timestamp(values["at"])
    assert at is not None
    return Command(int(values["id"]), at, values["host"], values["action"], values["platform"],
                   State(values["hold_state"]) if values["hold_state"] else None,
                   parse_timestamp(values["hold_until"]), values["reason"], values["who"])


def _breaker_json(view: BreakerView, now: datetime) -> dict[str, Any]:
    """One breaker of one host in the cluster view: this host's live, another's from its snapshot row."""
    return {
        "platform": view.platform, "state": view.state.value,
        "retry_after": max(0.0, round(view.retry_after, 3))
        if view.state is State.OPEN and view.retry_after is not None else None,
        "backoff_level": view.backoff_level, "last_reason": view.last_reason,
        "hold": {"state": view.hold.state.value, "reason": view.hold.reason, "by": view.hold.by,
                 "until": (now + timedelta(seconds=view.hold_seconds_left or 0)).isoformat(timespec="seconds")}
        if view.hold else None,
    }


def _summary(platform: str, states: list[str], stale: int) -> str:
    counted = len(states)
    parts = [f"{label} on {states.count(state)} of {counted} host{'s' if counted != 1 else ''}"
             for state, label in (("open", "open"), ("half_open", "half-open")) if state in states]
    if not counted:
        text = "no host with a recent snapshot"
    elif not parts:
        text = f"closed on {'all ' if counted > 1 else ''}{counted} host{'s' if counted != 1 else ''}"
    else:
        text = ", ".join(parts)
    if stale:
        text += f"; {stale} stale host{'s' if stale > 1 else ''} not counted"
    return f"{platform}: {text}"


def view(database: Database, host: str, local: list[BreakerView], stale_after: float,
         now: datetime) -> dict[str, Any]:
    """Every host's breakers: this host's as they stand (`local`), the others' from their snapshot rows."""
    rows = database.query(f"SELECT host, updated_at, {', '.join(SAVED)} FROM circuit_breaker_state "
                          "WHERE host <> ? ORDER BY host, platform", (host,))
    hosts: dict[str, dict[str, Any]] = {host: {
        "host": host, "this_host": True, "updated_at": now.isoformat(timespec="seconds"), "age_seconds": 0.0,
        "stale": False, "breakers": [_breaker_json(v, now) for v in local]}}
    for row in rows:
        updated = parse_timestamp(row[1]) or now
        entry = hosts.setdefault(row[0], {"host": row[0], "this_host": False, "updated_at": updated, "breakers": []})
        entry["updated_at"] = max(entry["updated_at"], updated)
        entry["breakers"].append(_breaker_json(view_of(row[2:], now), now))
    for entry in hosts.values():
        if not entry["this_host"]:
            age = (now - entry["updated_at"]).total_seconds()
            entry.update(updated_at=entry["updated_at"].isoformat(timespec="seconds"), age_seconds=round(age, 1),
                         stale=age > stale_after)
    states: dict[str, list[str]] = {}
    stale: dict[str, int] = {}
    for entry in hosts.values():
        for breaker in entry["breakers"]:
            states.setdefault(breaker["platform"], [])
            stale.setdefault(breaker["platform"], 0)
            if entry["stale"]:
                stale[breaker["platform"]] += 1
            else:
                states[breaker["platform"]].append(breaker["state"])
    platforms = [{"platform": name, "hosts": len(states[name]), "stale_hosts": stale[name],
                  **{state.value: states[name].count(state.value) for state in State},
                  "summary": _summary(name, states[name], stale[name])} for name in states]
    return {"stale_after_seconds": stale_after, "hosts": list(hosts.values()), "platforms": platforms}
