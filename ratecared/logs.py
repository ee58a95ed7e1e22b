"""The one logging setup: structlog over the standard library's handlers.

Standard output is for journald: one line per event, `<N>` syslog priority
first so that `journalctl -p warning` filters, values quoted so a traceback
stays one entry. Files in the log directory get JSON lines: everything in
`ratecared.log`, and each part (breakers, each job) also in its own file, as
the seed had them. WatchedFileHandler notices logrotate's rename by itself,
so rotation needs no signal.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any, TextIO

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


def render_line(_: Any, __: str, event: dict[str, Any]) -> str:
    """`event key=value …`, always one line."""
    message = str(event.pop("event", ""))
    for key in ("timestamp", "level", "logger"):
        event.pop(key, None)
    fields = " ".join(f"{k}={_plain(v)}" for k, v in event.items())
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
        self._console = logging.StreamHandler(stream)
        self._console.setFormatter(JournalFormatter(prefix))
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
            handler = logging.handlers.WatchedFileHandler(self.config.dir / filename, encoding="utf-8", delay=False)
            handler.setFormatter(json_formatter)
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
