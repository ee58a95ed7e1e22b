"""The one logging setup: structlog over the standard library's handlers.

Standard output is for journald: one line per event, `<N>` syslog priority
first so that `journalctl -p warning` filters, values quoted so a traceback
stays one entry. Files in the log directory get JSON lines: everything in
`ratecared.log`, and each part (breakers, each job) also in its own file, as
the seed had them. WatchedFileHandler notices logrotate's rename by itself,
so rotation needs no signal.

Nothing a client does can fill the disk with logs: a warning or an error
that repeats is written once per cause per REPEAT_INTERVAL, then once more
with the count (`Repeats`). A log disk that is full costs one line on
stderr per interval, not logging's multi-line report for every record, and
the files hold whole lines only, before and after (`_Lines`).
"""

from __future__ import annotations

import errno
import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, TextIO

import structlog

from ratecared.config import LoggingConfig

# Logger name -> the file it also writes to, besides ratecared.log.
PART_FILES = {
    "ratecared.breaker": "circuit-breaker.log",
    "ratecared.jobs.aggregate_statistics": "aggregate.log",
    "ratecared.jobs.cleanup_expired_cache": "cleanup.log",
    "ratecared.jobs.warm_cache": "warming.log",
}

_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        value = ",".join(map(str, value))
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\r\t\\'):
        return text
    return json.dumps(text)


_CONTEXT_FIRST = ("job", "run_id")


def render_line(_: Any, __: str, event: dict[str, Any]) -> str:
    """`event key=value …`, always one line."""
    message = str(event.pop("event", ""))
    for key in ("timestamp", "level", "logger"):
        event.pop(key, None)
    # A run's context first, though merge_contextvars adds it last: `journalctl | grep job=…` reads down a column.
    ordered = {k: event.pop(k) for k in _CONTEXT_FIRST if k in event} | event
    fields = " ".join(f"{k}={_plain(v)}" for k, v in ordered.items())
    line = f"{message} {fields}".strip()
    return line.replace("\n", "\\n").replace("\r", "\\r")


class JournalFormatter(structlog.stdlib.ProcessorFormatter):
    """Prefix each line with `<N>` so journald stores the right priority."""

    def __init__(self, prefix: bool) -> None:
        super().__init__(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                render_line,
            ],
            foreign_pre_chain=_SHARED,
        )
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        level = record.levelname.lower()
        if self.prefix:
            return f"<{_PRIORITY.get(level, 6)}>{line}"
        return f"{time.strftime('%H:%M:%S')} {level:<7} {line}"


def _json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
        foreign_pre_chain=_SHARED,
    )


# A cause that comes again within this many seconds is counted, not written.
REPEAT_INTERVAL = 60.0
# Kinds of record followed at once; past this many in one interval, the new ones share one count.
MAX_KINDS = 256
# Causes of one kind written in one interval; past this many the rest are counted.
KIND_BUDGET = 16
# Logged every time: DESIGN §7 wants each transition in the log, and a
# breaker's own timing (threshold, open time) bounds how often they come.
EVERY_ONE = frozenset({("ratecared.breaker", "breaker transition")})
_OTHER_KINDS = ("ratecared", logging.WARNING, "log lines of other kinds not written", None)
# What a structlog event holds besides the values it was logged with.
_NOT_VALUES = frozenset({"event", "timestamp", "level", "logger", "exc_info", "exception", "stack_info"})


def _event(record: logging.LogRecord) -> str:
    return str(record.msg.get("event")) if isinstance(record.msg, dict) else str(record.msg)


def _values(record: logging.LogRecord) -> str:
    """The values a record was logged with, as one string: what tells two causes of one kind apart."""
    if isinstance(record.msg, dict):
        return repr(sorted((k, str(v)[:200]) for k, v in record.msg.items() if k not in _NOT_VALUES))
    return repr(record.args)[:1000]


