"""Anchors of the audit chain head outside the database catch truncation, which the chain alone cannot."""

from __future__ import annotations

import asyncio
import json
import stat

from sqlalchemy import delete, select, update

from bastion.audit.anchor import anchor_loop, anchor_now, anchor_path, verify_for_cli, verify_with_anchors
from bastion.audit.events import AdminChange
from bastion.audit.log import verify_chain
from bastion.store.models import AuditAnchor, AuditEvent, AuditHead


async def emit(services, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        await services.audit.emit(AdminChange(actor="tester", action="user.add", object=f"user{index}"))


async def test_anchor_appends_a_private_fsynced_line_and_a_row(services):
    await emit(services, 3)
    anchor = await anchor_now(services)
    path = anchor_path(services.config)
    assert path == services.config.data_dir / "audit-anchors.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with services.db() as db:
        head = (await db.execute(select(AuditHead))).scalar_one()
        rows = (await db.execute(select(AuditAnchor))).scalars().all()
    line = json.loads(path.read_text().splitlines()[-1])
    assert line == {"seq": head.seq, "hash": head.hash, "at": services.clock.now().isoformat()}
    assert anchor["seq"] == 3 and anchor["file"] == str(path)
    assert [(r.seq, r.hash, r.destination) for r in rows] == [(3, head.hash, str(path))]
    await emit(services, 2, 3)
    await anchor_now(services)
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [3, 5]
    assert await verify_for_cli(services) == await verify_with_anchors(services)
    ok, message = await verify_with_anchors(services)
    assert ok and "5 events verified" in message and "2 anchors" in message


async def test_deleting_the_newest_rows_is_named_as_truncation(services):
    await emit(services, 6)
    await anchor_now(services)
    # A careful attacker deletes the newest rows and moves the head back: the chain alone is content.
    async with services.db() as db, db.begin():
        await db.execute(delete(AuditEvent).where(AuditEvent.seq > 4))
        kept = (await db.execute(select(AuditEvent).where(AuditEvent.seq == 4))).scalar_one()
        await db.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=4, hash=kept.hash))
    assert (await verify_chain(services.db))[0]
    ok, message = await verify_with_anchors(services)
    assert not ok
    assert "audit log truncated" in message and "ends at seq 4" in message and "holds seq 6" in message
    assert "events 5..6 were deleted" in message and "anchor file line 1" in message
    # Deleting the anchor rows too does not help: the file outside the database still has it.
    async with services.db() as db, db.begin():
        await db.execute(delete(AuditAnchor))
    ok, message = await verify_with_anchors(services)
    assert not ok and "events 5..6 were deleted" in message
    # New events after the truncation do not hide it either: seq 6 now has another hash.
    await emit(services, 3, 100)
    ok, message = await verify_with_anchors(services)
    assert not ok and "seq 6 no longer has the hash anchored" in message


async def test_a_sloppy_truncation_and_an_edited_row_are_still_caught(services):
    await emit(services, 5)
    await anchor_now(services)
    async with services.db() as db, db.begin():
        await db.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(actor="someone-else"))
    ok, message = await verify_with_anchors(services)
    assert not ok and "row seq 2" in message and "edited" in message
    async with services.db() as db, db.begin():
        await db.execute(delete(AuditEvent).where(AuditEvent.seq == 5))
    ok, message = await verify_with_anchors(services)
    assert not ok and "truncated" in message


async def test_a_damaged_or_deleted_anchor_file_is_reported(services):
    await emit(services, 2)
    await anchor_now(services)
    path = anchor_path(services.config)
    with open(path, "a") as handle:
        handle.write('{"seq": "x"}\n')
    ok, message = await verify_with_anchors(services)
    assert not ok and "anchor file line 2 is not an anchor" in message
    path.unlink()
    ok, message = await verify_with_anchors(services)
    assert not ok and "anchor file" in message and "missing" in message


async def test_anchor_loop_anchors_at_start_and_when_the_head_moves(services):
    task = asyncio.create_task(anchor_loop(services, interval=0.05))
    try:
        await asyncio.sleep(0.2)
        await emit(services, 1)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    seqs = [json.loads(x)["seq"] for x in anchor_path(services.config).read_text().splitlines()]
    assert seqs == [0, 1]  # only when the head moved
