"""A Debian 12 booted with systemd in systemd-nspawn, for the system test.

The root is made once with debootstrap, with the packages the test installs
already in its apt cache, and kept in /var/cache/ratecared-tests between
runs; each run boots a fresh copy of it. The host needs no systemd of its
own: the container is spawned with --register=no --keep-unit and entered
with nsenter.

Each Container has its own machine name and run directory, and holds a lock
on that directory while it lives, so two containers never share one; the
cached root is built under a lock too, once, whoever asks first.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("RATECARED_SYSTEST_CACHE", "/var/cache/ratecared-tests"))
# The run directory of the default container; others pass their own.
RUN = Path(os.environ.get("RATECARED_SYSTEST_RUN", "/var/tmp/ratecared-systest"))
MIRROR = "http://deb.debian.org/debian"
# Bump when the recipe changes, so a stale cached root is rebuilt.
RECIPE = "3"
BASE = ["systemd", "systemd-sysv", "dbus", "ca-certificates", "python3", "apt", "logrotate", "procps", "man-db"]
PRELOAD = ["mariadb-server", "python3-croniter", "python3-pymysql", "python3-requests", "python3-structlog",
           "python3-click", "python3-sdnotify", "python3-httptools", "python3-prometheus-client", "python3-pytest", "curl"]
HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def missing_prerequisites() -> str | None:
    """Why the system test cannot run here, or None."""
    if os.geteuid() != 0:
        return "the system test boots a container and must run as root"
    absent = [package for tool, package in HOST_TOOLS.items() if shutil.which(tool, path=CLEAN_PATH) is None]
    if absent:
        return f"missing host packages: {' '.join(absent)} (make test installs them)"
    if not Path("/sys/fs/cgroup").exists():
        return "no cgroup file system for systemd-nspawn"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the system test here, or fail it where `make test` requires it (RATECARED_REQUIRE_SYSTEM=1)."""
    import pytest

    if os.environ.get("RATECARED_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"the system test cannot run: {reason}")
    pytest.skip(f"the system test cannot run: {reason}")


def require_prerequisites() -> None:
    reason = missing_prerequisites()
    if reason:
        skip_or_fail(reason)


def _run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, capture_output=True,
                          env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}, **kw)


def _lock(path: Path, wait: bool = True) -> int:
    """An exclusive flock on `path` (created), held until the returned fd is closed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def cached_root() -> Path:
    """The debootstrapped Debian 12 root, made on first use (one builder at a time; the others wait)."""
    root = CACHE / f"bookworm-{RECIPE}"
    if (root / ".ratecared-ready").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = _lock(CACHE / f"bookworm-{RECIPE}.lock")
    try:
        if not (root / ".ratecared-ready").exists():
            _build(root)
    finally:
        os.close(lock)
    return root


def _build(root: Path) -> None:
    building = CACHE / f"bookworm-{RECIPE}.building"
    shutil.rmtree(building, ignore_errors=True)
    _run("debootstrap", "--variant=minbase", f"--include={','.join(BASE)}", "bookworm", str(building), MIRROR,
         timeout=1800)
    shutil.copy("/etc/resolv.conf", building / "etc/resolv.conf")
    _run("chroot", str(building), "apt-get", "update", "-qq", timeout=600)
    _run("chroot", str(building), "apt-get", "install", "-y", "-qq", "--download-only", *PRELOAD, timeout=1800)
    (building / ".ratecared-ready").touch()
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)


class Container:
    def __init__(self, name: str = "ratecared-systest", run: Path = RUN) -> None:
        """`name` is the machine name (its host name inside); `run` holds its root and boot log."""
        self.name = name
        self.run = run
        self.root = run / "root"
        self.log = run / "boot.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._run_lock: int | None = None

    def boot(self, binds: dict[str, Path] | None = None) -> None:
        """Copy the cached root, boot it, and wait until systemd says it is up."""
        source = cached_root()
        self.run.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._run_lock = _lock(self.run.with_name(self.run.name + ".lock"), wait=False)
        except BlockingIOError:
            raise RuntimeError(f"{self.run} belongs to a container that is still running") from None
        if self.run.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.run)], check=True)
        self.run.mkdir(parents=True)
        _run("cp", "-a", "--reflink=auto", str(source), str(self.root), timeout=600)
        self._share_host_network_config()
        args = ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                "-M", self.name, "--console=passive"]
        args += [f"--bind-ro={host}:{inside}" for inside, host in (binds or {}).items()]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log.read_text()}")
            children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
            if children.strip():
                self.leader = int(children.split()[0])
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the container did not finish booting:\n{self.log.read_text()[-3000:]}")

    def _share_host_network_config(self) -> None:
        """The host's name servers, and the local CAs it trusts (a TLS-inspecting proxy's, say), for HTTPS."""
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        local_cas = sorted(LOCAL_CAS.glob("**/*.crt")) if LOCAL_CAS.is_dir() else []
        if local_cas:
            for ca in local_cas:
                target = self.root / "usr/local/share/ca-certificates" / ca.relative_to(LOCAL_CAS)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ca, target)
            _run("chroot", str(self.root), "update-ca-certificates", timeout=120)

    def sh(self, command: str, user: str | None = None, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the container, as root or as `user`."""
        if user is not None:
            command = f"runuser -u {user} -- sh -c {_quote(command)}"
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i", f"PATH={CLEAN_PATH}",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "/bin/sh", "-c", command],
            text=True, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"`{command}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def wait_for(self, command: str, timeout: float = 60, every: float = 0.5) -> str:
        """Rerun `command` until it succeeds; return its output."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.sh(command, check=False)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"`{command}` never succeeded:\n{result.stdout}\n{result.stderr}")
            time.sleep(every)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader:
            os.kill(self.leader, signal.SIGRTMIN + 4)  # systemd: poweroff
        else:
            self.proc.terminate()  # still booting: systemd-nspawn passes it on
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            if self.leader:
                os.kill(self.leader, signal.SIGKILL)  # the pid namespace's init: all in it die
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def remove(self) -> None:
        """Stop the container if it runs, delete its run directory and give the directory up."""
        try:
            self.stop()
        finally:
            if self._run_lock is not None:
                subprocess.run(["rm", "-rf", "--one-file-system", str(self.run)], check=False)
                os.close(self._run_lock)
                self._run_lock = None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
