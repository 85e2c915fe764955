"""Backup and restore: one encrypted file, a restore that is exact or leaves nothing, on both backends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bastion.audit.anchor import anchor_now, verify_with_anchors
from bastion.audit.log import verify_chain
from bastion.backup import BackupError, create_backup, restore_backup, rewrite_toml
from bastion.clock import FixedClock
from bastion.config import load_config
from bastion.errors import Conflict, UsageError
from bastion.recordings import export_session, verify_sessions
from bastion.services import Services
from bastion.store.models import AuditEvent, Base, Blob, TargetAccount, User
from tests.support.databases import admin_execute, skip_without_pg

from .conftest import NOW, add_target, recorded_session

PASSPHRASE = "correct horse battery staple, twice"
KEY_FILES = ("master.key", "node_ed25519.pem", "ssh_host_ed25519_key", "ssh_host_ecdsa_key", "tls.key")


async def populate(services) -> tuple[str, list[str]]:
    admin = services.admin(actor="tester")
    await admin.add_user("alice", password="a-long-enough-passphrase-for-alice", roles=["user"])
    await add_target(services, "web01")
    async with services.db() as db, db.begin():
        target_id = (await db.execute(select(Base.metadata.tables["targets"].c.id))).scalar_one()
        db.add(TargetAccount(target_id=target_id, login="root", kind="password",
                             secret=services.vault.seal(b"target-password", "account:web01:root"),
                             created_at=NOW))
    big = base64.b64encode(os.urandom(2_400_000))  # several backup chunks, several recording chunks
    first, _ = await recorded_session(services, text=b"MARKER-OUTPUT-42\r\n" + big)
    second, _ = await recorded_session(services, text=b"second session\r\n", search=False)
    # A dataset blob (content-addressed, sealed by the publisher; here opaque bytes) and its row.
    digest = hashlib.sha256(b"dataset").hexdigest()
    blob = services.config.data_dir / "blobs" / digest[:2] / digest
    blob.parent.mkdir(mode=0o700, parents=True)
    blob.write_bytes(os.urandom(5000))
    blob.chmod(0o600)
    async with services.db() as db, db.begin():
        db.add(Blob(sha256=digest, size=5000, wrapped_key=os.urandom(60), created_at=NOW))
    await anchor_now(services)
    return first, [first, second]


async def table_rows(services) -> dict[str, list[tuple]]:
    out = {}
    async with services.db() as db:
        for table in Base.metadata.sorted_tables:
            order = list(table.primary_key.columns)
            out[table.name] = [tuple(row) for row in (await db.execute(select(table).order_by(*order))).all()]
    return out


def no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.restore-")] == []


async def open_restored(path: Path) -> Services:
    return await Services.open(load_config(path, environ={}), clock=FixedClock(NOW))


async def test_round_trip_restores_everything_exactly_into_a_fresh_sqlite_dir(services, tmp_path):
    session_id, sessions = await populate(services)
    before = await table_rows(services)
    out = tmp_path / "site.bbak"
    summary = await create_backup(services, out, PASSPHRASE, actor="cli:admin")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and summary["size"] == out.stat().st_size
    assert summary["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and summary["missing"] == 0
    assert PASSPHRASE.encode() not in out.read_bytes() and b"MARKER-OUTPUT-42" not in out.read_bytes()
    async with services.db() as db:
        created = (await db.execute(select(AuditEvent).where(AuditEvent.type == "backup.created"))).scalar_one()
    assert created.actor == "cli:admin" and created.details["sha256"] == summary["sha256"]

    target = tmp_path / "restored"
    result = await restore_backup(out, PASSPHRASE, target)
    assert result["database"] == "sqlite" and result["data_dir"] == str(target)
    assert result["rows"] == sum(len(rows) for rows in before.values())
    assert [p.name for p in tmp_path.iterdir() if ".restore-" in p.name] == []

    source_keys, restored_keys = services.config.keys_dir, target / "keys"
    for name in KEY_FILES:
        assert stat.S_IMODE((restored_keys / name).stat().st_mode) == 0o600, name
        assert (restored_keys / name).read_bytes() == (source_keys / name).read_bytes()
    assert stat.S_IMODE(restored_keys.stat().st_mode) == 0o700
    assert "database_url" not in (target / "bastion.toml").read_text()
    [blob] = [p for p in (services.config.data_dir / "blobs").rglob("*") if p.is_file()]
    restored_blob = target / "blobs" / blob.parent.name / blob.name
    assert restored_blob.read_bytes() == blob.read_bytes() and stat.S_IMODE(restored_blob.stat().st_mode) == 0o600

    restored = await open_restored(target)
    try:
        assert restored.config.database_url.endswith(str(target / "bastion.db"))
        assert (await verify_chain(restored.db))[0]
        ok, message = await verify_with_anchors(restored)
        assert ok, message
        after = await table_rows(restored)
        for name, rows in before.items():
            if name in ("audit_events", "audit_head", "recordings"):
                continue
            assert after[name] == rows, name  # primary keys, timestamps, binary columns, JSON exactly
        events = after["audit_events"]
        assert events[:len(before["audit_events"])] == before["audit_events"]
        assert [e[3] for e in events[len(before["audit_events"]):]] == ["backup.restored"]
        assert [r[:2] for r in after["recordings"]] == [r[:2] for r in before["recordings"]]
        for row in after["recordings"]:
            assert row[2].startswith(str(target / "recordings")) and Path(row[2]).is_file()
        reports = await verify_sessions(restored, None, actor="test")
        assert sorted(r["session_id"] for r in reports) == sorted(sessions)
        assert all(r["ok"] and r["status"] == "sealed" for r in reports), reports
        await export_session(restored, session_id, tmp_path / "s.cast", force=False, actor="test")
        assert "MARKER-OUTPUT-42" in (tmp_path / "s.cast").read_text()
        async with restored.db() as db:
            account = (await db.execute(select(TargetAccount))).scalar_one()
        assert restored.vault.open(account.secret, "account:web01:root") == b"target-password"
        await restored.admin(actor="tester").add_user("bob", password="another-long-passphrase-bob")
        assert (await verify_chain(restored.db))[0]
    finally:
        await restored.close()


async def corrupt_and_expect(out: Path, tmp_path: Path, data: bytes, passphrase: str, match: str) -> None:
    bad = tmp_path / f"bad-{uuid.uuid4().hex[:6]}.bbak"
    bad.write_bytes(data)
    target = tmp_path / "target"
    with pytest.raises(BackupError, match=match):
        await restore_backup(bad, passphrase, target)
    no_leftovers(tmp_path, "target")


async def test_wrong_passphrase_truncation_and_tampering_leave_nothing(services, tmp_path):
    await populate(services)
    out = tmp_path / "site.bbak"
    await create_backup(services, out, PASSPHRASE)
    data = out.read_bytes()
    header_end = 9 + 4 + int.from_bytes(data[9:13], "big")
    assert len(data) > header_end + 2 * ((1 << 20) + 21) + 100  # several chunks

    await corrupt_and_expect(out, tmp_path, data, "not the passphrase at all", "wrong passphrase")
    for cut in (5, header_end - 10, header_end + 3, header_end + 1000, (1 << 20) + header_end + 5 + 16 + 5 + 7,
                len(data) - 1):
        await corrupt_and_expect(out, tmp_path, data[:cut], PASSPHRASE, "truncated")
    # Cut exactly at a chunk boundary: every chunk left authenticates, but the final one is missing.
    boundary = header_end + 5 + (1 << 20) + 16
    assert data[boundary] == 0  # the next chunk's "last" flag: not the final chunk
    await corrupt_and_expect(out, tmp_path, data[:boundary], PASSPHRASE, "truncated")
    for position in (header_end + 200, len(data) // 2, len(data) - 3):
        flipped = bytearray(data)
        flipped[position] ^= 0x04
        await corrupt_and_expect(out, tmp_path, bytes(flipped), PASSPHRASE, "damaged or was altered at chunk")
    salt_flip = bytearray(data)
    salt_flip[data.index(b'"salt":"') + 10] ^= 0x01
    await corrupt_and_expect(out, tmp_path, bytes(salt_flip), PASSPHRASE, "header|wrong passphrase")
    await corrupt_and_expect(out, tmp_path, data + b"x", PASSPHRASE, "bytes follow its final chunk")
    await corrupt_and_expect(out, tmp_path, b"PK\x03\x04 not a backup", PASSPHRASE, "not a Bastion backup")
    # Chunks swapped in place: each authenticates only at its own position.
    first = slice(header_end, header_end + 5 + (1 << 20) + 16)
    second = slice(first.stop, first.stop + 5 + (1 << 20) + 16)
    swapped = data[:first.start] + data[second] + data[first] + data[second.stop:]
    await corrupt_and_expect(out, tmp_path, swapped, PASSPHRASE, "damaged or was altered at chunk 0")


async def test_refusals_change_nothing(services, tmp_path):
    await populate(services)
    out = tmp_path / "site.bbak"
    with pytest.raises(UsageError, match="at least 12"):
        await create_backup(services, out, "short")
    assert not out.exists()
    await create_backup(services, out, PASSPHRASE)
    with pytest.raises(Conflict, match="exists"):
        await create_backup(services, out, PASSPHRASE)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        await restore_backup(out, PASSPHRASE, occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    await restore_backup(out, PASSPHRASE, empty)  # an existing empty directory is fine
    assert (empty / "bastion.toml").is_file()


@pytest.fixture
def fresh_pg_url(request):
    if not os.environ.get("BASTION_TEST_PG_URL"):
        skip_without_pg()
    base = request.getfixturevalue("pg_database")
    name = f"bastion_restore_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_execute(base, f'CREATE DATABASE "{name}"'))
    request.addfinalizer(lambda: asyncio.run(admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    return make_url(base).set(database=name).render_as_string(hide_password=False)


async def test_restore_into_an_empty_postgresql_database(services, tmp_path, fresh_pg_url):
    session_id, _ = await populate(services)
    out = tmp_path / "site.bbak"
    await create_backup(services, out, PASSPHRASE)
    target = tmp_path / "pg-restored"
    result = await restore_backup(out, PASSPHRASE, target, database_url=fresh_pg_url)
    assert result["database"] == "postgresql"
    restored = await open_restored(target)
    try:
        assert (await verify_chain(restored.db))[0]
        assert all(r["ok"] for r in await verify_sessions(restored, None, actor="test"))
        # Serial counters continue after the restored keys.
        await restored.admin(actor="tester").add_user("carol", password="a-long-enough-passphrase-carol")
        async with restored.db() as db:
            assert len((await db.execute(select(User))).scalars().all()) == 2
    finally:
        await restored.close()
    with pytest.raises(Conflict, match="already has tables"):
        await restore_backup(out, PASSPHRASE, tmp_path / "again", database_url=fresh_pg_url)
    no_leftovers(tmp_path, "again")


def test_rewrite_toml_keeps_the_rest_and_drops_old_locations():
    text = ('# comment\nlisten = "127.0.0.1:8022"\ndatabase_url = "postgresql://u:secret@db/x"\n\n'
            '[recording]\ndir = "/mnt/old"\nchunk_bytes = 4096\n\n[audit]\nanchor_file = "/var/a.log"\n')
    out = rewrite_toml(text, {"database_url": None, "recording.dir": None, "audit.anchor_file": None})
    assert "secret" not in out and "/mnt/old" not in out and "/var/a.log" not in out
    assert "chunk_bytes = 4096" in out and 'listen = "127.0.0.1:8022"' in out
    out = rewrite_toml(text, {"database_url": "postgresql://new/db"})
    assert 'database_url = "postgresql://new/db"' in out and "secret" not in out
    out = rewrite_toml("[recording]\nchunk_bytes = 1\n", {"database_url": "sqlite:///x.db"})
    assert out.startswith('database_url = "sqlite:///x.db"\n')
