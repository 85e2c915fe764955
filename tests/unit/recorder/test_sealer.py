"""The sealer process: same recordings as the threads, fails closed when it dies, refuses garbage on its socket."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import marshal
import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

from bastion.errors import RecordingError
from bastion.recorder.reader import iter_lines, verify
from bastion.recorder.sealer_client import SealerStopped, _parse_reply

from .conftest import wait_until
from .containerfile import open_in_sealer, output_text


def lines(env, rec) -> list[list]:
    return [json.loads(line) for line in list(iter_lines(rec.path, env.vault, env.public_key))[1:]]


async def record_sample(env, store):
    rec = await env.open(store, width=100, height=30)
    rec.output(b"$ ls\r\n")
    text = "h\u00e9llo \u2713\r\n".encode()
    rec.output(text[:7])  # a multibyte character cut between two reads...
    await rec.flush()  # ...and between two chunks
    rec.output(text[7:])
    rec.resize(120, 40)
    rec.marker("sftp get /etc/hosts 12 bytes")
    rec.output(os.urandom(3000).hex().encode())
    await rec.close("exited")
    return rec


async def test_the_sealer_process_writes_what_the_threads_write(env):
    threaded = await record_sample(env, env.store(recording__chunk_bytes=1024))
    sealed = await record_sample(env, env.store(recording__chunk_bytes=1024, sealed=True))
    report = verify(sealed.path, env.public_key, vault=env.vault)
    assert report.ok and report.status == "sealed", report
    assert report.chunks == verify(threaded.path, env.public_key, vault=env.vault).chunks == 2
    assert (await env.row(sealed.recording_id)).status == "sealed"
    ours, theirs = lines(env, threaded), lines(env, sealed)
    assert [event[1:] for event in ours[:4]] == [event[1:] for event in theirs[:4]]
    assert output_text(theirs).startswith("$ ls\r\nh\u00e9llo \u2713\r\n")
    assert len(output_text(theirs)) == len(output_text(ours))


async def test_bulk_output_is_sealed_in_bounded_jobs_and_flush_writes_all_of_it(env, monkeypatch):
    from bastion.recorder import sink

    monkeypatch.setattr(sink, "JOB_BYTES", 64 * 1024)
    rec = await env.open(env.store(recording__chunk_bytes=16 * 1024, sealed=True))
    jobs: list[int] = []
    append = rec._writer.append

    def counting(events):
        jobs.append(sum(len(event[2]) for event in events))
        return append(events)

    rec._writer.append = counting
    blocks = [os.urandom(12 * 1024).hex().encode() for _ in range(20)]  # 24 KiB each, 480 KiB in all
    for block in blocks:
        rec.output(block)
    await rec.flush()
    assert sum(jobs) == sum(map(len, blocks))  # nothing left behind by flush
    assert len(jobs) >= 5 and max(jobs) < 64 * 1024 + 24 * 1024, jobs  # a job stops once it passes JOB_BYTES
    await rec.close("exited")
    assert output_text(lines(env, rec)) == b"".join(blocks).decode()


async def test_bulk_output_keeps_the_next_job_waiting_in_the_sealer_and_a_trickle_sends_one(env, monkeypatch):
    from bastion.recorder import sink

    monkeypatch.setattr(sink, "JOB_BYTES", 16 * 1024)
    store = env.store(recording__chunk_bytes=1024, sealed=True)
    rec = await env.open(store)
    pid = store._sealer._process.pid
    os.kill(pid, signal.SIGSTOP)  # every job stays in flight
    try:
        rec.output(b"a" * 1500)  # past chunk_bytes: a job goes at once
        rec.output(b"b" * 1500)  # less than a whole job: waits for the first, whatever the pipeline's room
        assert len(rec._jobs) == 1
        blocks = [bytes([ord("c") + i]) * 6000 for i in range(8)]
        for block in blocks:
            rec.output(block)
        assert len(rec._jobs) == 2  # a whole job's worth went beside the first: the sealer has it next
        assert rec._buffer_bytes > 0  # and no third: the rest waits in the session's buffer
    finally:
        os.kill(pid, signal.SIGCONT)
    await rec.close("exited")
    assert verify(rec.path, env.public_key, vault=env.vault).status == "sealed"
    assert output_text(lines(env, rec)) == (b"a" * 1500 + b"b" * 1500 + b"".join(blocks)).decode()


async def test_flush_writes_two_jobs_in_flight_and_every_job_buffered_behind_them(env, monkeypatch):
    from bastion.recorder import sink

    monkeypatch.setattr(sink, "JOB_BYTES", 16 * 1024)
    store = env.store(recording__chunk_bytes=1024, sealed=True)
    rec = await env.open(store)
    pid = store._sealer._process.pid
    # In flight: the first block alone, then the next three (past 16 KiB); five more buffered, which go as
    # two more jobs (three blocks, then two): four jobs to wait for, more than the buffer's 1 x JOB_BYTES.
    blocks = [bytes([ord("a") + i]) * 6000 for i in range(9)]
    os.kill(pid, signal.SIGSTOP)
    try:
        for block in blocks:
            rec.output(block)
        assert len(rec._jobs) == 2 and rec._buffer_bytes == 5 * 6000
        flushing = asyncio.ensure_future(rec.flush())
        await asyncio.sleep(0.05)
        assert not flushing.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    await flushing
    assert not rec._jobs and rec._buffer_bytes == 0  # nothing buffered at the call was left behind
    await rec.close("exited")
    assert output_text(lines(env, rec)) == b"".join(blocks).decode()


async def test_bulk_output_reaches_the_sealer_through_the_ring_not_the_socket(env, monkeypatch):
    from bastion.recorder import sink

    monkeypatch.setattr(sink, "JOB_BYTES", 64 * 1024)
    store = env.store(recording__chunk_bytes=16 * 1024, sealed=True)
    rec = await env.open(store)
    process = store._sealer
    sent: list[int] = []
    writelines = process._transport.writelines
    process._transport.writelines = lambda message: (sent.append(sum(map(len, message))), writelines(message))
    blocks = [os.urandom(12 * 1024).hex().encode() for _ in range(20)]  # 480 KiB
    for block in blocks:
        rec.output(block)
    await rec.flush()
    assert len(sent) >= 5 and max(sent) < 4096, sent  # offsets and lengths only: the bytes went by the ring
    assert process._ring.held == 0  # every answered job gave its region back
    await rec.close("exited")
    assert verify(rec.path, env.public_key, vault=env.vault).status == "sealed"
    assert output_text(lines(env, rec)) == b"".join(blocks).decode()


async def test_jobs_that_find_the_ring_full_go_inline_and_no_region_is_reused_early(env, monkeypatch):
    from bastion.recorder import ring, sink

    monkeypatch.setattr(sink, "JOB_BYTES", 16 * 1024)
    monkeypatch.setattr(ring, "RING_BYTES", 64 * 1024)
    store = env.store(recording__chunk_bytes=4096, sealed=True)
    recs = [await env.open(store) for _ in range(3)]
    process = store._sealer
    assert process._ring.size == 64 * 1024
    blocks: dict[int, list[bytes]] = {id(rec): [] for rec in recs}
    placed: list[bool] = []
    place = process._ring.place
    process._ring.place = lambda job_id, events: (result := place(job_id, events), placed.append(bool(result)))[0]
    os.kill(process._process.pid, signal.SIGSTOP)  # every job stays in flight, holding its region
    try:
        for step in range(6):
            for number, rec in enumerate(recs):
                block = bytes([ord("a") + 3 * step + number]) * 9000
                blocks[id(rec)].append(block)
                rec.output(block)
        assert sum(len(rec._jobs) for rec in recs) == 6  # two jobs each, more than the ring holds
        assert True in placed and False in placed
    finally:
        os.kill(process._process.pid, signal.SIGCONT)
    for rec in recs:
        await rec.close("exited")
        assert verify(rec.path, env.public_key, vault=env.vault).status == "sealed"
        assert output_text(lines(env, rec)) == b"".join(blocks[id(rec)]).decode()
    assert process._ring.held == 0


async def test_a_dead_sealer_fails_its_recordings_closed_and_a_new_one_serves_the_next(env):
    store = env.store(sealed=True)
    rec = await env.open(store)
    rec.output(b"before")
    await rec.flush()
    first_ring = store._sealer._ring
    os.kill(store._sealer._process.pid, signal.SIGKILL)
    await wait_until(lambda: not store._sealer.running)
    assert first_ring._map.closed and store._sealer._ring is None  # its shared memory went with it
    rec.output(b"after the sealer died")
    await rec.flush()
    assert rec.failed == "recording writer stopped"
    await rec.close("session ended")
    assert env.failures == ["recording writer stopped"]  # once
    assert (await env.row(rec.recording_id)).status == "failed"

    again = await env.open(store)  # a new sealer process for new sessions, with shared memory of its own
    assert store._sealer._ring is not None and store._sealer._ring is not first_ring
    again.output(b"next session")
    await again.close("exited")
    assert verify(again.path, env.public_key, vault=env.vault).ok
    assert output_text(lines(env, again)) == "next session"


async def test_a_sealer_given_up_on_cannot_break_its_successor_when_its_socket_closes_late(env):
    store = env.store(sealed=True)
    rec = await env.open(store)
    process = store._sealer
    os.kill(process._process.pid, signal.SIGSTOP)  # it reads nothing more: what is sent stays queued
    for _ in range(4):  # text goes through the socket: more than its buffers hold stays in the gateway
        rec._writer.append([(0.0, "i", "x" * (4 << 20))]).add_done_callback(lambda job: job.exception())
    assert process._transport.get_write_buffer_size() > 0
    old_channel, lost = process._transport.get_protocol(), asyncio.Event()
    connection_lost = old_channel.connection_lost
    old_channel.connection_lost = lambda exc: (connection_lost(exc), lost.set())
    process._broken("malformed reply")  # given up on; the socket stays open until its bytes are gone
    assert not lost.is_set()
    again = await env.open(store)  # starting the successor kills it: only now is its socket lost
    await asyncio.wait_for(lost.wait(), 30)
    assert process.running and process._ring is not None, "the old sealer's close broke its successor"
    again.output(b"the next session is recorded")
    await again.close("exited")
    assert output_text(lines(env, again)) == "the next session is recorded"
    await rec.close("exited")


async def test_without_shared_memory_the_jobs_go_through_the_socket(env, monkeypatch):
    from bastion.recorder import sealer_client

    def refused():
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sealer_client, "PayloadRing", refused)
    store = env.store(sealed=True, recording__chunk_bytes=1024)
    rec = await env.open(store)
    assert store._sealer._ring is None and store._sealer.running
    block = os.urandom(30000).hex().encode()
    rec.output(block)
    await rec.close("exited")
    assert verify(rec.path, env.public_key, vault=env.vault).status == "sealed"
    assert output_text(lines(env, rec)) == block.decode()


async def test_a_job_that_cannot_be_sent_gives_its_region_back(env):
    from decimal import Decimal

    store = env.store(sealed=True)
    rec = await env.open(store)
    process = store._sealer
    with pytest.raises(ValueError):  # marshal takes plain values only: a bug, but not a leak
        process._submit(process._generation, "append", rec.recording_id, ([(Decimal(1), "o", b"abc")], 1.0))
    assert process._ring.held == 0
    await rec.close("exited")


async def test_a_sealer_that_cannot_start_refuses_the_session_and_leaves_nothing(env, tmp_path):
    store = env.store(sealed=True, keys_dir=tmp_path / "no-keys-here")
    with pytest.raises(RecordingError) as refused:
        await env.open(store)
    assert refused.value.safe_message == "recording could not be started: the recorder is unavailable"
    assert "no-keys-here" not in refused.value.safe_message
    assert not list(env.config.recordings_dir.rglob("*.bcast"))


async def test_a_stopped_store_refuses_new_recordings(env):
    store = env.store(sealed=True)
    await store.start()
    await store.stop()
    with pytest.raises(RecordingError, match="the recorder is stopping"):
        await env.open(store)
    assert not list(env.config.recordings_dir.rglob("*.bcast"))


# -- the wire ------------------------------------------------------------------------------------------


class RawSealer:
    """A sealer process driven by hand over its socket, as the gateway would, or with garbage."""

    def __init__(self, keys_dir, ring_fd: int | None = None):
        self.ours, theirs = socket.socketpair()
        ring = () if ring_fd is None else (ring_fd,)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bastion.recorder.sealer", str(keys_dir), str(theirs.fileno()), *map(str, ring)],
            pass_fds=(theirs.fileno(), *ring), stderr=subprocess.PIPE)
        theirs.close()
        self.ours.settimeout(30)
        self.stream = self.ours.makefile("rb")
        assert self.read() == (0, "ready")

    def send(self, raw: bytes) -> None:
        self.ours.sendall(raw)

    def request(self, *message) -> tuple:
        body = marshal.dumps(message)
        self.send(struct.pack(">I", len(body)) + body)
        return self.read()

    def read(self):
        head = self.stream.read(4)
        return marshal.loads(self.stream.read(struct.unpack(">I", head)[0]))

    def finish(self) -> tuple[int, str]:
        self.stream.close()  # the file object holds the socket open too
        self.ours.close()
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("garbage", [
    struct.pack(">I", 0xFFFFFFFF),  # a length far past the limit
    struct.pack(">I", 5) + b"\xff\xfe\xfd\xfc\xfb",  # not marshal
    struct.pack(">I", 3) + b"ab",  # cut off
    (lambda body: struct.pack(">I", len(body)) + body)(marshal.dumps(["not", "a", "tuple"])),
    (lambda body: struct.pack(">I", len(body)) + body)(marshal.dumps((1, 2))),
], ids=["oversized", "not-marshal", "cut-off", "list", "short-tuple"])
def test_the_sealer_stops_on_a_malformed_request_and_writes_nothing(env, tmp_path, garbage):
    sealer = RawSealer(env.config.keys_dir)
    sealer.send(garbage)
    if garbage.startswith(struct.pack(">I", 3)):
        sealer.ours.shutdown(socket.SHUT_WR)
    code, err = sealer.finish()
    assert code == 1 and "sealer stopped: malformed request" in err
    assert "\xff" not in err and "not" not in err.split("malformed request")[1]  # the kind, not the bytes
    assert not list(tmp_path.rglob("*.bcast"))


def test_the_sealer_answers_unknown_operations_and_recordings_with_an_error(env, tmp_path):
    sealer = RawSealer(env.config.keys_dir)
    target = tmp_path / "victim.bcast"
    target.write_bytes(b"untouched")
    assert sealer.request(7, "append", "nope", ([(0.0, "o", b"x")], 1.0)) == \
        (7, None, 9, "recording is not open in the sealer")  # EBADF
    assert sealer.request(8, "rm -rf", "nope", ()) == (8, None, 9, "recording is not open in the sealer")
    # open refuses a file that is not exactly the one the gateway created, holding just its preamble
    status = os.stat(target)
    identity = (status.st_dev, status.st_ino)
    reply = sealer.request(9, "open", "r1", (str(target), identity, "s1", b"k" * 32, b"pre", b"{}\n", 1024))
    assert reply[:3] == (9, None, 5)  # EIO: not just a preamble
    other = tmp_path / "other.bcast"
    other.write_bytes(b"untouched")
    reply = sealer.request(9, "open", "r1", (str(other), identity, "s1", b"k" * 32, b"untouched", b"{}\n", 1024))
    assert reply[:3] == (9, None, 5)  # EIO: the right size, but another file (swapped in by path)
    link = tmp_path / "link.bcast"
    link.symlink_to(target)
    reply = sealer.request(10, "open", "r2", (str(link), identity, "s1", b"k" * 32, b"untouched", b"{}\n", 1024))
    assert reply[:3] == (10, None, 40)  # ELOOP: never follows a link
    fifo = tmp_path / "fifo.bcast"
    os.mkfifo(fifo)
    reply = sealer.request(12, "open", "r4", (str(fifo), identity, "s1", b"k" * 32, b"", b"{}\n", 1024))
    assert reply[:3] == (12, None, 6)  # ENXIO at once: a FIFO without a reader cannot hang the sealer
    reply = sealer.request(11, "open", "r3", (str(target), identity, "s1", b"short key", b"untouched", b"{}\n",
                                              1024))
    assert reply == (11, None, None, "ValueError")  # a bug-shaped failure names its kind only
    code, err = sealer.finish()
    assert code == 0
    assert target.read_bytes() == b"untouched" and other.read_bytes() == b"untouched"
    assert "short key" not in err


@pytest.mark.parametrize("with_ring", [True, False], ids=["out-of-bounds", "no-ring"])
def test_a_bad_ring_reference_fails_its_recording_and_writes_nothing_after_it(env, tmp_path, with_ring):
    from bastion.recorder.ring import PayloadRing

    ring = PayloadRing(4096)
    sealer = RawSealer(env.config.keys_dir, ring.fd if with_ring else None)
    path = tmp_path / "r.bcast"
    path.write_bytes(b"pre")
    status = os.stat(path)
    reply = sealer.request(1, "open", "r", (str(path), (status.st_dev, status.st_ino), "s", b"k" * 32, b"pre",
                                            b"{}\n", 64))
    assert reply[:3] == (1, 0, 3)  # open: no chunk yet, the 3-byte preamble
    placed = ring.place(2, [(0.0, "o", b"secret" * 20)])
    bad = (0, 4097) if with_ring else placed[0][2]
    assert sealer.request(2, "append", "r", ([(0.0, "o", b"before "), (0.1, "o", bad)], 1.0)) == \
        (2, None, None, "ValueError")  # the kind only, never the bytes
    assert path.read_bytes() == b"pre"  # not even the events before the bad one
    reply = sealer.request(3, "append", "r", (placed, 1.0))
    assert reply[:3] == (3, None, 5)  # EIO: nothing is written after a failed job (no gap)
    assert path.read_bytes() == b"pre"
    code, err = sealer.finish()
    ring.close()
    assert code == 0 and "secret" not in err


@pytest.mark.parametrize("reply", [b"", b"\xff\x00", marshal.dumps([1, 2, 3, 4]), marshal.dumps(("1", 2, 3, 4)),
                                   marshal.dumps((5, 1, 2)), marshal.dumps(())])
def test_the_gateway_refuses_malformed_replies(reply):
    with pytest.raises(ValueError):
        _parse_reply(reply)


async def test_a_malformed_reply_fails_the_jobs_in_flight(env):
    store = env.store(sealed=True)
    rec = await env.open(store)
    process = store._sealer
    job = process._submit(process._generation, "append", rec.recording_id, ([(0.0, "o", b"x")], 1.0))
    process._reply(b"\xff\x00garbage")
    with pytest.raises(SealerStopped):
        await job
    assert not process.running
    await rec.close("exited")


async def test_the_sealer_outlives_stop_signals_meant_for_the_gateway(env):
    # Ctrl-C goes to a process group, systemd's SIGTERM to the whole unit: the gateway then seals its live
    # sessions, which needs the sealer; it ends when the gateway closes the socket.
    store = env.store(sealed=True)
    rec = await env.open(store)
    rec.output(b"before the signals")
    await rec.flush()
    process = store._sealer._process
    assert os.getpgid(process.pid) != os.getpgid(0)  # not in the gateway's group either
    os.kill(process.pid, signal.SIGTERM)
    os.kill(process.pid, signal.SIGINT)
    rec.output(b" and after")
    await rec.close("the gateway is shutting down")
    assert process.poll() is None and store._sealer.running
    assert verify(rec.path, env.public_key, vault=env.vault).status == "sealed"
    assert output_text(lines(env, rec)) == "before the signals and after"
    await store.stop()
    assert process.poll() == 0  # the closed socket ends it


async def test_a_job_in_flight_when_the_sealer_dies_fails_the_recording_once(env):
    store = env.store(sealed=True, recording__chunk_bytes=1024)
    rec = await env.open(store)
    pid = store._sealer._process.pid
    os.kill(pid, signal.SIGSTOP)  # the next job stays in flight
    try:
        rec.output(b"x" * 4096)  # past chunk_bytes: a job is sent at once
        assert rec._jobs and not rec._jobs[0][0].done()
    finally:
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: rec.failed is not None)
    assert rec.failed == "recording could not be written"
    await rec.close("session ended")
    assert env.failures == ["recording could not be written"]
    assert (await env.row(rec.recording_id)).status == "failed"


async def test_an_open_the_gateway_gave_up_on_is_closed_again_in_the_sealer(env, tmp_path):
    store = env.store(sealed=True)
    await store.start()
    sealer = store._sealer
    pid = sealer._process.pid
    path = tmp_path / "given-up.bcast"
    path.write_bytes(b"PRE")
    status = os.stat(path)

    def holds_it() -> bool:
        return any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))

    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sealer.open("r-late", path=path, identity=(status.st_dev, status.st_ino),
                                               session_id="s", data_key=os.urandom(32), preamble=b"PRE",
                                               header=b"{}\n", chunk_bytes=1024), 0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_until(lambda: not sealer._jobs)  # the late reply came, and the drop sent for it was answered
    assert not holds_it()


@contextlib.contextmanager
def storage_full(fd: int):
    """Writes to `fd` fail with ENOSPC (it is /dev/full) inside the block; the file is back after it."""
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(full)


def test_a_failed_finish_leaves_the_recording_to_abandon(env, tmp_path):
    path = tmp_path / "s.bcast"
    sealer = open_in_sealer(env, path, 1024)
    first = sealer.handle("append", "r", ([(0.0, "o", b"a" * 2000)], 1.0))
    with storage_full(sealer._writers["r"]._fd), pytest.raises(OSError) as caught:
        sealer.handle("finish", "r", ([(0.1, "o", b"b" * 2000)], 1.0, "exited", "now"))
    assert caught.value.errno == errno.ENOSPC  # the storage recovers; the recording is still there to cut back
    repaired = sealer.handle("abandon", "r", (1.0, "recording failed: recording storage full", "now"))
    assert repaired.chunks == first.chunks and "r" not in sealer._writers
    from bastion.recorder.reader import verify as check

    report = check(path, env.public_key, vault=env.vault)
    assert report.status == "failed" and report.chunks == first.chunks


def test_a_job_queued_behind_a_failed_append_writes_nothing_so_the_recording_has_no_gap(env, tmp_path):
    path = tmp_path / "s.bcast"
    sealer = open_in_sealer(env, path, 1024)
    first = sealer.handle("append", "r", ([(0.0, "o", b"a" * 2000)], 1.0))
    with storage_full(sealer._writers["r"]._fd), pytest.raises(OSError) as caught:
        sealer.handle("append", "r", ([(0.1, "o", b"b" * 2000)], 1.0))
    assert caught.value.errno == errno.ENOSPC  # the storage recovers before the job queued behind runs
    size = path.stat().st_size
    with pytest.raises(OSError) as refused:
        sealer.handle("append", "r", ([(0.2, "o", b"c" * 2000)], 1.0))
    assert refused.value.errno == errno.EIO
    with pytest.raises(OSError):
        sealer.handle("finish", "r", ([], 1.0, "exited", "now"))  # nor sealed as if whole
    assert path.stat().st_size == size
    repaired = sealer.handle("abandon", "r", (1.0, "recording failed: recording storage full", "now"))
    assert repaired.chunks == first.chunks
    from bastion.recorder.reader import verify as check

    report = check(path, env.public_key, vault=env.vault)
    assert report.status == "failed" and report.chunks == first.chunks
    text = output_text([json.loads(line) for line in
                        list(iter_lines(path, env.vault, env.public_key, force=True))[1:]])
    assert text == "a" * 2000  # "c" never followed the lost "b"


async def test_a_job_over_the_message_limit_is_refused_here_and_the_sealer_keeps_serving(env, monkeypatch):
    from bastion.recorder import sealer_client

    store = env.store(sealed=True)
    rec = await env.open(store)
    monkeypatch.setattr(sealer_client, "MAX_MESSAGE", 4096)  # the sealer itself keeps the real limit
    with pytest.raises(SealerStopped, match="too large"):  # output goes by the ring, text inline
        rec._writer.append([(0.0, "o", b"y" * 100), (0.0, "i", "x" * 8192)])  # sent, the sealer would stop
    assert store._sealer.running and not store._sealer._jobs and store._sealer._ring.held == 0
    rec.output(b"small enough")
    await rec.close("exited")
    assert verify(rec.path, env.public_key, vault=env.vault).status == "sealed"


async def test_an_oversized_reply_header_breaks_the_channel_and_fails_the_jobs_in_flight(env):
    store = env.store(sealed=True)
    rec = await env.open(store)
    process = store._sealer
    job = process._submit(process._generation, "append", rec.recording_id, ([(0.0, "o", b"x")], 1.0))
    process._transport.get_protocol().data_received(struct.pack(">I", 0xFFFFFFFF) + b"junk")
    with pytest.raises(SealerStopped):
        await job
    assert not process.running
    await rec.close("exited")
    assert rec.failed == "recording writer stopped"
