"""Benchmarks Bastion against direct OpenSSH in one run; prints ratios and writes bench/RESULTS.md.

Figures: bulk throughput (`ssh target head -c N /dev/zero`), keystroke echo latency through a PTY,
and connection setup (`ssh target true`), each direct to a real sshd and through the gateway with
recording on. Run with `make bench` (quick) or `make bench-full`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bastion.datadir import init_data_dir  # noqa: E402
from bastion.localsshd import LocalSshd  # noqa: E402
from tests.support.gateway import Directory, GatewayProcess  # noqa: E402

SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-c", "aes128-gcm@openssh.com"]


@dataclass
class Peer:
    name: str
    port: int
    login: str


@dataclass
class Mode:
    bulk_bytes: int
    bulk_runs: int
    keys: int
    setup_runs: int


MODES = {"quick": Mode(256 << 20, 3, 500, 8), "full": Mode(1 << 30, 5, 2000, 20)}
REPLAY_MEGABYTES = {"quick": 10, "full": 100}


def ssh_args(peer: Peer, key: Path, *command: str) -> list[str]:
    return ["ssh", "-p", str(peer.port), *SSH_OPTS, "-i", str(key), f"{peer.login}@127.0.0.1", *command]


def bulk(peer: Peer, key: Path, size: int) -> float:
    """MiB/s of `head -c size /dev/zero` from the target to /dev/null here."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(ssh_args(peer, key, f"head -c {size} /dev/zero"), stdout=sink, check=True, timeout=600)
    return size / (1 << 20) / (time.perf_counter() - start)


def setup_time(peer: Peer, key: Path) -> float:
    start = time.perf_counter()
    subprocess.run(ssh_args(peer, key, "true"), check=True, timeout=60, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


async def echo_latencies(peer: Peer, key: Path, keys: int) -> list[float]:
    """Seconds from sending one key to reading its echo, through a PTY running `cat`."""
    async with asyncssh.connect("127.0.0.1", peer.port, username=peer.login, client_keys=[str(key)],
                                known_hosts=None, agent_path=None, config=None,
                                encryption_algs=["aes128-gcm@openssh.com"]) as conn:
        process = await conn.create_process("stty raw -echo; cat", term_type="xterm", encoding=None)
        await asyncio.sleep(0.5)
        samples = []
        for index in range(keys + 20):
            key_byte = bytes([97 + index % 26])
            start = time.perf_counter()
            process.stdin.write(key_byte)
            got = await asyncio.wait_for(process.stdout.read(1), 10)
            elapsed = time.perf_counter() - start
            assert got == key_byte, (got, key_byte)
            if index >= 20:  # warm-up
                samples.append(elapsed)
        process.stdin.write(b"\x04")
        process.close()
        return samples


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"asyncssh {asyncssh.__version__}, {openssh}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB, 500 keys, a few runs (default)")
    parser.add_argument("--full", action="store_true", help="1 GiB, 2,000 keys, more runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    mode_name = "full" if args.full else "quick"
    mode = MODES[mode_name]
    work = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    os.chmod(work, 0o755)
    login = os.environ.get("USER") or "root"
    key = work / "id_bench"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshd = LocalSshd(work / "sshd").start()
    sshd.authorize(login, key.with_suffix(".pub").read_text())
    data_dir = work / "data"
    asyncio.run(init_data_dir(data_dir, listen="127.0.0.1:0"))
    directory = Directory(data_dir)
    admin = directory.admin()
    admin.add_target("target", sshd.host, sshd.port, sshd.host_key_pub.read_text())
    sshd.authorize(login, admin.add_account("target", login, generate=True)["public_key"])
    admin.add_user("bench", ssh_keys=[key.with_suffix(".pub").read_text()])
    admin.add_grant(user="bench", target="target", account=login, actions=["shell", "exec"])
    directory.close()
    gateway = GatewayProcess(data_dir).start()
    peers = [Peer("direct", sshd.port, login), Peer("bastion", gateway.port, "bench:target")]
    results: dict[str, dict[str, float]] = {p.name: {} for p in peers}
    try:
        for peer in peers:
            print(f"[{peer.name}] bulk {mode.bulk_bytes >> 20} MiB x {mode.bulk_runs}", flush=True)
            results[peer.name]["bulk"] = statistics.median(bulk(peer, key, mode.bulk_bytes)
                                                           for _ in range(mode.bulk_runs))
            print(f"[{peer.name}] setup x {mode.setup_runs}", flush=True)
            results[peer.name]["setup"] = statistics.median(setup_time(peer, key) for _ in range(mode.setup_runs))
            print(f"[{peer.name}] echo x {mode.keys}", flush=True)
            samples = asyncio.run(echo_latencies(peer, key, mode.keys))
            results[peer.name]["p50"] = percentile(samples, 50)
            results[peer.name]["p99"] = percentile(samples, 99)
    finally:
        gateway.stop()
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)
    from bench import replay_seek

    print(f"[replay] one hour, {REPLAY_MEGABYTES[mode_name]} MiB of output", flush=True)
    replay = asyncio.run(replay_seek.measure(REPLAY_MEGABYTES[mode_name]))
    direct, bastion = results["direct"], results["bastion"]
    rows = [
        ("bulk throughput, MiB/s (higher is better)", direct["bulk"], bastion["bulk"],
         f"{bastion['bulk'] / direct['bulk']:.2f}x direct (target >= 0.80x)"),
        ("connection setup to `true`, ms", direct["setup"] * 1e3, bastion["setup"] * 1e3,
         f"{bastion['setup'] / direct['setup']:.2f}x direct"),
        ("keystroke echo p50, ms", direct["p50"] * 1e3, bastion["p50"] * 1e3,
         f"+{(bastion['p50'] - direct['p50']) * 1e3:.3f} ms"),
        ("keystroke echo p99, ms", direct["p99"] * 1e3, bastion["p99"] * 1e3,
         f"+{(bastion['p99'] - direct['p99']) * 1e3:.3f} ms added (target <= 2 ms)"),
    ]
    table = ["| figure | direct OpenSSH | Bastion (recording on) | Bastion vs direct |", "|---|---|---|---|"]
    table += [f"| {name} | {d:.2f} | {b:.2f} | {ratio} |" for name, d, b, ratio in rows]
    report = "\n".join([
        "# Bastion benchmark results", "",
        f"Run {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, mode `{mode_name}` "
        f"(bulk {mode.bulk_bytes >> 20} MiB x {mode.bulk_runs} runs, median; {mode.keys} keys; "
        f"{mode.setup_runs} connection set-ups, median).", "",
        f"Command: `make bench{'-full' if mode_name == 'full' else ''}` "
        f"(`python -m bench.run --{mode_name}`)", "",
        f"Machine: {machine()}", "",
        "Both peers hit the same real OpenSSH sshd on loopback; the client is OpenSSH `ssh` with "
        "aes128-gcm (bulk, set-up) and asyncssh (echo: one byte at a time through `stty raw -echo; cat` "
        "in a PTY). Bastion records every session (encrypted asciicast container).", "",
        *table, "",
        f"Replay of a one-hour session with {REPLAY_MEGABYTES[mode_name]} MiB of output (`python -m bench.replay_seek "
        f"--megabytes {REPLAY_MEGABYTES[mode_name]}`): keyframes are built once after the session, in a process of "
        "their own; start and jump are what the server does before a player can draw.", "",
        *replay_seek.report_lines(replay), ""])
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
