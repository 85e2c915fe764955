"""Processes on this machine as the benches see them: a process's descendants and their CPU time."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(root: int) -> list[int]:
    """PIDs of every living descendant of process `root`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    found = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor != root and ancestor > 1:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            found.append(pid)
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of process `root` and its descendants, living and reaped (the sealer included)."""
    total = 0.0
    for pid in [root, *descendants(root)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def stop_strays(marker: str, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds, every process of ours whose command line holds `marker`
    (a run's work folder); returns how many there were.

    A session of the asciinema jump host can outlive its sshd: the client goes, `asciinema rec` keeps its
    terminal, and once the sshd is stopped by PID nothing else would end it.
    """
    import signal
    import time

    def matching() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found.append(int(entry))
                except OSError:
                    pass  # gone meanwhile
        return found

    strays = matching()
    for pid in strays:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while (left := matching()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(strays)
