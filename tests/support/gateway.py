"""The gateway as a real subprocess, and a synchronous handle on its database for test set-up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bastion.config import load_config

LISTENING = re.compile(r"listening on (\S+):(\d+)")


class GatewayProcess:
    """`bastion serve` on port 0; stopped by PID."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, module: str = "bastion"):
        self.data_dir = data_dir
        self.module = module  # bench.unrecorded runs the same gateway with recording dropped (bench only)
        self.env = {**os.environ, **(env or {}), "BASTION_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path = data_dir / "gateway.log"

    def start(self, timeout: float = 60.0) -> "GatewayProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--listen",
             f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode(errors="replace")
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise RuntimeError(f"gateway did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for _ in iter(self.process.stdout.readline, b""):
            pass

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Directory:
    """Runs coroutines against the gateway's database from synchronous tests (own loop, own thread)."""

    def __init__(self, data_dir: Path):
        from bastion.services import Services

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.services = self.run(Services.open(load_config(data_dir), migrate=False))

    def run(self, coro: Awaitable[Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        return self.run(work(self.services))

    def admin(self, **kw: Any) -> "_SyncAdmin":
        return _SyncAdmin(self, self.services.admin(actor="test", **kw))

    def close(self) -> None:
        self.run(self.services.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _SyncAdmin:
    def __init__(self, directory: Directory, admin: Any):
        self._directory, self._admin = directory, admin

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._admin, name)
        return lambda *a, **kw: self._directory.run(method(*a, **kw))
