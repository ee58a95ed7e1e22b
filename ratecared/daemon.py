"""The daemon's lifecycle: start in order, serve, reload, stop in time.

Threads: the main thread runs the asyncio loop (control socket, signals,
ticks, watchdog); `store` writes snapshots and re-reads settings;
`scheduler` runs the jobs, one at a time; the `control-worker` pool answers
the API calls that touch the database. The watchdog is pinged from the loop
only while `store` shows progress and `scheduler` is alive, so a wedged
thread gets the daemon restarted instead of hidden; a long job does not stop
the pings.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import sdnotify

from ratecared import __version__, logs
from ratecared import settings as settings_mod
from ratecared.breaker import snapshot
from ratecared.breaker.machine import State, Transition
from ratecared.breaker.registry import Registry
from ratecared.config import EX_CONFIG, Config, ConfigError, load
from ratecared.control.api import Api
from ratecared.control.server import ControlServer, Peer, SocketInUse, bind_unix
from ratecared.db import Database, DatabaseError, migrations
from ratecared.scheduler.runner import Runner

EX_UNAVAILABLE = 69
TICK = 1.0


class Notifier:
    """sd_notify, taken out of the environment so child processes never inherit it."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        self.watchdog_interval: float | None = None
        if usec and (pid is None or int(pid) == os.getpid()):
            self.watchdog_interval = int(usec) / 2e6

    def __call__(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))


