"""Purges wait while the database is under strain, and end at their run's deadline.

Before each chunk a purge asks its throttle, which reads the database's own
signals, as pt-archiver's --check-slave-lag and pt-online-schema-change's
--max-load do:

- the lag of every replica: those `[database] replicas` names and those the
  primary lists (SHOW REPLICA HOSTS), over `max_replica_lag`; a replica whose
  replication is not running, or whose lag cannot be read, counts as over;
- InnoDB's history list length, over `max_history_length`: purge lag, the
  undo a long purge leaves for InnoDB to clean (where the server reports it,
  as MariaDB's Innodb_history_list_length does);
- Threads_running, over `max_threads_running`.

They are read before every chunk. While any is over, the purge pauses and
looks again every CHECK_EVERY seconds. A run past its deadline, paused or not, ends as interrupted with
the reason, keeping what it deleted; the next run goes on from there.
SQLite has none of these signals: only the deadline holds there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable

from ratecared.config import DatabaseConfig
from ratecared.db import Database, DatabaseError
from ratecared.job_contract import Stalled

# How often the signals are read again while paused. Between chunks they are read before every chunk: a
# few status reads against a chunk of a tenth of a second, and a limit is seen by the next chunk, not a
# second later.
CHECK_EVERY = 1.0


class Throttle:
    """One run's throttle: call it before each chunk; it returns why it paused, or None."""

    def __init__(self, database: Database, config: DatabaseConfig, stop: threading.Event, deadline: float,
                 log: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = database
        self._config = config
        self._stop = stop
        self._deadline_seconds = deadline
        self._log = log
        self._clock = clock
        self._deadline = clock() + deadline
        # Replicas by URL, opened at first use and closed with the run.
        self._replicas: dict[str, Database] = {}
        self._listing_refused = False

    def __call__(self) -> str | None:
        paused_for: str | None = None
        started = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now >= self._deadline:
                why = f"run deadline of {self._deadline_seconds:g} s reached"
                raise Stalled(f"{why} while paused: {paused_for}" if paused_for else why)
            strain = self.strain()
            if strain is None:
                if paused_for is not None:
                    self._log.info("purge resumed", paused_for=paused_for,
                                   paused_seconds=round(self._clock() - started, 1))
                return paused_for
            if paused_for is None:
                # Once a pause, not once a look: a lag that grows by a second is the same pause.
                self._log.warning("purge paused", reason=strain)
            paused_for = strain
            self._stop.wait(min(CHECK_EVERY, max(0.0, self._deadline - now)))
        return paused_for

    def strain(self) -> str | None:
        """Why the database is over a limit now, or None."""
        if self._db.name != "mysql":
            return None
        config = self._config
        status = dict(self._db.query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Threads_running',"
                                     " 'Innodb_history_list_length', 'Slaves_connected')"))
        running = int(status.get("Threads_running") or 0)
        if running > config.max_threads_running:
            return f"{running} threads running (max_threads_running {config.max_threads_running})"
        history = status.get("Innodb_history_list_length")
        if history is not None and int(history) > config.max_history_length:
            return (f"InnoDB history list length {int(history):,} "
                    f"(max_history_length {config.max_history_length:,})")
        connected = status.get("Slaves_connected")
        for url in self._replica_urls(connected):
            # Each look at a replica may take its timeouts: a stop or the deadline is not kept waiting for
            # the others.
            if self._stop.is_set():
                return None
            if self._clock() >= self._deadline:
                raise Stalled(f"run deadline of {self._deadline_seconds:g} s reached while its replicas were "
                              "being looked at")
            lag = self._lag(url)
            if lag is not None:
                return lag
        return None

    def _replica_urls(self, connected: Any) -> list[str]:
        """The replicas to watch; `connected` is MariaDB's count of them, None from MySQL, which has none."""
        urls = list(self._config.replicas)
        if (connected is None or int(connected) > 0) and not self._listing_refused:
            mariadb = connected is not None
            try:
                # MariaDB's spelling since 10.5, and MySQL's since 8.0.22 (8.4 has no other).
                hosts = self._db.query("SHOW REPLICA HOSTS" if mariadb else "SHOW REPLICAS")
            except DatabaseError as exc:
                # Once a run: a purge cannot wait on replicas it cannot see, and says how to let it.
                self._listing_refused = True
                denied = str(exc).startswith(("(1227)", "(1044)", "(1045)"))
                privilege = "REPLICATION MASTER ADMIN" if mariadb else "REPLICATION SLAVE"
                self._log.warning("cannot list the primary's replicas; their lag is not watched", error=str(exc),
                                  hint=(f"grant {privilege}, or " if denied else "") + "name them in [database] "
                                                                                        "replicas")
                hosts = []
            for row in hosts:
                host, port = row[1], row[2]
                if host:
                    url = self._db.dialect.at(host, int(port))
                    if url not in urls:
                        urls.append(url)
        return urls

    def _lag(self, url: str) -> str | None:
        """Why this replica is over the limit, or None when it is not."""
        replica = self._replicas.get(url)
        if replica is None:
            # Every read and write bounded too: a hung replica is one whose lag cannot be read.
            replica = self._replicas[url] = Database(replace(self._config, url=url,
                                                             io_timeout=self._config.connect_timeout))
        name = replica.describe()
        try:
            rows = replica.query_named("SHOW REPLICA STATUS")
        except DatabaseError as exc:
            return f"replica {name}: its lag cannot be read: {exc}"
        if not rows:
            return f"replica {name} is not replicating (SHOW REPLICA STATUS is empty)"
        status = rows[0]
        lag = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
        if lag is None:
            io = status.get("Slave_IO_Running", status.get("Replica_IO_Running"))
            sql = status.get("Slave_SQL_Running", status.get("Replica_SQL_Running"))
            return f"replica {name}: replication is not running (IO thread {io}, SQL thread {sql})"
        if float(lag) > self._config.max_replica_lag:
            return f"replica {name} lags {float(lag):g} s (max_replica_lag {self._config.max_replica_lag:g} s)"
        return None

    def close(self) -> None:
        for replica in self._replicas.values():
            replica.close()
