"""The breaker journal: a transition is on disk before any reply shows it (DESIGN §7).

An append-only file of JSON lines in the state directory, one line for each
breaker a transition changed, holding the breaker as its snapshot row does
(breaker_state.row_of), plus the host and database it belongs to. The
registry appends under its lock, which costs no I/O; after the lock, and
before the answer goes out, `sync` writes what is waiting and fdatasyncs it,
several threads' transitions in one write as a database groups its commits.

At start the journal is replayed over the database's snapshot: per
platform, its last line wins where it is newer (breaker_state.newest). A
written snapshot folds the journal: the lines it holds go, so after a clean
stop the file is empty. The file never grows past MAX_BYTES: it is then
rewritten with the last line of each platform, which is all a replay reads,
so a database that is down for days costs a few kilobytes here.

A line the process died writing is a transition nobody was told of: replay
skips it and cuts it off, so that the next line starts on a line of its own.
When the disk refuses a write, the reply goes out all the same (the breakers
must keep answering: a held reply is released as for a write that worked)
and the error is logged; the lines wait for the next write or the next
snapshot, whichever comes first.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ratecared import breaker_state
from ratecared.breaker.machine import BreakerView

FILE = "breakers.journal"
# What a probe of a disk that refused a write asks it for (BreakerJournal.probe).
PROBE_BYTES = 4096
# Past this the file is rewritten with one line per platform; a line is about 450 bytes.
MAX_BYTES = 64 * 1024


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class BreakerJournal:
    """The journal file of one host's breakers on one database.

    Two locks, so that a reply which needs nothing written never waits for a
    disk: `_lock` owns the queue (what is appended, what is on disk) and is
    never held across I/O; `_io` owns the file and is held by the one thread
    writing it, through its fdatasync. `sync` reads how far the disk is
    without a lock first (see there).
    """

    def __init__(self, directory: Path, host: str, database: str, log: Any,
                 wall: Callable[[], datetime] = _utc_now,
                 fdatasync: Callable[[int], None] = os.fdatasync) -> None:
        self.path = Path(directory) / FILE
        self._host = host
        self._database = database
        self._log = log
        self._wall = wall
        self._fdatasync = fdatasync
        self._lock = threading.Lock()
        # Under _lock: the last breaker view appended per platform and not yet
        # written, with its sequence number and wall time; how far each goes.
        self._pending: dict[str, tuple[int, BreakerView, datetime]] = {}
        self._appended = 0
        self._synced = 0
        # Under _lock: who waits for a sequence number to be synced, and the
        # writer thread that syncs for them (started by the first).
        self._callbacks: list[tuple[int, Callable[[], None]]] = []
        self._wake = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._closed = False
        self._io = threading.Lock()
        # Under _io: the file, its size and lines, and the last line written
        # for each platform with its sequence number (0: an earlier process's).
        self._fd = -1
        self._size = 0
        self._lines = 0
        self._last: dict[str, tuple[int, bytes]] = {}

    # -- start and stop ------------------------------------------------------------

    def open(self, wall: datetime) -> list[BreakerView]:
        """Open the file for appending; return the breakers an earlier process left in it, seen at `wall`.

        Raises OSError when the state directory cannot hold it.
        """
        with self._io:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            # Whatever follows the last newline is a line the process died writing.
            whole = data[:data.rfind(b"\n") + 1]
            views: dict[str, BreakerView] = {}
            for line in whole.splitlines(keepends=True):
                view = self._parse(line, wall)
                if view is not None:
                    views[view.platform] = view
                    self._last[view.platform] = (0, line)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            if len(whole) < len(data):
                os.ftruncate(self._fd, len(whole))
            if created:
                _sync_directory(self.path.parent)
            self._size = len(whole)
            self._lines = whole.count(b"\n")
        return list(views.values())

    def _parse(self, line: bytes, wall: datetime) -> BreakerView | None:
        """The breaker a line holds when it is one of this host's on this database; None for anything else."""
        try:
            row = json.loads(line)
            if row["host"] != self._host or row["database"] != self._database:
                return None
            return breaker_state.view_of_values(row, wall)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            writer = self._writer
            self._wake.notify_all()
        if writer is not None:
            writer.join(5.0)
            if writer.is_alive():
                # It holds _io through a disk that does not answer: the process's exit closes the file.
                return
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # -- the registry's side ---------------------------------------------------------

    def append(self, views: list[BreakerView]) -> int:
        """Queue these breakers as they are after a transition; return the number to sync to."""
        wall = self._wall()
        with self._lock:
            self._appended += 1
            for view in views:
                # Only a breaker's last state matters: a newer view replaces one not yet written.
                self._pending[view.platform] = (self._appended, view, wall)
            if self._writer is not None:
                self._wake.notify()
            return self._appended

    def synced(self, seq: int) -> bool:
        """Whether everything appended up to `seq` is on disk, or the disk has refused it; no lock, no I/O."""
        # `_synced` only grows, so a stale read only answers False too early.
        return self._synced >= seq

    def on_synced(self, seq: int, callback: Callable[[], None]) -> None:
        """Call `callback` once `synced(seq)`: at once if it is, else from the thread that syncs it.

        For the event loop, which must not wait for a disk: the journal's
        writer thread writes what is waiting, so the loop goes on answering
        everything that does not need it.
        """
        with self._lock:
            if self._synced < seq and not self._closed:
                self._callbacks.append((seq, callback))
                if self._writer is None:
                    writer = threading.Thread(target=self._write_forever, name="breaker-journal", daemon=True)
                    # Set once started: if it cannot start, the next caller tries again.
                    writer.start()
                    self._writer = writer
                self._wake.notify()
                return
        callback()

    def alive(self) -> bool:
        """False when the writer thread has died while the journal is open: held replies would wait for a snapshot."""
        writer = self._writer
        return writer is None or writer.is_alive() or self._closed

    def _write_forever(self) -> None:
        """The writer thread: sync whatever is appended and not yet synced, in batches, until close.

        At close it syncs what is still appended first, then answers whoever still waits.
        """
        while True:
            with self._lock:
                while self._synced >= self._appended and not self._closed:
                    self._wake.wait()
                upto = self._appended
                closing = self._closed
            try:
                self.sync(upto)
            except Exception as exc:  # noqa: BLE001 - a held reply must be answered whatever went wrong
                self._write_error = repr(exc)
                self._log.error("cannot write the breaker journal; transitions are durable only once a "
                                "snapshot is written", path=str(self.path), error=repr(exc))
                self._advance(upto)
            if closing:
                with self._lock:
                    due, self._callbacks = self._callbacks, []
                for callback in due:
                    callback()
                return

    def sync(self, seq: int) -> None:
        """Return once everything appended up to `seq` is on disk, or the disk has refused it."""
        # Every decision asks, and almost always the answer is yes: read
        # without the lock. `_synced` only grows, and only once its lines are
        # on disk, so a stale value only sends the caller the slow way, which
        # asks again under the lock.
        if self._synced >= seq:
            return
        with self._io:
            if self._synced >= seq:
                return
            upto, _ = self._write_pending()
            self._advance(upto)

    def _write_pending(self) -> tuple[int, bool]:
        """Write the lines waiting; (how far that covers, whether any waited). Under _io."""
        with self._lock:
            batch = sorted(self._pending.values(), key=lambda entry: entry[0])
            self._pending = {}
            upto = self._appended
        if not batch:
            return upto, False
        written = False
        try:
            written = self._write(batch)
        finally:
            if not written:
                # Refused or raised: the lines wait for the next write, unless a newer view of
                # the breaker came in meanwhile.
                with self._lock:
                    for entry in batch:
                        self._pending.setdefault(entry[1].platform, entry)
        return upto, True

    def _advance(self, upto: int) -> None:
        """Everything up to `upto` is on disk or refused: say so, and call back who waited for it."""
        with self._lock:
            self._synced = max(self._synced, upto)
            if not self._callbacks:
                return
            due = [callback for seq, callback in self._callbacks if seq <= self._synced]
            if due:
                self._callbacks = [entry for entry in self._callbacks if entry[0] > self._synced]
        for callback in due:
            callback()

    def _write(self, batch: list[tuple[int, BreakerView, datetime]]) -> bool:
        """Append the batch and fdatasync it; False, logged, when the disk refuses. Under _io."""
        lines = [(seq, view.platform, self._line(view, wall)) for seq, view, wall in batch]
        data = b"".join(line for _, _, line in lines)
        try:
            self._append(data)
        except OSError as exc:
            self._refused(exc)
            return False
        self._size += len(data)
        self._lines += len(lines)
        for seq, platform, line in lines:
            self._last[platform] = (seq, line)
        try:
            self._fdatasync(self._fd)
        except OSError as exc:
            self._refused(exc)
            return False
        if self._size > MAX_BYTES:
            self._rewrite(dict(self._last))
        self._write_error = None
        return True

    # Why the disk refused the last write, until a later one succeeds; read by health.
    _write_error: str | None = None

    def probe(self) -> str | None:
        """After a refused write, try the disk again: write the lines still waiting, or, when a snapshot
        has taken them all, ask the disk for a page. Return the error that remains, or None.

        Writes happen only on transitions: without this, a disk that had room
        again would be reported as refusing until the next one.
        """
        if self._write_error is None:
            return None
        with self._io:
            if self._fd < 0:
                return self._write_error
            _, waited = self._write_pending()
            if not waited:
                try:
                    os.posix_fallocate(self._fd, self._size, PROBE_BYTES)
                    os.ftruncate(self._fd, self._size)
                    self._write_error = None
                except OSError as exc:
                    self._write_error = str(exc)
        return self._write_error

    def _refused(self, exc: OSError) -> None:
        self._write_error = str(exc)
        self._log.error("cannot write the breaker journal; transitions are durable only once a snapshot is written",
                        path=str(self.path), error=str(exc))

    def _line(self, view: BreakerView, wall: datetime) -> bytes:
        row = {"database": self._database, **breaker_state.row_of(view, self._host, wall)}
        return json.dumps(row, separators=(",", ":")).encode() + b"\n"

    def _append(self, data: bytes) -> None:
        """One write of whole lines; a part the disk took of them is cut off again."""
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            if written:
                os.ftruncate(self._fd, self._size)
            raise

    # -- the snapshot's side -----------------------------------------------------------

    def fold(self, seq: int) -> None:
        """A snapshot holding everything appended up to `seq` is in the database: drop those lines."""
        with self._io:
            with self._lock:
                for platform in [p for p, entry in self._pending.items() if entry[0] <= seq]:
                    del self._pending[platform]
            keep = {platform: entry for platform, entry in self._last.items() if entry[0] > seq}
            if len(keep) == self._lines:
                return
            if keep:
                self._rewrite(keep)
                return
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                self._log.error("cannot empty the breaker journal", path=str(self.path), error=str(exc))
                return
            self._size = self._lines = 0
            self._last = {}

    def _rewrite(self, keep: dict[str, tuple[int, bytes]]) -> None:
        """Replace the file by one holding only `keep`: the old one stays until the new one is on disk."""
        data = b"".join(line for _, line in keep.values())
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            # Opened for appending: after the rename this is the journal.
            fd = os.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            self._log.error("cannot rewrite the breaker journal; it stays as it is", path=str(self.path),
                            error=str(exc))
            return
        try:
            if os.write(fd, data) != len(data):
                raise OSError("short write: the disk is full")
            self._fdatasync(fd)
            os.replace(temporary, self.path)
        except OSError as exc:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            self._log.error("cannot rewrite the breaker journal; it stays as it is", path=str(self.path),
                            error=str(exc))
            return
        os.close(self._fd)
        self._fd = fd
        self._size = len(data)
        self._lines = len(keep)
        self._last = keep
        try:
            _sync_directory(self.path.parent)
        except OSError as exc:
            self._log.error("cannot sync the state directory; the rewritten journal may not survive a power cut",
                            path=str(self.path.parent), error=str(exc))


def _sync_directory(directory: Path) -> None:
    """Make a file's creation or rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
