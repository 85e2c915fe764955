"""Memory of another process, sampled from /proc (resident set), and big test files written in bounded memory."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

MiB = 1 << 20


def status_kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM`-style line of /proc/PID/status, in KiB (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler:
    """Samples a process's resident set every `interval` seconds in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.baseline = status_kib(pid, "VmRSS") * 1024
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = status_kib(self.pid, "VmRSS") * 1024
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def write_big_file(path: Path, size: int) -> str:
    """`size` bytes of distinct 1 MiB blocks (no two alike, so nothing dedupes or compresses away), written
    one block at a time; returns the SHA-256."""
    base = os.urandom(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for index in range(-(-size // MiB)):
            block = (index.to_bytes(8, "big") + base[8:])[:min(MiB, size - index * MiB)]
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
