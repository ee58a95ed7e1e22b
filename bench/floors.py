"""A bench's verdict: its result, each floor checked against it, and whether all of them held."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

Check = tuple[str, Any, bool]   # (what is checked, the value measured, whether it met its floor)


def judged(result: dict[str, Any], checks: list[Check]) -> dict[str, Any]:
    """The result with its floors and the verdict added, as the bench's --json prints it."""
    return {**result, "floors": [{"check": name, "value": value, "pass": ok} for name, value, ok in checks],
            "pass": all(ok for *_, ok in checks)}


def verdict_lines(checks: list[Check], name_width: int = 36, value_width: int = 10) -> list[str]:
    """One line per floor, PASS or FAIL, then the result: how a bench ends its report for people."""
    lines = [f"  {name:<{name_width}} {value:>{value_width}}   {'PASS' if ok else 'FAIL'}" for name, value, ok in checks]
    return lines + [f"result: {'PASS' if all(ok for *_, ok in checks) else 'FAIL'}"]


def run_and_report(bench: Callable[[], dict[str, Any]], floors: Callable[[dict[str, Any]], list[Check]],
                   summary: Callable[[dict[str, Any]], str], as_json: bool) -> int:
    """Run a bench and print what it found, for people or as --json: 0 when every floor held, 1 otherwise."""
    try:
        result = bench()
    except Exception as exc:  # noqa: BLE001 - whatever stopped the bench, it is reported and it fails
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 1
    checks = floors(result)
    verdict = judged(result, checks)
    if as_json:
        print(json.dumps(verdict))
    else:
        print(summary(result))
        print("\n".join(verdict_lines(checks)))
    return 0 if verdict["pass"] else 1
