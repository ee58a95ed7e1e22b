"""The breaker core stands alone: importing it loads neither the database layer nor its driver."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
loaded = sorted(m for m in sys.modules if m == "pymysql" or m.startswith(("ratecared.db", "ratecared.settings",
                                                                            "ratecared.config")))
assert not loaded, loaded
"""


@pytest.mark.parametrize("module", ["ratecared.breaker.machine", "ratecared.breaker.registry"])
def test_the_breaker_core_loads_no_database_settings_or_config(module: str) -> None:
    # A fresh interpreter: this one has long since imported everything.
    result = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
