"""Permits through the real daemon: random, and valid only for the uid they were issued to."""

from __future__ import annotations

import grp
import os
import pwd
import re
from pathlib import Path
from typing import Callable

import pytest

from conftest import DaemonProcess
from ratecared.client import Client, DaemonError

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")


def as_nobody(work: Callable[[], int]) -> int:
    """Run `work` in a child that became `nobody`; return its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            code = work()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def reported(sock: str, platform: str, permit: str, success: bool) -> int:
    """0 when the daemon answers 409 unknown_permit, 1 otherwise."""
    try:
        Client(sock).request("POST", f"/api/v1/circuit-breaker/{platform}/report",
                             {"permit": permit, "success": success, "duration_ms": 1})
    except DaemonError as exc:
        return 0 if (exc.status, exc.code) == (409, "unknown_permit") else 1
    return 1


@pytest.fixture
def shared_daemon(config_factory, daemon_factory) -> DaemonProcess:
    """A daemon whose socket group is nobody's, so that root and nobody both use it."""
    daemon = daemon_factory(config_factory(daemon={"socket_group": grp.getgrgid(NOBODY.pw_gid).gr_name}))
    os.chmod(Path(daemon.socket).parent, 0o755)
    return daemon


@needs_root
def test_another_uid_cannot_report_a_permit_nor_hide_the_owners_failure(shared_daemon: DaemonProcess) -> None:
    client = shared_daemon.client()
    decisions = [client.acquire("booking") for _ in range(5)]
    for decision in decisions:
        # Another member of the group reports the call a success, to hide its failure.
        assert as_nobody(lambda: reported(shared_daemon.socket, "booking", decision.permit, True)) == 0
    in_batch = [(decisions[0], True, 1.0)]
    assert as_nobody(lambda: 0 if Client(shared_daemon.socket).report_many(in_batch)[0]["reason"] == "unknown"
                     else 1) == 0
    assert [client.report(d, False, 5003)["state"] for d in decisions][-1] == "open"
    status = client.status()["platforms"][0]
    assert (status["total_successes"], status["total_failures"]) == (0, 5)


@needs_root
def test_a_permit_is_the_callers_own_even_against_root(shared_daemon: DaemonProcess) -> None:
    read, write = os.pipe()

    def acquire() -> int:
        os.write(write, Client(shared_daemon.socket).acquire("expedia").permit.encode())
        return 0

    assert as_nobody(acquire) == 0
    os.close(write)
    permit = os.read(read, 100).decode()
    os.close(read)
    assert reported(shared_daemon.socket, "expedia", permit, False) == 0
    assert as_nobody(lambda: 1 - reported(shared_daemon.socket, "expedia", permit, False)) == 0


def test_permits_carry_64_random_bits_and_are_never_the_same(daemon: DaemonProcess) -> None:
    client = daemon.client()
    permits = [d.permit for _ in range(300) for d in client.acquire_many(["booking", "agoda"]).values()]
    assert all(re.fullmatch(r"[0-9a-f]{24}", p) for p in permits)
    assert len(set(permits)) == len(permits)
    # After the 8 digits that say where the lease is, random bits, not a
    # counter: every hex digit shows up in every position.
    assert all(len({p[i] for p in permits}) == 16 for i in range(8, 24))