def _raised_at(record: logging.LogRecord) -> tuple[str, str, int] | None:
    """The type of a record's exception and the line that raised it; None without one."""
    info: Any = record.exc_info
    if not info and isinstance(record.msg, dict):
        info = record.msg.get("exc_info")
        if info is True:
            # structlog's .exception() leaves it to the formatter, which reads sys.exc_info() too.
            info = sys.exc_info()
        elif isinstance(info, BaseException):
            info = (type(info), info, info.__traceback__)
    if not isinstance(info, tuple) or info[0] is None:
        return None
    tb: TracebackType | None = info[2]
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (info[0].__name__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)


@dataclass
class _Window:
    """One kind of record within one interval: when it began, what went out, how many did not."""

    began: float
    written: set[int] = field(default_factory=set)
    dropped: int = 0


class Repeats(logging.Filter):
    """Writes each cause of a warning or an error once per interval and counts its repeats.

    A kind of record is where it comes from: its logger, its level, its
    event, and for an exception its type and the line that raised it. A
    cause is a kind with the values it was logged with, so that "bad
    setting" for two keys is two causes. Within an interval each cause goes
    out once, each kind at most KIND_BUDGET times, and the rest are counted.
    So a client that makes the same request fail a thousand times costs a
    line and a count, not a thousand tracebacks. The first record of a kind
    after its interval carries `repeated`, how many were not written; `flush`
    writes the counts of kinds that did not come again. One instance serves
    every handler, and decides once for each record.
    """

    def __init__(self, interval: float = REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # Under _lock: kind -> this interval's window.
        self._windows: dict[tuple[Any, ...], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        verdict = record.__dict__.get("_repeats")
        if verdict is None:
            verdict = record._repeats = self._decide(record)  # type: ignore[attr-defined]
        return verdict

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or (record.name, _event(record)) in EVERY_ONE:
            return True
        kind: tuple[Any, ...] = (record.name, record.levelno, _event(record), _raised_at(record))
        cause = hash(_values(record))
        now = self._clock()
        with self._lock:
            window = self._windows.get(kind)
            if window is None and len(self._windows) >= MAX_KINDS:
                kind, window = _OTHER_KINDS, self._windows.get(_OTHER_KINDS)
            if window is not None and now - window.began < self.interval:
                if cause in window.written or len(window.written) >= KIND_BUDGET:
                    window.dropped += 1
                    return False
                window.written.add(cause)
                return True
            self._windows[kind] = _Window(now, {cause})
        if window is not None and window.dropped:
            self._mention(record, window.dropped)
        return True

    def _mention(self, record: logging.LogRecord, count: int) -> None:
        if isinstance(record.msg, dict):
            record.msg = {**record.msg, "repeated": count, "within_s": self.interval}
        else:
            record.msg = f"{record.getMessage()} (repeated {count} times within {self.interval:g} s)"
            record.args = ()

    def flush(self, everything: bool = False) -> None:
        """Write the counts of kinds whose interval is over (all of them: `everything`), and forget those kinds."""
        now = self._clock()
        with self._lock:
            over = [(kind, window.dropped) for kind, window in self._windows.items()
                    if everything or now - window.began >= self.interval]
            for kind, _ in over:
                del self._windows[kind]
        for (name, level, event, _), count in over:
            if count:
                # Through the logger, so that it reaches every handler; as the first of a new interval it passes.
                get(name).log(level, event, repeated=count, within_s=self.interval)


class _Trouble:
    """Log lines that could not be written: one line on stderr per interval, with how many were lost."""

    def __init__(self, interval: float = REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._said = float("-inf")
        self._lost = 0

    def __call__(self, where: str, error: BaseException | None) -> None:
        now = self._clock()
        with self._lock:
            self._lost += 1
            if now - self._said < self.interval:
                return
            self._said, lost, self._lost = now, self._lost, 0
        try:
            sys.stderr.write(f"ratecared: cannot write the log ({where}: {error}); {lost} log line(s) lost since "
                             f"the last such message; next report in {self.interval:g} s\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            # stderr is gone too: there is no one left to tell.
            pass


class _Console(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO, trouble: _Trouble) -> None:
        super().__init__(stream)
        self._trouble = trouble

    def handleError(self, record: logging.LogRecord) -> None:
        self._trouble("standard output", sys.exc_info()[1])


class _Lines(logging.handlers.WatchedFileHandler):
    """A JSON-lines file that never holds part of a line.

    Each record goes out whole in one write(2), unbuffered; when a full disk
    takes only part of it, that part is cut off again, so the lines written
    once space returns start on lines of their own.
    """

    def __init__(self, path: os.PathLike[str], trouble: _Trouble) -> None:
        self._trouble = trouble
        super().__init__(path, encoding="utf-8")

    def _open(self) -> Any:
        return open(self.baseFilename, "ab", buffering=0)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reopenIfNeeded()
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if self.stream is None:
                self.stream = self._open()
            fd = self.stream.fileno()
            written = 0
            try:
                written = os.write(fd, line)
                if written < len(line):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                if written:
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging's own handlers: a log line must never take the daemon down
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self._trouble(self.baseFilename, sys.exc_info()[1])


class Logs:
    """The installed handlers, so that reload can reopen them and stop can close them.

    The journal's handler from the start; the files only from `open_files()`,
    so a daemon that refuses to start leaves no log directory behind.
    """

    def __init__(self, config: LoggingConfig, stream: TextIO | None = None, files: bool = True) -> None:
        self.config = config
        stream = stream or sys.stdout
        # Under systemd stdout is the journal; at a terminal, people read it.
        prefix = "JOURNAL_STREAM" in os.environ or not stream.isatty()
        self.repeats = Repeats()
        self._trouble = _Trouble()
        self._console = _Console(stream, self._trouble)
        self._console.setFormatter(JournalFormatter(prefix))
        self._console.addFilter(self.repeats)
        self._files: dict[str, logging.handlers.WatchedFileHandler] = {}

        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.setLevel(config.level.upper())
        root.addHandler(self._console)
        for logger_name in PART_FILES:
            part = logging.getLogger(logger_name)
            for old in list(part.handlers):
                part.removeHandler(old)

        structlog.configure(
            # filter_by_level first: a debug line costs nothing unless debug is on.
            processors=[structlog.stdlib.filter_by_level, *_SHARED,
                        structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        if files:
            self.open_files()

    def open_files(self) -> None:
        """Create the log directory and start writing its files."""
        self.config.dir.mkdir(parents=True, exist_ok=True)
        json_formatter = _json_formatter()
        for logger_name, filename in {"": "ratecared.log", **PART_FILES}.items():
            handler = _Lines(self.config.dir / filename, self._trouble)
            handler.setFormatter(json_formatter)
            handler.addFilter(self.repeats)
            self._files[logger_name] = handler
            logging.getLogger(logger_name).addHandler(handler)

    def set_level(self, level: str) -> None:
        logging.getLogger().setLevel(level.upper())

    def reopen(self) -> None:
        """Close and reopen every file, for a rotation done behind our back."""
        for handler in self._files.values():
            handler.acquire()
            try:
                if handler.stream:
                    handler.stream.close()
                handler.stream = handler._open()
                handler._statstream()
            finally:
                handler.release()

    def close(self) -> None:
        self.repeats.flush(everything=True)
        root = logging.getLogger()
        for handler in [self._console, *self._files.values()]:
            handler.flush()
        for logger_name, handler in self._files.items():
            logging.getLogger(logger_name).removeHandler(handler)
            handler.close()
        root.removeHandler(self._console)


def get(name: str) -> Any:
    """A structlog logger for a part of the daemon, e.g. `ratecared.breaker`."""
    return structlog.get_logger(name)