class StoreThread(threading.Thread):
    """Writes breaker snapshots and re-reads the settings table, on timers and on demand."""

    def __init__(self, daemon: "Daemon") -> None:
        super().__init__(name="store", daemon=True)
        self.d = daemon
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.heartbeat = time.monotonic()
        self.last_snapshot_at: datetime | None = None
        self.snapshot_error: str | None = None
        self.settings_error: str | None = None

    def run(self) -> None:
        next_snapshot = next_settings = time.monotonic()
        while not self.stopping.is_set():
            self.heartbeat = now = time.monotonic()
            urgent = self.wake.is_set()
            self.wake.clear()
            if now >= next_settings:
                self.d.refresh_settings()
                next_settings = now + self.d.config.daemon.settings_refresh
            if urgent or now >= next_snapshot:
                self.write_snapshot()
                next_snapshot = now + self.d.config.daemon.snapshot_interval
            self.heartbeat = time.monotonic()
            self.wake.wait(max(0.0, min(next_snapshot, next_settings, self.heartbeat + TICK) - self.heartbeat))

    def write_snapshot(self) -> bool:
        try:
            snapshot.save(self.d.db, self.d.registry, self.d.host, datetime.now(timezone.utc))
        except DatabaseError as exc:
            if self.snapshot_error is None:
                self.d.log.warning("snapshot failed; breakers keep working from memory", error=str(exc))
            self.snapshot_error = str(exc)
            return False
        if self.snapshot_error is not None:
            self.d.log.info("snapshots resumed", after_error=self.snapshot_error)
        self.snapshot_error = None
        self.last_snapshot_at = datetime.now(timezone.utc)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.host = config.daemon.host
        self.started = time.monotonic()
        self.notify = Notifier()
        self.logs = logs.Logs(config.logging)
        self.log = logs.get("ratecared")
        self.breaker_log = logs.get("ratecared.breaker")
        self.db = Database(config.database)
        self.settings = settings_mod.Settings()
        self.setting_warnings: list[str] = []
        self.registry = Registry(
            config.circuit_breaker.platforms, self.settings, config.circuit_breaker.permit_lease,
            on_transition=self._on_transition,
        )
        self.store = StoreThread(self)
        self.runner = Runner(config, self.db, self.host, settings=lambda: self.settings,
                             refresh_settings=self.refresh_settings)
        self._settings_lock = threading.Lock()
        self.stop_requested: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reload_lock = threading.Lock()

    # -- start -------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.db.close()
            self.logs.close()

    def _run(self) -> int:
        self.log.info("starting", version=__version__, config=str(self.config.path), database=self.db.describe(),
                      pid=os.getpid())
        code = self._open_database()
        if code:
            return code
        self.refresh_settings()
        try:
            for line in snapshot.restore(self.db, self.registry, self.host, datetime.now(timezone.utc)):
                self.breaker_log.info("breaker restored", detail=line)
        except DatabaseError as exc:
            self.log.error("cannot read breaker snapshots", error=str(exc))
            return EX_UNAVAILABLE
        self.registry.tick()
        try:
            sock = bind_unix(self.config.daemon.socket, self.config.daemon.socket_group or None)
        except SocketInUse as exc:
            self.log.error("cannot bind the control socket", error=str(exc))
            return 1
        except KeyError:
            self.log.error("socket group does not exist", key="daemon.socket_group",
                           group=self.config.daemon.socket_group, config=str(self.config.path))
            return EX_CONFIG
        except OSError as exc:
            self.log.error("cannot bind the control socket", path=str(self.config.daemon.socket), error=str(exc))
            return 1
        return asyncio.run(self._serve(sock))

    def _open_database(self) -> int:
        deadline = time.monotonic() + self.config.database.startup_wait
        while True:
            try:
                todo = migrations.pending(self.db)
                break
            except DatabaseError as exc:
                if time.monotonic() >= deadline:
                    self.log.error("database unreachable; giving up", database=self.db.describe(), error=str(exc))
                    return EX_UNAVAILABLE
                self.log.warning("database unreachable; retrying", database=self.db.describe(), error=str(exc))
                self.notify(f"STATUS=waiting for the database: {exc}", "EXTEND_TIMEOUT_USEC=10000000")
                time.sleep(2)
        if todo and not self.config.database.auto_migrate:
            self.log.error(
                "database has pending migrations; run `ratecared migrate` or set database.auto_migrate = true",
                pending=[f"{m.version}_{m.name}" for m in todo],
            )
            return EX_CONFIG
        if todo:
            applied = migrations.apply(self.db)
            self.log.info("migrations applied", versions=[f"{m.version}_{m.name}" for m in applied])
        return 0

    # -- serve -------------------------------------------------------------------

    async def _serve(self, sock: socket.socket) -> int:
        self.loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="control-worker")
        api = Api(self.registry, self, executor)
        server = ControlServer(
            api.handle,
            max_connections=self.config.daemon.max_connections,
            idle_timeout=self.config.daemon.idle_timeout,
            max_body=self.config.daemon.max_body_bytes,
            on_error=lambda request: self.log.exception("request failed", method=request.method, path=request.path),
        )
        await server.start(sock)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop_requested.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.run_in_executor(executor, self.reload, None))
        self.store.start()
        self.runner.start()
        self.log.info("ready", socket=str(self.config.daemon.socket), platforms=len(self.registry.platforms))
        self.notify("READY=1", f"STATUS={self.status_line()}", f"MAINPID={os.getpid()}")
        next_watchdog = 0.0
        tick = min(TICK, self.notify.watchdog_interval or TICK)
        shown = ""
        code = 0
        while not self.stop_requested.is_set():
            try:
                await asyncio.wait_for(self.stop_requested.wait(), tick)
            except asyncio.TimeoutError:
                pass
            dead = [t.name for t in (self.runner, self.store) if not t.is_alive()]
            if dead and not self.stop_requested.is_set():
                # A daemon without its scheduler or snapshots only looks healthy:
                # exit non-zero so systemd restarts it and the journal says why.
                self.log.critical("a thread of the daemon died; exiting", threads=dead)
                code = 1
                break
            self.registry.tick()
            status = self.status_line()
            if status != shown:
                self.notify(f"STATUS={status}")
                shown = status
            interval = self.notify.watchdog_interval
            if interval and time.monotonic() >= next_watchdog and self._threads_alive():
                self.notify("WATCHDOG=1")
                next_watchdog = time.monotonic() + interval
        await self._stop(server, executor)
        return code

    def _threads_alive(self) -> bool:
        stale = time.monotonic() - self.store.heartbeat
        return self.store.is_alive() and self.runner.is_alive() and stale < 60 + self.config.database.connect_timeout

    async def _stop(self, server: ControlServer, executor: ThreadPoolExecutor) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")
        self.log.info("stopping")
        # No new clients; the open ones (a `run --wait`, the app's breaker
        # calls) are answered until the job has stopped and been recorded.
        server.stop_accepting()
        self.runner.stop()
        self.store.stop()
        await asyncio.to_thread(self.runner.join, 8.0)
        if self.runner.is_alive():
            self.log.warning("a job did not stop in time; its run shows as interrupted at the next start",
                             job=self.runner.current[0] if self.runner.current else None)
            self.runner.close_queue()
        await server.close(grace=1.0)
        await asyncio.to_thread(self.store.join, 3.0)
        saved = self.store.write_snapshot()
        executor.shutdown(wait=False, cancel_futures=True)
        self.log.info("stopped", final_snapshot="written" if saved else "failed")

    def status_line(self) -> str:
        counts = {state: 0 for state in State}
        for s in self.registry.status():
            counts[s.state] += 1
        parts = [f"{len(self.registry.platforms)} breakers"]
        if counts[State.OPEN]:
            parts.append(f"{counts[State.OPEN]} open")
        if counts[State.HALF_OPEN]:
            parts.append(f"{counts[State.HALF_OPEN]} half-open")
        if self.store.snapshot_error:
            parts.append("database unreachable")
        if self.runner.current:
            parts.append(f"running {self.runner.current[0]}")
        elif self.runner.next_slots:
            job, slot = min(self.runner.next_slots.items(), key=lambda kv: kv[1].astimezone(timezone.utc))
            parts.append(f"next: {job} {slot.astimezone(self.config.daemon.tz):%Y-%m-%d %H:%M %Z}")
        return ", ".join(parts)

    # -- events ------------------------------------------------------------------

    def _on_transition(self, changes: list[Transition]) -> None:
        for change in changes:
            log = self.breaker_log.warning if change.new is State.OPEN else self.breaker_log.info
            log("breaker transition", platform=change.platform, old=change.old.value, new=change.new.value,
                reason=change.reason, generation=change.generation)
        self.store.wake.set()

    def refresh_settings(self) -> None:
        """Re-read the settings table; a failure keeps the settings in force."""
        with self._settings_lock:
            self._refresh_settings()

    def _refresh_settings(self) -> None:
        try:
            new, warnings = settings_mod.read(self.db, self.config.circuit_breaker.platforms)
        except DatabaseError as exc:
            if self.store.settings_error is None:
                self.log.warning("cannot read settings; keeping the current ones", error=str(exc))
            self.store.settings_error = str(exc)
            return
        self.store.settings_error = None
        texts = [str(w) for w in warnings]
        for warning in warnings:
            if str(warning) not in self.setting_warnings:
                self.log.warning("bad setting", key=warning.key, value=warning.value, problem=warning.problem)
        self.setting_warnings = texts
        if new != self.settings:
            old = settings_mod.as_dict(self.settings)
            self.log.info("settings changed", **{k: v for k, v in settings_mod.as_dict(new).items() if old[k] != v})
            self.settings = new
            self.registry.apply_settings(new)

    # -- API callbacks -------------------------------------------------------------

    def is_admin(self, peer: Peer) -> bool:
        if peer.uid in (0, os.geteuid()):
            return True
        group = self.config.daemon.admin_group
        if not group:
            return False
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            return False
        return peer.gid == gid or gid in peer.groups

    def health(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            self.db.ping()
            db: dict[str, Any] = {"reachable": True, "error": None}
        except DatabaseError as exc:
            db = {"reachable": False, "error": str(exc)}
        db.update(
            engine=self.db.name,
            url=self.db.describe(),
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            last_snapshot_at=self.store.last_snapshot_at.isoformat() if self.store.last_snapshot_at else None,
            snapshot_error=self.store.snapshot_error,
            settings_error=self.store.settings_error,
        )
        return {
            "daemon": "up",
            "version": __version__,
            "pid": os.getpid(),
            "host": self.host,
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "database": db,
            "settings": settings_mod.as_dict(self.settings),
            "setting_warnings": self.setting_warnings,
            "status": self.status_line(),
        }

    def reload(self, peer: Peer | None) -> dict[str, Any]:
        """Re-read the config file and the settings, and reopen the log files."""
        with self._reload_lock:
            self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            try:
                return self._reload(peer)
            finally:
                self.notify("READY=1", f"STATUS={self.status_line()}")

    def _reload(self, peer: Peer | None) -> dict[str, Any]:
        who = {"peer_uid": peer.uid, "peer_pid": peer.pid} if peer else {"signal": "SIGHUP"}
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            self.log.error("reload refused: invalid config; keeping the running one", error=str(exc), **who)
            return {"error": str(exc)}
        restart = [key for key, old, now in _restart_keys(self.config, new) if old != now]
        self.config = replace(
            self.config,
            daemon=replace(self.config.daemon, snapshot_interval=new.daemon.snapshot_interval,
                           settings_refresh=new.daemon.settings_refresh, idle_timeout=new.daemon.idle_timeout,
                           admin_group=new.daemon.admin_group),
            logging=replace(self.config.logging, level=new.logging.level),
            jobs=new.jobs,
        )
        logging.getLogger().setLevel(new.logging.level.upper())
        self.logs.reopen()
        self.refresh_settings()
        self.store.wake.set()
        self.log.info("reloaded", restart_needed_for=restart or None, **who)
        return {
            "reloaded": True,
            "settings": settings_mod.as_dict(self.settings),
            "setting_warnings": self.setting_warnings,
            "restart_needed_for": restart,
        }


def _restart_keys(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """Config keys a reload cannot apply to a running daemon."""
    return [
        ("daemon.socket", old.daemon.socket, new.daemon.socket),
        ("daemon.socket_group", old.daemon.socket_group, new.daemon.socket_group),
        ("daemon.timezone", old.daemon.timezone, new.daemon.timezone),
        ("daemon.max_connections", old.daemon.max_connections, new.daemon.max_connections),
        ("daemon.max_body_bytes", old.daemon.max_body_bytes, new.daemon.max_body_bytes),
        ("database", old.database, new.database),
        ("logging.dir", old.logging.dir, new.logging.dir),
        ("circuit_breaker", old.circuit_breaker, new.circuit_breaker),
    ]


def run(config: Config) -> int:
    return Daemon(config).run()
