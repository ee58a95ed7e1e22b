"""The daemon's lifecycle: start the parts in order, serve, stop them in time.

Threads: the main thread runs the asyncio loop (control socket, signals,
ticks, watchdog); `store` writes snapshots and re-reads settings (store.py);
`scheduler` runs the jobs, one at a time (scheduler/runner.py); the
`control-worker` pool answers the API calls that touch the database. The
watchdog is pinged from the loop only while `store` shows progress and
`scheduler` is alive, so a wedged thread gets the daemon restarted instead
of hidden; a long job does not stop the pings.

Each part owns its own state and is handed only what it needs: the config
through the one `CurrentConfig` reference, the settings through
`LiveSettings`, the snapshot's outcome through `Snapshots`. This module
only wires them and runs the loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import grp
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ratecared import __version__, access, breaker_state, event_loop, logs
from ratecared import settings as settings_mod
from ratecared.breaker.machine import State
from ratecared.breaker.registry import Registry
from ratecared.breaker_journal import BreakerJournal
from ratecared.cluster import ClusterCommands
from ratecared.config import EX_CONFIG, Config, CurrentConfig
from ratecared.control.api import Api, Scrapes, metrics_only
from ratecared.control.server import ControlServer, Request, SocketInUse, bind_tcp, bind_unix, check_unix
from ratecared.db import Database, DatabaseError, migrations
from ratecared.events import EventLog
from ratecared.health import Health
from ratecared.jobs import DISABLED_BY, JOBS
from ratecared.metrics import Collector, exposition
from ratecared.notify import Notifier, status_text
from ratecared.reload import Reloader
from ratecared.scheduler.runner import Runner
from ratecared.settings import LiveSettings
from ratecared.store import Snapshots, StoreThread, within
from ratecared.transitions import on_transitions

EX_UNAVAILABLE = 69
# In daemon.state_dir: whoever holds its flock owns the directory's journal.
LOCK_FILE = "ratecared.lock"
TICK = 1.0
# How long the stop waits for a running job to reach its next chunk.
JOB_STOP_WAIT = 8.0
# The final snapshot's share of systemd's stop timeout, when the database is slow or locked.
FINAL_SNAPSHOT_WAIT = 3.0
FINAL_EVENTS_WAIT = 1.0


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = CurrentConfig(config)
        self.host = config.daemon.host
        self.notify = Notifier()
        self.logs = logs.Logs(config.logging, files=False)
        self.log = logs.get("ratecared")
        self.db = Database(config.database)
        self.journal = BreakerJournal(config.daemon.state_dir, self.host, self.db.describe(),
                                      logs.get("ratecared.breaker"))
        self.events = EventLog(self.db, self.host, logs.get("ratecared.breaker"))
        self.registry = Registry(
            config.circuit_breaker.platforms,
            settings_mod.breaker_policy(settings_mod.Settings(), config.circuit_breaker.permit_lease),
            on_transition=on_transitions(logs.get("ratecared.breaker"), lambda: self.store.wake(), self.events.record),
            journal=self.journal,
        )
        self.snapshots = Snapshots(
            lambda wall: breaker_state.save(self.db, self.registry, self.host, wall, self.journal), self.log)
        self.settings = LiveSettings(self.db, lambda: self.config().circuit_breaker.platforms,
                                     self._apply_breaker_policy, self.log)
        self.cluster = ClusterCommands(self.db, self.registry, self.host, logs.get("ratecared.breaker"),
                                       lambda: self.config().daemon.snapshot_interval)
        self.store = StoreThread(self.snapshots, self._refresh, self.config, self._write_events)
        self.runner = Runner(self.config, self.db, self.host, JOBS, settings=self.settings.current,
                             refresh_settings=self.settings.refresh, disabled_by=DISABLED_BY)
        # The loop is chosen once: daemon.event_loop needs a restart.
        self.loop_factory, self.loop_name = event_loop.factory(config.daemon.event_loop)
        self.health = Health(self.db, self.snapshots.state, self.settings.state, self.status_line, self.host,
                             self.journal, config.daemon.tz, self.loop_name)
        self.reload = Reloader(self.config, self._apply, self._settings_reply, self.notify, self.status_line,
                               self.log)
        # The flock on the state directory's lock file, held for the process's life.
        self._state_lock = -1
        self._stop_asked = False

    # -- start -------------------------------------------------------------------

    def run(self) -> int:
        # A stop asked for while starting (systemctl stop, Ctrl-C) is kept and
        # carried out once serving, instead of killing a daemon in the middle
        # of its start-up; the event loop's own handlers take over in _serve.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_while_starting)
        try:
            return self._run()
        finally:
            self.journal.close()
            # The state directory's lock stays taken: a thread that outlived
            # its join may still fold the journal. The process's exit drops it.
            self.db.close()
            self.logs.close()

    def _stop_while_starting(self, signum: int, frame: object) -> None:
        self._stop_asked = True

    def _run(self) -> int:
        config = self.config()
        self.log.info("starting", version=__version__, config=str(config.path),
                      database=self.db.describe(), pid=os.getpid())
        code = self._open_database()
        if code:
            return code
        self.logs.open_files()
        self.settings.refresh()
        # A daemon already serving on the socket is named as such, before the
        # state directory's lock would name it as holding that. The socket is
        # bound only once the breakers are restored: a client that connects
        # is answered, never held in the backlog of a daemon that may yet refuse to start.
        try:
            check_unix(config.daemon.socket)
        except SocketInUse as exc:
            self.log.error("cannot bind the control socket", error=str(exc))
            return 1
        except OSError as exc:
            self.log.error("cannot bind the control socket", path=str(config.daemon.socket), error=str(exc))
            return 1
        code = self._restore_breakers(config)
        if code:
            return code
        metrics_sock = None
        if config.metrics.address is not None:
            try:
                metrics_sock = bind_tcp(*config.metrics.address)
            except OSError as exc:
                self.log.error("cannot open the metrics listener", key="metrics.listen", listen=config.metrics.listen,
                               config=str(config.path), error=str(exc))
                return 1
        try:
            sock = bind_unix(config.daemon.socket, config.daemon.socket_group or None)
        except SocketInUse as exc:
            self.log.error("cannot bind the control socket", error=str(exc))
            return 1
        except KeyError:
            self.log.error("socket group does not exist", key="daemon.socket_group",
                           group=config.daemon.socket_group, config=str(config.path))
            return EX_CONFIG
        except OSError as exc:
            self.log.error("cannot bind the control socket", path=str(config.daemon.socket), error=str(exc))
            return 1
        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            return runner.run(self._serve(sock, metrics_sock))

    def _restore_breakers(self, config: Config) -> int:
        """Hold the state directory, replay the journal over the snapshot: 0, or the exit code."""
        try:
            self._state_lock = lock_state_dir(config.daemon.state_dir)
        except StateDirInUse:
            self.log.error(f"another ratecared holds the state directory {config.daemon.state_dir}; exiting",
                           key="daemon.state_dir", lock=str(config.daemon.state_dir / LOCK_FILE))
            return 1
        except OSError as exc:
            self.log.error("cannot use the state directory: its lock file cannot be opened",
                           key="daemon.state_dir", path=str(config.daemon.state_dir / LOCK_FILE),
                           config=str(config.path), error=str(exc))
            return EX_CONFIG
        wall = datetime.now(timezone.utc)
        try:
            journaled = self.journal.open(wall)
        except OSError as exc:
            self.log.error("cannot open the breaker journal", key="daemon.state_dir", path=str(self.journal.path),
                           config=str(config.path), error=str(exc))
            return EX_CONFIG
        try:
            for line in breaker_state.restore(self.db, self.registry, self.host, wall, journaled):
                logs.get("ratecared.breaker").info("breaker restored", detail=line)
        except DatabaseError as exc:
            self.log.error("cannot read breaker snapshots", error=str(exc))
            return EX_UNAVAILABLE
        self.registry.tick()
        # A cluster command still in force (a hold on every host) holds here too from the start.
        self._apply_cluster_commands()
        return 0

    def _open_database(self) -> int:
        config = self.config().database
        deadline = time.monotonic() + config.startup_wait
        while True:
            try:
                todo = migrations.pending(self.db)
                break
            except migrations.MigrationChanged as exc:
                # Not the database's fault, and no restart mends it: 78 keeps systemd from looping.
                self.log.error("a shipped migration differs from the one applied", error=str(exc))
                return EX_CONFIG
            except DatabaseError as exc:
                if time.monotonic() >= deadline:
                    self.log.error("database unreachable; giving up", database=self.db.describe(), error=str(exc))
                    return EX_UNAVAILABLE
                self.log.warning("database unreachable; retrying", database=self.db.describe(), error=str(exc))
                self.notify(f"STATUS=waiting for the database: {exc}", "EXTEND_TIMEOUT_USEC=10000000")
                time.sleep(2)
        if todo and not config.auto_migrate:
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

    async def _serve(self, sock: socket.socket, metrics_sock: socket.socket | None) -> int:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="control-worker")
        scrapes = Scrapes(exposition(Collector(self.registry.status, self.runner.figures, self.db.probe)), executor)
        api = Api(self.registry, self.runner, settings=self.settings, health=self.health, reload=self.reload,
                  is_admin=lambda peer: access.is_admin(peer, self.config().daemon.admin_group), executor=executor,
                  scrapes=scrapes, events=self.events, cluster=self.cluster, tz=lambda: self.config().daemon.tz)

        def on_error(request: Request) -> None:
            self.log.exception("request failed", method=request.method, path=request.path)

        servers = [ControlServer(
            api.handle, lambda: self.config().daemon,
            is_privileged=lambda peer: access.is_admin(peer, self.config().daemon.admin_group),
            on_error=on_error, on_answer=_log_request,
        )]
        # Over TCP no peer is known, so none is privileged, and all share one uid's cap.
        if metrics_sock is not None:
            servers.append(ControlServer(metrics_only(scrapes), lambda: self.config().daemon, on_error=on_error,
                                         on_answer=_log_request))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        if self._stop_asked:
            stop_requested.set()
        await servers[0].start(sock)
        if metrics_sock is not None:
            await servers[1].start(metrics_sock)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(executor, self.reload, None))
        self.store.start()
        self.runner.start()
        self.log.info("ready", socket=str(self.config().daemon.socket), platforms=len(self.registry.platforms),
                      event_loop=self.loop_name,
                      **({"metrics": self.config().metrics.listen} if metrics_sock is not None else {}))
        self.notify("READY=1", f"STATUS={self.status_line()}", f"MAINPID={os.getpid()}")
        next_watchdog = 0.0
        tick = min(TICK, self.notify.watchdog_interval or TICK)
        shown = ""
        code = 0
        while not stop_requested.is_set():
            try:
                await asyncio.wait_for(stop_requested.wait(), tick)
            except asyncio.TimeoutError:
                pass
            dead = [t.name for t in (self.runner, self.store) if not t.is_alive()]
            if not self.journal.alive():
                dead.append("breaker-journal")
            if dead and not stop_requested.is_set():
                # A daemon without its scheduler or snapshots only looks healthy:
                # exit non-zero so systemd restarts it and the journal says why.
                self.log.critical("a thread of the daemon died; exiting", threads=dead)
                code = 1
                break
            # Both may wait for the journal's fdatasync: off the event loop, which answers clients.
            await asyncio.to_thread(self.registry.tick)
            self.logs.repeats.flush()
            status = await asyncio.to_thread(self.status_line)
            if status != shown:
                self.notify(f"STATUS={status}")
                shown = status
            interval = self.notify.watchdog_interval
            if interval and time.monotonic() >= next_watchdog and self._threads_alive():
                self.notify("WATCHDOG=1")
                next_watchdog = time.monotonic() + interval
        await self._stop(servers, executor)
        return code

    def _threads_alive(self) -> bool:
        stale = time.monotonic() - self.store.heartbeat()
        return (self.store.is_alive() and self.runner.is_alive() and self.journal.alive()
                and stale < 60 + self.config().database.connect_timeout)

    async def _stop(self, servers: list[ControlServer], executor: ThreadPoolExecutor) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")
        self.log.info("stopping")
        # No new clients; the open ones (a `run --wait`, the app's breaker
        # calls) are answered until the job has stopped and been recorded.
        for server in servers:
            server.stop_accepting()
        self.runner.stop()
        self.store.stop()
        await asyncio.to_thread(self.runner.join, JOB_STOP_WAIT)
        if self.runner.is_alive():
            self.log.warning("a job did not stop in time; its run shows as interrupted at the next start",
                             job=self.runner.current_job())
            self.runner.close_queue()
        await asyncio.gather(*(server.close(grace=1.0) for server in servers))
        # The store thread may be waiting on a locked database: the final
        # snapshot waits for neither it nor the database past its share.
        await asyncio.to_thread(self.store.join, 0.5)
        saved = await asyncio.to_thread(self.snapshots.write_within, FINAL_SNAPSHOT_WAIT)
        await asyncio.to_thread(within, self.events.write, FINAL_EVENTS_WAIT)
        if lost := self.events.waiting():
            # The breakers' state is in the journal; only these rows of the audit trail go with the process.
            self.log.warning("breaker events not written: the database did not take them in time", lost=lost)
        executor.shutdown(wait=False, cancel_futures=True)
        outcome = {True: "written", False: "failed", None: "timed out: the database did not answer"}[saved]
        self.log.info("stopped", final_snapshot=outcome)

    def _refresh(self) -> None:
        """The store thread's periodic re-read: the settings table, then the cluster's commands."""
        self.settings.refresh()
        self._apply_cluster_commands()

    def _apply_cluster_commands(self) -> None:
        try:
            self.cluster.apply_pending()
        except DatabaseError as exc:
            # Tried again at the next refresh: nothing is lost, the commands wait in the table.
            self.log.warning("cannot apply the cluster's commands yet", error=str(exc))

    def _write_events(self) -> None:
        self.events.write()
        self.events.trim(self.settings.current().events_retention_days, time.monotonic())

    def status_line(self) -> str:
        states = [s.state for s in self.registry.status()]
        current = self.runner.current_job()
        return status_text(len(states), states.count(State.OPEN), states.count(State.HALF_OPEN),
                           self.snapshots.state().error, current, None if current else self.runner.next_run(),
                           self.config().daemon.tz)

    # -- reload --------------------------------------------------------------------

    def _apply(self, old: Config, new: Config) -> None:
        """Have each part take the reloaded config: called after the reference is replaced."""
        self.logs.set_level(new.logging.level)
        self.logs.reopen()
        if new.daemon.socket_group != old.daemon.socket_group:
            gid = grp.getgrnam(new.daemon.socket_group).gr_gid if new.daemon.socket_group else os.getegid()
            os.chown(new.daemon.socket, -1, gid)
        # Platforms first: the settings are read against the new list.
        self.registry.set_platforms(new.circuit_breaker.platforms)
        self.settings.refresh()
        # Unchanged settings call no one: the permit lease may still have changed.
        self._apply_breaker_policy(self.settings.current())
        self.store.wake()
        self.runner.wake_up()

    def _apply_breaker_policy(self, settings: settings_mod.Settings) -> None:
        """The breakers take these settings, with the permit lease of the config in effect."""
        self.registry.apply_policy(settings_mod.breaker_policy(settings, self.config().circuit_breaker.permit_lease))

    def _settings_reply(self) -> dict[str, Any]:
        state = self.settings.state()
        return {"settings": settings_mod.as_dict(state.settings), "setting_warnings": [str(w) for w in state.warnings]}


_requests = logging.getLogger("ratecared.control")


def _log_request(request: Request, status: int, seconds: float) -> None:
    # Checked here: a request is a few microseconds, and building a log event that is dropped costs more.
    if _requests.isEnabledFor(logging.DEBUG):
        logs.get("ratecared.control").debug(
            "request", peer_uid=request.peer.uid, peer_pid=request.peer.pid, method=request.method,
            path=request.path, status=status, ms=round(seconds * 1000, 2))


class StateDirInUse(OSError):
    """Another process holds the state directory's lock."""


def lock_state_dir(directory: Path) -> int:
    """Take the state directory for this process: the open, flocked lock file's descriptor.

    Two daemons on one journal would fold and rewrite each other's lines
    away. The lock goes with the process, however it ends: kill -9 leaves no
    stale lock behind. Raises StateDirInUse when another process holds it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUse(f"{directory / LOCK_FILE} is held by another process") from None
    except OSError:
        os.close(fd)
        raise
    return fd


def run(config: Config) -> int:
    return Daemon(config).run()
