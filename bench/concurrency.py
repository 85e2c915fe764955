"""Many concurrent interactive sessions through the gateway, each typing 5 keys a second.

The target is bench/echo_target.py (a light asyncssh echo server in a process of its own); the
gateway records every session as usual. Reports echo latency percentiles, errors, and the gateway's
memory per session (RSS with all sessions open minus RSS before, divided by the sessions).

The client driving the sessions and the echo target run on uvloop with the gateway's asyncssh fast
path (bastion/ssh/asyncssh_fastpath.py): they share the 2 cores with the gateway, so what they spend
is taken from the figure; `--stock-apparatus` runs both on plain asyncio and stock asyncssh instead.

Both also keep their own garbage collector out of the figure: a full collection over a thousand
connections' objects stalls every session for about 0.1 s, and in the client that stall was counted as
echo latency (measured: nine such pauses of 90-340 ms in one run, most of the p99). The client freezes
what it holds once all sessions are up (gc.freeze: a collection no longer walks it) and reports its
longest collection while typing; the echo target freezes at each new session. The gateway is left as it
is: its collections are part of what is measured.

Run: `python -m bench.concurrency --sessions 1000 [--seconds 30]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bastion.datadir import init_data_dir  # noqa: E402
from bastion.ssh import asyncssh_fastpath  # noqa: E402
from bench.procs import tree_cpu_seconds  # noqa: E402
from tests.support.gateway import Directory, GatewayProcess  # noqa: E402
from tests.support.memory import status_kib  # noqa: E402

KEYS_PER_SECOND = 5
CONNECT_CONCURRENCY = 16


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connected: int = 0


def rss_kib(pid: int) -> int:
    """Resident set of a process and its children (the gateway may run helper processes)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sum(status_kib(each, "VmRSS") for each in [pid, *map(int, children)])


async def _session(port: int, key: asyncssh.SSHKey, index: int, ready: asyncio.Semaphore,
                   connected: asyncio.Event, start_typing: asyncio.Event, stop: asyncio.Event,
                   outcome: Outcome) -> None:
    try:
        async with ready:
            conn = await asyncio.wait_for(asyncssh.connect(
                "127.0.0.1", port, username="bench:echo", client_keys=[key], known_hosts=None, agent_path=None,
                config=None, encryption_algs=["aes128-gcm@openssh.com"]), 60)
            process = await conn.create_process(term_type="xterm", encoding=None)
        outcome.connected += 1
        connected.set()
        await start_typing.wait()
        await asyncio.sleep(random.random() / KEYS_PER_SECOND)  # spread the sessions over the interval
        key_byte = bytes([97 + index % 26])
        while not stop.is_set():
            sent = time.perf_counter()
            process.stdin.write(key_byte)
            got = await asyncio.wait_for(process.stdout.read(1), 10)
            if got != key_byte:
                raise RuntimeError(f"echo returned {got!r}")
            elapsed = time.perf_counter() - sent
            outcome.latencies.append(elapsed)
            await asyncio.sleep(max(0.0, 1 / KEYS_PER_SECOND - elapsed))
        process.stdin.write_eof()
        conn.close()
    except Exception as exc:  # counted and reported, never hidden
        outcome.errors.append(f"session {index}: {type(exc).__name__}: {exc}"[:200])


class _CollectionClock:
    """The longest garbage collection of this process while it is on."""

    def __init__(self) -> None:
        self.on = False
        self.longest = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.on:
            self.longest = max(self.longest, time.perf_counter() - self._began)


