"""What both benchmarks do with the daemon process: wait for it, read its memory, stop it."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

RSS_INTERVAL = 0.1


def wait_ready(proc: subprocess.Popen, path: str, timeout: float = 60.0) -> None:
    """Wait until the daemon accepts connections on its socket; raise if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {proc.returncode} before it was ready")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    raise RuntimeError(f"the daemon did not accept connections on {path} within {timeout:g} s")


def rss_kb(pid: int, field: str = "VmRSS:") -> int | None:
    """A memory figure of /proc/PID/status in KiB (VmRSS, or VmHWM for the kernel's peak)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode()):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler(threading.Thread):
    """VmRSS every RSS_INTERVAL seconds, so a peak between two figures is not missed."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        # Signals must land on the main thread, or Ctrl-C waits until the main thread's read returns.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while not self.stopping.is_set():
            kb = rss_kb(self.pid)
            if kb is not None:
                self.samples.append((time.monotonic(), kb))
            self.stopping.wait(RSS_INTERVAL)

    def peak_mb(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The highest sample in [since, until], in MB; 0.0 when there is none."""
        kbs = [kb for t, kb in self.samples if since <= t <= until]
        return round(max(kbs) / 1024, 1) if kbs else 0.0


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` s: a stuck process must not outlive the bench."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
