"""Index real recordings (through the job process) and search them, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bastion.config import load_config
from bastion.datadir import init_data_dir
from bastion.errors import UsageError
from bastion.keys import load_node_key
from bastion.search import index as search_index
from bastion.search import job
from bastion.search.index import (index_pending, index_session, schedule_indexing, search, search_sessions,
                                  stop_indexing)
from bastion.services import Services
from bastion.store.models import AuditEvent, Recording, SearchEntry, Session
from bastion.vault import create_master_key

PROMPT = b"root@web01:~# "
T0 = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
async def services(database_url, tmp_path):
    data = tmp_path / "data"
    await init_data_dir(data, listen="127.0.0.1:0", database_url=database_url)
    opened = await Services.open(load_config(data, environ={}))
    yield opened
    await stop_indexing(opened)
    await opened.close()


async def add_session(services, *, user="alice", target="web01", kind="shell", command="",
                      started=T0) -> str:
    session_id = str(uuid.uuid4())
    async with services.db() as db, db.begin():
        db.add(Session(id=session_id, connection_id=str(uuid.uuid4()), user_name=user, target_name=target,
                       account_login="root", kind=kind, command=command, source_addr="127.0.0.1",
                       node=services.config.node_name, started_at=started))
    return session_id


async def end(services, session_id: str) -> None:
    async with services.db() as db, db.begin():
        await db.execute(update(Session).where(Session.id == session_id).values(ended_at=T0, end_reason="done"))


async def record_shell(services, lines: list[tuple[bytes, bytes]], **kw) -> str:
    """A shell session: each (typed, output) pair is typed, echoed, entered and answered."""
    session_id = await add_session(services, **kw)
    failures: list[str] = []
    rec = await services.recordings.open(session_id, width=80, height=24, term="xterm", title="t",
                                         echo_tracking=True, on_failure=failures.append)
    rec.output(PROMPT)
    for typed, output in lines:
        await asyncio.sleep(0.02)  # so that each line has an offset of its own
        if typed.startswith(b"HIDDEN:"):
            rec.input(typed[7:])  # never echoed: recorded as <hidden>
            rec.input(b"\r")
            rec.output(b"\r\n" + output + PROMPT)
            continue
        rec.input(typed)
        rec.output(typed)
        rec.input(b"\r")
        rec.output(b"\r\n" + output + PROMPT)
    await rec.close("client closed")
    assert not failures
    await end(services, session_id)
    return session_id


async def test_commands_and_output_are_found_and_the_search_is_audited(services):
    shell = await record_shell(services, [(b"echo Needle-One", b"Needle-One\r\n"),
                                          (b"uname -a", b"Linux web01 6.1.0 x86_64 GNU/Linux\r\n")])
    other = await record_shell(services, [(b"echo needle-two", b"needle-two\r\n")], user="bob", target="db01",
                               started=T0 + dt.timedelta(hours=1))
    exec_id = await add_session(services, kind="exec", command="grep NEEDLE /etc/hosts",
                                started=T0 - dt.timedelta(minutes=1))
    await end(services, exec_id)
    sftp = await add_session(services, kind="sftp")
    await end(services, sftp)
    for session_id in (shell, other, exec_id, sftp):
        assert await index_session(services, session_id)

    hits = await search(services, "needle", actor="auditor1")
    assert [h["session_id"] for h in hits if h["kind"] == "command"] == [other, shell, exec_id]
    first = next(h for h in hits if h["session_id"] == shell and h["kind"] == "command")
    assert first["text"] == "echo Needle-One" and first["user"] == "alice" and first["target"] == "web01"
    assert first["account"] == "root" and first["session_kind"] == "shell" and first["offset"] > 0
    assert first["replay"] == f"/audit/sessions/{shell}?t={first['offset']}"
    assert any(h["kind"] == "output" and h["text"] == "Needle-One" for h in hits)

    assert [h["text"] for h in await search(services, "GNU/LINUX", actor="a")] == \
        ["Linux web01 6.1.0 x86_64 GNU/Linux"]
    assert {h["session_id"] for h in await search(services, "needle", user="bob", actor="a")} == {other}
    assert {h["session_id"] for h in await search(services, "needle", target="web01", actor="a")} == {shell, exec_id}
    assert {h["session_id"] for h in await search(services, "needle", since=T0 + dt.timedelta(minutes=30),
                                                  actor="a")} == {other}
    assert len(await search(services, "needle", limit=1, actor="a")) == 1

    async with services.db() as db:
        event = (await db.execute(select(AuditEvent).where(AuditEvent.type == "admin.search.query")
                                  .order_by(AuditEvent.seq))).scalars().first()
    assert event.actor == "auditor1" and event.details["after"]["hits"] == len(hits)
    assert set(event.details["after"]["sessions"]) == {shell, other, exec_id}
    assert "needle" not in str(event.details).lower()  # the text searched for may be a secret: not kept


async def test_the_index_is_sealed_and_entries_do_not_move(services):
    session_id = await record_shell(services, [(b"echo PLAINTEXT-CANARY", b"PLAINTEXT-CANARY-OUT\r\n")])
    other = await record_shell(services, [(b"true", b"")])
    assert await index_session(services, session_id) and await index_session(services, other)
    async with services.db() as db:
        row = await db.get(Session, session_id)
        entries = (await db.execute(select(SearchEntry).where(SearchEntry.session_id == session_id))).scalars().all()
    assert row.indexed_at is not None and row.index_key is not None and len(row.index_key) == 60
    assert {e.kind for e in entries} == {"command", "output"}
    for entry in entries:
        assert b"CANARY" not in entry.sealed and b"canary" not in entry.sealed.lower()
    assert len(await search(services, "canary", actor="a")) == 2

    # An entry moved to another session (or to another time) no longer opens: skipped, never shown.
    async with services.db() as db, db.begin():
        await db.execute(update(SearchEntry).where(SearchEntry.session_id == session_id)
                         .values(session_id=other))
    outcome = await search_sessions(services, "canary", actor="a")
    assert outcome.hits == [] and outcome.unreadable == len(entries)


async def test_hidden_input_is_not_searchable(services):
    session_id = await record_shell(services, [(b"read -s pw", b""), (b"HIDDEN:hunter2-secret", b""),
                                               (b"echo done", b"done\r\n")])
    assert await index_session(services, session_id)
    assert await search(services, "hunter2", actor="a") == []
    assert [h["text"] for h in await search(services, "read -s", actor="a") if h["kind"] == "command"] == \
        ["read -s pw"]


async def test_indexing_is_idempotent_and_force_rebuilds_under_a_new_key(services):
    session_id = await record_shell(services, [(b"echo once", b"once\r\n")])
    assert await index_session(services, session_id)
    async with services.db() as db:
        key = (await db.get(Session, session_id)).index_key
        count = len((await db.execute(select(SearchEntry.id).where(SearchEntry.session_id == session_id))).all())
    assert await index_session(services, session_id)
    assert await index_session(services, session_id, force=True)
    async with services.db() as db:
        again = (await db.get(Session, session_id)).index_key
        recount = len((await db.execute(select(SearchEntry.id).where(SearchEntry.session_id == session_id))).all())
    assert again != key and recount == count
    assert len([h for h in await search(services, "echo once", actor="a") if h["kind"] == "command"]) == 1


async def test_open_recordings_wait_and_unreadable_ones_are_indexed_empty(services):
    live = await add_session(services)
    rec = await services.recordings.open(live, width=80, height=24, term="xterm", title="t", echo_tracking=True,
                                         on_failure=lambda reason: None)
    rec.output(b"$ ")
    assert not await index_session(services, live)  # still recording
    await rec.close("client closed")
    missing = await record_shell(services, [(b"echo gone", b"gone\r\n")])
    async with services.db() as db:
        path = (await db.execute(select(Recording.path).where(Recording.session_id == missing))).scalar_one()
    os.unlink(path)
    assert await index_session(services, missing)
    async with services.db() as db:
        row = await db.get(Session, missing)
    assert row.indexed_at is not None and row.index_key is None


async def test_pending_sessions_are_caught_up_and_scheduling_runs_in_the_background(services):
    ids = [await record_shell(services, [(f"echo batch-{n}".encode(), b"")]) for n in range(3)]
    assert await index_pending(services) == 3
    assert await index_pending(services) == 0
    later = await record_shell(services, [(b"echo scheduled-later", b"")])
    schedule_indexing(services, later)
    schedule_indexing(services, later)  # queued once
    for _ in range(200):
        async with services.db() as db:
            if (await db.get(Session, later)).indexed_at is not None:
                break
        await asyncio.sleep(0.05)
    assert [h["text"] for h in await search(services, "scheduled-later", actor="a") if h["kind"] == "command"] == \
        ["echo scheduled-later"]
    assert {h["session_id"] for h in await search(services, "batch-", actor="a")} == set(ids)


async def test_bad_searches_are_refused(services):
    for text in ("", "   ", "x" * 257):
        with pytest.raises(UsageError):
            await search(services, text, actor="a")
    with pytest.raises(UsageError):
        await search(services, "x", since=dt.datetime(2026, 1, 1), actor="a")
    assert search_index.parse_since("2026-01-01") == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(UsageError):
        search_index.parse_since("yesterday")


async def test_only_the_newest_sessions_are_scanned(services, monkeypatch):
    for n in range(3):
        await record_shell(services, [(b"echo bounded", b"")], started=T0 + dt.timedelta(minutes=n))
    await index_pending(services)
    monkeypatch.setattr(search_index, "MAX_SESSIONS_SCANNED", 2)
    outcome = await search_sessions(services, "bounded", actor="a")
    assert not outcome.complete and outcome.sessions_scanned == 2
    assert len({h["session_id"] for h in outcome.hits}) == 2


async def test_the_job_tells_a_wrong_vault_from_a_damaged_file(services, tmp_path):
    session_id = await record_shell(services, [(b"echo vaulted", b"vaulted\r\n")])
    async with services.db() as db:
        path = Path((await db.execute(select(Recording.path).where(Recording.session_id == session_id))).scalar_one())
    keys = services.config.keys_dir
    public = load_node_key(keys).public_key()
    assert job.build(keys, path, session_id, "shell", public)["status"] == "ok"
    other = tmp_path / "other-keys"
    create_master_key(other)  # another master key: the file verifies, its key does not open
    assert job.build(other, path, session_id, "shell", public)["status"] == "error"  # retried, not emptied
    assert job.build(keys, path, str(uuid.uuid4()), "shell", public)["status"] == "unreadable"
    junk = tmp_path / "junk.bcast"
    junk.write_bytes(b"not a recording")
    result = job.build(keys, junk, session_id, "shell", public)
    assert result["status"] == "ok" and result["entries"] == []  # nothing verifies: nothing to index
    assert job.main(["too", "few"]) == 2
    assert job.main([str(keys), str(path), session_id, "shell", "not-hex"]) == 2


async def test_exec_sessions_are_found_by_command_and_by_output(services):
    session_id = await add_session(services, kind="exec", command="cat /etc/motd")
    rec = await services.recordings.open(session_id, width=80, height=24, term="", title="t", echo_tracking=False,
                                         on_failure=lambda reason: None)
    rec.input(b"piped input is never indexed\n")
    rec.output(b"Welcome to web01\nEXEC-OUTPUT-LINE\n")
    await rec.close("exit status 0")
    await end(services, session_id)
    assert await index_session(services, session_id)
    hits = await search(services, "exec-output", actor="a")
    assert [(h["kind"], h["text"], h["session_kind"]) for h in hits] == [("output", "EXEC-OUTPUT-LINE", "exec")]
    assert [h["text"] for h in await search(services, "/etc/motd", actor="a")] == ["cat /etc/motd"]
    assert await search(services, "piped input", actor="a") == []
