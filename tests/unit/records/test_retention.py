"""Retention: expired recordings are crypto-shredded (key bytes destroyed before unlink), held ones kept."""

from __future__ import annotations

import base64
import os

import pytest
from sqlalchemy import func, select

from bastion.errors import Conflict, NotFound
from bastion.keys import load_node_key
from bastion.recorder import container
from bastion.recorder.reader import verify
from bastion.retention import apply_retention, destroy_recording_file, set_legal_hold
from bastion.store.models import AuditEvent, Recording, SearchEntry, Session

from .conftest import add_target, recorded_session, recording_row, session_row


def with_retention(services, days: int) -> None:
    services.config = services.config.replace(recording__retention_days=days)


async def events(services, prefix: str) -> list[AuditEvent]:
    async with services.db() as db:
        return list((await db.execute(select(AuditEvent).where(AuditEvent.type.startswith(prefix))
                                      .order_by(AuditEvent.seq))).scalars())


async def test_expired_recording_is_shredded_key_first_audited_and_unsearchable(services, tmp_path):
    with_retention(services, 30)
    session_id, path = await recorded_session(services, ended_days_ago=31)
    with open(path, "rb") as stream:
        wrapped = container.read_preamble(stream).wrapped_key
    # A second name for the same inode shows what is left in the blocks after the unlink.
    link = tmp_path / "still-linked.bcast"
    os.link(path, link)

    done = await apply_retention(services)

    assert [(d["session_id"], d["action"], d["file"], d["retention_days"]) for d in done] == \
        [(session_id, "shredded", "destroyed", 30)]
    assert not path.exists()
    raw = link.read_bytes()
    assert base64.b64encode(wrapped) not in raw and wrapped not in raw
    body_len = int.from_bytes(raw[len(container.MAGIC):len(container.MAGIC) + 4], "big")
    body = raw[len(container.MAGIC) + 4:len(container.MAGIC) + 4 + body_len]
    start = body.index(b'"wrapped_key":"') + len(b'"wrapped_key":"')
    assert set(body[start:start + len(base64.b64encode(wrapped))]) == {0}  # overwritten in place
    with pytest.raises(container.ContainerError), open(link, "rb") as stream:
        container.read_preamble(stream)
    report = verify(link, load_node_key(services.config.keys_dir).public_key())
    assert not report.ok and report.status == "corrupt"

    row = await recording_row(services, session_id)
    assert row.status == "shredded" and row.shredded_at == services.clock.now()
    session = await session_row(services, session_id)
    assert session.index_key is None
    async with services.db() as db:
        assert (await db.execute(select(func.count()).select_from(SearchEntry)
                                 .where(SearchEntry.session_id == session_id))).scalar_one() == 0
    [shredded] = await events(services, "recording.shredded")
    assert shredded.session_id == session_id and shredded.target == "web01"
    assert shredded.details["recording_id"] == row.id and shredded.details["file"] == "destroyed"
    assert shredded.details["retention_days"] == 30

    assert await apply_retention(services) == []  # done once


async def test_recent_and_held_recordings_are_kept_until_released(services):
    with_retention(services, 30)
    recent, recent_path = await recorded_session(services, ended_days_ago=29)
    held, held_path = await recorded_session(services, ended_days_ago=400)
    result = await set_legal_hold(services, held, True, actor="cli:auditor")
    assert result == {"session_id": held, "legal_hold": True, "changed": True}

    assert await apply_retention(services) == []
    assert recent_path.exists() and held_path.exists()
    assert (await recording_row(services, held)).shredded_at is None

    [change] = await events(services, "admin.session.legal_hold")
    assert change.actor == "cli:auditor" and change.session_id == held
    assert change.details["before"] == {"legal_hold": False} and change.details["after"] == {"legal_hold": True}

    await set_legal_hold(services, held, False, actor="cli:auditor")
    done = await apply_retention(services)
    assert [d["session_id"] for d in done] == [held] and not held_path.exists() and recent_path.exists()
    released = (await events(services, "admin.session.legal_hold"))[-1]
    assert released.details["before"] == {"legal_hold": True} and released.details["after"] == {"legal_hold": False}

    with pytest.raises(Conflict, match="crypto-shredded"):
        await set_legal_hold(services, held, True, actor="cli:auditor")
    with pytest.raises(NotFound):
        await set_legal_hold(services, "no-such-session", True, actor="cli:auditor")


async def test_target_retention_overrides_the_default_both_ways(services):
    await add_target(services, "short", retention_days=7)
    await add_target(services, "long", retention_days=365)
    await add_target(services, "forever", retention_days=0)
    with_retention(services, 30)
    short, _ = await recorded_session(services, target="short", ended_days_ago=10)
    long_, _ = await recorded_session(services, target="long", ended_days_ago=100)
    forever, _ = await recorded_session(services, target="forever", ended_days_ago=3000)
    default, _ = await recorded_session(services, target="web01", ended_days_ago=31)
    done = await apply_retention(services)
    assert sorted(d["session_id"] for d in done) == sorted([short, default])
    assert {d["session_id"]: d["retention_days"] for d in done} == {short: 7, default: 30}

    with_retention(services, 0)  # default keeps forever; the target's own retention still applies
    again, _ = await recorded_session(services, target="short", ended_days_ago=8)
    kept, kept_path = await recorded_session(services, target="web01", ended_days_ago=5000)
    assert [d["session_id"] for d in await apply_retention(services)] == [again]
    assert kept_path.exists() and (await recording_row(services, kept)).status == "sealed"


async def test_zero_keeps_forever_and_dry_run_changes_nothing(services):
    with_retention(services, 0)
    session_id, path = await recorded_session(services, ended_days_ago=10000)
    assert await apply_retention(services) == []
    with_retention(services, 1)
    before = len(await events(services, ""))
    planned = await apply_retention(services, dry_run=True)
    assert [(p["session_id"], p["action"]) for p in planned] == [(session_id, "would shred")]
    assert path.exists() and (await recording_row(services, session_id)).shredded_at is None
    assert len(await events(services, "")) == before


async def test_live_sessions_and_other_nodes_files_are_left_alone(services):
    with_retention(services, 1)
    _, old_path = await recorded_session(services, ended_days_ago=10)
    os.unlink(old_path)
    live, _ = await recorded_session(services, ended_days_ago=None)  # never ended: a crash, sealed "now"
    async with services.db() as db, db.begin():
        (await db.get(Recording, (await recording_row(services, live)).id)).status = "open"  # still being written
    done = await apply_retention(services)
    assert [(d["file"]) for d in done] == ["missing"]  # this node's own file, already gone: marked shredded
    # A recording written by another node whose file this node cannot see is that node's to shred.
    other, other_path = await recorded_session(services, ended_days_ago=10)
    async with services.db() as db, db.begin():
        row = await db.get(Session, other)
        row.node = "another-node"
    moved = other_path.with_name("elsewhere.bcast")
    os.rename(other_path, moved)
    assert await apply_retention(services) == []
    assert (await recording_row(services, other)).shredded_at is None


def test_destroy_handles_a_damaged_preamble_and_a_missing_file(tmp_path):
    path = tmp_path / "x.bcast"
    path.write_bytes(b"BASTCAST\x01" + b"\xff\xff" + b"garbage with a key somewhere")
    link = tmp_path / "link"
    os.link(path, link)
    assert destroy_recording_file(path) == "destroyed"
    assert set(link.read_bytes()) == {0} and not path.exists()
    assert destroy_recording_file(path) == "missing"
