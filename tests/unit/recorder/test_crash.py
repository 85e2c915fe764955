"""A crashed gateway leaves recordings that verify up to their last whole chunk; startup closes their rows."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import pytest
from sqlalchemy import update

from bastion.errors import RecordingError
from bastion.recorder.export import export_cast
from bastion.recorder.reader import verify
from bastion.store.models import Recording

from .conftest import NODE
from .containerfile import output_text, read_cast, record_offsets
from .test_roundtrip import asciinema_cat

CHILD = r"""
import asyncio, pathlib, sys
from bastion.clock import Clock
from bastion.config import load_config
from bastion.keys import load_node_key
from bastion.recorder.store import RecordingStore
from bastion.store.engine import make_engine, make_sessionmaker
from bastion.vault import Vault

async def main(data_dir, session_id, node):
    data_dir = pathlib.Path(data_dir)
    config = load_config(data_dir, environ={}).replace(node_name=node, recording__flush_interval=0.05)
    engine = make_engine(f"sqlite+aiosqlite:///{data_dir / 'bastion.db'}")
    store = RecordingStore(config, Vault.load(config.keys_dir), load_node_key(config.keys_dir),
                           make_sessionmaker(engine), Clock())
    rec = await store.open(session_id, width=80, height=24, term="xterm", title="crash",
                           echo_tracking=False, on_failure=print)
    line, announced = 0, False
    while True:
        rec.output(f"line {line:06d} before the crash\r\n".encode())
        line += 1
        await asyncio.sleep(0.002)
        if not announced and rec.state.chunks >= 3:
            print("ready", flush=True)
            announced = True

asyncio.run(main(*sys.argv[1:]))
"""


def simulate_process_death(rec) -> None:
    """What SIGKILL does to a recorder: no more timers, the file descriptor just closes."""
    rec._cancel_timer()
    rec._writer.chunk.close_file()


async def record_chunks(env, store, count: int):
    rec = await env.open(store)
    for index in range(count):
        rec.output(f"chunk {index} ".encode() + b"y" * 300 + b"\r\n")
        await rec.flush()
    assert rec.state.chunks == count
    return rec


async def test_gateway_killed_with_sigkill_leaves_a_verifiable_prefix(env, tmp_path):
    session_id = await env.add_session()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(env.data_dir), session_id, NODE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        assert line.strip() == b"ready", (line, await child.stderr.read())
    finally:
        child.kill()  # SIGKILL: no close, no manifest, maybe half a record
        await asyncio.wait_for(child.wait(), timeout=30)

    store = env.store()
    assert await store.seal_abandoned() == 1
    async with env.db() as db:
        row = (await db.execute(Recording.__table__.select().where(Recording.session_id == session_id))).one()
    path = row.path
    report = verify(path, env.public_key, vault=env.vault)
    assert report.status in ("unsealed", "truncated") and report.chunks >= 3, report
    assert row.status == "truncated" and row.chunks == report.chunks and row.last_hash == report.last_hash
    assert row.closed_at is not None

    with pytest.raises(RecordingError, match="verification failed"):
        export_cast(path, tmp_path / "plain.cast", env.vault, env.public_key)
    out = tmp_path / "forced.cast"
    export_cast(path, out, env.vault, env.public_key, force=True)
    header, events = read_cast(out)
    assert header["bastion_verification"].startswith("FAILED: ")
    numbers = [int(n) for n in re.findall(r"line (\d{6}) before the crash", output_text(events))]
    assert numbers[:3] == [0, 1, 2] and numbers == list(range(len(numbers)))  # a clean prefix, no gaps
    assert "line 000000 before the crash" in asciinema_cat(out)
    assert await store.seal_abandoned() == 0  # done once


async def test_recording_never_closed_is_sealed_as_truncated_at_startup(env, tmp_path):
    rec = await record_chunks(env, env.store(recording__chunk_bytes=256), 4)
    simulate_process_death(rec)

    after_restart = env.store()
    assert await after_restart.seal_abandoned() == 1
    row = await env.row(rec.recording_id)
    report = verify(rec.path, env.public_key)
    assert report.status == "unsealed" and report.chunks == 4 and report.first_bad_chunk is None
    assert row.status == "truncated" and row.chunks == 4 and row.size == rec.path.stat().st_size

    with pytest.raises(RecordingError):
        export_cast(rec.path, tmp_path / "x.cast", env.vault, env.public_key)
    out = tmp_path / "forced.cast"
    export_cast(rec.path, out, env.vault, env.public_key, force=True)
    header, events = read_cast(out)
    assert "unsealed" in header["bastion_verification"]
    assert [f"chunk {i} " in output_text(events) for i in range(4)] == [True] * 4


async def test_file_cut_mid_record_verifies_up_to_the_cut(env, tmp_path):
    rec = await record_chunks(env, env.store(recording__chunk_bytes=256), 4)
    simulate_process_death(rec)
    offset, size, _ = record_offsets(rec.path)[3]
    with open(rec.path, "r+b") as stream:
        stream.truncate(offset + size - 7)

    assert await env.store().seal_abandoned() == 1
    assert (await env.row(rec.recording_id)).status == "truncated"
    report = verify(rec.path, env.public_key, vault=env.vault)
    assert report.status == "truncated" and report.chunks == 3 and report.first_bad_chunk == 3
    out = tmp_path / "forced.cast"
    export_cast(rec.path, out, env.vault, env.public_key, force=True)
    _, events = read_cast(out)
    text = output_text(events)
    assert "chunk 2 " in text and "chunk 3 " not in text


async def test_seal_abandoned_leaves_live_foreign_and_finished_rows_alone(env):
    store = env.store()
    live = await env.open(store)
    live.output(b"still running")
    other_node = await env.open(env.store(node="node-other"), session_id=await env.add_session(node="node-other"))
    simulate_process_death(other_node)
    sealed = await env.open(store)
    await sealed.close("done")

    assert await store.seal_abandoned() == 0
    assert (await env.row(live.recording_id)).status == "open"
    assert (await env.row(other_node.recording_id)).status == "open"  # another node's, maybe alive
    assert (await env.row(sealed.recording_id)).status == "sealed"
    await live.close("done")


async def test_a_sealed_file_whose_row_stayed_open_is_recognised(env):
    # e.g. the database was unreachable when the session closed
    store = env.store()
    rec = await env.open(store)
    rec.output(b"hello")
    await rec.close("done")
    async with env.db() as db, db.begin():
        await db.execute(update(Recording).where(Recording.id == rec.recording_id).values(status="open"))
    assert await env.store().seal_abandoned() == 1
    assert (await env.row(rec.recording_id)).status == "sealed"


async def test_a_missing_file_is_marked_failed(env):
    rec = await env.open()
    simulate_process_death(rec)
    os.unlink(rec.path)
    assert await env.store().seal_abandoned() == 1
    assert (await env.row(rec.recording_id)).status == "failed"
