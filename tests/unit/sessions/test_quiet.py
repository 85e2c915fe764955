"""QuietGate: post-session jobs wait while live sessions move bulk data, never longer than the hold limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bastion.sessions.quiet import QuietGate

SAMPLE = 0.5
RATE = 1 << 20  # bytes per second
BULK = 50 * RATE  # bytes a bulk session moves per sample
TYPING = 20


@dataclass
class Live:
    id: str
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class Relay:
    """Live sessions on a clock the test moves: each sample, every session moves what `rates` says."""

    sessions: list[Live] = field(default_factory=list)
    rates: dict[str, int] = field(default_factory=dict)
    now: float = 0.0
    samples: int = 0
    script: dict[int, object] = field(default_factory=dict)  # after sample n: a change to make
    real: bool = False  # samples take a little real time, so a real process can be watched meanwhile
    pattern: object = None  # sample number -> bytes every session moves in it (instead of `rates`)

    def live(self) -> list[Live]:
        return list(self.sessions)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self.real:
            await asyncio.sleep(0.01)
        self.now += seconds
        for live in self.sessions:
            live.bytes_down += self.rates.get(live.id, 0) if self.pattern is None else self.pattern(self.samples)
        self.samples += 1
        change = self.script.get(self.samples)
        if change is not None:
            change(self)
        await asyncio.sleep(0)

    def gate(self, max_hold: float = 3600.0) -> QuietGate:
        return QuietGate(self.live, busy_rate=RATE, sample=SAMPLE, max_hold=max_hold, clock=self.clock,
                         sleep=self.sleep)


async def test_no_live_session_lets_a_job_start_at_once():
    relay = Relay()
    assert await relay.gate().wait() == 0 and relay.samples == 0


async def test_interactive_sessions_let_a_job_start_after_one_sample():
    relay = Relay([Live("typing"), Live("idle")], {"typing": TYPING})
    assert await relay.gate().wait() == SAMPLE


async def test_a_bulk_session_holds_jobs_until_it_goes_quiet():
    relay = Relay([Live("bulk")], {"bulk": BULK}, script={10: lambda r: r.rates.clear()})
    assert await relay.gate().wait() == 11 * SAMPLE  # ten busy samples, then the quiet one


async def test_a_rate_just_under_the_limit_is_quiet_and_just_over_is_busy():
    under = Relay([Live("s")], {"s": int(RATE * SAMPLE) - 1})
    assert await under.gate().wait() == SAMPLE
    over = Relay([Live("s")], {"s": int(RATE * SAMPLE)}, script={3: lambda r: r.rates.clear()})
    assert await over.gate().wait() == 4 * SAMPLE


async def test_sessions_that_end_or_start_mid_sample_do_not_count():
    def swap(relay: Relay) -> None:
        relay.sessions = [Live("new", bytes_down=10**9)]  # "old" is gone with its count; "new" just began

    relay = Relay([Live("old", bytes_down=10**9)], script={1: swap})
    assert await relay.gate().wait() == SAMPLE


async def test_each_job_is_held_at_most_the_limit_before_it_starts():
    relay = Relay([Live("bulk")], {"bulk": BULK})
    quiet = relay.gate(max_hold=5 * SAMPLE)
    assert await quiet.wait() == 5 * SAMPLE
    assert await quiet.wait() == 5 * SAMPLE  # the next job too: no hold carries over from the one before
    relay.rates.clear()
    assert await quiet.wait() == SAMPLE


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _until(condition, what: str) -> None:
    for _ in range(500):  # a hang guard, not a measurement
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {what}")


async def test_a_running_job_is_stopped_while_the_relay_is_busy_and_continued_after():
    relay = Relay([Live("bulk")], {"bulk": BULK}, real=True)
    quiet = relay.gate()
    job = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        async with quiet.pausing(job.pid):
            await _until(lambda: _state(job.pid) == "T", "stopped under bulk traffic")
            relay.rates.clear()
            await _until(lambda: _state(job.pid) in "SR", "continued once quiet")
            relay.rates["bulk"] = BULK
            await _until(lambda: _state(job.pid) == "T", "stopped again")
        assert _state(job.pid) in "SR"  # the job is never left stopped
    finally:
        job.kill()
        await job.wait()


async def test_a_job_is_stopped_at_most_the_limit_in_all_however_the_relay_comes_and_goes():
    # Busy four samples in five, for ever: stopped and continued in turn until stopped 6 samples in all.
    relay = Relay([Live("bulk")], real=True, pattern=lambda n: 0 if n % 5 == 4 else BULK)
    quiet = relay.gate(max_hold=6 * SAMPLE)
    job = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        async with quiet.pausing(job.pid):
            await _until(lambda: _state(job.pid) == "T", "stopped under bulk traffic")
            await _until(lambda: relay.samples >= 20, "twenty samples")
            seen = set()
            while relay.samples < 40:  # busy stretches go on, the job is stopped no more
                seen.add(_state(job.pid))
                await asyncio.sleep(0.002)
            assert seen <= set("SR"), seen
    finally:
        job.kill()
        await job.wait()


async def test_a_job_stopped_when_its_caller_is_cancelled_is_continued():
    relay = Relay([Live("bulk")], {"bulk": BULK}, real=True)
    job = await asyncio.create_subprocess_exec("sleep", "60")
    stopped = asyncio.Event()

    async def watched() -> None:
        async with relay.gate().pausing(job.pid):
            await _until(lambda: _state(job.pid) == "T", "stopped under bulk traffic")
            stopped.set()
            await asyncio.Event().wait()

    try:
        task = asyncio.ensure_future(watched())
        await asyncio.wait_for(stopped.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _state(job.pid) in "SR"
    finally:
        job.kill()
        await job.wait()


async def test_watching_a_job_that_has_ended_ends_quietly():
    relay = Relay([Live("bulk")], {"bulk": BULK}, real=True)
    job = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE)
    pidfd = os.pidfd_open(job.pid)  # while it runs: it waits for its input
    try:
        job.stdin.close()
        await job.wait()  # gone and reaped: a signal to it finds no process
        await asyncio.wait_for(relay.gate()._pause(pidfd), 10)  # returns, raises nothing
    finally:
        os.close(pidfd)


async def test_the_background_indexer_waits_on_the_gate(services_with_gate):
    services, released = services_with_gate
    from bastion.search.index import _indexer

    indexer = _indexer(services)
    indexing = asyncio.ensure_future(indexer.index_one("no-such-session"))
    await asyncio.wait_for(services.quiet.entered.wait(), 10)
    assert not indexing.done()  # held at the gate
    released.set()
    await asyncio.wait_for(indexing, 10)


async def test_the_keyframes_job_waits_on_the_gate(services_with_gate):
    services, released = services_with_gate
    from bastion.errors import NotFound
    from bastion.recordings import build_keyframes

    building = asyncio.ensure_future(build_keyframes(services, "no-such-session"))
    await asyncio.wait_for(services.quiet.entered.wait(), 10)
    assert not building.done()  # held at the gate, before it even looks the recording up
    released.set()
    with pytest.raises(NotFound):
        await asyncio.wait_for(building, 10)


async def test_the_search_job_runs_under_the_gate(services_with_gate):
    services, _ = services_with_gate
    from bastion.search.index import _run_job

    await _run_job(services, "/nonexistent.bcast", "s", "shell")  # the job finds no file and ends
    assert len(services.quiet.paused) == 1 and services.quiet.paused[0] > 0


@pytest.fixture
async def services_with_gate(tmp_path):
    from bastion.config import load_config
    from bastion.datadir import init_data_dir
    from bastion.services import Services

    data_dir = tmp_path / "data"
    await init_data_dir(data_dir, listen="127.0.0.1:0")
    services = await Services.open(load_config(data_dir))
    assert isinstance(services.quiet, QuietGate)  # the gateway's services come with the gate
    released = asyncio.Event()

    class Held:
        paused: list[int] = []
        entered = asyncio.Event()

        async def wait(self) -> float:
            self.entered.set()
            await released.wait()
            return 0.0

        @contextlib.asynccontextmanager
        async def pausing(self, pid: int):
            self.paused.append(pid)
            yield

    services.quiet = Held()
    try:
        yield services, released
    finally:
        await services.close()
