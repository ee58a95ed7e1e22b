"""Lengths of time as operators type them (hold --for, events --since)."""

from __future__ import annotations

import pytest

from ratecared.duration import seconds


@pytest.mark.parametrize("text,expected", [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                           ("1w", 604800), ("1h30m", 5400), (" 2H ", 7200), ("1.5h", 5400)])
def test_lengths_operators_type(text: str, expected: float) -> None:
    assert seconds(text) == expected


@pytest.mark.parametrize("text", ["", "h", "2x", "2h 30m", "-5m", "1h30", "tomorrow", "2hh"])
def test_anything_else_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="e.g. 90s"):
        seconds(text)
