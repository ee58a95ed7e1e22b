"""The PHP client (clients/php) through Debian's phpunit, against two real daemons.

One daemon keeps the default settings, so a breaker opened by a test stays open
while the test looks at it; another opens a breaker for 1 s only, so that its
test sees half-open without waiting ten minutes; a third gives permits a 50 ms
lease, so that a report can come too late.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

from conftest import require, set_setting, setting_in_effect, write_config

PHP_CLIENT = Path(__file__).resolve().parents[1] / "clients" / "php"
PHPUNIT_TESTS = PHP_CLIENT / "tests" / "CircuitBreakerTest.php"


def missing_php() -> str | None:
    # The booted Debian 12 copies only tests/, without the client they test.
    if not PHPUNIT_TESTS.exists():
        return f"no PHP client tests at {PHPUNIT_TESTS}"
    absent = [package for package, program in (("php-cli", "php"), ("phpunit", "phpunit"))
              if shutil.which(program) is None]
    if absent:
        return f"the PHP client's tests need {' '.join(absent)}"
    modules = subprocess.run(["php", "-m"], capture_output=True, text=True, check=True).stdout.split()
    return None if "curl" in modules else "the PHP client's tests need php-curl"


def test_the_php_client_passes_its_phpunit_suite_against_real_daemons(config_factory, daemon_factory,
                                                                      tmp_path: Path) -> None:
    require("RATECARED_REQUIRE_PHP", missing_php())
    default = daemon_factory(config_factory())
    short_open_dir = tmp_path / "short-open"
    short_open_dir.mkdir()
    short_open = daemon_factory(write_config(short_open_dir))
    set_setting(short_open_dir / "rc.db", "circuit-breaker-timeout-seconds", "1")
    setting_in_effect(short_open, "circuit-breaker-timeout-seconds", 1)
    short_lease_dir = tmp_path / "short-lease"
    short_lease_dir.mkdir()
    short_lease = daemon_factory(write_config(short_lease_dir, circuit_breaker={"permit_lease": 0.05}))

    junit = tmp_path / "phpunit.xml"
    result = subprocess.run(
        ["phpunit", "-c", str(PHP_CLIENT), "--log-junit", str(junit)],
        env={"PATH": "/usr/bin:/bin", "RATECARE_TEST_SOCKET": default.socket,
             "RATECARE_TEST_SOCKET_SHORT_OPEN": short_open.socket,
             "RATECARE_TEST_SOCKET_SHORT_LEASE": short_lease.socket},
        capture_output=True, text=True, timeout=600)
    output = f"phpunit exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, output
    # Every test in the file ran and passed: none skipped, none left out by a typo in the config.
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    ran = {case.get("name") for case in cases if len(case) == 0}
    assert ran == set(re.findall(r"public function (test\w+)", PHPUNIT_TESTS.read_text())), output
