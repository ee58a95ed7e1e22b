"""The logging setup: journald lines and JSON files, written through structlog."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from ratecared import logs
from ratecared.config import LoggingConfig


def test_a_traceback_stays_one_journal_line_and_one_json_object(tmp_path: Path) -> None:
    stream = io.StringIO()
    installed = logs.Logs(LoggingConfig(dir=tmp_path, level="info"), stream=stream)
    try:
        log = logs.get("ratecared")
        try:
            {}["missing"]
        except KeyError:
            log.exception("request failed", path="/api/v1/x")
        logs.get("ratecared.breaker").info("breaker transition", platform="booking", reason="5 consecutive failures")
        logs.get("ratecared").debug("not shown at info")
    finally:
        installed.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<3>request failed path=/api/v1/x exception=")
    assert "Traceback" in lines[0] and "KeyError" in lines[0]
    assert lines[1] == '<6>breaker transition platform=booking reason="5 consecutive failures"'
    main = [json.loads(line) for line in (tmp_path / "ratecared.log").read_text().splitlines()]
    assert [e["event"] for e in main] == ["request failed", "breaker transition"]
    assert "KeyError" in main[0]["exception"]
    breaker = [json.loads(line) for line in (tmp_path / "circuit-breaker.log").read_text().splitlines()]
    assert [(e["event"], e["platform"], e["logger"]) for e in breaker] == [
        ("breaker transition", "booking", "ratecared.breaker")]


def test_standard_library_records_are_rendered_too(tmp_path: Path) -> None:
    stream = io.StringIO()
    installed = logs.Logs(LoggingConfig(dir=tmp_path, level="warning"), stream=stream)
    try:
        logging.getLogger("asyncio").warning("plain %s record", "stdlib")
    finally:
        installed.close()
    assert stream.getvalue() == "<4>plain stdlib record\n"
