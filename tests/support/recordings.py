"""Find a user's sessions and read their recordings through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def wait_for_sessions(testbed: Any, user: str, count: int = 1, ended: bool = True, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = [s for s in testbed.admin().list_sessions() if s["user"] == user]
        if len(rows) >= count and (not ended or all(s["ended_at"] for s in rows)):
            return sorted(rows, key=lambda s: s["started_at"])
        time.sleep(0.1)
    raise AssertionError(f"expected {count} session(s) of {user}, have {rows}")


def bastion_cli(data_dir: Path, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "BASTION_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, env=env, input=input,
                          timeout=timeout)


def export_events(data_dir: Path, session_id: str, out: Path, *extra: str) -> tuple[dict, list[list]]:
    result = bastion_cli(data_dir, "recording", "export", session_id, "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr.decode()
    lines = out.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def output_text(events: list[list]) -> str:
    return "".join(e[2] for e in events if e[1] == "o")


def wait_for_audit(testbed: Any, prefix: str, actor: str, until=lambda events: bool(events),
                   timeout: float = 10) -> list[dict]:
    """The actor's events of a type prefix, polled until `until` holds (audit writes are asynchronous)."""
    from bastion.recordings import list_audit

    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in testbed.directory.call(lambda s: list_audit(s, prefix, 2000, "test"))
                  if e["actor"] == actor]
        if until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)