async def drive(port: int, key_path: Path, sessions: int, seconds: float, gateway_pid: int,
                echo_pid: int, freeze_gc: bool = True) -> dict[str, float]:
    key = asyncssh.read_private_key(str(key_path))
    outcome = Outcome()
    ready = asyncio.Semaphore(CONNECT_CONCURRENCY)
    start_typing, stop = asyncio.Event(), asyncio.Event()
    connected = asyncio.Event()
    baseline = rss_kib(gateway_pid)
    began = time.perf_counter()
    tasks = [asyncio.create_task(_session(port, key, i, ready, connected, start_typing, stop, outcome))
             for i in range(sessions)]
    while outcome.connected + len(outcome.errors) < sessions:
        await asyncio.sleep(0.5)
        if time.perf_counter() - began > 600:
            break
    setup_seconds = time.perf_counter() - began
    await asyncio.sleep(2)
    loaded = rss_kib(gateway_pid)
    if freeze_gc:
        gc.collect()
        gc.freeze()  # what the sessions hold now is never walked again while they type
    collections = _CollectionClock()
    gc.callbacks.append(collections)
    cpu_before = tree_cpu_seconds(gateway_pid)
    # Where the 2 cores go while typing: the gateway (with its sealer), this client, the echo target.
    machine_before, echo_before, client_before = machine_busy_seconds(), tree_cpu_seconds(echo_pid), time.process_time()
    collections.on = True
    start_typing.set()
    await asyncio.sleep(seconds)
    stop.set()
    collections.on = False
    gc.callbacks.remove(collections)
    gc.unfreeze()
    cpu_used = tree_cpu_seconds(gateway_pid) - cpu_before
    machine_used = machine_busy_seconds() - machine_before
    echo_used, client_used = tree_cpu_seconds(echo_pid) - echo_before, time.process_time() - client_before
    await asyncio.wait(tasks, timeout=30)
    ordered = sorted(outcome.latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * (len(ordered) - 1)))] * 1e3 if ordered else float("nan")

    for message in outcome.errors[:5]:
        print("  error:", message, flush=True)
    return {"sessions": sessions, "connected": outcome.connected, "errors": len(outcome.errors),
            "keys": len(ordered), "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100),
            "setup_s": setup_seconds, "rss_before_mib": baseline / 1024, "rss_loaded_mib": loaded / 1024,
            "kib_per_session": (loaded - baseline) / max(1, outcome.connected),
            "gateway_cpu_us_per_key": cpu_used / max(1, len(ordered)) * 1e6,
            "machine_busy_cores": machine_used / seconds, "gateway_cores": cpu_used / seconds,
            "client_cores": client_used / seconds, "echo_target_cores": echo_used / seconds,
            "client_gc_longest_ms": collections.longest * 1e3}


def machine_busy_seconds() -> float:
    """CPU seconds spent by every core on anything but idle and I/O wait, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure(sessions: int, seconds: float, *, stock_apparatus: bool = False) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bastion-conc-"))
    echo = gateway = None
    try:
        key = work / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        host_key = work / "echo_host"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        echo = subprocess.Popen([sys.executable, "-m", "bench.echo_target", str(host_key),
                                 *(["--stock"] if stock_apparatus else [])],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None
        echo_port = int(echo.stdout.readline())
        data_dir = work / "data"
        asyncio.run(init_data_dir(data_dir, listen="127.0.0.1:0"))
        directory = Directory(data_dir)
        admin = directory.admin()
        admin.add_target("echo", "127.0.0.1", echo_port, host_key.with_suffix(".pub").read_text())
        admin.add_account("echo", "bench", generate=True)
        admin.add_user("bench", ssh_keys=[key.with_suffix(".pub").read_text()])
        admin.add_grant(user="bench", target="echo", account="bench", actions=["shell"])
        directory.close()
        gateway = GatewayProcess(data_dir).start()
        assert gateway.process is not None
        driving = drive(gateway.port, key, sessions, seconds, gateway.process.pid, echo.pid,
                        freeze_gc=not stock_apparatus)
        if stock_apparatus:
            return asyncio.run(driving)
        asyncssh_fastpath.install()  # from here on, for every asyncssh connection of this process
        return uvloop.run(driving)
    finally:
        if gateway is not None:
            gateway.stop()
        if echo is not None:
            echo.kill()
            echo.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--stock-apparatus", action="store_true",
                        help="load client and echo target on plain asyncio and stock asyncssh")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = measure(args.sessions, args.seconds, stock_apparatus=args.stock_apparatus)
    for name, value in result.items():
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
