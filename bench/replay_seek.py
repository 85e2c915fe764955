"""Replay start and seek time on a long recording (one hour of session time), with and without keyframes."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bastion.clock import FixedClock  # noqa: E402
from bastion.config import load_config  # noqa: E402
from bastion.datadir import init_data_dir  # noqa: E402
from bastion.recorder import keyframes  # noqa: E402
from bastion.services import Services  # noqa: E402
from bastion.store.models import Session  # noqa: E402

HOUR = 3600.0


async def make_recording(megabytes: int) -> tuple[Services, Path]:
    data = Path(tempfile.mkdtemp(prefix="bastion-seek-")) / "data"
    await init_data_dir(data, listen="127.0.0.1:0")
    config = load_config(data)
    clock = FixedClock(__import__("datetime").datetime.now(__import__("datetime").timezone.utc))
    services = await Services.open(config, clock=clock)
    session_id = str(uuid.uuid4())
    async with services.db() as db, db.begin():
        db.add(Session(id=session_id, connection_id=str(uuid.uuid4()), user_name="bench", target_name="t",
                       account_login="root", kind="shell", source_addr="127.0.0.1", node=config.node_name,
                       started_at=clock.now()))
    recorder = await services.recordings.open(session_id, width=120, height=40, term="xterm", title="bench",
                                              echo_tracking=False, on_failure=lambda reason: None)
    total = megabytes << 20
    per_second = max(1, total // int(HOUR) // 100)
    written, counter = 0, 0
    while written < total:
        clock.advance(1.0)
        batch = []
        for _ in range(per_second):
            counter += 1
            batch.append(f"2026-11-28T12:{counter % 60:02d}:{counter % 59:02d}Z host app[{counter % 9999}]: request "
                         f"{uuid.uuid4().hex[:16]} served in {counter % 997}ms status=200 path=/api/v1/items/"
                         f"{counter}\r\n".encode())
        chunk = b"".join(batch)
        recorder.output(chunk)
        written += len(chunk)
        if recorder.backlogged:
            await asyncio.sleep(0.01)
    await recorder.close("exited")
    return services, recorder.path


def timed(function, repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def measure(megabytes: int) -> dict[str, float]:
    services, path = await make_recording(megabytes)
    public = services.recordings._node_key.public_key() if hasattr(services.recordings, "_node_key") else None
    from bastion.keys import load_node_key

    public = load_node_key(services.config.keys_dir).public_key()
    vault = services.vault
    size = path.stat().st_size
    start_build = time.perf_counter()
    frames = keyframes.build(path, vault)
    keyframes.save(path, vault, frames)
    build_seconds = time.perf_counter() - start_build

    def first_screen(at: float) -> None:
        lines = keyframes.lines_from(path, vault, public, at)
        for _ in range(50):  # what a player needs to show the first moments
            if next(lines, None) is None:
                break

    def to_the_end(at: float) -> int:
        # every line from the start point to the end: what a player must fetch and emulate for the last screen
        return sum(len(line) + 1 for line in keyframes.lines_from(path, vault, public, at))

    results = {
        "session MiB of output": float(megabytes), "file MiB": size / (1 << 20), "keyframes": float(len(frames)),
        "keyframe build, s (once, after the session)": build_seconds,
        "start, s": timed(lambda: first_screen(0.0)),
        "jump to the end, s": timed(lambda: to_the_end(HOUR - 1)),
        "jump to the end, KiB the player must emulate": to_the_end(HOUR - 1) / 1024,
    }
    keyframes.sidecar(path).unlink()
    results["jump to the end without keyframes, s"] = timed(lambda: to_the_end(HOUR - 1), repeat=1)
    results["jump to the end without keyframes, KiB the player must emulate"] = to_the_end(HOUR - 1) / 1024
    await services.close()
    return results


def report_lines(results: dict[str, float]) -> list[str]:
    rows = ["| replay figure | value |", "|---|---|"]
    rows += [f"| {name} | {value:,.3f} |" for name, value in results.items()]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    for name, value in asyncio.run(measure(args.megabytes)).items():
        print(f"{name}: {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
