"""A bench's verdict: its result, each floor checked against it, and whether all of them held."""

from __future__ import annotations

from typing import Any

Check = tuple[str, Any, bool]   # (what is checked, the value measured, whether it met its floor)


def judged(result: dict[str, Any], checks: list[Check]) -> dict[str, Any]:
    """The result with its floors and the verdict added, as the bench's --json prints it."""
    return {**result, "floors": [{"check": name, "value": value, "pass": ok} for name, value, ok in checks],
            "pass": all(ok for *_, ok in checks)}


def verdict_lines(checks: list[Check], name_width: int = 36, value_width: int = 10) -> list[str]:
    """One line per floor, PASS or FAIL, then the result: how a bench ends its report for people."""
    lines = [f"  {name:<{name_width}} {value:>{value_width}}   {'PASS' if ok else 'FAIL'}" for name, value, ok in checks]
    return lines + [f"result: {'PASS' if all(ok for *_, ok in checks) else 'FAIL'}"]
